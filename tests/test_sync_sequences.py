"""Aloware sequences by list status (R-AG-6): the pure decision, then flows through the real world
(signed Aloware and texting webhooks, real ingest and worker, Aloware/GHL/Verity simulators over
HTTP, both databases), asserting on the simulator's enrolments and `sequence_log`, its request log,
`contact_agent_state` and sync_log.

The flows run the production registry: `sync/contacts.handle_aloware_contact` calls
`apply_sequence` after the contact sync.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select

from df_middleware.consent.decisions import OPTED_IN, ConsentChange
from df_middleware.consent.store import ConsentStore
from df_middleware.db.models import ContactAgentState, SyncLog, WebhookEvent
from df_middleware.sync.identity import ContactMappings
from df_middleware.sync.registry import (
    ClaimedEvent,
    HandlerContext,
    default_registry,
)
from df_middleware.sync.sequences import (
    SequenceDecision,
    decide_sequence,
    disenroll_for_consent,
    status_of,
)
from tests.event_factory import wait_until
from tests.sync_world import SyncWorld

PHONE = "+19195550188"
EMAIL = "dana.reyes@example.com"
T0 = datetime(2026, 11, 24, 16, 0, tzinfo=UTC)
MAPPING = {"hot": "9001", "warm": "9002"}


# --- the decision (no I/O) -------------------------------------------------------------------------


def _decide(
    status: str | None,
    last: str | None = None,
    current: str | None = None,
    *,
    blocked: bool = False,
    enabled: bool = True,
) -> SequenceDecision:
    return decide_sequence(status, last, current, MAPPING, blocked, enabled)


def test_a_new_mapped_status_disenrolls_then_enrolls() -> None:
    """R-AG-6: a status change to a mapped status → disenroll, then enroll in its sequence (compared
    stripped and case-insensitively); recorded as given, stripped."""
    first = _decide("  HOT ")
    assert (first.kind, first.enroll, first.status, first.sequence) == (
        "disenroll+enroll",
        "9001",
        "HOT",
        "9001",
    )
    moved = _decide("Warm", last="Hot", current="9001")
    assert (moved.kind, moved.enroll, moved.sequence) == ("disenroll+enroll", "9002", "9002")


@pytest.mark.parametrize("again", ["Hot", "hot", " HOT\t"])
def test_the_same_status_again_does_nothing(again: str) -> None:
    """R-AG-6: an unchanged status (whatever its case or spaces) → no call, nothing written."""
    decision = _decide(again, last="Hot", current="9001")
    assert (decision.kind, decision.record, decision.calls_aloware) == ("nothing", False, False)


def test_an_unmapped_status_leaves_only_our_sequence() -> None:
    """R-AG-6: a status that maps to nothing (or null) → disenrolled when we had enrolled the
    contact; when we had not, nothing is called (a sequence someone started in Aloware stays)."""
    left = _decide("Cold", last="Hot", current="9001")
    assert (left.kind, left.status, left.sequence) == ("disenroll", "Cold", None)
    cleared = _decide(None, last="Hot", current="9001")
    assert (cleared.kind, cleared.status, cleared.sequence) == ("disenroll", None, None)
    never = _decide("Cold", last="Hot", current=None)
    assert (never.kind, never.record, never.status) == ("nothing", True, "Cold")


def test_a_status_whose_sequence_we_already_run_is_recorded_without_a_call() -> None:
    """R-AG-6: another status mapping to the sequence the contact is in → no restart."""
    decision = decide_sequence("Hotter", "Hot", "9001", {"hot": "9001", "hotter": "9001"}, False, True)
    assert (decision.kind, decision.record, decision.status, decision.sequence) == (
        "nothing",
        True,
        "Hotter",
        "9001",
    )


def test_an_opted_out_or_dnc_contact_is_never_enrolled_and_leaves_ours() -> None:
    """R-AG-6, R-OPT-4, R-OPT-6: consent blocked → never enrolled; disenrolled when we had enrolled
    it, even with the status unchanged; the status is still recorded."""
    fresh = _decide("Hot", blocked=True)
    assert (fresh.kind, fresh.record, fresh.status, fresh.sequence) == ("nothing", True, "Hot", None)
    enrolled = _decide("Hot", last="Hot", current="9001", blocked=True)
    assert (enrolled.kind, enrolled.sequence) == ("disenroll", None)


def test_sequences_off_decide_nothing() -> None:
    """R-AG-6: without ENABLE_ALOWARE_SEQUENCES nothing is called or written."""
    decision = _decide("Hot", last="Warm", current="9002", enabled=False)
    assert (decision.kind, decision.record) == ("nothing", False)


statuses = st.one_of(st.none(), st.sampled_from(["Hot", "hot ", "Warm", "Cold", "", "  "]))


@given(statuses, statuses, st.sampled_from([None, "9001", "9002"]), st.booleans())
def test_decision_invariants(
    status: str | None, last: str | None, current: str | None, blocked: bool
) -> None:
    """R-AG-6: a blocked contact is never enrolled and never recorded in a sequence; an enrolment
    always follows a disenroll; an unchanged status calls Aloware only to take a blocked contact
    out of our sequence; what is recorded is the sequence the contact is in after the calls."""
    decision = _decide(status, last, current, blocked=blocked)
    if blocked:
        assert decision.enroll is None
        assert decision.sequence is None or not decision.record
    if decision.enroll is not None:
        assert decision.disenroll
    same = (status or "").strip().lower() == (last or "").strip().lower()
    if same and decision.calls_aloware:
        assert blocked
        assert current is not None
        assert decision.kind == "disenroll"
    if decision.record and not decision.calls_aloware:
        assert decision.sequence in (current, None)
        assert decision.sequence is None or decision.sequence == current


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"aloware_list_status": " Hot "}, "Hot"),
        ({"aloware_list_status": None}, None),
        ({"aloware_list_status": 7}, "7"),
    ],
)
def test_status_of_reads_the_body(body: dict[str, Any], expected: str | None) -> None:
    assert status_of(body) == expected


@pytest.mark.parametrize("value", [{"a": 1}, ["Hot"], True, "x" * 257])
def test_status_of_refuses_what_is_not_a_short_text(value: object) -> None:
    with pytest.raises(ValueError, match="aloware_list_status"):
        status_of({"aloware_list_status": value})


# --- flows through the world ------------------------------------------------------------------------


@pytest.fixture
def world(sync_world: SyncWorld) -> SyncWorld:
    sync_world.registry = default_registry()
    sim = sync_world.aloware.sim
    hot, warm = sim.add_sequence("Hot leads")["id"], sim.add_sequence("Warm leads")["id"]
    sync_world.settings = sync_world.settings.model_copy(
        update={"enable_aloware_sequences": True, "aloware_status_to_sequence": f"Hot={hot}, Warm = {warm}"}
    )
    return sync_world


class Person:
    """One person in Aloware whose changes we deliver as Aloware's contact webhooks."""

    def __init__(self, world: SyncWorld) -> None:
        self.world = world
        self.id = int(
            world.aloware.sim.add_contact(PHONE, first_name="Dana", last_name="Reyes", email=EMAIL)["id"]
        )
        self.changes = 0

    async def sends(self, event: str = "Contact Updated", **fields: Any) -> None:
        """Aloware changes the contact (e.g. `aloware_list_status`) and sends its webhook, with an
        `updated_at` later than the one before."""
        sim = self.world.aloware.sim
        sim.update_contact(self.id, **fields)
        self.changes += 1
        body = sim.webhook_contact(self.id)
        body["updated_at"] = (T0 + timedelta(minutes=self.changes)).strftime("%Y-%m-%dT%H:%M:%SZ")
        response = await self.world.deliver_aloware(event, body)
        assert response.status_code < 300, response.text

    async def changes_to(self, event: str = "Contact Updated", **fields: Any) -> None:
        """`sends`, then the worker processes it."""
        await self.sends(event, **fields)
        assert await self.world.process() >= 1

    @property
    def sequence(self) -> int | None:
        enrolled: dict[int, int] = self.world.aloware.sim.enrollments
        return enrolled.get(self.id)

    @property
    def log(self) -> list[tuple[str, int | None]]:
        return [
            (e["action"], e["sequence_id"])
            for e in self.world.aloware.sim.sequence_log
            if e["contact_id"] == self.id
        ]


def sequence_calls(world: SyncWorld) -> list[str]:
    return [
        r.path.rsplit("/", 1)[-1] for r in world.aloware.requests("POST") if "/webhook/sequence-" in r.path
    ]


async def agent_state(world: SyncWorld) -> ContactAgentState | None:
    async with world.db.session() as session:
        rows = list(await session.scalars(select(ContactAgentState)))
    assert len(rows) <= 1
    return rows[0] if rows else None


async def sequence_rows(world: SyncWorld) -> list[tuple[str, str]]:
    """The sequence step's sync_log rows (status, message), oldest first."""
    async with world.db.session() as session:
        rows = await session.scalars(select(SyncLog).order_by(SyncLog.started_at))
        return [
            (r.status, r.message or "")
            for r in rows
            if r.direction == "internal"
            and (r.message or "").lower().startswith(("sequences", "aloware contact"))
        ]


async def all_done(world: SyncWorld) -> bool:
    async with world.db.session() as session:
        return set(await session.scalars(select(WebhookEvent.status))) == {"done"}


async def test_status_change_disenrolls_and_enrolls_and_the_same_status_calls_nothing(
    world: SyncWorld,
) -> None:
    """R-AG-6: `Contact Created` with status Hot → disenroll, enroll in Hot's sequence; a change to
    Warm → disenrolled from Hot, enrolled in Warm; the same status again (other case and spaces,
    another field changed) → zero sequence calls. `contact_agent_state` (keyed by the GHL contact,
    default agent) records the status and the sequence."""
    person = Person(world)
    hot, warm = 9001, 9002

    await person.changes_to("Contact Created", aloware_list_status="Hot")
    assert person.sequence == hot
    assert person.log == [("not_enrolled", None), ("enrolled", hot)]
    state = await agent_state(world)
    mapping = await ContactMappings(world.db).by_aloware_id(str(person.id))
    assert state is not None
    assert mapping is not None
    assert (state.contact_id, state.agent_key) == (mapping.ghl_contact_id, "UNASSIGNED")
    assert (state.last_aloware_list_status, state.aloware_sequence_id) == ("Hot", str(hot))

    await person.changes_to(aloware_list_status="Warm")
    assert person.sequence == warm
    assert person.log[2:] == [("disenrolled", hot), ("enrolled", warm)]
    state = await agent_state(world)
    assert state is not None
    assert (state.last_aloware_list_status, state.aloware_sequence_id) == ("Warm", str(warm))

    calls = len(sequence_calls(world))
    await person.changes_to(aloware_list_status=" WARM ", city="Durham")
    assert len(sequence_calls(world)) == calls == 4
    assert person.sequence == warm
    rows = await sequence_rows(world)
    assert [s for s, _ in rows] == ["success", "success", "skipped"]
    assert rows[-1][1] == "sequences: list status unchanged"
    assert await all_done(world)


async def test_a_status_that_maps_to_no_sequence_disenrolls(world: SyncWorld) -> None:
    """R-AG-6: Hot → enrolled; Cold (not in ALOWARE_STATUS_TO_SEQUENCE) → disenrolled, state says no
    sequence; then no status at all (null) → nothing to call, since we enrolled it in nothing."""
    person = Person(world)
    await person.changes_to("Contact Created", aloware_list_status="Hot")
    assert person.sequence == 9001

    await person.changes_to(aloware_list_status="Cold")
    assert person.sequence is None
    assert person.log[-1] == ("disenrolled", 9001)
    state = await agent_state(world)
    assert state is not None
    assert (state.last_aloware_list_status, state.aloware_sequence_id) == ("Cold", None)

    calls = len(sequence_calls(world))
    await person.changes_to(aloware_list_status=None)
    assert len(sequence_calls(world)) == calls
    state = await agent_state(world)
    assert state is not None
    assert (state.last_aloware_list_status, state.aloware_sequence_id) == (None, None)
    assert await all_done(world)


def _stop(message_id: str, words: str, at: str) -> dict[str, Any]:
    """`contracts/verity/webhooks/texting.message.received.json`, from the person."""
    return {
        "eventType": "message.received",
        "messageId": message_id,
        "conversationId": "chat_seq",
        "direction": "inbound",
        "from": PHONE,
        "to": "+19195550000",
        "body": words,
        "timestamp": at,
        "status": "received",
    }


async def test_an_opted_out_person_is_never_enrolled_and_leaves_our_sequence(world: SyncWorld) -> None:
    """R-AG-6, R-OPT-1, R-OPT-4: a person texts STOP (real texting flow); their `Contact Created`
    with a mapped status enrols them nowhere (zero sequence calls). After START, a status change
    enrols them; a second STOP takes them out of our sequence at once, and an unchanged status
    does not put them back."""
    await world.deliver_texting(_stop("tlx_seq_stop", "STOP", "2026-11-24T15:00:00Z"))
    assert await world.process() == 1
    person = Person(world)

    await person.changes_to("Contact Created", aloware_list_status="Hot")
    assert sequence_calls(world) == []
    assert person.sequence is None
    state = await agent_state(world)
    assert state is not None
    assert (state.last_aloware_list_status, state.aloware_sequence_id) == ("Hot", None)
    assert (await sequence_rows(world))[-1] == (
        "skipped",
        "sequences: opted out of SMS: never enrolled in a sequence",
    )

    await world.deliver_texting(_stop("tlx_seq_start", "START", "2026-11-24T15:30:00Z"))
    await world.process()
    await person.changes_to(aloware_list_status="Hot", city="Cary")  # unchanged: not enrolled by itself
    assert sequence_calls(world) == []
    await person.changes_to(aloware_list_status="Warm")
    assert person.sequence == 9002

    await world.deliver_texting(_stop("tlx_seq_stop_2", "Stop", "2026-11-24T17:00:00Z"))
    await world.process()
    assert person.sequence is None, "the STOP itself ends the sequence we enrolled them in"
    await person.changes_to(aloware_list_status="Warm", city="Apex")
    assert person.sequence is None
    assert person.log[-1] == ("disenrolled", 9002)
    assert [a for a, _ in person.log].count("enrolled") == 1
    state = await agent_state(world)
    assert state is not None
    assert state.aloware_sequence_id is None
    assert await all_done(world)


async def test_a_dnc_person_is_never_enrolled(world: SyncWorld) -> None:
    """R-AG-6, R-OPT-6: Aloware's `Contact DNC Updated` puts the number on voice DNC (real DNC
    flow); then a mapped status enrols nobody and calls no sequence endpoint."""
    person = Person(world)
    await person.changes_to("Contact DNC Updated", is_dnc=True)
    voice = await ConsentStore(world.db).state("voice", PHONE)
    assert voice is not None
    assert voice.status == "opted_out"

    await person.changes_to(aloware_list_status="Hot")
    assert sequence_calls(world) == []
    assert person.sequence is None
    assert (await sequence_rows(world))[-1] == (
        "skipped",
        "sequences: on the do-not-call list: never enrolled in a sequence",
    )
    assert await all_done(world)


async def test_an_operator_opt_out_in_the_consent_store_blocks_enrolment(world: SyncWorld) -> None:
    """R-AG-6, R-OPT-4: an SMS opt-out recorded straight in the consent store (an operator's
    decision) is asked the same way: no enrolment."""
    await ConsentStore(world.db).apply(
        ConsentChange(
            channel="sms",
            phone=PHONE,
            status="opted_out",
            source="manual",
            event_at=T0,
            received_at=T0,
            reason="manual",
        )
    )
    person = Person(world)
    await person.changes_to("Contact Created", aloware_list_status="Warm")
    assert sequence_calls(world) == []
    assert person.sequence is None


async def test_sequences_switched_off_call_and_record_nothing(world: SyncWorld) -> None:
    """R-AG-6: with ENABLE_ALOWARE_SEQUENCES off, a mapped status calls no sequence endpoint, writes
    no contact_agent_state row and no sequence sync_log row (the contact sync still runs)."""
    world.settings = world.settings.model_copy(update={"enable_aloware_sequences": False})
    person = Person(world)
    await person.changes_to("Contact Created", aloware_list_status="Hot")
    assert sequence_calls(world) == []
    assert person.sequence is None
    assert await agent_state(world) is None
    assert await sequence_rows(world) == []
    assert await ContactMappings(world.db).by_aloware_id(str(person.id)) is not None


async def test_disenroll_for_consent_takes_out_only_whom_we_enrolled(world: SyncWorld) -> None:
    """R-AG-6, R-OPT-3, R-OPT-6: the consent flows' call: a person we enrolled leaves the sequence
    (state: no sequence, status kept); a second call, or a person we never enrolled, does nothing."""
    person = Person(world)
    await person.changes_to("Contact Created", aloware_list_status="Hot")
    assert person.sequence == 9001
    ctx = HandlerContext(settings=world.settings, db=world.db, connectors=world.connectors)
    event = ClaimedEvent(
        kind="texting",
        id=uuid.uuid4(),
        source="texting",
        event_type="message.received",
        entity_type="message",
        entity_id="tlx_consent",
        ordering_key=f"phone:{PHONE}",
        payload={},
        attempts=1,
        received_at=T0,
    )

    entry = await disenroll_for_consent(ctx, event, PHONE)
    assert entry is not None
    assert entry.status == "success"
    assert person.sequence is None
    assert person.log[-1] == ("disenrolled", 9001)
    state = await agent_state(world)
    assert state is not None
    assert (state.last_aloware_list_status, state.aloware_sequence_id) == ("Hot", None)

    calls = len(sequence_calls(world))
    assert await disenroll_for_consent(ctx, event, PHONE) is None
    assert await disenroll_for_consent(ctx, event, "+19195550199") is None
    assert len(sequence_calls(world)) == calls


async def test_an_opt_in_does_not_enrol_by_itself(world: SyncWorld) -> None:
    """R-AG-6: lifting an opt-out is no status change: an opted-in person with an unchanged status
    stays out of sequences until the status changes."""
    await ConsentStore(world.db).apply(
        ConsentChange(
            channel="voice",
            phone=PHONE,
            status="opted_out",
            source="manual",
            event_at=T0,
            received_at=T0,
            reason="DNC",
        )
    )
    person = Person(world)
    await person.changes_to("Contact Created", aloware_list_status="Hot")
    later = T0 + timedelta(hours=1)
    await ConsentStore(world.db).apply(
        ConsentChange(
            channel="voice",
            phone=PHONE,
            status=OPTED_IN,
            source="manual",
            event_at=later,
            received_at=later,
            reason="DNC",
        )
    )
    await person.changes_to(aloware_list_status="hot", city="Cary")
    assert sequence_calls(world) == []
    await person.changes_to(aloware_list_status="Warm")
    assert person.sequence == 9002


async def test_an_opt_out_recorded_while_enrolling_takes_the_person_out_at_once(world: SyncWorld) -> None:
    """R-AG-6, R-OPT-4: a STOP runs on the phone's ordering key, beside the contact's events. An
    opt-out recorded after the sequence step asked consent, while its enrolment is on its way to
    Aloware (readiness: the enrol request has reached the simulator, which answers 0.5 s later),
    is seen when the enrolment is recorded: the person is disenrolled in the same run, and the
    state says no sequence."""
    person = Person(world)
    world.aloware.faults(latency_ms=500)
    await person.sends("Contact Created", aloware_list_status="Hot")
    processing = asyncio.create_task(world.process())

    async def enrol_sent() -> bool:
        return "sequence-enroll" in sequence_calls(world)

    await wait_until(enrol_sent)
    await ConsentStore(world.db).apply(
        ConsentChange(
            channel="sms",
            phone=PHONE,
            status="opted_out",
            source="manual",
            event_at=T0,
            received_at=T0,
            reason="manual",
        )
    )
    assert await processing >= 1
    assert person.sequence is None
    assert person.log == [("not_enrolled", None), ("enrolled", 9001), ("disenrolled", 9001)]
    state = await agent_state(world)
    assert state is not None
    assert (state.last_aloware_list_status, state.aloware_sequence_id) == ("Hot", None)
    assert (await sequence_rows(world))[-1][1].endswith("(opted out of SMS while it was enrolled)")
    assert await all_done(world)
