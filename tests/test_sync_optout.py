"""SMS consent from what people text, end to end (R-OPT-1…R-OPT-4): real ingest, worker, GHL and
Verity simulators over HTTP, both databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

import df_middleware.sync.texting as texting
from df_middleware.consent.manual import consent_report, e164_or_refuse, opt_in
from df_middleware.consent.store import ConsentStore, sms_allowed
from df_middleware.db.models import OptoutEvent, TextingWebhookEvent, WebhookEvent
from df_middleware.queue.operations import replay_event
from tests.sync_world import CONVERSATION_PROVIDER, LOCATION, SyncWorld

PERSON = "+19195550100"


@pytest.fixture
def world(sync_world: SyncWorld) -> SyncWorld:
    sync_world.use_modules(texting)
    return sync_world


def text(
    message_id: str, body: str, *, sender: str = PERSON, at: str = "2026-11-24T17:10:00.000Z"
) -> dict[str, Any]:
    """`contracts/verity/webhooks/texting.message.received*.json`, with our own ids."""
    return {
        "eventType": "message.received",
        "messageId": message_id,
        "conversationId": "chat_7781",
        "direction": "inbound",
        "from": sender,
        "to": "+19195550000",
        "body": body,
        "timestamp": at,
        "status": "received",
    }


def contact_of(world: SyncWorld) -> dict[str, Any]:
    [contact] = [c for c in world.ghl.sim.snapshot()["contacts"] if not c["deleted"] and c["phone"] == PERSON]
    return contact


def sms_dnd(contact: dict[str, Any]) -> str | None:
    return (contact.get("dndSettings") or {}).get("SMS", {}).get("status")


async def history_rows(world: SyncWorld) -> int:
    async with world.db.session() as session:
        return int(await session.scalar(select(func.count()).select_from(OptoutEvent)) or 0)


def provider_message(contact_id: str, message_id: str, phone: str, words: str) -> dict[str, Any]:
    """GHL's `ProviderOutboundMessage` for an agent's text, built by hand (a message id GHL itself
    may not know, a phone spelled as the caller gives it)."""
    return {
        "type": "SMS",
        "locationId": LOCATION,
        "contactId": contact_id,
        "messageId": message_id,
        "conversationId": f"conv_{message_id}",
        "phone": phone,
        "message": words,
        "attachments": [],
        "userId": "user_1",
    }


async def agent_texts(world: SyncWorld, words: str) -> dict[str, Any]:
    """An agent texts the person from GHL; returns the GHL message after processing."""
    contact = contact_of(world)
    _, payload = world.ghl.sim.send_sms_as_user(
        LOCATION, contact["id"], words, conversation_provider_id=CONVERSATION_PROVIDER
    )
    await world.deliver_provider_message(dict(payload))
    await world.process()
    return next(m for m in world.ghl.sim.snapshot()["messages"] if m["id"] == payload["messageId"])


async def test_a_stop_opts_out_tells_ghl_and_refuses_the_next_agent_text(world: SyncWorld) -> None:
    """R-OPT-1…R-OPT-4: "Stop!" from an unknown number → registry opted out (texting, STOP), one
    history row, a GHL contact created with SMS DND active and the STOP message in its
    conversation; the agent's next text is refused (failed, `opted_out`) and nothing reaches
    Verity. START lifts it: DND inactive, the next text goes out."""
    await world.deliver_texting(text("tlx_STOP_1", "Stop!"))
    await world.process()

    state = await ConsentStore(world.db).state("sms", PERSON)
    assert state is not None
    assert (state.status, state.source, state.reason) == ("opted_out", "texting", "STOP")
    assert await history_rows(world) == 1
    contact = contact_of(world)
    assert sms_dnd(contact) == "active"
    stop_messages = [m for m in world.ghl.sim.snapshot()["messages"] if m.get("altId") == "tlx_STOP_1"]
    assert [(m["body"], m["direction"]) for m in stop_messages] == [("Stop!", "inbound")]

    refused = await agent_texts(world, "Are you still interested?")
    assert refused["status"] == "failed"
    assert refused["error"]["code"] == "opted_out"
    assert world.verity.sim.sent_messages == []

    await world.deliver_texting(text("tlx_START_1", "START", at="2026-11-24T18:00:00.000Z"))
    await world.process()
    assert await sms_allowed(world.db, PERSON)
    assert sms_dnd(contact_of(world)) == "inactive"
    sent = await agent_texts(world, "Welcome back!")
    assert sent["status"] != "failed"
    assert len(world.verity.sim.sent_messages) == 1
    async with world.db.session() as session:
        assert set(await session.scalars(select(WebhookEvent.status))) == {"done"}


@pytest.mark.parametrize("body", ["see you this weekend", "cancel my appointment", "stop by at 5", "S T O P"])
async def test_an_ordinary_text_is_no_consent_decision(world: SyncWorld, body: str) -> None:
    """R-OPT-1: a message that merely contains a keyword is an ordinary message: recorded in GHL,
    no consent decision, no DND."""
    await world.deliver_texting(text("tlx_ORDINARY", body))
    await world.process()
    assert await history_rows(world) == 0
    assert await sms_allowed(world.db, PERSON)
    assert sms_dnd(contact_of(world)) is None


async def test_the_same_stop_twice_and_an_old_stop_after_a_start_make_one_decision_each(
    world: SyncWorld,
) -> None:
    """R-OPT-2, R-IDEM-1: Verity's `optout.stop` for the STOP text already received counts the same
    (one decision, one GHL message); a STOP from before a START, delivered after it, leaves the
    number opted in."""
    await world.deliver_texting(text("tlx_STOP_2", "STOP", at="2026-11-24T17:10:00.000Z"))
    await world.deliver_texting(
        {
            "eventType": "optout.stop",
            "messageId": "tlx_STOP_2",
            "from": PERSON,
            "to": "+19195550000",
            "body": "STOP",
            "timestamp": "2026-11-24T17:10:00.000Z",
        }
    )
    await world.process()
    assert await history_rows(world) == 1
    assert len([m for m in world.ghl.sim.snapshot()["messages"] if m.get("altId") == "tlx_STOP_2"]) == 1

    await world.deliver_texting(text("tlx_START_2", "start", at="2026-11-24T19:00:00.000Z"))
    await world.deliver_texting(text("tlx_STOP_OLD", "stop", at="2026-11-24T18:00:00.000Z"))
    await world.process()
    assert await sms_allowed(world.db, PERSON)
    assert sms_dnd(contact_of(world)) == "inactive"
    assert await history_rows(world) == 2


async def test_help_is_answered_once_a_day_and_never_to_an_opted_out_number(world: SyncWorld) -> None:
    """R-OPT-3, R-OPT-4: HELP gets HELP_REPLY_TEXT through Verity; INFO the same day gets nothing
    more; a HELP from a number that opted out gets no reply; HELP is no consent decision."""
    world.settings = world.settings.model_copy(
        update={"help_reply_text": "Acme Realty: reply STOP to opt out."}
    )
    await world.deliver_texting(text("tlx_HELP_1", "help"))
    await world.deliver_texting(text("tlx_HELP_2", "INFO", at="2026-11-24T17:20:00.000Z"))
    await world.process()
    assert [(m["to"], m["body"]) for m in world.verity.sim.sent_messages] == [
        (PERSON, "Acme Realty: reply STOP to opt out.")
    ]
    assert await history_rows(world) == 0

    other = "+19195550177"
    await world.deliver_texting(text("tlx_STOP_3", "STOP", sender=other, at="2026-11-24T17:30:00.000Z"))
    await world.deliver_texting(text("tlx_HELP_3", "HELP", sender=other, at="2026-11-24T17:31:00.000Z"))
    await world.process()
    assert [m["to"] for m in world.verity.sim.sent_messages] == [PERSON]


async def test_with_optout_removes_from_dialer_a_stop_takes_the_person_off_the_lists(
    world: SyncWorld,
) -> None:
    """R-OPT-3: with OPTOUT_REMOVES_FROM_DIALER=true, a STOP also takes the person's Aloware contact
    off every power-dialer list (found by phone at Aloware); nothing is deleted in Aloware."""
    sim = world.aloware.sim
    contact_id = sim.add_contact(PERSON, first_name="Ann")["id"]
    list_id = sim.add_list("DF_HOT")["id"]
    sim.lists[list_id]["contact_ids"].append(contact_id)
    world.settings = world.settings.model_copy(update={"optout_removes_from_dialer": True})

    await world.deliver_texting(text("tlx_STOP_4", "Stop"))
    await world.process()
    assert sim.lists_of(contact_id) == []
    assert contact_id in sim.contacts


async def test_a_stop_received_before_a_queued_agent_text_wins(world: SyncWorld) -> None:
    """R-OPT-4, R-Q-4: the person's STOP and an agent's text to them are queued together (one
    `phone:` ordering key); the STOP, received first, is processed first, and the text — checked
    at its send, not when it was queued — is refused and shown failed. Nothing reaches Verity."""
    contact = world.ghl.sim.create_contact(LOCATION, {"phone": PERSON, "firstName": "Ann"}).contact
    _, payload = world.ghl.sim.send_sms_as_user(
        LOCATION, contact["id"], "Still interested?", conversation_provider_id=CONVERSATION_PROVIDER
    )
    await world.deliver_texting(text("tlx_STOP_Q", "STOP"))
    await world.deliver_provider_message(dict(payload))
    async with world.db.session() as session:
        keys = set(await session.scalars(select(WebhookEvent.ordering_key)))
        keys |= set(await session.scalars(select(TextingWebhookEvent.ordering_key)))
    assert keys == {f"phone:{PERSON}"}

    await world.process()
    refused = next(m for m in world.ghl.sim.snapshot()["messages"] if m["id"] == payload["messageId"])
    assert refused["status"] == "failed"
    assert refused["error"]["code"] == "opted_out"
    assert world.verity.sim.sent_messages == []


def iso_in(minutes: float) -> str:
    moment = datetime.now(UTC) + timedelta(minutes=minutes)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def test_a_text_dated_in_the_future_does_not_outrank_a_later_stop(world: SyncWorld) -> None:
    """R-OPT-2, R-OPT-4 (found from outside): Verity's clock running 10 minutes fast dates a START
    in our future. A decision is never dated later than its receipt, so the STOP that follows
    (dated now) is newer and wins: the number is opted out and the agent's next text refused."""
    await world.deliver_texting(text("tlx_FUTURE_START", "START", at=iso_in(10)))
    await world.process()
    await world.deliver_texting(text("tlx_NOW_STOP", "STOP", at=iso_in(0)))
    await world.process()

    state = await ConsentStore(world.db).state("sms", PERSON)
    assert state is not None
    assert (state.status, state.reason) == ("opted_out", "STOP")
    assert state.last_event_at <= datetime.now(UTC)
    refused = await agent_texts(world, "Still there?")
    assert (refused["status"], refused["error"]["code"]) == ("failed", "opted_out")
    assert world.verity.sim.sent_messages == []


@pytest.mark.parametrize("stamp", ["1733000000", "yesterday", "2026-11-24T17:10:00"])
async def test_a_stop_with_an_odd_timestamp_still_reaches_ghl(world: SyncWorld, stamp: str) -> None:
    """R-OPT-3, R-TXT-1 (found from outside): a STOP whose timestamp is an epoch number, a word or
    a time without a zone is still recorded in the conversation (GHL gets a valid RFC 3339 date:
    the text's time when it is one, else its receipt) and GHL's SMS DND is set; nothing is
    dead-lettered."""
    await world.deliver_texting(text("tlx_ODD_STOP", "STOP", at=stamp))
    await world.process()

    contact = contact_of(world)
    assert sms_dnd(contact) == "active"
    [message] = [m for m in world.ghl.sim.snapshot()["messages"] if m.get("altId") == "tlx_ODD_STOP"]
    assert message["body"] == "STOP"
    if stamp.startswith("2026"):
        assert message["dateAdded"].startswith("2026-11-24T17:10:00")
    async with world.db.session() as session:
        assert set(await session.scalars(select(TextingWebhookEvent.status))) == {"done"}


async def test_a_refused_text_is_never_sent_later_even_if_ghl_lost_the_message(world: SyncWorld) -> None:
    """R-OPT-4, R-IDEM-1 (found from outside): an agent's text to an opted-out number whose GHL
    message GHL no longer knows (404 on the status update) is still recorded as refused, and the
    event ends done; after the person texts START, replaying it sends nothing."""
    await world.deliver_texting(text("tlx_STOP_LOST", "STOP", at=iso_in(-5)))
    await world.process()
    contact = contact_of(world)
    refused = provider_message(contact["id"], "msg_gone_in_ghl", PERSON, "old promo")
    await world.deliver_provider_message(refused)
    await world.process()
    await world.deliver_texting(text("tlx_START_LOST", "START", at=iso_in(-1)))
    await world.process()

    async with world.db.session() as session:
        [event_id] = await session.scalars(
            select(WebhookEvent.id).where(WebhookEvent.event_type == "ProviderOutboundMessage")
        )
        assert set(await session.scalars(select(WebhookEvent.status))) == {"done"}
    await replay_event(world.db, str(event_id))
    await world.process()
    assert world.verity.sim.sent_messages == []


async def test_a_stop_from_a_slow_clock_after_an_operator_lift_wins(world: SyncWorld) -> None:
    """R-OPT-2, R-OPT-4, R-OPT-5 (found from outside): an operator lifts a number's opt-out (our
    clock); the person then texts STOP, stamped two minutes earlier by a texting system whose clock
    is slow. Different sources are ordered by receipt: the STOP, received after the lift, opts the
    number out and the agent's next text is refused."""
    await world.deliver_texting(text("tlx_FIRST_STOP", "STOP", at=iso_in(-30)))
    await world.process()
    lifted = await opt_in(world.db, PERSON, reason="consent in writing", actor="ops:f")
    assert lifted.decision.applies
    await world.deliver_texting(text("tlx_SLOW_STOP", "stop", at=iso_in(-2)))
    await world.process()

    state = await ConsentStore(world.db).state("sms", PERSON)
    assert state is not None
    assert (state.status, state.source) == ("opted_out", "texting")
    refused = await agent_texts(world, "Hello again")
    assert (refused["status"], refused["error"]["code"]) == ("failed", "opted_out")
    assert world.verity.sim.sent_messages == []


async def test_every_formatting_of_a_number_is_one_consent_state(world: SyncWorld) -> None:
    """R-ID-1, R-OPT-2, R-OPT-4: the person texts STOP from "(919) 555-0100" (as a texting system may
    write it), a GHL user's agent texts "+1 919 555 0100", and the operator checks "919.555.0100":
    one registry row in E.164, the send refused, nothing sent to any spelling."""
    await world.deliver_texting(text("tlx_FMT_STOP", "STOP", sender="(919) 555-0100", at=iso_in(-3)))
    await world.process()
    contact = contact_of(world)
    await world.deliver_provider_message(
        provider_message(contact["id"], "msg_fmt_1", "+1 919 555 0100", "Are you there?")
    )
    await world.process()

    async with world.db.session() as session:
        phones = list(await session.scalars(select(OptoutEvent.phone_number)))
    assert phones == [PERSON]
    assert not await sms_allowed(world.db, e164_or_refuse("919.555.0100", "US"))
    report = await consent_report(world.db, PERSON)
    assert report["sms_allowed"] is False
    assert world.verity.sim.sent_messages == []
