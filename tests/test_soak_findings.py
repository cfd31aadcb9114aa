"""Regressions of product bugs the soak found (bench/soak.py, issue 14): a handler recorded its
decision, a follow-up remote write failed (an Aloware fault, a GHL 503), and the retry saw the
decision recorded and skipped the follow-up, so the remote system was never told.

Real ingest (signed webhooks), the real worker and handler registry, the simulators over HTTP with
fault injection for the first attempt; both databases (`sync_world`).
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select, update

from df_middleware.consent.store import ConsentStore
from df_middleware.db.models import (
    AgentDirectory,
    MessageMapping,
    OptoutEvent,
    OptoutRegistry,
    SyncLog,
    WebhookEvent,
)
from df_middleware.db.types import utcnow
from df_middleware.simulators.ghl import contact_webhook
from df_middleware.sync.agent_sends import REFUSED_BEFORE
from tests.sync_world import CONVERSATION_PROVIDER, LOCATION, NO_NATURAL_RETRY, SyncWorld

PHONE = "+19195550161"
KEYS = ("CALL_NOW", "NEW_LEADS", "FOLLOW_UP", "HOT")
ON_ITS_LISTS = {"DF_ALICE_NEW_LEADS", "DF_ALICE_HOT"}


# --- helpers ---------------------------------------------------------------------------------------


async def statuses(world: SyncWorld, event_type: str) -> list[str]:
    async with world.db.session() as session:
        return list(
            await session.scalars(select(WebhookEvent.status).where(WebhookEvent.event_type == event_type))
        )


async def retry_now(world: SyncWorld, event_type: str) -> int:
    """Make the pending (retry-scheduled) events of `event_type` due now and run the worker: the
    event's retry, without waiting for its backoff. Returns the events processed."""
    async with world.db.session() as session:
        await session.execute(
            update(WebhookEvent)
            .where(WebhookEvent.event_type == event_type, WebhookEvent.status == "pending")
            .values(next_attempt_at=utcnow())
        )
    return await world.process()


async def log_of(world: SyncWorld, event_type: str) -> list[tuple[str, str, str | None]]:
    """(direction, status, message) of the sync_log rows of one event type's events, in order."""
    async with world.db.session() as session:
        ids = [
            str(i)
            for i in await session.scalars(
                select(WebhookEvent.id).where(WebhookEvent.event_type == event_type)
            )
        ]
        found = await session.execute(
            select(SyncLog.direction, SyncLog.status, SyncLog.message)
            .where(SyncLog.correlation_id.in_(ids))
            .order_by(SyncLog.started_at)
        )
        return [(d, s, m) for d, s, m in found]


# --- bug 1: GHL DND decided, the dialer lists not told ---------------------------------------------


async def alice_and_her_lead(world: SyncWorld) -> dict[str, Any]:
    """Alice in the agent directory with her lists in Aloware, and a hot lead of hers in GHL,
    placed on her lists by its ContactCreate."""
    async with world.db.session() as session:
        session.add(
            AgentDirectory(
                agent_key="ALICE",
                display_name="Alice",
                ghl_owner_id="user-alice",
                ghl_assigned_agent_field_value="Alice",
                required_tag="team-alice",
            )
        )
    for agent in ("ALICE", "UNASSIGNED"):
        for key in KEYS:
            world.aloware.sim.add_list(f"DF_{agent}_{key}")
    body = {
        "firstName": "Lena",
        "lastName": "Lead",
        "phone": PHONE,
        "locationId": LOCATION,
        "assignedTo": "user-alice",
        "tags": ["hot"],
    }
    contact: dict[str, Any] = world.ghl.sim.create_contact(LOCATION, body).contact
    await world.deliver_ghl(contact_webhook("ContactCreate", contact))
    await world.process()
    assert on_lists(world) == ON_ITS_LISTS
    return contact


def on_lists(world: SyncWorld) -> set[str]:
    """Names of the Aloware lists the contact on PHONE is on, read from the simulator."""
    sim = world.aloware.sim
    contact = sim.contact_by_phone(PHONE)
    if contact is None:
        return set()
    return {sim.lists[i]["name"] for i in sim.lists_of(contact["id"])}


def dnd_webhook(contact: dict[str, Any], setting: str, status: str) -> dict[str, Any]:
    dnd = contact_webhook("ContactDndUpdate", contact)
    dnd["dndSettings"] = {setting: {"status": status, "message": "", "code": ""}}
    return dnd


async def history(world: SyncWorld, channel: str) -> list[tuple[str, str]]:
    async with world.db.session() as session:
        found = await session.scalars(
            select(OptoutEvent).where(OptoutEvent.channel == channel).order_by(OptoutEvent.event_at)
        )
        return [(r.status, r.source) for r in found]


@pytest.mark.parametrize(
    ("setting", "channel"), [("SMS", "sms"), ("Call", "voice")], ids=["sms-dnd", "call-dnd"]
)
async def test_a_dnd_lift_whose_list_step_failed_puts_the_contact_back_on_retry(
    sync_world: SyncWorld, setting: str, channel: str
) -> None:
    """R-OPT-5, R-AG-2, R-IDEM-2 (found by the soak, issue 14): a GHL user lifts a contact's DND
    (SMS, with OPTOUT_REMOVES_FROM_DIALER; or Call). The first attempt records the opt-in and then
    fails putting the contact back on its Aloware lists (Aloware answers 503). The retry finds its
    own decision in force — not a re-stated DND — and does the list step: the contact is back on
    the lists its agent and tags say, and the decision is recorded once."""
    sync_world.settings = sync_world.settings.model_copy(update=NO_NATURAL_RETRY)  # the test runs the retry
    world = sync_world
    world.settings = world.settings.model_copy(update={"optout_removes_from_dialer": True})
    contact = await alice_and_her_lead(world)
    await world.deliver_ghl(dnd_webhook(contact, setting, "active"))
    await world.process()
    assert on_lists(world) == set()

    world.aloware.faults(error_rate=1.0)
    await world.deliver_ghl(dnd_webhook(contact, setting, "inactive"))
    await world.process()
    state = await ConsentStore(world.db).state(channel, PHONE)  # type: ignore[arg-type]
    assert state is not None
    assert (state.status, state.source) == ("opted_in", "ghl")  # decided on the first attempt …
    assert on_lists(world) == set()  # … the follow-up failed …
    assert sorted(await statuses(world, "ContactDndUpdate")) == ["done", "pending"]  # … to be retried

    world.aloware.faults()
    assert await retry_now(world, "ContactDndUpdate") == 1
    assert on_lists(world) == ON_ITS_LISTS
    assert await statuses(world, "ContactDndUpdate") == ["done", "done"]
    assert await history(world, channel) == [("opted_out", "ghl"), ("opted_in", "ghl")]


@pytest.mark.parametrize(
    ("setting", "channel"), [("SMS", "sms"), ("Call", "voice")], ids=["sms-dnd", "call-dnd"]
)
async def test_a_dnd_opt_out_whose_list_step_failed_takes_the_contact_off_on_retry(
    sync_world: SyncWorld, setting: str, channel: str
) -> None:
    """R-OPT-5, R-OPT-6, R-AG-2, R-IDEM-2 (found by the soak, issue 14): the other direction. A GHL
    user turns DND on; the first attempt records the opt-out and then fails taking the contact off
    its Aloware lists (Aloware answers 503). The retry does it: the contact is on no list, the
    opt-out recorded once."""
    sync_world.settings = sync_world.settings.model_copy(update=NO_NATURAL_RETRY)  # the test runs the retry
    world = sync_world
    world.settings = world.settings.model_copy(update={"optout_removes_from_dialer": True})
    contact = await alice_and_her_lead(world)

    world.aloware.faults(error_rate=1.0)
    await world.deliver_ghl(dnd_webhook(contact, setting, "active"))
    await world.process()
    state = await ConsentStore(world.db).state(channel, PHONE)  # type: ignore[arg-type]
    assert state is not None
    assert (state.status, state.source) == ("opted_out", "ghl")
    assert on_lists(world) == ON_ITS_LISTS
    assert await statuses(world, "ContactDndUpdate") == ["pending"]

    world.aloware.faults()
    assert await retry_now(world, "ContactDndUpdate") == 1
    assert on_lists(world) == set()
    assert await statuses(world, "ContactDndUpdate") == ["done"]
    assert await history(world, channel) == [("opted_out", "ghl")]


async def test_a_restated_dnd_of_another_event_is_still_no_decision(sync_world: SyncWorld) -> None:
    """R-OPT-5 (the fix of the soak's finding, issue 14, keeps this): a *different* webhook
    re-stating the DND in force (a later toggle of the other channel) is skipped as unchanged, not
    taken for a retry of the event that decided it."""
    world = sync_world
    contact = await alice_and_her_lead(world)
    await world.deliver_ghl(dnd_webhook(contact, "Call", "active"))
    await world.process()
    await world.deliver_ghl(dnd_webhook(contact, "Call", "active"))
    await world.process()
    assert await history(world, "voice") == [("opted_out", "ghl")]
    last = (await log_of(world, "ContactDndUpdate"))[-1]
    assert last[1:] == ("skipped", "Call DND: consent unchanged: voice already opted_out by ghl")


# --- bug 2: an agent's refused text left pending in GHL --------------------------------------------


def agent_send(world: SyncWorld, text: str = "Still interested?") -> dict[str, Any]:
    """An agent texts a GHL contact: the GHL simulator records the message `pending` and builds
    the `ProviderOutboundMessage` our provider's delivery URL receives."""
    contact = world.ghl.sim.create_contact(LOCATION, {"phone": PHONE, "firstName": "Ann"}).contact
    _, payload = world.ghl.sim.send_sms_as_user(
        LOCATION, contact["id"], text, conversation_provider_id=CONVERSATION_PROVIDER
    )
    return dict(payload)


def ghl_message(world: SyncWorld, message_id: str) -> dict[str, Any]:
    return next(m for m in world.ghl.sim.snapshot()["messages"] if m["id"] == message_id)


async def opted_out(world: SyncWorld) -> None:
    async with world.db.session() as session:
        session.add(OptoutRegistry(phone_number=PHONE, status="opted_out", source="texting", reason="STOP"))


async def test_a_refusal_ghl_was_not_told_of_is_told_on_retry(sync_world: SyncWorld) -> None:
    """R-OPT-4, R-TXT-5, R-IDEM-2 (found by the soak, issue 14): an agent texts an opted-out
    number while GHL is down. The refusal is recorded (final) but setting the GHL message `failed`
    fails (503), so the event is retried; the retry finds the refusal recorded and tells GHL again
    from its recorded code: the GHL message ends `failed` with code `opted_out`, and Verity never
    sent a thing."""
    sync_world.settings = sync_world.settings.model_copy(update=NO_NATURAL_RETRY)  # the test runs the retry
    world = sync_world
    await opted_out(world)
    payload = agent_send(world)
    message_id = str(payload["messageId"])

    world.ghl.faults(error_rate=1.0)
    await world.deliver_provider_message(payload)
    await world.process()
    assert ghl_message(world, message_id)["status"] == "pending"  # GHL not told …
    assert await statuses(world, "ProviderOutboundMessage") == ["pending"]  # … so retried
    async with world.db.session() as session:
        [mapping] = await session.scalars(select(MessageMapping))
        assert (mapping.status, mapping.error_code) == ("failed", "opted_out")

    world.ghl.faults()
    assert await retry_now(world, "ProviderOutboundMessage") == 1
    shown = ghl_message(world, message_id)
    assert shown["status"] == "failed"
    assert shown["error"] == {
        "code": "opted_out",
        "type": "saas",
        "message": "Recipient has opted out of SMS",
    }
    assert world.verity.sim.sent_messages == []
    assert await statuses(world, "ProviderOutboundMessage") == ["done"]
    [(_, status, message)] = await log_of(world, "ProviderOutboundMessage")
    assert status == "skipped"
    assert message == f"{REFUSED_BEFORE}; GHL message set failed (opted_out)"


async def test_a_refusal_recorded_without_its_code_is_skipped_as_before(sync_world: SyncWorld) -> None:
    """R-OPT-4, R-IDEM-1 (the fix of the soak's finding, issue 14, keeps this): a refusal recorded
    before its code was kept (migration 0011: no error_code) has nothing to tell GHL: a delivery
    of that message is skipped, GHL is not written and nothing is sent — even now that the number
    may be texted."""
    world = sync_world
    payload = agent_send(world)
    message_id = str(payload["messageId"])
    async with world.db.session() as session:
        session.add(
            MessageMapping(ghl_message_id=message_id, direction="outbound", status="failed", to_number=PHONE)
        )
    await world.deliver_provider_message(payload)
    await world.process()
    assert ghl_message(world, message_id)["status"] == "pending"
    assert world.ghl.requests("PUT", f"/conversations/messages/{message_id}/status") == []
    assert world.verity.sim.sent_messages == []
    [(_, status, message)] = await log_of(world, "ProviderOutboundMessage")
    assert (status, message) == ("skipped", REFUSED_BEFORE)
