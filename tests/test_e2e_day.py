"""The scripted day end to end (df_middleware.demo), on both engines, through `sync_world`.

The day (a lead created in GHL, the same person in the dialer, a call with its recording,
transcript and summary, texts both ways, edits on both sides, an opt-out and back, a lead routed to
one agent's dialer lists then another's, a broadcast's record) is played through the real ingest
(signed), the production handler registry and the real worker, against the three simulators over
HTTP. Each test ends by comparing the world's summary (`snapshot_of_world`: generated ids and
timestamps left out) with `expected_final_state()`, which the fault-free day is proven to reach;
so "changes nothing" and "equals the fault-free run" are both that one equality.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

import df_middleware.sync.broadcasts as broadcasts
from df_middleware.consent.store import ConsentStore, sms_allowed
from df_middleware.db.models import (
    BroadcastWebhookEvent,
    ContactListMembership,
    OptoutEvent,
    SyncEffect,
    SyncLog,
    TextingWebhookEvent,
    WebhookEvent,
)
from df_middleware.demo import (
    BROADCAST_FINAL,
    BROADCAST_ID,
    BROADCAST_PROGRESS,
    LEAD_PHONE,
    RECORDING_URL,
    REFUSED_SMS,
    RESUMED_SMS,
    RILEY_PHONE,
    SAM_PHONE,
    SAM_START_ID,
    SAM_STOP_ID,
    SUMMARY,
    TRANSCRIPT,
    DaySimulators,
    Delivered,
    Process,
    Step,
    WorldSnapshot,
    expected_final_state,
    run_day,
    seed_agents,
    snapshot_of_simulators,
)
from df_middleware.queue.operations import bulk_replay
from df_middleware.sync.agent_field import AgentField
from df_middleware.sync.list_registry import CallListRegistryStore
from df_middleware.sync.registry import DOMAIN_MODULES
from tests.sync_world import CONVERSATION_PROVIDER, LOCATION, SyncWorld

EVENT_MODELS = (WebhookEvent, TextingWebhookEvent, BroadcastWebhookEvent)
#: Events the day stores: its 21 webhooks and Verity's 4 receipts (two agent texts sent).
DAY_EVENTS = 25


def sims_of(world: SyncWorld) -> DaySimulators:
    return DaySimulators(
        ghl=world.ghl.sim,
        aloware=world.aloware.sim,
        verity=world.verity.sim,
        location_id=LOCATION,
        conversation_provider_id=CONVERSATION_PROVIDER,
    )


async def unsettled(world: SyncWorld) -> int:
    """Events not finished yet (pending, possibly not due, or processing)."""
    total = 0
    async with world.db.session() as session:
        for model in EVENT_MODELS:
            total += int(
                await session.scalar(
                    select(func.count()).select_from(model).where(model.status.in_(("pending", "processing")))
                )
                or 0
            )
    return total


def settler(world: SyncWorld, *, patience_seconds: float = 120.0) -> Process:
    """A `process` for `run_day`: run the worker until no event is left unfinished, waiting for
    retries that are not due yet, and for Verity's receipts to land."""

    async def settle() -> int:
        processed = 0
        deadline = asyncio.get_running_loop().time() + patience_seconds
        while True:
            assert await world.verity.sim.drain(), "Verity receipts still being delivered"
            done = await world.process(rounds=50)
            processed += done
            if done == 0 and await unsettled(world) == 0 and world.verity.sim.receipts_pending == 0:
                return processed
            assert asyncio.get_running_loop().time() < deadline, "the queue did not settle"
            if done == 0:
                await asyncio.sleep(0.02)

    return settle


async def play_day(world: SyncWorld, deliverer: Any = None) -> list[Delivered]:
    return await run_day(deliverer or world, settler(world), sims_of(world))


def snapshot(world: SyncWorld) -> WorldSnapshot:
    return snapshot_of_simulators(sims_of(world))


async def statuses(world: SyncWorld) -> dict[str, int]:
    counts: dict[str, int] = {}
    async with world.db.session() as session:
        for model in EVENT_MODELS:
            for status, count in await session.execute(
                select(model.status, func.count()).group_by(model.status)
            ):
                counts[status] = counts.get(status, 0) + int(count)
    return counts


async def sync_errors(world: SyncWorld) -> list[str]:
    async with world.db.session() as session:
        rows = await session.scalars(select(SyncLog).where(SyncLog.status == "error"))
        return [f"{r.direction} {r.entity_type} {r.message}: {r.error_message}" for r in rows]


async def assert_clean_end(world: SyncWorld) -> None:
    """Every event `done`, no sync_log error row."""
    counts = await statuses(world)
    assert set(counts) == {"done"}, counts
    assert await sync_errors(world) == []


@pytest.fixture
async def world(sync_world: SyncWorld) -> SyncWorld:
    """The world as `df-middleware demo` sets it up: the production registry (every DOMAIN_MODULES
    handler, as `serve` runs it), the day's agents in the directory, ALOWARE_CREATE_LISTS on."""
    assert "df_middleware.sync.calls" in DOMAIN_MODULES
    assert "df_middleware.sync.broadcasts" in DOMAIN_MODULES
    CallListRegistryStore.forget()  # a new Aloware: nothing known of another test's lists
    AgentField.forget()
    sync_world.settings = sync_world.settings.model_copy(update={"aloware_create_lists": True})
    report = await seed_agents(sims_of(sync_world), sync_world.db, sync_world.connectors)
    assert (report.created, report.unavailable, report.unmatched) == (["ALICE", "BOB"], {}, [])
    assert len(report.ids_filled) == 4  # each agent's GHL and Aloware user id, by email (R-AG-5)
    return sync_world


# --- the fault-free day ------------------------------------------------------------------------------


async def test_the_day_ends_with_the_expected_state_in_every_simulator(world: SyncWorld) -> None:
    """R-RUN-5 (the demo's day), R-C-1, R-C-2, R-CALL-1, R-CALL-2, R-CALL-4, R-TXT-1, R-TXT-3,
    R-TXT-5, R-AG-3, R-BC-2: one GHL contact with its tags, one note per call event, the call log,
    both inbound texts and the agent's SMS delivered; one Aloware contact with the mapped fields;
    one Verity send; the agents' lists and the broadcast's record as expected; every event done
    and no sync_log error."""
    delivered = await play_day(world)

    assert [d.channel for d in delivered] == [
        "ghl",
        "aloware",
        "texting",
        "aloware",
        "aloware",
        "aloware",
        "aloware",
        "provider",
        "texting",
        "texting",  # Sam: "See you this weekend!"
        "texting",  # Sam: STOP
        "provider",  # Chris texts Sam: refused
        "texting",  # Sam: START
        "provider",  # Chris texts Sam again: sent
        "ghl",
        "aloware",
        "ghl",  # Riley created, assigned to Alice
        "ghl",  # Riley reassigned to Bob
        "ghl",  # Riley tagged hot
        "broadcast",  # analytics_updated
        "broadcast",  # broadcast_completed
    ]
    assert snapshot(world) == expected_final_state()
    await assert_clean_end(world)

    ghl = world.ghl.sim.snapshot()
    [contact] = [c for c in ghl["contacts"] if not c["deleted"] and c["phone"] == LEAD_PHONE]
    bodies = "\n".join(n["body"] for n in contact["notes"])
    for expected in (RECORDING_URL, TRANSCRIPT, SUMMARY, "Agent: Chris Agent", "Disposition: Interested"):
        assert expected in bodies
    [sms] = [
        m
        for m in ghl["messages"]
        if m["type"] == "SMS" and m["direction"] == "outbound" and m["contactId"] == contact["id"]
    ]
    assert sms["statusHistory"] == ["pending", "delivered"]  # GHL has no `sent` (R-TXT-5)
    [send] = [m for m in world.verity.sim.sent_messages if m["to"] == LEAD_PHONE]
    assert send["correlationId"] == sms["id"]
    assert send["receipts"] == ["message.sent", "message.delivered"]
    assert world.aloware.sim.contact_by_phone(LEAD_PHONE)["first_name"] == "Dani"
    # The Verity receipts came in through the real texting endpoint and were processed.
    async with world.db.session() as session:
        receipts = list(await session.scalars(select(TextingWebhookEvent.event_type)))
    assert sorted(receipts) == ["message.delivered"] * 2 + ["message.received"] * 5 + ["message.sent"] * 2


def lists_of(world: SyncWorld) -> dict[str, tuple[str, ...]]:
    """Aloware's lists now: name → members' phones."""
    return {found.name: found.members for found in snapshot(world).aloware_lists}


def broadcast_records(world: SyncWorld) -> list[dict[str, Any]]:
    return [dict(record.properties) for record in snapshot(world).ghl_records]


async def test_the_day_s_agents_lists_and_broadcast(world: SyncWorld) -> None:
    """R-AG-1, R-AG-2, R-AG-3, R-AG-5, R-BC-1, R-BC-2, R-BC-3 on the demo's day, step by step:
    Riley, created in GHL owned by Alice's GHL user (its id filled in the directory by email), is
    on DF_ALICE_NEW_LEADS (created in Aloware for it); reassigned to Bob, on DF_BOB_NEW_LEADS only;
    tagged hot, on DF_BOB_HOT too. Dana, who has no owner, is on the default agent's list. The
    broadcast's progress creates one GHL record, its completion updates that record to the final
    numbers, every rate in [0, 1]."""
    after: dict[str, tuple[dict[str, tuple[str, ...]], list[dict[str, Any]]]] = {}

    def remember(step: Step, _: list[Delivered]) -> None:
        after[step.label] = (lists_of(world), broadcast_records(world))

    await run_day(world, settler(world), sims_of(world), on_step=remember)

    steps = list(after.values())
    created, reassigned, tagged, progress, completed = steps[-5:]
    assert created[0] == {
        "DF_UNASSIGNED_NEW_LEADS": (LEAD_PHONE,),
        "DF_ALICE_NEW_LEADS": (RILEY_PHONE,),
    }
    assert reassigned[0] == {
        "DF_UNASSIGNED_NEW_LEADS": (LEAD_PHONE,),
        "DF_ALICE_NEW_LEADS": (),
        "DF_BOB_NEW_LEADS": (RILEY_PHONE,),
    }
    assert tagged[0] == {
        "DF_UNASSIGNED_NEW_LEADS": (LEAD_PHONE,),
        "DF_ALICE_NEW_LEADS": (),
        "DF_BOB_NEW_LEADS": (RILEY_PHONE,),
        "DF_BOB_HOT": (RILEY_PHONE,),
    }
    assert tagged[1] == []  # no record before the broadcast's first event
    [first] = progress[1]
    assert (first["broadcast_id"], first["sent"], first["delivered"]) == (
        BROADCAST_ID,
        BROADCAST_PROGRESS["sent"],
        BROADCAST_PROGRESS["delivered"],
    )
    [final] = completed[1]
    assert (final["sent"], final["delivered"], final["responses"]) == (
        BROADCAST_FINAL["sent"],
        BROADCAST_FINAL["delivered"],
        BROADCAST_FINAL["responses"],
    )
    rates = {name: value for name, value in final.items() if name.endswith("_rate")}
    assert len(rates) == 5
    assert all(0.0 <= value <= 1.0 for value in rates.values()), rates
    # One record, created once (search then POST) and updated once (PUT): never a second record.
    calls = [(r.method, r.path.rsplit("/", 1)[-1]) for r in world.ghl.requests(prefix="/objects/")]
    assert [method for method, _ in calls] == ["POST", "POST", "PUT"]
    assert calls[0][1] == "search"

    async with world.db.session() as session:
        memberships = sorted(
            (m.agent_key, m.list_key, m.status) for m in await session.scalars(select(ContactListMembership))
        )
    assert memberships == [
        ("BOB", "HOT", "member"),
        ("BOB", "NEW_LEADS", "member"),
        ("UNASSIGNED", "NEW_LEADS", "member"),
    ]
    assert snapshot(world) == expected_final_state()
    await assert_clean_end(world)


async def test_the_day_s_consent_story(world: SyncWorld) -> None:
    """R-OPT-1, R-OPT-2, R-OPT-3, R-OPT-4, R-OPT-5 on the demo's day: "See you this weekend!" is no
    opt-out; Sam's STOP is one texting decision with its message id, GHL's SMS DND went active; the
    agent's text meanwhile was refused before any request to Verity (GHL message failed with the
    spec's error body, a sync_log row saying why); START lifted it (one more decision, DND
    inactive) and the next text went out. Dana, who never said a keyword, has no decision."""
    await play_day(world)

    async with world.db.session() as session:
        history = [
            (r.phone_number, r.channel, r.status, r.source, r.keyword, r.message_id)
            for r in await session.scalars(select(OptoutEvent).order_by(OptoutEvent.event_at))
        ]
        refusals = list(
            await session.scalars(
                select(SyncLog.message).where(SyncLog.message.like("not sent: recipient opted out%"))
            )
        )
    assert history == [
        (SAM_PHONE, "sms", "opted_out", "texting", "STOP", SAM_STOP_ID),
        (SAM_PHONE, "sms", "opted_in", "texting", "START", SAM_START_ID),
    ]
    assert await sms_allowed(world.db, SAM_PHONE)
    assert await ConsentStore(world.db).state("sms", LEAD_PHONE) is None
    assert len(refusals) == 1

    ghl = world.ghl.sim.snapshot()
    [sam] = [c for c in ghl["contacts"] if c["phone"] == SAM_PHONE]
    [refused] = [m for m in ghl["messages"] if m["body"] == REFUSED_SMS]
    assert refused["status"] == "failed"
    assert refused["error"] == {
        "code": "opted_out",
        "type": "saas",
        "message": "Recipient has opted out of SMS",
    }
    dnd_writes = [
        body["dndSettings"]["SMS"]["status"]
        for body in (r.json() for r in world.ghl.requests("PUT", f"/contacts/{sam['id']}"))
        if body and "dndSettings" in body
    ]
    assert dnd_writes == ["active", "inactive"]
    assert [m["body"] for m in world.verity.sim.sent_messages if m["to"] == SAM_PHONE] == [RESUMED_SMS]
    await assert_clean_end(world)


# --- R-IDEM-1 ------------------------------------------------------------------------------------------


class ReplayingSettler:
    """A `process` for `run_day` that, once the queue has settled, replays every event received
    since its previous call (back to pending, attempts reset, as `events replay` does) and
    settles again: each event of the day is processed twice, in order."""

    def __init__(self, world: SyncWorld) -> None:
        self.world = world
        self.settle = settler(world)
        self.since = datetime.now(UTC)
        self.replayed = 0

    async def __call__(self) -> int:
        processed = await self.settle()
        mark = datetime.now(UTC)
        self.replayed += await bulk_replay(self.world.db, status="done", since=self.since, actor="e2e-test")
        self.since = mark
        return processed + await self.settle()


async def test_processing_every_event_twice_changes_nothing(
    world: SyncWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """R-IDEM-1, R-IDEM-2, R-CALL-4, R-C-3: each event of the day replayed right after it was
    processed (so every handler runs twice on every event, in order) leaves every simulator as
    the day processed once, with no second remote effect.

    The broadcast throttle (one `analytics_updated` write per broadcast per 60 s, R-BC-3) would
    defer the replayed progress event by a minute before it finds the record unchanged; the
    interval is zero here so the replay runs at once (the outcome is the same, only sooner)."""
    monkeypatch.setattr(broadcasts, "MIN_WRITE_INTERVAL", timedelta(0))
    replaying = ReplayingSettler(world)
    await run_day(world, replaying, sims_of(world))

    assert replaying.replayed == DAY_EVENTS  # every webhook of the day and Verity's receipts, once each
    assert snapshot(world) == expected_final_state()
    await assert_clean_end(world)
    assert len(world.verity.sim.sent_messages) == 2  # the agents' SMS were not sent again


async def test_replaying_every_event_of_the_day_afterwards_changes_nothing(world: SyncWorld) -> None:
    """R-IDEM-1, R-IDEM-2: replaying the whole day after it ended (every `done` event back to
    pending, as `events replay --status done` does) leaves every simulator exactly as it was."""
    await play_day(world)
    before = snapshot(world)
    assert before == expected_final_state()
    async with world.db.session() as session:
        effects_before = int(await session.scalar(select(func.count()).select_from(SyncEffect)) or 0)

    replayed = await bulk_replay(world.db, status="done", actor="e2e-test")
    assert replayed == DAY_EVENTS
    await settler(world)()

    # The agents' SMS are not sent again, and the text refused while Sam was opted out is not sent
    # now that they opted back in: a refusal is final (R-OPT-4).
    assert len(world.verity.sim.sent_messages) == 2
    async with world.db.session() as session:
        effects_after = int(await session.scalar(select(func.count()).select_from(SyncEffect)) or 0)
    assert effects_after == effects_before
    await assert_clean_end(world)
    assert snapshot(world) == before


class TwiceDeliverer:
    """Delivers every webhook of the day twice as it happens: the identical request again (a
    redelivery ingest must recognise) and, for GHL contact webhooks, once more with a fresh
    `webhookId` and `timestamp` (GHL's own retry of a delivery it thinks failed)."""

    def __init__(self, world: SyncWorld) -> None:
        self.world = world
        self.duplicates = 0
        self.fresh = 0

    def _duplicate(self, first: Any, second: Any) -> None:
        assert second.json() == {"status": "duplicate", "id": first.json()["id"]}
        self.duplicates += 1

    async def deliver_ghl(self, payload: dict[str, Any]) -> Any:
        first = await self.world.deliver_ghl(payload)
        self._duplicate(first, await self.world.deliver_ghl(payload))
        again = {
            **payload,
            "webhookId": uuid.uuid4().hex,
            "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        }
        fresh = await self.world.deliver_ghl(again)
        assert fresh.json()["status"] == "accepted"
        self.fresh += 1
        return first

    async def deliver_provider_message(self, payload: dict[str, Any]) -> Any:
        first = await self.world.deliver_provider_message(payload)
        self._duplicate(first, await self.world.deliver_provider_message(payload))
        return first

    async def deliver_aloware(self, event: str, body: dict[str, Any]) -> Any:
        first = await self.world.deliver_aloware(event, body)
        self._duplicate(first, await self.world.deliver_aloware(event, body))
        return first

    async def deliver_texting(self, payload: dict[str, Any]) -> Any:
        first = await self.world.deliver_texting(payload)
        self._duplicate(first, await self.world.deliver_texting(payload))
        return first

    async def deliver_broadcast(self, payload: dict[str, Any]) -> Any:
        first = await self.world.deliver_broadcast(payload)
        self._duplicate(first, await self.world.deliver_broadcast(payload))
        return first


async def test_delivering_every_webhook_twice_changes_nothing(world: SyncWorld) -> None:
    """R-IDEM-1, R-IN-4, R-C-3, R-CALL-4: every webhook of the day delivered twice (identical:
    stored once; GHL's with a fresh webhookId: stored and processed again), and Verity's receipts
    redelivered after the day, leave the same world as the day delivered once."""
    twice = TwiceDeliverer(world)
    delivered = await play_day(world, twice)
    assert twice.duplicates == len(delivered)
    assert twice.fresh == sum(1 for d in delivered if d.channel == "ghl")

    receipts = [d for d in world.verity.sim.deliveries if d["event"].startswith("message.")]
    assert [r["event"] for r in receipts] == ["message.sent", "message.delivered"] * 2
    for receipt in receipts:
        again = await world.deliver_texting(receipt["payload"])
        assert again.json()["status"] == "duplicate"
    await settler(world)()

    assert snapshot(world) == expected_final_state()
    await assert_clean_end(world)


# --- R-REL-3 -------------------------------------------------------------------------------------------

#: ~10 % injected failures per simulator (5xx, 429, gateway timeouts), plus a few answers lost
#: after the simulator did the work. Retry-After 0 and short hangs keep the day fast.
FAULTS: dict[str, Any] = {
    "error_rate": 0.04,
    "error_status": 503,
    "rate_limit_rate": 0.03,
    "retry_after_seconds": 0,
    "timeout_rate": 0.03,
    "timeout_seconds": 0.05,
    "lost_response_rate": 0.03,
}


#: Fault seeds, one per simulator and run: each schedules different requests to fail. These three
#: between them hit GHL's message, conversation, note and tag POSTs, its contact reads and PUT,
#: the Lead API and its look-ups, and the Verity send (see `LOST_ANSWERS` for the writes whose
#: answer is lost, which a random schedule of a 30-request day rarely reaches).
FAULT_SEEDS = (9, 30, 42)


@pytest.mark.parametrize("seed", FAULT_SEEDS)
async def test_remote_faults_during_the_day_end_in_the_fault_free_state(world: SyncWorld, seed: int) -> None:
    """R-REL-3, R-IDEM-2, R-Q-3: with ~10 % 5xx / 429 / timeouts (and some lost answers) on GHL,
    Aloware and Verity all day, then faults cleared and the queue drained, every simulator ends
    exactly as in the fault-free day."""
    world.settings = world.settings.model_copy(update={"retry_base_seconds": 0.01, "retry_max_seconds": 0.05})
    for offset, served in enumerate((world.ghl, world.aloware, world.verity)):
        served.faults(seed=seed + offset, **FAULTS)

    await play_day(world)
    for served in (world.ghl, world.aloware, world.verity):
        served.faults()
    await settler(world)()

    injected = [r.fault for s in (world.ghl, world.aloware, world.verity) for r in s.requests() if r.fault]
    assert len(injected) >= 2, "too few faults injected: the test would prove little"
    assert snapshot(world) == expected_final_state()
    await assert_clean_end(world)


def lose_first_answer(served: Any, operation: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make the simulator do `operation` the first time it is asked, then answer 504 (a gateway
    timeout after the work was done). Returns a list that records the loss when it happened."""
    sim, injector = served.sim, served.app.state.faults
    original = getattr(sim, operation)
    lost: list[str] = []
    armed: list[bool] = []

    def operation_then_lose_answer(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        if not lost and not armed:
            armed.append(True)
        return result

    def lose_this_response() -> bool:
        if armed and not lost:
            lost.append(operation)
            return True
        return False

    monkeypatch.setattr(sim, operation, operation_then_lose_answer)
    monkeypatch.setattr(injector, "lose_this_response", lose_this_response)
    return lost


LOST_ANSWERS = [
    pytest.param("ghl", "add_note", id="ghl-note"),
    pytest.param("ghl", "create_conversation", id="ghl-conversation"),
    pytest.param("aloware", "submit_lead", id="aloware-lead-api"),
    pytest.param(
        "ghl",
        "add_inbound_message",
        id="ghl-inbound-message",
    ),
    pytest.param(
        "ghl",
        "add_outbound_call",
        id="ghl-call-log",
    ),
    pytest.param("verity", "accept_message", id="verity-send"),
    pytest.param("aloware", "create_list", id="aloware-create-list"),
    pytest.param("aloware", "add_to_list", id="aloware-add-to-list"),
    pytest.param("aloware", "remove_from_all_lists", id="aloware-remove-from-lists"),
    pytest.param("ghl", "create_record", id="ghl-broadcast-record"),
    pytest.param("ghl", "update_record", id="ghl-broadcast-record-update"),
]


@pytest.mark.parametrize(("system", "operation"), LOST_ANSWERS)
async def test_a_lost_answer_during_the_day_ends_in_the_fault_free_state(
    world: SyncWorld, system: str, operation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """R-REL-3, R-IDEM-2, R-CALL-4, R-AG-3, R-BC-2: a remote write whose answer is lost (the
    system did the work, we saw a 504) is retried, found, and not made twice — notes, calls,
    messages, leads, sends, list moves, broadcast records; the day ends as without the fault."""
    world.settings = world.settings.model_copy(update={"retry_base_seconds": 0.01, "retry_max_seconds": 0.05})
    served = {"ghl": world.ghl, "aloware": world.aloware, "verity": world.verity}[system]
    lost = lose_first_answer(served, operation, monkeypatch)

    await play_day(world)
    await settler(world)()

    assert lost == [operation]
    assert snapshot(world) == expected_final_state()
    if system != "verity":
        await assert_clean_end(world)
        return
    # R-TXT-5: a send with no answer is never repeated (it may have gone out): the agent's event is
    # dead-lettered with one error row, then Verity's message.sent for the same number and text
    # shows it did go out, and resolves the dead letter; the day still ends as without the fault.
    assert set(await statuses(world)) == {"done"}
    [error] = await sync_errors(world)
    assert "Verity send not confirmed" in error
    async with world.db.session() as session:
        resolved = await session.scalar(
            select(SyncLog.message).where(SyncLog.message.like("marked done by df-middleware: Verity%"))
        )
    assert resolved is not None
