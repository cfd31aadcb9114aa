"""Voice DNC from Aloware, end to end (R-OPT-6, R-OPT-2): signed `Contact DNC Updated` webhooks
through the real ingest and worker, the GHL and Aloware simulators over HTTP, both databases."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

import df_middleware.sync.dnc as dnc
from df_middleware.consent.store import ConsentStore, sms_allowed
from df_middleware.db.models import OptoutEvent, SyncLog, WebhookEvent
from df_middleware.queue.operations import replay_event
from df_middleware.sync.registry import default_registry
from tests.sync_world import LOCATION, SyncWorld

PHONE = "+19195551234"
EMAIL = "sarah.johnson@example.com"


@pytest.fixture
def world(sync_world: SyncWorld) -> SyncWorld:
    sync_world.use_modules(dnc)
    return sync_world


def aloware_person(world: SyncWorld) -> int:
    """The person in Aloware, on two power-dialer lists."""
    sim = world.aloware.sim
    contact = sim.add_contact(PHONE, first_name="Sarah", last_name="Johnson", email=EMAIL)
    for name in ("DF_A_HOT", "DF_A_COLD"):
        sim.lists[sim.add_list(name)["id"]]["contact_ids"].append(contact["id"])
    return int(contact["id"])


def ghl_person(world: SyncWorld) -> str:
    """The person in GHL (not yet mapped: found by phone)."""
    return str(world.ghl.sim.create_contact(LOCATION, {"phone": PHONE, "firstName": "Sarah"}).contact["id"])


def dnc_updated(contact_id: int, *, is_dnc: bool, at: str) -> dict[str, Any]:
    """`contracts/aloware/webhooks/Contact_DNC_Updated.json`, with our ids and times."""
    return {
        "id": contact_id,
        "first_name": "Sarah",
        "last_name": "Johnson",
        "name": "Sarah Johnson",
        "phone_number": PHONE,
        "email": EMAIL,
        "timezone": "America/New_York",
        "is_dnc": is_dnc,
        "is_blocked": False,
        "text_authorized": True,
        "country": "US",
        "created_at": "2026-11-20T14:02:11Z",
        "updated_at": at,
    }


def ghl_contacts(world: SyncWorld) -> list[dict[str, Any]]:
    return [c for c in world.ghl.sim.snapshot()["contacts"] if not c["deleted"]]


def call_dnd(world: SyncWorld, ghl_id: str) -> str | None:
    [contact] = [c for c in ghl_contacts(world) if c["id"] == ghl_id]
    return (contact.get("dndSettings") or {}).get("Call", {}).get("status")


def sms_dnd(world: SyncWorld, ghl_id: str) -> str | None:
    [contact] = [c for c in ghl_contacts(world) if c["id"] == ghl_id]
    return (contact.get("dndSettings") or {}).get("SMS", {}).get("status")


async def sync_rows(world: SyncWorld) -> list[SyncLog]:
    async with world.db.session() as session:
        return list(await session.scalars(select(SyncLog).order_by(SyncLog.started_at)))


async def history(world: SyncWorld) -> list[tuple[str, str, str]]:
    async with world.db.session() as session:
        rows = await session.scalars(select(OptoutEvent).order_by(OptoutEvent.event_at))
        return [(r.channel, r.status, r.source) for r in rows]


async def deliver(world: SyncWorld, contact_id: int, *, is_dnc: bool, at: str) -> None:
    response = await world.deliver_aloware(
        "Contact DNC Updated", dnc_updated(contact_id, is_dnc=is_dnc, at=at)
    )
    assert response.status_code < 300, response.text
    assert await world.process() == 1


def test_the_production_registry_handles_dnc() -> None:
    """R-OPT-6: the service's own registry routes Aloware `Contact DNC Updated` to this flow."""
    assert ("aloware", "Contact DNC Updated") in default_registry()


async def test_dnc_on_records_voice_tells_ghl_and_empties_lists_but_not_sms(world: SyncWorld) -> None:
    """R-OPT-6, R-OPT-2: DNC on → dnc_registry opted out (source aloware, reason DNC, the event's
    own time) with one history row; the GHL contact's Call DND active (SMS DND untouched); the
    Aloware contact off every power-dialer list and still in Aloware; SMS consent unchanged (the
    number may still be texted). One sync_log row per effect."""
    aloware_id = aloware_person(world)
    ghl_id = ghl_person(world)

    await deliver(world, aloware_id, is_dnc=True, at="2026-11-24T17:00:00Z")

    state = await ConsentStore(world.db).state("voice", PHONE)
    assert state is not None
    assert (state.status, state.source, state.reason) == ("opted_out", "aloware", "DNC")
    assert state.last_event_at.isoformat().startswith("2026-11-24T17:00:00")
    assert await history(world) == [("voice", "opted_out", "aloware")]
    assert call_dnd(world, ghl_id) == "active"
    assert sms_dnd(world, ghl_id) is None
    assert world.aloware.sim.lists_of(aloware_id) == []
    assert aloware_id in world.aloware.sim.contacts
    assert await ConsentStore(world.db).state("sms", PHONE) is None
    assert await sms_allowed(world.db, PHONE)
    rows = await sync_rows(world)
    assert sorted((r.direction, r.status, r.target_id or "") for r in rows) == sorted(
        [
            ("internal", "success", ""),
            ("aloware_to_ghl", "success", ghl_id),
            ("internal", "success", str(aloware_id)),
        ]
    )
    assert len(ghl_contacts(world)) == 1


async def test_dnc_lifted_later_turns_call_dnd_off(world: SyncWorld) -> None:
    """R-OPT-6, R-OPT-2: a later `is_dnc: false` lifts the DNC → opted in (source aloware), Call
    DND inactive; the lift puts nobody back on a list, and SMS is still untouched."""
    aloware_id = aloware_person(world)
    ghl_id = ghl_person(world)
    await deliver(world, aloware_id, is_dnc=True, at="2026-11-24T17:00:00Z")

    await deliver(world, aloware_id, is_dnc=False, at="2026-11-25T09:00:00Z")

    state = await ConsentStore(world.db).state("voice", PHONE)
    assert state is not None
    assert (state.status, state.source) == ("opted_in", "aloware")
    assert call_dnd(world, ghl_id) == "inactive"
    assert world.aloware.sim.lists_of(aloware_id) == []
    assert await history(world) == [("voice", "opted_out", "aloware"), ("voice", "opted_in", "aloware")]
    assert await sms_allowed(world.db, PHONE)
    assert len(world.aloware.requests("POST", "/api/v1/webhook/powerdialer-remove")) == 1


async def test_an_older_dnc_after_a_newer_lift_stays_lifted(world: SyncWorld) -> None:
    """R-OPT-2, R-OPT-6: DNC on, lifted, then a DNC *older* than the lift delivered late → the
    lift stands (registry opted in, Call DND inactive, lists untouched), one skipped row naming
    the newer decision, no new history row."""
    aloware_id = aloware_person(world)
    ghl_id = ghl_person(world)
    await deliver(world, aloware_id, is_dnc=True, at="2026-11-24T17:00:00Z")
    await deliver(world, aloware_id, is_dnc=False, at="2026-11-25T09:00:00Z")
    sim = world.aloware.sim
    sim.lists[sim.add_list("DF_A_NEW")["id"]]["contact_ids"].append(aloware_id)
    rows_before = len(await sync_rows(world))

    await deliver(world, aloware_id, is_dnc=True, at="2026-11-24T20:00:00Z")

    state = await ConsentStore(world.db).state("voice", PHONE)
    assert state is not None
    assert state.status == "opted_in"
    assert call_dnd(world, ghl_id) == "inactive"
    assert len(sim.lists_of(aloware_id)) == 1
    assert len(await history(world)) == 2
    [late] = (await sync_rows(world))[rows_before:]
    assert late.status == "skipped"
    assert late.message is not None
    assert "stale" in late.message


async def test_unknown_ghl_contact_still_records_the_dnc(world: SyncWorld) -> None:
    """R-OPT-6, R-OPT-2: GHL has nobody for the person → the registry still records the DNC and
    the lists are emptied; the GHL step is one skipped row and no GHL contact is created."""
    aloware_id = aloware_person(world)

    await deliver(world, aloware_id, is_dnc=True, at="2026-11-24T17:00:00Z")

    state = await ConsentStore(world.db).state("voice", PHONE)
    assert state is not None
    assert state.status == "opted_out"
    assert ghl_contacts(world) == []
    assert world.aloware.sim.lists_of(aloware_id) == []
    [ghl_step] = [r for r in await sync_rows(world) if r.direction == "aloware_to_ghl"]
    assert (ghl_step.status, ghl_step.message) == ("skipped", dnc.NO_GHL_CONTACT)


async def test_a_replay_tells_the_decision_in_force_again(world: SyncWorld) -> None:
    """R-OPT-6: replaying the DNC event (as after a failed GHL write) records nothing new but puts
    the Call DND and the lists right again: the effects follow the decision in force."""
    aloware_id = aloware_person(world)
    ghl_id = ghl_person(world)
    await deliver(world, aloware_id, is_dnc=True, at="2026-11-24T17:00:00Z")
    sim = world.aloware.sim
    sim.lists[sim.add_list("DF_A_AGAIN")["id"]]["contact_ids"].append(aloware_id)
    async with world.db.session() as session:
        event_id = await session.scalar(select(WebhookEvent.id))

    await replay_event(world.db, str(event_id))
    assert await world.process() == 1

    assert sim.lists_of(aloware_id) == []
    assert call_dnd(world, ghl_id) == "active"
    assert len(await history(world)) == 1
