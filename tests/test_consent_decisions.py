"""Consent decisions and their record (R-OPT-2, R-OPT-4, R-OPT-5, R-OPT-6): pure rules first, then
the registries and history on both databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select

from df_middleware.consent.decisions import (
    CHANNELS,
    SOURCES,
    Channel,
    ConsentChange,
    ConsentState,
    Source,
    Status,
    decide,
    decision_time,
    may_lift,
)
from df_middleware.consent.store import ConsentStore, sms_allowed
from df_middleware.db.models import OptoutEvent
from df_middleware.db.session import Database

T0 = datetime(2026, 12, 1, 15, 0, tzinfo=UTC)
PHONE = "+19195550100"


def change(
    status: Status, source: Source, at: datetime = T0, *, channel: Channel = "sms", **extra: str
) -> ConsentChange:
    return ConsentChange(channel=channel, phone=PHONE, status=status, source=source, event_at=at, **extra)


def state(status: Status, source: Source, at: datetime = T0) -> ConsentState:
    return ConsentState(status=status, source=source, reason=None, last_event_at=at)


def test_who_may_lift_an_opt_out() -> None:
    """R-OPT-5: a texting STOP is lifted only by the person's opt-in keyword or a manual action; a
    GHL-sourced opt-out also by GHL (DND off); Aloware never lifts an SMS opt-out it did not make;
    on voice, the source that set the DNC or a manual action."""
    assert may_lift("sms", "texting", "texting")
    assert may_lift("sms", "texting", "manual")
    assert not may_lift("sms", "texting", "ghl")
    assert not may_lift("sms", "texting", "aloware")
    assert may_lift("sms", "ghl", "ghl")
    assert may_lift("sms", "ghl", "texting")
    assert not may_lift("voice", "aloware", "texting")
    assert may_lift("voice", "aloware", "aloware")
    assert not may_lift("voice", "aloware", "ghl")


def test_decide_orders_by_the_events_own_time() -> None:
    """R-OPT-2: an older change never overwrites a newer decision; the same decision again changes
    nothing; at the same time an opt-out wins."""
    later = T0 + timedelta(minutes=5)
    assert decide(change("opted_out", "texting"), None).applies
    assert not decide(change("opted_out", "texting"), state("opted_in", "texting", later)).applies
    assert not decide(change("opted_out", "texting"), state("opted_out", "texting")).applies
    assert not decide(change("opted_in", "texting"), state("opted_out", "texting")).applies
    assert decide(change("opted_out", "ghl"), state("opted_in", "texting")).applies
    assert decide(change("opted_in", "texting", later), state("opted_out", "texting")).applies
    refused = decide(change("opted_in", "ghl", later), state("opted_out", "texting"))
    assert not refused.applies
    assert "texting opt-out can only be lifted" in refused.why


@given(
    st.sampled_from(CHANNELS),
    st.sampled_from(("opted_out", "opted_in")),
    st.sampled_from(SOURCES),
    st.sampled_from(SOURCES),
    st.integers(min_value=-3, max_value=3),
)
def test_an_opt_out_always_takes_effect_unless_older(
    channel: Channel, current_status: Status, current_source: Source, source: Source, minutes: int
) -> None:
    """R-OPT-2, R-OPT-4: whoever says "do not contact", it takes effect, unless a newer decision is
    already in force (or it is that very decision again)."""
    at = T0 + timedelta(minutes=minutes)
    outcome = decide(change("opted_out", source, at, channel=channel), state(current_status, current_source))
    repeat = minutes == 0 and current_status == "opted_out" and current_source == source
    assert outcome.applies == (minutes >= 0 and not repeat)


async def _history_rows(db: Database) -> int:
    async with db.session() as session:
        return int(await session.scalar(select(func.count()).select_from(OptoutEvent)) or 0)


async def test_store_records_each_decision_once_and_keeps_the_newest(db: Database) -> None:
    """R-OPT-2, R-OPT-4: a STOP is recorded (registry + one history row) and stops texting; the same
    STOP redelivered or replayed adds nothing; a START lifts it; an old STOP replayed after the
    newer START leaves the number opted in."""
    store = ConsentStore(db)
    stop = change("opted_out", "texting", reason="STOP", keyword="STOP", message_id="tlx_1")
    assert (await store.apply(stop)).decision.applies
    assert not await sms_allowed(db, PHONE)
    assert not (await store.apply(stop)).decision.applies
    assert await _history_rows(db) == 1

    start = change("opted_in", "texting", T0 + timedelta(minutes=3), reason="START", keyword="START")
    assert (await store.apply(start)).decision.applies
    assert await sms_allowed(db, PHONE)
    replayed = await store.apply(stop)
    assert not replayed.decision.applies
    assert "stale" in replayed.decision.why
    assert await sms_allowed(db, PHONE)
    assert [(h.status, h.reason) for h in await store.history(PHONE)] == [
        ("opted_in", "START"),
        ("opted_out", "STOP"),
    ]


async def test_store_ghl_cannot_lift_a_texting_stop_and_channels_are_apart(db: Database) -> None:
    """R-OPT-5, R-OPT-6: GHL's DND turned off after a texting STOP leaves the number opted out; a
    voice DNC is recorded apart and never changes SMS consent."""
    store = ConsentStore(db)
    await store.apply(change("opted_out", "texting", reason="STOP"))
    lifted = await store.apply(change("opted_in", "ghl", T0 + timedelta(minutes=1), reason="DND"))
    assert not lifted.decision.applies
    assert not await sms_allowed(db, PHONE)

    await store.apply(
        change("opted_out", "aloware", T0 + timedelta(minutes=2), channel="voice", reason="DNC")
    )
    voice = await store.state("voice", PHONE)
    assert voice is not None
    assert voice.status == "opted_out"
    await store.apply(change("opted_in", "manual", T0 + timedelta(minutes=4), reason="cleared", actor="ops"))
    assert await sms_allowed(db, PHONE)
    voice = await store.state("voice", PHONE)
    assert voice is not None
    assert voice.status == "opted_out"
    entries = await store.history(PHONE)
    assert [(h.channel, h.status, h.source, h.actor) for h in entries] == [
        ("sms", "opted_in", "manual", "ops"),
        ("voice", "opted_out", "aloware", None),
        ("sms", "opted_out", "texting", None),
    ]


@pytest.mark.parametrize("raw", ["(919) 555-0100", "919.555.0100", "+1 919 555 0100", "19195550100"])
def test_every_formatting_of_a_number_is_one_consent_key(raw: str) -> None:
    """R-ID-1, R-OPT-4: consent is keyed by E.164, so every formatting of a number is one row."""
    from df_middleware.phones import normalize_phone

    assert normalize_phone(raw, "US") == PHONE


def test_a_decision_is_never_dated_far_after_its_receipt() -> None:
    """R-OPT-2: the event's own time orders decisions, believed up to five minutes after its
    receipt (a partner's clock a minute fast keeps its STOP and START in their order: break14
    finding 3c); a time further ahead (a broken clock, a forged `updated_at`) is the receipt's,
    and so is a missing time."""
    received = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
    earlier = received - timedelta(minutes=3)
    assert decision_time(earlier, received) == earlier
    assert decision_time(received + timedelta(minutes=1), received) == received + timedelta(minutes=1)
    assert decision_time(received + timedelta(minutes=5), received) == received + timedelta(minutes=5)
    assert decision_time(received + timedelta(minutes=10), received) == received
    assert decision_time(datetime(9999, 1, 1, tzinfo=UTC), received) == received
    assert decision_time(None, received) == received


def test_sources_with_different_clocks_are_ordered_by_receipt() -> None:
    """R-OPT-2, R-OPT-4 (found from outside): an operator's lift recorded at 10:00 (our clock) and
    the person's STOP stamped 09:59 by a texting system whose clock is two minutes slow but
    received at 10:01: the STOP is the newer decision (different sources are ordered by when we
    received and recorded them). Between one source's own events its times still decide: a START
    stamped 10:00 and a STOP stamped 09:59 received later (reordered) leave the START in force."""
    ten = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
    lifted = ConsentState(
        status="opted_in", source="manual", reason="consent", last_event_at=ten, recorded_at=ten
    )
    stop = ConsentChange(
        "sms",
        PHONE,
        "opted_out",
        "texting",
        ten - timedelta(minutes=1),
        received_at=ten + timedelta(minutes=1),
    )
    assert decide(stop, lifted).applies
    replayed = ConsentChange(
        "sms",
        PHONE,
        "opted_out",
        "texting",
        ten - timedelta(minutes=1),
        received_at=ten - timedelta(minutes=5),
    )
    assert not decide(replayed, lifted).applies  # an old event replayed: received before the lift
    started = ConsentState(
        status="opted_in", source="texting", reason="START", last_event_at=ten, recorded_at=ten
    )
    assert not decide(stop, started).applies
