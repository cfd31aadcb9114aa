"""GHL's Call DND as voice do-not-call (R-OPT-6 "the other direction", R-OPT-5, R-LOOP-1): signed
`ContactDndUpdate` webhooks through the real ingest and worker, the GHL and Aloware simulators
over HTTP, both databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

import df_middleware.sync.dnc as dnc
import df_middleware.sync.ghl_dnd as ghl_dnd
import df_middleware.sync.texting as texting
from df_middleware.consent.store import ConsentStore, sms_allowed
from df_middleware.db.models import OptoutEvent, SyncLog, WebhookEvent
from tests.sync_world import LOCATION, SyncWorld

PHONE = "+19195550177"


@pytest.fixture
def world(sync_world: SyncWorld) -> SyncWorld:
    sync_world.use_modules(ghl_dnd)
    return sync_world


def ago(seconds: int) -> str:
    """A GHL webhook timestamp `seconds` ago (ingest refuses one outside ±300 s of now)."""
    moment = datetime.now(UTC) - timedelta(seconds=seconds)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def people(world: SyncWorld) -> tuple[str, int]:
    """The person in GHL and in Aloware (on two power-dialer lists), not yet mapped."""
    ghl_id = str(world.ghl.sim.create_contact(LOCATION, {"phone": PHONE, "firstName": "Lee"}).contact["id"])
    sim = world.aloware.sim
    contact = sim.add_contact(PHONE, first_name="Lee", last_name="Park")
    for name in ("DF_A_HOT", "DF_A_FOLLOW_UP"):
        sim.lists[sim.add_list(name)["id"]]["contact_ids"].append(contact["id"])
    return ghl_id, int(contact["id"])


def dnd_update(ghl_id: str, *, call: str, sms: str = "inactive", at: str | None = None) -> dict[str, Any]:
    """`contracts/ghl/webhooks/ContactDndUpdate.json`, with our contact and statuses."""
    payload: dict[str, Any] = {
        "type": "ContactDndUpdate",
        "id": ghl_id,
        "phone": PHONE,
        "dnd": call == "active",
        "dndSettings": {
            "Call": {"status": call, "message": "", "code": ""},
            "SMS": {"status": sms, "message": "", "code": ""},
        },
    }
    if at is not None:
        payload["timestamp"] = at
    return payload


async def history(world: SyncWorld) -> list[tuple[str, str, str]]:
    async with world.db.session() as session:
        rows = await session.scalars(select(OptoutEvent).order_by(OptoutEvent.event_at))
        return [(r.channel, r.status, r.source) for r in rows]


async def rows_of(world: SyncWorld, event_type: str) -> list[tuple[str, str, str | None]]:
    """(direction, status, message) of the sync_log rows of one event type's events."""
    async with world.db.session() as session:
        ids = [
            str(i)
            for i in await session.scalars(
                select(WebhookEvent.id).where(WebhookEvent.event_type == event_type)
            )
        ]
        rows = await session.execute(
            select(SyncLog.direction, SyncLog.status, SyncLog.message)
            .where(SyncLog.correlation_id.in_(ids))
            .order_by(SyncLog.started_at)
        )
        return [(d, s, m) for d, s, m in rows]


async def all_done(world: SyncWorld) -> bool:
    async with world.db.session() as session:
        return set(await session.scalars(select(WebhookEvent.status))) == {"done"}


async def test_call_dnd_on_puts_the_number_on_dnc_and_empties_the_dialer(world: SyncWorld) -> None:
    """R-OPT-6, R-OPT-2, R-AG-2: a GHL user turning Call DND on → dnc_registry opted out (source
    ghl, reason DND, the webhook's own time), one voice history row, the Aloware contact (found by
    phone) off every power-dialer list and still in Aloware; SMS consent untouched (the number may
    still be texted, and the SMS setting re-stated `inactive` records nothing)."""
    ghl_id, aloware_id = people(world)
    at = ago(90)

    await world.deliver_ghl(dnd_update(ghl_id, call="active", at=at))
    await world.process()

    state = await ConsentStore(world.db).state("voice", PHONE)
    assert state is not None
    assert (state.status, state.source, state.reason) == ("opted_out", "ghl", "DND")
    assert state.last_event_at == datetime.fromisoformat(at)
    assert await history(world) == [("voice", "opted_out", "ghl")]
    assert world.aloware.sim.lists_of(aloware_id) == []
    assert aloware_id in world.aloware.sim.contacts
    assert await ConsentStore(world.db).state("sms", PHONE) is None
    assert await sms_allowed(world.db, PHONE)
    rows = await rows_of(world, "ContactDndUpdate")
    assert [(d, s) for d, s, _ in rows] == [
        ("internal", "skipped"),  # SMS: consent unchanged
        ("internal", "success"),  # on voice DNC
        ("ghl_to_aloware", "success"),  # off the dialer lists
    ]
    assert str(aloware_id) in (rows[2][2] or "")
    assert await all_done(world)


async def test_call_dnd_off_lifts_a_ghl_dnc_but_not_an_aloware_one(world: SyncWorld) -> None:
    """R-OPT-6, R-OPT-5: Call DND turned off later lifts a DNC GHL itself put there (opted in,
    source ghl; nobody is put back on a list). Once Aloware has put the number on DNC, GHL's Call
    DND off does not lift it: only the source that opted out (or a manual action) may; the
    sync_log says why."""
    world.use_modules(ghl_dnd, dnc)
    ghl_id, aloware_id = people(world)
    await world.deliver_ghl(dnd_update(ghl_id, call="active", at=ago(200)))
    await world.process()
    await world.deliver_ghl(dnd_update(ghl_id, call="inactive", at=ago(150)))
    await world.process()
    state = await ConsentStore(world.db).state("voice", PHONE)
    assert state is not None
    assert (state.status, state.source) == ("opted_in", "ghl")
    assert world.aloware.sim.lists_of(aloware_id) == []

    dnc_at = (datetime.now(UTC) - timedelta(seconds=100)).isoformat().replace("+00:00", "Z")
    body = {"id": aloware_id, "phone_number": PHONE, "is_dnc": True, "updated_at": dnc_at}
    assert (await world.deliver_aloware("Contact DNC Updated", body)).status_code < 300
    await world.process()
    await world.deliver_ghl(dnd_update(ghl_id, call="inactive", at=ago(50)))
    await world.process()

    state = await ConsentStore(world.db).state("voice", PHONE)
    assert state is not None
    assert (state.status, state.source) == ("opted_out", "aloware")
    assert await history(world) == [
        ("voice", "opted_out", "ghl"),
        ("voice", "opted_in", "ghl"),
        ("voice", "opted_out", "aloware"),
    ]
    last = (await rows_of(world, "ContactDndUpdate"))[-1]
    assert last[1] == "skipped"
    assert "aloware opt-out can only be lifted by aloware or a manual action" in (last[2] or "")
    assert await sms_allowed(world.db, PHONE)
    assert await all_done(world)


async def test_the_echo_of_our_call_dnd_write_is_no_decision(world: SyncWorld) -> None:
    """R-LOOP-1, R-OPT-6: after an Aloware DNC we set the GHL contact's Call DND active; the
    `ContactDndUpdate` GHL itself posts about that write (simulator → real ingest, signed) is our
    echo: skipped as such, not a second, GHL-sourced decision. One history row, Aloware's, stays
    in force, so no GHL toggle can lift it."""
    world.use_modules(ghl_dnd, dnc)
    world.ghl_sends_webhooks()
    _, aloware_id = people(world)
    body = {"id": aloware_id, "phone_number": PHONE, "is_dnc": True, "updated_at": "2026-11-24T17:00:00Z"}
    assert (await world.deliver_aloware("Contact DNC Updated", body)).status_code < 300
    await world.process()
    await world.ghl_webhooks_delivered("ContactDndUpdate")
    await world.process()

    state = await ConsentStore(world.db).state("voice", PHONE)
    assert state is not None
    assert (state.status, state.source) == ("opted_out", "aloware")
    assert await history(world) == [("voice", "opted_out", "aloware")]
    statuses = [(s, m) for _, s, m in await rows_of(world, "ContactDndUpdate")]
    assert ("skipped", "Call DND: echo of our own DND write") in statuses
    assert all(s == "skipped" for s, _ in statuses)
    assert await all_done(world)


async def test_call_dnd_never_touches_a_texting_stop(world: SyncWorld) -> None:
    """R-OPT-6, R-OPT-5: channels are independent. After the person texts STOP (SMS opted out by
    texting, GHL SMS DND active), a GHL user turns Call DND on and later off: voice DNC follows
    GHL's Call DND, and the texting STOP stays the SMS decision in force, with one SMS history
    row."""
    world.use_modules(ghl_dnd, texting)
    ghl_id, _ = people(world)
    stop = {
        "eventType": "message.received",
        "messageId": "tlx_CALL_DND_STOP",
        "conversationId": "chat_call_dnd",
        "direction": "inbound",
        "from": PHONE,
        "to": "+19195550000",
        "body": "stop",
        "timestamp": ago(250),
        "status": "received",
    }
    await world.deliver_texting(stop)
    await world.process()
    await world.deliver_ghl(dnd_update(ghl_id, call="active", sms="active", at=ago(100)))
    await world.process()
    await world.deliver_ghl(dnd_update(ghl_id, call="inactive", sms="active", at=ago(50)))
    await world.process()

    sms = await ConsentStore(world.db).state("sms", PHONE)
    voice = await ConsentStore(world.db).state("voice", PHONE)
    assert sms is not None
    assert voice is not None
    assert (sms.status, sms.source) == ("opted_out", "texting")
    assert (voice.status, voice.source) == ("opted_in", "ghl")
    assert await history(world) == [
        ("sms", "opted_out", "texting"),
        ("voice", "opted_out", "ghl"),
        ("voice", "opted_in", "ghl"),
    ]
    assert not await sms_allowed(world.db, PHONE)
    assert await all_done(world)


async def test_an_older_call_dnd_after_a_newer_one_is_stale(world: SyncWorld) -> None:
    """R-OPT-2, R-OPT-6: Call DND off at t2 recorded, then a Call DND on of t1 < t2 delivered late
    → the newer decision stands, no history row, the dialer lists untouched, one skipped row
    naming the newer decision."""
    ghl_id, aloware_id = people(world)
    await world.deliver_ghl(dnd_update(ghl_id, call="active", at=ago(200)))
    await world.process()
    await world.deliver_ghl(dnd_update(ghl_id, call="inactive", at=ago(100)))
    await world.process()
    sim = world.aloware.sim
    sim.lists[sim.add_list("DF_A_NEW")["id"]]["contact_ids"].append(aloware_id)

    await world.deliver_ghl(dnd_update(ghl_id, call="active", at=ago(150)))
    await world.process()

    state = await ConsentStore(world.db).state("voice", PHONE)
    assert state is not None
    assert state.status == "opted_in"
    assert len(sim.lists_of(aloware_id)) == 1
    assert len(await history(world)) == 2
    last = (await rows_of(world, "ContactDndUpdate"))[-1]
    assert last[1] == "skipped"
    assert "stale" in (last[2] or "")
