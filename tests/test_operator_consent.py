"""An operator's consent decision told to GHL and the dialer (R-OPT-3, R-OPT-5, R-OPT-6,
R-LOOP-1): `decide_and_tell` (what `df-middleware optout add/remove` runs), the real worker, the
GHL and Aloware simulators over HTTP, both databases."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

import df_middleware.sync.ghl_dnd as ghl_dnd
import df_middleware.sync.operator_consent as operator_consent
import df_middleware.sync.texting as texting
from df_middleware.consent.decisions import ConsentChange
from df_middleware.consent.store import ConsentStore, sms_allowed
from df_middleware.db.models import OptoutEvent, SyncLog, WebhookEvent
from df_middleware.db.types import utcnow
from df_middleware.queue.operator_events import consent_decided_event, decide_and_tell
from df_middleware.simulators.ghl import contact_webhook
from df_middleware.sync.registry import default_registry
from tests.sync_world import LOCATION, SyncWorld

PHONE = "+19195550188"


@pytest.fixture
def world(sync_world: SyncWorld) -> SyncWorld:
    sync_world.use_modules(operator_consent, texting, ghl_dnd)
    return sync_world


def ghl_contacts(world: SyncWorld) -> list[dict[str, Any]]:
    return [c for c in world.ghl.sim.snapshot()["contacts"] if not c["deleted"] and c["phone"] == PHONE]


def dnd(contact: dict[str, Any], channel: str) -> str | None:
    return ((contact.get("dndSettings") or {}).get(channel) or {}).get("status")


async def operator_rows(world: SyncWorld) -> list[tuple[str, str | None]]:
    """(status, message) of the sync_log rows of the operator's events, oldest first."""
    async with world.db.session() as session:
        ids = [
            str(i)
            for i in await session.scalars(select(WebhookEvent.id).where(WebhookEvent.source == "operator"))
        ]
        rows = await session.execute(
            select(SyncLog.status, SyncLog.message)
            .where(SyncLog.correlation_id.in_(ids))
            .order_by(SyncLog.started_at)
        )
        return [(s, m) for s, m in rows]


async def all_done(world: SyncWorld) -> bool:
    async with world.db.session() as session:
        return set(await session.scalars(select(WebhookEvent.status))) == {"done"}


def test_the_production_registry_tells_operator_decisions() -> None:
    """R-OPT-3: the service's own registry routes the operator's queued decisions."""
    assert ("operator", "consent.decided") in default_registry()


async def test_an_operator_opt_out_of_an_unknown_number_creates_the_contact_with_sms_dnd(
    world: SyncWorld,
) -> None:
    """R-OPT-3, R-OPT-2: an operator opts out a number GHL does not know → the decision is
    recorded (manual, with the actor), one event queued with it, and the worker creates the GHL
    contact with SMS DND active (the next agent who imports the number sees it). SMS is refused
    from then on; voice is untouched."""
    outcome = await decide_and_tell(
        world.db, PHONE, "opted_out", channel="sms", reason="complaint by e-mail", actor="ops:ann"
    )
    assert outcome.decision.applies
    assert not await sms_allowed(world.db, PHONE)

    assert await world.process() == 1

    [contact] = ghl_contacts(world)
    assert dnd(contact, "SMS") == "active"
    assert dnd(contact, "Call") is None
    assert contact["source"] == operator_consent.CONTACT_SOURCE
    async with world.db.session() as session:
        [event] = await session.scalars(select(OptoutEvent))
    assert (event.source, event.actor, event.reason) == ("manual", "ops:ann", "complaint by e-mail")
    assert [s for s, _ in await operator_rows(world)] == ["success", "success"]
    assert await ConsentStore(world.db).state("voice", PHONE) is None
    assert await all_done(world)


async def test_an_operator_lifts_a_texting_stop_and_ghl_follows(world: SyncWorld) -> None:
    """R-OPT-5, R-OPT-3, R-LOOP-1: the person texted STOP (GHL SMS DND active); with documented
    consent an operator lifts it → opted in (manual), the contact's SMS DND set inactive, and the
    `ContactDndUpdate` GHL posts about our write is recognised as our echo, not a decision."""
    world.ghl_sends_webhooks()
    stop = {
        "eventType": "message.received",
        "messageId": "tlx_OP_STOP",
        "conversationId": "chat_op",
        "direction": "inbound",
        "from": PHONE,
        "to": "+19195550000",
        "body": "STOP",
        "timestamp": (utcnow() - timedelta(minutes=5)).isoformat().replace("+00:00", "Z"),
        "status": "received",
    }
    await world.deliver_texting(stop)
    await world.process()
    [contact] = ghl_contacts(world)
    assert dnd(contact, "SMS") == "active"

    await decide_and_tell(
        world.db, PHONE, "opted_in", channel="sms", reason="consent in writing", actor="ops:bo"
    )
    await world.process()
    await world.ghl_webhooks_delivered("ContactDndUpdate", at_least=2)
    await world.process()

    [contact] = ghl_contacts(world)
    assert dnd(contact, "SMS") == "inactive"
    state = await ConsentStore(world.db).state("sms", PHONE)
    assert state is not None
    assert (state.status, state.source) == ("opted_in", "manual")
    assert await sms_allowed(world.db, PHONE)
    async with world.db.session() as session:
        history = [
            (r.status, r.source)
            for r in await session.scalars(select(OptoutEvent).order_by(OptoutEvent.event_at))
        ]
    assert history == [("opted_out", "texting"), ("opted_in", "manual")]
    assert await all_done(world)


async def test_an_operator_puts_a_number_on_dnc(world: SyncWorld) -> None:
    """R-OPT-6: an operator's voice DNC → the GHL contact (found by phone) gets Call DND active,
    the Aloware contact leaves every power-dialer list; SMS consent untouched."""
    ghl_id = world.ghl.sim.create_contact(LOCATION, {"phone": PHONE, "firstName": "Rae"}).contact["id"]
    sim = world.aloware.sim
    aloware_id = sim.add_contact(PHONE, first_name="Rae")["id"]
    sim.lists[sim.add_list("DF_HOT")["id"]]["contact_ids"].append(aloware_id)

    await decide_and_tell(
        world.db, PHONE, "opted_out", channel="voice", reason="asked by phone", actor="ops:cy"
    )
    await world.process()

    [contact] = ghl_contacts(world)
    assert contact["id"] == ghl_id
    assert dnd(contact, "Call") == "active"
    assert dnd(contact, "SMS") is None
    assert sim.lists_of(aloware_id) == []
    assert aloware_id in sim.contacts
    assert await sms_allowed(world.db, PHONE)
    assert await all_done(world)


async def test_only_the_decision_in_force_is_told(world: SyncWorld) -> None:
    """R-OPT-2: an operator opts a number out and, before the worker ran, lifts it again: the
    first event finds a newer decision in force and tells nothing; the second sets SMS DND
    inactive. GHL ends showing the decision in force, written once."""
    ghl_id = world.ghl.sim.create_contact(LOCATION, {"phone": PHONE, "firstName": "Ida"}).contact["id"]
    await decide_and_tell(world.db, PHONE, "opted_out", channel="sms", reason="mistake", actor="ops:d")
    await decide_and_tell(world.db, PHONE, "opted_in", channel="sms", reason="undo", actor="ops:d")
    await world.process()

    [contact] = ghl_contacts(world)
    assert dnd(contact, "SMS") == "inactive"
    puts = [r.json() for r in world.ghl.requests("PUT", f"/contacts/{ghl_id}")]
    assert [p["dndSettings"]["SMS"]["status"] for p in puts if "dndSettings" in p] == ["inactive"]
    rows = await operator_rows(world)
    assert rows[0][0] == "skipped"
    assert "a newer sms decision is in force (opted_in by manual)" in (rows[0][1] or "")
    assert await all_done(world)


async def test_a_decision_that_does_not_take_effect_queues_nothing(world: SyncWorld) -> None:
    """R-OPT-2: the event is written in the decision's own transaction, only when the decision
    takes effect: a change older than the decision in force records nothing and queues nothing."""
    store = ConsentStore(world.db)
    now = utcnow()
    newer = ConsentChange("sms", PHONE, "opted_in", "manual", now, reason="first")
    older = ConsentChange("sms", PHONE, "opted_out", "manual", now - timedelta(seconds=1), reason="late")
    assert (await store.apply(newer, also=lambda c: [consent_decided_event(c)])).decision.applies
    outcome = await store.apply(older, also=lambda c: [consent_decided_event(c)])
    assert not outcome.decision.applies
    async with world.db.session() as session:
        queued = await session.scalar(
            select(func.count()).select_from(WebhookEvent).where(WebhookEvent.source == "operator")
        )
    assert queued == 1


async def test_a_ghl_user_s_dnd_after_our_repeated_writes_is_a_decision(world: SyncWorld) -> None:
    """R-LOOP-1, R-OPT-5 (found from outside): an operator opts a number out twice, then lifts it.
    The second opt-out changes nothing in GHL, so it writes nothing (GHL would send no webhook for
    it, and an unconsumed "our write" fingerprint would hide the next genuine change). A GHL user
    then switching SMS DND on is recorded as a GHL-sourced opt-out, not dropped as our echo."""
    world.ghl_sends_webhooks()
    ghl_id = world.ghl.sim.create_contact(LOCATION, {"phone": PHONE, "firstName": "Ola"}).contact["id"]
    for reason in ("a", "b"):
        await decide_and_tell(world.db, PHONE, "opted_out", channel="sms", reason=reason, actor="ops:e")
        await world.process()
    await decide_and_tell(world.db, PHONE, "opted_in", channel="sms", reason="consent", actor="ops:e")
    await world.process()
    await world.ghl_webhooks_delivered("ContactDndUpdate", at_least=2)
    await world.process()
    puts = [r.json() for r in world.ghl.requests("PUT", f"/contacts/{ghl_id}")]
    assert [p["dndSettings"]["SMS"]["status"] for p in puts if "dndSettings" in p] == ["active", "inactive"]

    world.ghl.sim.webhook_url = None  # the user's change is delivered once, below
    write = world.ghl.sim.update_contact(LOCATION, ghl_id, {"dndSettings": {"SMS": {"status": "active"}}})
    await world.deliver_ghl(contact_webhook("ContactDndUpdate", write.contact))
    await world.process()

    state = await ConsentStore(world.db).state("sms", PHONE)
    assert state is not None
    assert (state.status, state.source) == ("opted_out", "ghl")
    assert not await sms_allowed(world.db, PHONE)
    assert await all_done(world)
