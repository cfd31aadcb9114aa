"""R-IDEM-2, R-REL-1, R-Q-6: every non-idempotent remote write survives its worker being stopped
mid-write by something that is not an exception — a SIGKILL, or a SIGTERM whose shutdown grace
runs out — and is made exactly once.

One test per write (a Verity send, a GHL note, a call log entry, an inbound message, a contact
create, an Aloware Lead API write), each run with both endings and on both databases (the
`sync_world` fixture follows the `db` fixture's engines). The scenario is always the same:

1. the event is delivered through the real ingest (signed, over HTTP);
2. `python -m df_middleware.cli worker` runs as a real process against the same database and the
   simulators;
3. the simulator *makes* the write and then holds its HTTP answer (`AnswerHold`): the write exists
   remotely, the worker has not heard of it;
4. the worker is ended: `sigkill` kills it (its lease, LEASE_SECONDS, then expires), `sigterm` asks
   it to stop with SHUTDOWN_GRACE_SECONDS=1, so the grace runs out while the answer is held, the
   handler is cancelled and the event released to `pending` without counting the attempt; the
   worker must then exit by itself (exit code 0);
5. the answer is let go and a second worker process finishes the work;
6. the remote systems hold the write once (the very record the held write made), every event is
   `done`, and every `sync_effects` row records its write as `done` (a GHL contact create does
   not yet: see LEFTOVER_CONTACT_INTENT).

The hold is at the HTTP layer, around the whole simulator app, not inside the simulator's method:
the route runs to its end (the write is recorded) and only sending the answer waits, without
blocking the simulator's event loop. That matters for Verity: its receipts (`message.sent`, then
`message.delivered`) are posted in the background by the same loop, so they reach the service
while the send's answer is still held, as a real Verity would post them. A send cannot be looked
up at Verity, so the retry never repeats it: the event is dead-lettered as unconfirmed and
Verity's own `message.sent` for the same number and text then resolves it (R-TXT-5).
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from df_middleware.db.models import MessageMapping, SyncEffect, TextingWebhookEvent, WebhookEvent
from df_middleware.simulators.verity import SEND_MESSAGE_PATH
from tests.sync_world import CONVERSATION_PROVIDER, LOCATION, Served, SyncWorld
from tests.worker_processes import StartWorker, worker_env

#: A step's deadline is generous (STEP_DEADLINE); the test as a whole gets room for its three.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

#: The shortest lease the settings allow: a killed worker's event is taken over this soon.
LEASE_SECONDS = 5
#: How long a test waits for a step (a write, a worker's exit, the queue to settle). A deadline,
#: never a sleep: each step ends as soon as its condition holds. Generous for 2 loaded CI cores.
STEP_DEADLINE = 90.0
ENDINGS = ["sigkill", "sigterm"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]


# --- holding a write's answer -----------------------------------------------------------------------


class AnswerHold:
    """Holds the HTTP answer of the first successful `method path` request a served simulator
    gets, after the route has run (the write is made), until `release()`.

    Installed around the app's whole middleware stack, so the simulator's request log and state
    see the request as usual and its event loop keeps serving everything else (Verity's receipts
    included) while the answer waits in a thread of its own.
    """

    def __init__(self, served: Served, method: str, path: str) -> None:
        self.method = method
        self.path = re.compile(path)
        self.made = threading.Event()
        self._released = threading.Event()
        app = served.app
        inner: Asgi = app.middleware_stack or app.build_middleware_stack()
        app.middleware_stack = self._wrap(inner)

    def _wrap(self, inner: Asgi) -> Asgi:
        async def held(scope: Scope, receive: Receive, send: Send) -> None:
            target = (
                scope["type"] == "http"
                and scope["method"] == self.method
                and self.path.fullmatch(scope["path"]) is not None
            )
            if not target or self.made.is_set():
                await inner(scope, receive, send)
                return

            async def send_later(message: MutableMapping[str, Any]) -> None:
                start = message["type"] == "http.response.start"
                if start and 200 <= message["status"] < 300 and not self.made.is_set():
                    self.made.set()
                    await asyncio.to_thread(self._released.wait, STEP_DEADLINE * 2)
                await send(message)

            await inner(scope, receive, send_later)

        return held

    def release(self) -> None:
        self._released.set()


# --- the worker processes -----------------------------------------------------------------------------


def interruptible_env(world: SyncWorld) -> dict[str, str]:
    return worker_env(
        world.settings,
        LEASE_SECONDS=str(LEASE_SECONDS),
        POLL_SECONDS="0.1",
        SHUTDOWN_GRACE_SECONDS="1",
        RETRY_BASE_SECONDS="0.5",
        # The held answer must be ended by the test's signal, never by the worker's own timeout
        # (that is an exception, a different path: a lost answer, not an interruption).
        HTTP_TIMEOUT_SECONDS=str(int(STEP_DEADLINE * 2)),
        LOG_LEVEL="info",
    )


def log_tail(tmp_path: Path, name: str) -> str:
    path = tmp_path / f"{name}.log"
    return path.read_text(errors="replace")[-4000:] if path.exists() else "(no log)"


async def exit_code(proc: subprocess.Popen[bytes], deadline_s: float) -> int | None:
    """The process's exit code once it has ended, or None if it still runs at the deadline."""
    deadline = time.monotonic() + deadline_s
    while proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return proc.poll()


# --- the database ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventRow:
    status: str
    attempts: int
    locked_by: str | None
    error_message: str | None


async def event_row(world: SyncWorld, event_id: str) -> EventRow:
    key = uuid.UUID(event_id)
    async with world.db.session() as session:
        row: WebhookEvent | TextingWebhookEvent | None = await session.get(WebhookEvent, key)
        if row is None:
            row = await session.get(TextingWebhookEvent, key)
        assert row is not None, f"no event {event_id}"
        return EventRow(str(row.status), int(row.attempts), row.locked_by, row.error_message)


async def event_statuses(world: SyncWorld) -> list[tuple[str, str, str | None]]:
    """(event type, status, error) of every event in the webhook and texting tables."""
    async with world.db.session() as session:
        found: list[tuple[str, str, str | None]] = []
        for model in (WebhookEvent, TextingWebhookEvent):
            rows = await session.execute(select(model.event_type, model.status, model.error_message))
            found.extend((str(kind), str(status), error) for kind, status, error in rows)
        return found


async def all_done(world: SyncWorld, expected: int, worker_log: Callable[[], str]) -> None:
    """Wait until exactly `expected` events exist and every one is `done`. An event that ended
    `error` is not final by itself (an unconfirmed send waits for its receipt), so only the
    deadline ends the wait."""
    deadline = time.monotonic() + STEP_DEADLINE
    statuses = await event_statuses(world)
    while not (len(statuses) == expected and all(s == "done" for _, s, _ in statuses)):
        # Events are only ever added: more than expected is final (e.g. a second send's receipts).
        if len(statuses) > expected or time.monotonic() > deadline:
            raise AssertionError(f"events did not all end done: {statuses}\n{worker_log()}")
        await asyncio.sleep(0.1)
        statuses = await event_statuses(world)


async def effects(world: SyncWorld) -> dict[str, tuple[str, str | None]]:
    """effect key → (state, target id). Before effect intents existed every row was a done write."""
    state = getattr(SyncEffect, "state", None)
    async with world.db.session() as session:
        if state is None:
            rows = await session.execute(select(SyncEffect.effect_key, SyncEffect.target_id))
            return {key: ("done", target) for key, target in rows}
        found = await session.execute(select(SyncEffect.effect_key, state, SyncEffect.target_id))
        return {key: (str(st), target) for key, st, target in found}


# --- the interruption ---------------------------------------------------------------------------------


async def interrupt_mid_write(
    world: SyncWorld,
    hold: AnswerHold,
    ending: str,
    event_id: str,
    start_worker: StartWorker,
    tmp_path: Path,
    written: Callable[[], list[dict[str, Any]]],
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    """Steps 2 to 5 of the module docstring. Returns the second worker, which finishes the work,
    and the one remote record the held write made (`written()`, read while its answer is held)."""
    env = interruptible_env(world)
    first = start_worker(env, "worker-1")
    deadline = time.monotonic() + STEP_DEADLINE
    try:
        while not await asyncio.to_thread(hold.made.wait, 0.1):
            assert first.poll() is None, f"worker-1 ended before the write:\n{log_tail(tmp_path, 'worker-1')}"
            assert time.monotonic() < deadline, f"no write made:\n{log_tail(tmp_path, 'worker-1')}"
        if ending == "sigkill":
            first.send_signal(signal.SIGKILL)
            assert await exit_code(first, STEP_DEADLINE) == -signal.SIGKILL
            # Killed mid-write: the event is still leased to the dead worker, until the lease ends.
            assert (await event_row(world, event_id)).status == "processing"
        else:
            first.send_signal(signal.SIGTERM)
            # R-Q-6: the grace runs out while the answer is held; the worker cancels the handler,
            # releases the event and exits by itself.
            code = await exit_code(first, STEP_DEADLINE)
            assert code == 0, f"worker-1 after SIGTERM: exit {code}\n{log_tail(tmp_path, 'worker-1')}"
            released = await event_row(world, event_id)
            assert (released.status, released.attempts, released.locked_by) == ("pending", 0, None), (
                f"{released}\n{log_tail(tmp_path, 'worker-1')}"
            )
        made = written()
        assert len(made) == 1, f"the held write made {made}"
    finally:
        hold.release()
    return start_worker(env, "worker-2"), made[0]


async def finish(
    world: SyncWorld, second: subprocess.Popen[bytes], expected_events: int, tmp_path: Path
) -> None:
    """Wait until the second worker has ended every event `done`, then stop it."""
    try:
        await all_done(world, expected_events, lambda: log_tail(tmp_path, "worker-2"))
    finally:
        second.send_signal(signal.SIGTERM)
        await exit_code(second, STEP_DEADLINE)


# --- the events --------------------------------------------------------------------------------------

ALOWARE_CONTACT_ID = 48_100
CALL_ID = 7_710_001
PHONE = "+19195554100"
NOTE_KEY = f"aloware:call:{CALL_ID}:note:call-disposed"
CALL_LOG_KEY = f"aloware:call:{CALL_ID}:ghl-call-log"
CONTACT_KEY = f"ghl:contact-for-aloware:{ALOWARE_CONTACT_ID}"
CALL_ALT_ID = f"aloware-call-{CALL_ID}"
TEXTING_ID = "tlx_INTERRUPTED_1"


def call_disposed() -> dict[str, Any]:
    """Aloware's `Call Disposed` for a person GHL does not know yet: a contact create, a note,
    tags and a call log entry (GHL_CALL_PROVIDER_ID is set in the world)."""
    return {
        "id": CALL_ID,
        "type": "call",
        "direction": "inbound",
        "contact_id": ALOWARE_CONTACT_ID,
        "contact": {
            "id": ALOWARE_CONTACT_ID,
            "first_name": "Dana",
            "last_name": "Interrupted",
            "phone_number": PHONE,
            "email": "dana@example.com",
        },
        "user": {"id": 731, "name": "Chris Agent", "email": "chris@example.com"},
        "disposition_status": "Interested",
        "call_disposition": "Interested",
        "status": "completed",
        "duration": 75,
        "created_at": "2026-11-24T16:30:00Z",
    }


def inbound_text() -> dict[str, Any]:
    """Verity's `message.received` from a number GHL does not know yet."""
    return {
        "eventType": "message.received",
        "messageId": TEXTING_ID,
        "conversationId": "chat_interrupted",
        "direction": "inbound",
        "from": PHONE,
        "to": "+19195550000",
        "body": "Is Tuesday still open?",
        "timestamp": "2026-11-24T16:50:00.000Z",
        "status": "received",
    }


def ghl_contact_created() -> dict[str, Any]:
    """GHL's `ContactCreate` for a person Aloware does not know yet: one Lead API write."""
    return {
        "type": "ContactCreate",
        "id": "ghlInterrupted1",
        "firstName": "Lee",
        "lastName": "Interrupted",
        "email": "lee@example.com",
        "phone": PHONE,
        "tags": [],
    }


async def deliver(delivery: Awaitable[Any]) -> str:
    answer = await delivery
    answer.raise_for_status()
    return str(answer.json()["id"])


# --- reading the remote systems ----------------------------------------------------------------------


def ghl_contacts(world: SyncWorld, phone: str = PHONE) -> list[dict[str, Any]]:
    return [c for c in world.ghl.sim.snapshot()["contacts"] if not c["deleted"] and c["phone"] == phone]


def note_markers(world: SyncWorld) -> list[str]:
    """The `[df:<key>]` markers of every note of the person's GHL contacts, repeats included."""
    return [
        line.strip()[len("[df:") : -1]
        for contact in ghl_contacts(world)
        for note in contact["notes"]
        for line in note["body"].splitlines()
        if line.strip().startswith("[df:")
    ]


def ghl_notes(world: SyncWorld) -> list[dict[str, Any]]:
    return [note for contact in ghl_contacts(world) for note in contact["notes"]]


def verity_sends(world: SyncWorld) -> list[dict[str, Any]]:
    return [m for m in world.verity.sim.sent_messages if m["to"] == PHONE]


def ghl_messages(world: SyncWorld, alt_id: str) -> list[dict[str, Any]]:
    return [m for m in world.ghl.sim.snapshot()["messages"] if m.get("altId") == alt_id]


def aloware_contacts(world: SyncWorld, phone: str = PHONE) -> list[dict[str, Any]]:
    return [c for c in world.aloware.sim.snapshot()["contacts"] if c["phone_number"] == phone]


async def assert_every_effect_done(world: SyncWorld, expected_keys: set[str]) -> dict[str, str | None]:
    """The ledger holds exactly the expected writes, each known as made (`done`): nothing is left
    *maybe done*. Returns each write's target id."""
    recorded = await effects(world)
    assert set(recorded) == expected_keys
    states = {key: state for key, (state, _) in recorded.items()}
    assert states == dict.fromkeys(expected_keys, "done"), f"left maybe done after the event ended: {states}"
    return {key: target for key, (_, target) in recorded.items()}


# --- one test per write ------------------------------------------------------------------------------


@pytest.mark.parametrize("ending", ENDINGS)
async def test_verity_send_interrupted_is_never_sent_twice(
    sync_world: SyncWorld, start_worker: StartWorker, ending: str, tmp_path: Path
) -> None:
    """R-TXT-5, R-IDEM-2, R-REL-1, R-Q-6: an agent's SMS whose Verity send was made but whose answer
    never reached the worker (killed, or cancelled past the shutdown grace) is not sent again; the
    retry holds it as unconfirmed, Verity's `message.sent` for the same number and text resolves
    it, and the GHL message ends `delivered` with its receipts."""
    world = sync_world
    contact = world.ghl.sim.create_contact(LOCATION, {"phone": PHONE, "firstName": "Ann"}).contact
    _, payload = world.ghl.sim.send_sms_as_user(
        LOCATION, contact["id"], "See you Tuesday at 3!", conversation_provider_id=CONVERSATION_PROVIDER
    )
    ghl_message_id = payload["messageId"]
    hold = AnswerHold(world.verity, "POST", re.escape(SEND_MESSAGE_PATH))
    event_id = await deliver(world.deliver_provider_message(dict(payload)))

    second, made = await interrupt_mid_write(
        world, hold, ending, event_id, start_worker, tmp_path, lambda: verity_sends(world)
    )
    assert await world.verity.sim.drain(STEP_DEADLINE)  # message.sent, message.delivered are in
    # The send, its message.sent and its message.delivered.
    await finish(world, second, expected_events=3, tmp_path=tmp_path)

    sends = verity_sends(world)
    assert [m["messageId"] for m in sends] == [made["messageId"]], f"Verity sent {len(sends)} texts: {sends}"
    [sent] = sends
    assert sent["correlationId"] == ghl_message_id
    # No copy of the send was added to GHL as a text sent outside GHL.
    in_ghl = [m for m in world.ghl.sim.snapshot()["messages"] if m["contactId"] == contact["id"]]
    assert [m["id"] for m in in_ghl] == [ghl_message_id]
    assert in_ghl[0]["status"] == "delivered"
    targets = await assert_every_effect_done(world, {f"verity:send:{ghl_message_id}"})
    assert targets[f"verity:send:{ghl_message_id}"] == sent["messageId"]
    async with world.db.session() as session:
        mappings = list(
            await session.execute(select(MessageMapping.ghl_message_id, MessageMapping.texting_message_id))
        )
    assert [tuple(m) for m in mappings] == [(ghl_message_id, sent["messageId"])]


@pytest.mark.parametrize("ending", ENDINGS)
async def test_ghl_note_interrupted_is_written_once(
    sync_world: SyncWorld, start_worker: StartWorker, ending: str, tmp_path: Path
) -> None:
    """R-CALL-4, R-IDEM-2, R-REL-1, R-Q-6: a call's note made in GHL whose answer was lost to a
    kill or a cancellation at shutdown is found by its `[df:<key>]` marker, never written twice."""
    world = sync_world
    hold = AnswerHold(world.ghl, "POST", r"/contacts/[^/]+/notes")
    event_id = await deliver(world.deliver_aloware("Call Disposed", call_disposed()))

    second, made = await interrupt_mid_write(
        world, hold, ending, event_id, start_worker, tmp_path, lambda: ghl_notes(world)
    )
    await finish(world, second, expected_events=1, tmp_path=tmp_path)

    assert note_markers(world) == [NOTE_KEY]
    targets = await assert_every_effect_done(world, {CONTACT_KEY, NOTE_KEY, CALL_LOG_KEY})
    assert targets[NOTE_KEY] == made["id"]  # the note whose answer was lost is the one kept


@pytest.mark.parametrize("ending", ENDINGS)
async def test_ghl_call_log_interrupted_is_logged_once(
    sync_world: SyncWorld, start_worker: StartWorker, ending: str, tmp_path: Path
) -> None:
    """R-CALL-4, R-IDEM-2, R-REL-1, R-Q-6: a call log entry made in GHL whose answer was lost to a
    kill or a cancellation at shutdown is found by its altId, never logged twice."""
    world = sync_world
    hold = AnswerHold(world.ghl, "POST", r"/conversations/messages/outbound")
    event_id = await deliver(world.deliver_aloware("Call Disposed", call_disposed()))

    second, made = await interrupt_mid_write(
        world, hold, ending, event_id, start_worker, tmp_path, lambda: ghl_messages(world, CALL_ALT_ID)
    )
    await finish(world, second, expected_events=1, tmp_path=tmp_path)

    assert [m["id"] for m in ghl_messages(world, CALL_ALT_ID)] == [made["id"]]
    assert note_markers(world) == [NOTE_KEY]
    targets = await assert_every_effect_done(world, {CONTACT_KEY, NOTE_KEY, CALL_LOG_KEY})
    assert targets[CALL_LOG_KEY] == made["id"]


@pytest.mark.parametrize("ending", ENDINGS)
async def test_ghl_inbound_message_interrupted_is_added_once(
    sync_world: SyncWorld, start_worker: StartWorker, ending: str, tmp_path: Path
) -> None:
    """R-IDEM-2, R-REL-1, R-Q-6 (R-TXT-1): a person's text added to their GHL conversation whose
    answer was lost to a kill or a cancellation at shutdown is found by its altId, never added
    twice."""
    world = sync_world
    hold = AnswerHold(world.ghl, "POST", r"/conversations/messages/inbound")
    event_id = await deliver(world.deliver_texting(inbound_text()))

    second, made = await interrupt_mid_write(
        world, hold, ending, event_id, start_worker, tmp_path, lambda: ghl_messages(world, TEXTING_ID)
    )
    await finish(world, second, expected_events=1, tmp_path=tmp_path)

    assert [m["id"] for m in ghl_messages(world, TEXTING_ID)] == [made["id"]]
    assert len(ghl_contacts(world)) == 1
    keys = {f"ghl:contact:texting:{TEXTING_ID}", f"ghl:message:texting:{TEXTING_ID}"}
    targets = await assert_every_effect_done(world, keys)
    assert targets[f"ghl:message:texting:{TEXTING_ID}"] == made["id"]


@pytest.mark.parametrize("ending", ENDINGS)
@pytest.mark.parametrize("origin", ["aloware-call", "texting"])
async def test_ghl_contact_create_interrupted_makes_one_contact(
    sync_world: SyncWorld, start_worker: StartWorker, origin: str, ending: str, tmp_path: Path
) -> None:
    """R-IDEM-2, R-REL-1, R-Q-6 (R-ID-2): a GHL contact created for an unknown person — a caller
    (R-CALL-1) or a texter (R-TXT-1) — whose answer was lost to a kill or a cancellation at
    shutdown is found by phone, never created twice; the event's later writes go to it."""
    world = sync_world
    hold = AnswerHold(world.ghl, "POST", r"/contacts/upsert")
    if origin == "texting":
        delivery = world.deliver_texting(inbound_text())
        contact_key = f"ghl:contact:texting:{TEXTING_ID}"
        keys = {contact_key, f"ghl:message:texting:{TEXTING_ID}"}
    else:
        delivery = world.deliver_aloware("Call Disposed", call_disposed())
        contact_key = CONTACT_KEY
        keys = {CONTACT_KEY, NOTE_KEY, CALL_LOG_KEY}
    event_id = await deliver(delivery)

    second, made = await interrupt_mid_write(
        world, hold, ending, event_id, start_worker, tmp_path, lambda: ghl_contacts(world)
    )
    await finish(world, second, expected_events=1, tmp_path=tmp_path)

    [contact] = ghl_contacts(world)
    assert contact["id"] == made["id"]
    if origin == "texting":
        assert [m["contactId"] for m in ghl_messages(world, TEXTING_ID)] == [made["id"]]
    else:
        assert note_markers(world) == [NOTE_KEY]
        assert [m["contactId"] for m in ghl_messages(world, CALL_ALT_ID)] == [made["id"]]
    targets = await assert_every_effect_done(world, keys)
    assert targets[contact_key] == made["id"]


@pytest.mark.parametrize("ending", ENDINGS)
async def test_aloware_lead_write_interrupted_makes_one_contact(
    sync_world: SyncWorld, start_worker: StartWorker, ending: str, tmp_path: Path
) -> None:
    """R-IDEM-2, R-REL-1, R-Q-6 (R-C-1): a Lead API write whose answer was lost to a kill or a
    cancellation at shutdown may be repeated — the Lead API is an upsert keyed by phone — and
    leaves one Aloware contact, mapped to the GHL contact."""
    world = sync_world
    hold = AnswerHold(world.aloware, "POST", r"/api/v1/webhook/forms")
    event_id = await deliver(world.deliver_ghl(ghl_contact_created()))

    second, made = await interrupt_mid_write(
        world, hold, ending, event_id, start_worker, tmp_path, lambda: aloware_contacts(world)
    )
    await finish(world, second, expected_events=1, tmp_path=tmp_path)

    [contact] = aloware_contacts(world)
    assert contact["id"] == made["id"]
    assert (contact["first_name"], contact["email"]) == ("Lee", "lee@example.com")
    await assert_every_effect_done(world, set())
    statuses = await event_statuses(world)
    assert statuses == [("ContactCreate", "done", None)]
