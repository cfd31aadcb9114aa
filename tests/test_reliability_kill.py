"""R-REL-1: `kill -9` a worker process mid-batch; every event still ends `done`, no remote effect twice.

The world is `sync_world` (service, GHL / Aloware / Verity simulators on real ports) on
PostgreSQL. A batch of Aloware call activity and inbound texts for ten people is delivered
through the real ingest, then `python -m df_middleware.cli worker` runs as a real process against
the same database and simulators, with latency on GHL so that it is mid-batch.

Where the kill lands is chosen, not left to luck: the fifth GHL write of the parametrised kind
(a note, a call log entry, an inbound message, a contact upsert) is *made* by the simulator, and
the simulator then holds its answer while the test SIGKILLs the worker: the write happened in GHL,
the worker never heard of it — the case the effect ledger plus the remote check (a note's
`[df:<key>]` marker) must survive. The worker runs four events at a time and each event makes at
most one write of a kind, so the fifth such write comes from an event claimed after an earlier one
finished: some (not all) events are `done`. Counting writes in the simulator, rather than arming
when the test sees enough `done` rows, keeps the choice independent of how fast the test polls (on
a loaded machine a poll could see the batch only after every contact upsert was made). While the
kill is under way every other GHL write is refused (503, nothing changed), so the write of the
chosen kind is the only one whose answer is lost, and a failure names exactly one kind of write.

A second worker process is started; it takes the dead worker's events once their lease
(LEASE_SECONDS=5) expires and finishes the batch. Then, for every person: one GHL contact, each
note exactly once (unique by marker), one call log per call, one GHL message per texting id,
`sync_effects` keys unique, every event `done`, and every delivered event's effect present.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from df_middleware.db.models import SyncEffect, TextingWebhookEvent, WebhookEvent
from df_middleware.simulators.ghl import GhlError, LocationRateLimiter
from tests.sync_world import SyncWorld
from tests.worker_processes import StartWorker, worker_env

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

PEOPLE = 10
LEASE_SECONDS = 5
#: Events the worker processes at once (WORKER_CONCURRENCY).
CONCURRENCY = 4
#: The write of the target kind whose answer is lost: one more than the worker runs at once, so
#: at least one event has finished when it is made (there are 10 or more of each kind).
FIRE_ON_WRITE = CONCURRENCY + 1
#: The GHL simulator's methods that change state; all are refused while a kill is under way.
GHL_WRITES = (
    "add_note",
    "add_outbound_call",
    "add_inbound_message",
    "upsert_contact",
    "create_contact",
    "create_conversation",
    "add_tags",
    "remove_tags",
    "update_contact",
    "update_message_status",
)


def phone_of(person: int) -> str:
    return f"+1919555{3000 + person:04d}"


def call_id_of(person: int) -> int:
    return 7_700_000 + person


def texting_id_of(person: int) -> str:
    return f"tlx_KILL_{person:02d}"


def aloware_contact(person: int) -> dict[str, Any]:
    return {
        "id": 48_000 + person,
        "first_name": f"Person{person}",
        "last_name": "Kill",
        "phone_number": phone_of(person),
        "email": f"person{person}@example.com",
    }


def call_disposed(person: int) -> dict[str, Any]:
    call_id = call_id_of(person)
    return {
        "id": call_id,
        "type": "call",
        "direction": "outbound" if person % 2 else "inbound",
        "contact_id": 48_000 + person,
        "contact": aloware_contact(person),
        "user": {"id": 731, "name": "Chris Agent", "email": "chris@example.com"},
        "disposition_status": "Interested",
        "call_disposition": "Interested",
        "status": "completed",
        "duration": 60 + person,
        "created_at": "2026-11-24T16:30:00Z",
    }


def call_child(person: int, record_id: int, **fields: Any) -> dict[str, Any]:
    return {
        "id": record_id,
        "call_id": call_id_of(person),
        "communication_id": call_id_of(person),
        "contact_id": 48_000 + person,
        "contact": aloware_contact(person),
        "created_at": "2026-11-24T16:35:00Z",
        **fields,
    }


def inbound_text(person: int) -> dict[str, Any]:
    return {
        "eventType": "message.received",
        "messageId": texting_id_of(person),
        "conversationId": f"chat_kill_{person}",
        "direction": "inbound",
        "from": phone_of(person),
        "to": "+19195550000",
        "body": f"Hello from person {person}",
        "timestamp": "2026-11-24T16:50:00.000Z",
        "status": "received",
    }


def expected_note_keys(person: int) -> set[str]:
    call = call_id_of(person)
    return {f"aloware:call:{call}:note:{kind}" for kind in ("call-disposed", "recording", "summary")}


async def deliver_batch(world: SyncWorld) -> int:
    """Four events per person, interleaved across people (40 in all)."""
    delivered = 0
    for person in range(PEOPLE):
        await world.deliver_aloware("Call Disposed", call_disposed(person))
        delivered += 1
    for person in range(PEOPLE):
        await world.deliver_texting(inbound_text(person))
        await world.deliver_aloware(
            "Recording Saved",
            call_child(person, 81_000 + person, url=f"https://rec.example/{person}.mp3", duration=60),
        )
        await world.deliver_aloware(
            "Call Summarized",
            call_child(person, 82_000 + person, summary=f"Summary {person}", outcomes=["Interested"]),
        )
        delivered += 3
    return delivered


# --- the worker process -----------------------------------------------------------------------------


# --- choosing where the kill lands ------------------------------------------------------------------


class KillSwitch:
    """Wraps the GHL simulator's write methods (they run on the simulator's server thread).

    The `fire_on`-th call of `target` is carried out, then the simulator's loop is held (its
    answer not sent) until the test has SIGKILLed the worker and set `released` (or 60 s pass).
    From that moment until `stop_refusing()`, every other write is refused with a 503 and changes
    nothing.
    """

    def __init__(self, sim: Any, target: str, fire_on: int) -> None:
        self.target = target
        self.fire_on = fire_on
        self.made = 0  # writes of the target kind so far (only the simulator's thread counts)
        self.fired = threading.Event()
        self.released = threading.Event()
        self.refusing = threading.Event()
        self.lost: list[Any] = []
        for name in GHL_WRITES:
            setattr(sim, name, self._wrap(name, getattr(sim, name)))

    def _wrap(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def write(*args: Any, **kwargs: Any) -> Any:
            if self.refusing.is_set():
                raise GhlError.of(503, "simulated outage while the worker is killed")
            result = original(*args, **kwargs)
            if name != self.target:
                return result
            self.made += 1
            if self.made == self.fire_on:
                self.refusing.set()
                self.lost.append(result)
                self.fired.set()
                self.released.wait(timeout=60)  # holds the simulator: the answer goes nowhere
            return result

        return write

    def stop_refusing(self) -> None:
        self.refusing.clear()


# --- reading the outcome -----------------------------------------------------------------------------


async def status_counts(world: SyncWorld) -> Counter[str]:
    counts: Counter[str] = Counter()
    async with world.db.session() as session:
        for model in (WebhookEvent, TextingWebhookEvent):
            rows = await session.execute(select(model.status, func.count()).group_by(model.status))
            for status, count in rows:
                counts[str(status)] += int(count)
    return counts


async def wait_for(world: SyncWorld, done_at_least: int, deadline_s: float) -> Counter[str]:
    deadline = time.monotonic() + deadline_s
    counts = await status_counts(world)
    while counts["done"] < done_at_least and time.monotonic() < deadline:
        assert counts["error"] == 0, f"dead-lettered events: {counts}"
        await asyncio.sleep(0.1)
        counts = await status_counts(world)
    return counts


async def ghl_answered_everything(world: SyncWorld, deadline_s: float = 60) -> None:
    """Wait until the GHL simulator has answered every request it received, including those the
    killed worker sent before it died (they were waiting in the simulator's sockets while its loop
    was held). A control request's round trip first: its connection is served after the data that
    was already waiting, so every stale request is in the log by the time it is answered."""
    async with httpx.AsyncClient(base_url=world.ghl.url, timeout=deadline_s) as http:
        (await http.get("/_sim/state")).raise_for_status()
    deadline = time.monotonic() + deadline_s
    while unanswered := [r for r in world.ghl.requests() if r.status == 0]:
        assert time.monotonic() < deadline, f"GHL still answering {[(r.method, r.path) for r in unanswered]}"
        await asyncio.sleep(0.01)


def duplicates(values: list[Any]) -> dict[Any, int]:
    return {value: n for value, n in Counter(values).items() if n > 1}


#: Each kind of GHL write that is not idempotent by itself. The call log and the inbound message
#: duplicated here before commit 75c64b4 (the retry wrote them again: two entries with one altId);
#: they are now looked up remotely by altId on a retry.
TARGETS = [
    pytest.param("add_note", id="note"),
    pytest.param("upsert_contact", id="contact-upsert"),
    pytest.param("add_outbound_call", id="call-log"),
    pytest.param("add_inbound_message", id="inbound-message"),
]


@pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.postgres)])
@pytest.mark.parametrize("target", TARGETS)
async def test_r_rel_1_sigkill_mid_batch_loses_and_duplicates_nothing(
    sync_world: SyncWorld,
    start_worker: StartWorker,
    target: str,
    tmp_path: Path,
) -> None:
    world = sync_world
    assert world.db.is_postgres
    # Rate limits are not under test here: lift them so that the timing depends on latency only.
    world.ghl.sim.rate_limits = LocationRateLimiter(100_000, 10.0)
    world.ghl.faults(latency_ms=150)
    switch = KillSwitch(world.ghl.sim, target, fire_on=FIRE_ON_WRITE)

    total = await deliver_batch(world)
    env = worker_env(
        world.settings,
        LEASE_SECONDS=str(LEASE_SECONDS),
        POLL_SECONDS="0.1",
        WORKER_CONCURRENCY=str(CONCURRENCY),
        RETRY_BASE_SECONDS="0.5",
        GHL_RATE_LIMIT_MAX="100000",
        LOG_LEVEL="info",
    )

    first = start_worker(env, "worker-1")
    deadline = time.monotonic() + 120
    while not switch.fired.is_set():
        assert time.monotonic() < deadline, (
            f"no {target} write number {FIRE_ON_WRITE}; {await status_counts(world)}"
        )
        assert first.poll() is None, (tmp_path / "worker-1.log").read_text()[-3000:]
        await asyncio.sleep(0.005)
    first.send_signal(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL
    at_kill = await status_counts(world)
    switch.released.set()
    assert 0 < at_kill["done"] < total, f"the kill did not land mid-batch: {at_kill}"
    assert at_kill["processing"] > 0, f"nothing was in flight at the kill: {at_kill}"
    await ghl_answered_everything(world)  # the dead worker's last requests were refused
    switch.stop_refusing()

    second = start_worker(env, "worker-2")
    counts = await wait_for(world, total, deadline_s=120)
    assert counts == Counter({"done": total}), f"{counts}\n{(tmp_path / 'worker-2.log').read_text()[-3000:]}"
    second.send_signal(signal.SIGTERM)
    second.wait(20)

    assert len(switch.lost) == 1, "exactly one write's answer was lost"
    snapshot = world.ghl.sim.snapshot()
    contacts = [c for c in snapshot["contacts"] if not c["deleted"]]
    assert not duplicates([c["phone"] for c in contacts]), "a person has two GHL contacts"
    by_phone = {c["phone"]: c for c in contacts}
    messages = snapshot["messages"]
    problems: list[str] = []
    for person in range(PEOPLE):
        contact = by_phone.get(phone_of(person))
        if contact is None:
            problems.append(f"person {person}: no GHL contact")
            continue
        markers = [
            line.strip()[len("[df:") : -1]
            for note in contact["notes"]
            for line in note["body"].splitlines()
            if line.strip().startswith("[df:")
        ]
        if duplicates(markers):
            problems.append(f"person {person}: duplicated notes {duplicates(markers)}")
        if set(markers) != expected_note_keys(person):
            problems.append(f"person {person}: notes {sorted(markers)}")
        tags = set(contact["tags"])
        if not {"call: interested", "summary: interested"} <= tags:
            problems.append(f"person {person}: tags {sorted(tags)}")
        own = [m for m in messages if m["contactId"] == contact["id"]]
        calls = [m.get("altId") for m in own if m["type"] in ("Call", "TYPE_CALL")]
        if calls != [f"aloware-call-{call_id_of(person)}"]:
            problems.append(f"person {person}: call log entries {calls}")
        texts = [m.get("altId") for m in own if m["type"] in ("SMS", "TYPE_SMS")]
        if texts != [texting_id_of(person)]:
            problems.append(f"person {person}: GHL messages for the inbound text {texts}")
    assert not problems, "\n".join(problems)

    async with world.db.session() as session:
        effects = list(await session.execute(select(SyncEffect.effect_key, SyncEffect.target_id)))
    keys = [key for key, _ in effects]
    assert not duplicates(keys)
    # The write whose answer was lost is the one kept: found again (by the ledger's remote check,
    # or for a contact by phone), not made a second time.
    [lost] = switch.lost
    if target == "upsert_contact":
        assert lost.contact["id"] in {c["id"] for c in contacts}
    else:
        lost_id = lost["id"] if isinstance(lost, dict) else lost.id
        assert lost_id in {target_id for _, target_id in effects}
    for person in range(PEOPLE):
        assert expected_note_keys(person) <= set(keys)
        assert f"aloware:call:{call_id_of(person)}:ghl-call-log" in keys
        assert f"ghl:message:texting:{texting_id_of(person)}" in keys
