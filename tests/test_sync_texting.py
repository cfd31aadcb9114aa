"""Texting ⇄ GHL conversations (R-TXT-1…R-TXT-5, R-OPT-4 on the send path).

End-to-end tests run through `sync_world` on both engines: webhooks enter the real ingest
(signed), the real worker runs `df_middleware.sync.texting`, the GHL and Verity simulators play
the other side (Verity posts its own `message.sent` / `message.delivered` / `message.failed`
receipts back into ingest). The pure decisions are unit-tested without I/O at the end.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

import df_middleware.sync.texting as texting
from df_middleware.connectors.http import RemoteRejected, RemoteUnauthorized, RemoteUnavailable
from df_middleware.db.models import (
    ContactMapping,
    MessageMapping,
    OptoutRegistry,
    SyncEffect,
    SyncLog,
    TextingWebhookEvent,
    WebhookEvent,
)
from df_middleware.db.session import Database
from df_middleware.queue.operations import replay_event
from df_middleware.sync.agent_sends import classify_send_failure
from df_middleware.sync.texting import (
    ghl_status_for,
    mirror_decision,
    provider_error,
    sent_branch,
    status_advances,
)
from tests.sync_world import CONVERSATION_PROVIDER, LOCATION, SyncWorld

PERSON = "+19195551234"
BUSINESS_LINE = "+19195550000"


def received(
    message_id: str, *, sender: str = PERSON, body: str = "Yes, Tuesday works for me"
) -> dict[str, Any]:
    """`contracts/verity/webhooks/texting.message.received.json`, with our own ids."""
    return {
        "eventType": "message.received",
        "messageId": message_id,
        "conversationId": "chat_7781",
        "direction": "inbound",
        "from": sender,
        "to": BUSINESS_LINE,
        "body": body,
        "timestamp": "2026-11-24T16:50:00.000Z",
        "status": "received",
    }


def sent(message_id: str, *, to: str = PERSON) -> dict[str, Any]:
    """`texting.message.sent.json`: a text a person at Verity sent outside GHL."""
    return {
        "eventType": "message.sent",
        "messageId": message_id,
        "conversationId": "chat_7781",
        "direction": "outbound",
        "from": BUSINESS_LINE,
        "to": to,
        "body": "Great, I have you down for Tuesday at 3pm.",
        "timestamp": "2026-11-24T16:52:00.000Z",
        "status": "sent",
    }


def ghl_messages(world: SyncWorld) -> list[dict[str, Any]]:
    return list(world.ghl.sim.snapshot()["messages"])


async def rows(db: Database, model: Any) -> list[Any]:
    async with db.session() as session:
        return list(await session.scalars(select(model)))


async def log_rows(db: Database, direction: str | None = None) -> list[SyncLog]:
    found: list[SyncLog] = await rows(db, SyncLog)
    return [r for r in found if direction is None or r.direction == direction]


def agent_send(world: SyncWorld, phone: str = PERSON, text: str = "See you Tuesday!") -> dict[str, Any]:
    """An agent texts a GHL contact: the GHL simulator records the message `pending` and builds
    the `ProviderOutboundMessage` our provider's delivery URL receives."""
    contact = world.ghl.sim.create_contact(LOCATION, {"phone": phone, "firstName": "Ann"}).contact
    _, payload = world.ghl.sim.send_sms_as_user(
        LOCATION, contact["id"], text, conversation_provider_id=CONVERSATION_PROVIDER
    )
    return dict(payload)


def ghl_message(world: SyncWorld, message_id: str) -> dict[str, Any]:
    return next(m for m in ghl_messages(world) if m["id"] == message_id)


async def settle(world: SyncWorld) -> None:
    """Let Verity post its receipts into ingest, then process them."""
    assert await world.verity.sim.drain()
    await world.process()


@pytest.fixture
def world(sync_world: SyncWorld) -> SyncWorld:
    sync_world.use_modules(texting)
    return sync_world


# --- R-TXT-1 -------------------------------------------------------------------------------------


async def test_r_txt_1_inbound_from_unknown_number_creates_contact_conversation_and_one_message(
    world: SyncWorld,
) -> None:
    payload = received("tlx_IN_1")
    first = await world.deliver_texting(payload)
    again = await world.deliver_texting(payload)  # Verity redelivers: a duplicate at ingest
    assert again.json()["status"] == "duplicate"
    assert await world.process() == 1

    snapshot = world.ghl.sim.snapshot()
    [contact] = [c for c in snapshot["contacts"] if not c["deleted"]]
    assert contact["phone"] == PERSON
    [conversation] = snapshot["conversations"]
    assert conversation["contactId"] == contact["id"]
    [message] = snapshot["messages"]
    assert message["direction"] == "inbound"
    assert message["type"] == "SMS"
    assert message["altId"] == "tlx_IN_1"
    assert message["conversationProviderId"] == CONVERSATION_PROVIDER
    assert message["body"] == "Yes, Tuesday works for me"
    assert message["conversationId"] == conversation["id"]
    assert datetime.fromisoformat(message["dateAdded"].replace("Z", "+00:00")) == datetime.fromisoformat(
        "2026-11-24T16:50:00+00:00"
    )

    [mapping] = await rows(world.db, MessageMapping)
    assert (mapping.texting_message_id, mapping.ghl_message_id) == ("tlx_IN_1", message["id"])
    assert (mapping.direction, mapping.conversation_id, mapping.ghl_contact_id) == (
        "inbound",
        conversation["id"],
        contact["id"],
    )
    assert (mapping.from_number, mapping.to_number) == (PERSON, BUSINESS_LINE)
    [person] = await rows(world.db, ContactMapping)
    assert (person.ghl_contact_id, person.aloware_contact_id, person.phone_number) == (
        contact["id"],
        None,
        PERSON,
    )
    to_ghl = await log_rows(world.db, "texting_to_ghl")
    assert sorted(r.message for r in to_ghl if r.status == "success") == [
        "GHL contact upserted for the number (none matched the phone)",
        "inbound SMS added to GHL conversation",
    ]
    [mirror] = await log_rows(world.db, "texting_to_aloware")
    assert mirror.status == "skipped"
    assert "disabled" in (mirror.message or "")

    # R-IDEM-1: an operator's replay of the event changes nothing.
    await replay_event(world.db, first.json()["id"])
    assert await world.process() == 1
    assert len(ghl_messages(world)) == 1
    assert len(world.ghl.sim.snapshot()["conversations"]) == 1
    assert len(await rows(world.db, MessageMapping)) == 1


async def test_r_txt_1_known_contact_nested_payload_reuses_the_cached_conversation(world: SyncWorld) -> None:
    contact = world.ghl.sim.create_contact(LOCATION, {"phone": "+19195557777"}).contact
    nested = {
        "type": "message.received",
        "message": {
            "id": "tlx_NEST_1",
            "conversationId": "chat_7790",
            "direction": "inbound",
            "from": "(919) 555-7777",
            "to": BUSINESS_LINE,
            "text": "hi, is this still available?",
            "createdAt": "2026-11-24T21:00:00Z",
            "attachments": ["https://media.example/photo.jpg"],
        },
    }
    await world.deliver_texting(nested)
    await world.deliver_texting(received("tlx_NEST_2", sender="+19195557777", body="hello?"))
    assert await world.process() == 2

    snapshot = world.ghl.sim.snapshot()
    assert len([c for c in snapshot["contacts"] if not c["deleted"]]) == 1  # no new contact
    by_alt = {m["altId"]: m for m in snapshot["messages"]}
    first, second = by_alt["tlx_NEST_1"], by_alt["tlx_NEST_2"]
    assert first["contactId"] == second["contactId"] == contact["id"]
    assert first["conversationId"] == second["conversationId"]
    assert first["body"] == "hi, is this still available?"
    assert first["attachments"] == ["https://media.example/photo.jpg"]
    assert len(snapshot["conversations"]) == 1
    # The second message found the conversation in message_mappings, not by searching GHL.
    searches = world.ghl.requests("GET", "/conversations/search")
    assert len(searches) == 1


# --- R-TXT-5 / R-TXT-2 echo / R-TXT-3 --------------------------------------------------------------


async def test_r_txt_5_agent_send_goes_out_once_and_follows_verity_receipts(world: SyncWorld) -> None:
    payload = agent_send(world)
    ghl_id = payload["messageId"]
    delivery = await world.deliver_provider_message(payload)
    await world.process()

    [message] = world.verity.sim.sent_messages
    assert (message["to"], message["body"], message["correlationId"]) == (PERSON, "See you Tuesday!", ghl_id)
    [mapping] = await rows(world.db, MessageMapping)
    assert (mapping.ghl_message_id, mapping.texting_message_id) == (ghl_id, message["messageId"])
    assert mapping.direction == "outbound"
    assert mapping.status in {"pending", "sent"}  # Verity's `message.sent` may already be in
    effects = [e.effect_key for e in await rows(world.db, SyncEffect)]
    assert effects == [f"verity:send:{ghl_id}"]

    await settle(world)
    assert world.verity.sim.sent_messages[0]["receipts"] == ["message.sent", "message.delivered"]
    [in_ghl] = ghl_messages(world)  # R-TXT-2: the message.sent echo is not a second copy
    assert in_ghl["id"] == ghl_id
    assert in_ghl["status"] == "delivered"
    assert in_ghl["statusHistory"] == ["pending", "delivered"]  # never a `sent` status
    [mapping] = await rows(world.db, MessageMapping)
    assert mapping.status == "delivered"

    # A GHL retry of the delivery and an operator's replay both leave one send.
    assert (await world.deliver_provider_message(payload)).json()["status"] == "duplicate"
    await replay_event(world.db, delivery.json()["id"])
    await world.process()
    await settle(world)
    assert len(world.verity.sim.sent_messages) == 1
    assert len(ghl_messages(world)) == 1
    statuses = sorted((r.direction, r.status) for r in await log_rows(world.db))
    assert statuses.count(("ghl_to_texting", "success")) == 1
    assert ("ghl_to_texting", "skipped") in statuses


async def test_r_txt_3_failure_receipt_sets_ghl_failed_with_the_carrier_error(world: SyncWorld) -> None:
    world.verity.sim.fail_numbers = {PERSON: ("40300", "Destination is a landline")}
    payload = agent_send(world)
    await world.deliver_provider_message(payload)
    await world.process()
    await settle(world)

    [in_ghl] = ghl_messages(world)
    assert in_ghl["status"] == "failed"
    assert in_ghl["error"] == {"code": "40300", "type": "saas", "message": "Destination is a landline"}
    [mapping] = await rows(world.db, MessageMapping)
    assert mapping.status == "failed"


async def test_r_opt_4_opted_out_number_is_never_texted(world: SyncWorld) -> None:
    async with world.db.session() as session:
        session.add(OptoutRegistry(phone_number=PERSON, status="opted_out", source="texting", reason="STOP"))
    payload = agent_send(world)
    payload["phone"] = "(919) 555-1234"  # whatever the formatting (R-OPT-4)
    await world.deliver_provider_message(payload)
    await world.process()

    assert world.verity.sim.sent_messages == []
    [in_ghl] = ghl_messages(world)
    assert in_ghl["status"] == "failed"
    assert in_ghl["error"] == {
        "code": "opted_out",
        "type": "saas",
        "message": "Recipient has opted out of SMS",
    }
    [row] = await log_rows(world.db, "ghl_to_texting")
    assert row.status == "skipped"
    assert "opted out" in (row.message or "")


async def test_r_txt_5_without_verity_the_agent_and_the_operator_both_see_it(world: SyncWorld) -> None:
    verity, world.connectors.verity = world.connectors.verity, None
    try:
        payload = agent_send(world)
        await world.deliver_provider_message(payload)
        await world.process()
    finally:
        world.connectors.verity = verity

    [in_ghl] = ghl_messages(world)
    assert in_ghl["status"] == "failed"
    assert in_ghl["error"]["code"] == "not_configured"
    [event] = await rows(world.db, WebhookEvent)
    assert event.status == "error"  # dead-lettered: replayable once Verity is configured
    [row] = await log_rows(world.db)
    assert (row.direction, row.status) == ("ghl_to_texting", "error")
    assert "VERITY_BASE_URL" in (row.error_message or "")


async def test_r_txt_5_send_refused_by_verity_is_retried_later_not_failed(world: SyncWorld) -> None:
    world.verity.faults(error_rate=1.0, error_status=503)
    await world.deliver_provider_message(agent_send(world))
    await world.worker().run_once()  # one attempt (a jittered retry may be due at once)

    assert world.verity.sim.sent_messages == []
    [event] = await rows(world.db, WebhookEvent)
    assert (event.status, event.attempts) == ("pending", 1)  # a 503 sent nothing: safe to retry
    [in_ghl] = ghl_messages(world)
    assert in_ghl["status"] == "pending"
    assert await rows(world.db, SyncEffect) == []


async def test_r_txt_5_a_send_that_never_goes_out_is_shown_failed_to_the_agent(world: SyncWorld) -> None:
    """R-TXT-5: Verity unavailable through every retry — the event is dead-lettered and, so that the
    agent does not believe a text went out, its GHL message is set failed (by the follow-up event
    queued with the dead letter)."""
    from df_middleware.queue.worker import Worker

    world.verity.faults(error_rate=1.0, error_status=503)
    payload = agent_send(world)
    await world.deliver_provider_message(payload)
    impatient = world.settings.model_copy(update={"max_attempts": 1})
    worker = Worker(impatient, world.db, world.registry, connectors=world.connectors)
    await worker.run_once()  # the send, dead-lettered
    await worker.run_once()  # its follow-up, telling GHL

    assert world.verity.sim.sent_messages == []
    events = {e.event_type: e.status for e in await rows(world.db, WebhookEvent)}
    assert events == {"ProviderOutboundMessage": "error", "agent_text.given_up": "done"}
    in_ghl = ghl_message(world, payload["messageId"])
    assert in_ghl["status"] == "failed"
    assert in_ghl["error"]["code"] == "not_sent"


async def test_r_txt_5_unconfirmed_send_is_never_repeated_and_its_receipt_resolves_it(
    world: SyncWorld,
) -> None:
    """R-TXT-5, R-IDEM-2: Verity sends but its answer is lost (504). The send is not repeated: the
    event is dead-lettered and the agent sees the message failed. Verity's `message.sent` for the
    same number and text then shows it went out: the dead letter is resolved, the GHL message
    follows the receipts to `delivered`, and no second copy is written (R-TXT-2)."""
    world.verity.faults(lost_response_rate=1.0)  # Verity sends, the answer is lost (504)
    payload = agent_send(world)
    await world.deliver_provider_message(payload)
    await world.process()
    world.verity.faults()
    await settle(world)

    # Dead-lettered (one error row, the agent saw it failed) before the receipt resolved it.
    [error] = [r for r in await log_rows(world.db) if r.status == "error"]
    assert "Verity send not confirmed" in (error.error_message or "")
    event = next(e for e in await rows(world.db, WebhookEvent) if e.event_type == "ProviderOutboundMessage")

    assert len(world.verity.sim.sent_messages) == 1
    async with world.db.session() as session:
        resolved = await session.get(WebhookEvent, event.id)
        assert resolved is not None
        assert resolved.status == "done"
    original = ghl_message(world, payload["messageId"])
    assert original["statusHistory"][-3:] == ["failed", "pending", "delivered"]
    assert [m["id"] for m in ghl_messages(world) if m["direction"] == "outbound"] == [payload["messageId"]]
    [mapping] = await rows(world.db, MessageMapping)
    assert (mapping.ghl_message_id, mapping.status) == (payload["messageId"], "delivered")
    assert mapping.texting_message_id == world.verity.sim.sent_messages[0]["messageId"]
    messages = [r.message or "" for r in await log_rows(world.db)]
    assert any(m.startswith("marked done by df-middleware: Verity confirmed the send") for m in messages)


async def test_r_txt_5_other_text_to_the_number_does_not_resolve_an_unconfirmed_send(
    world: SyncWorld,
) -> None:
    """R-TXT-2 / R-TXT-5: only the same number, the same text *and* a send after the request
    count as the unconfirmed send going out; another text to that person, or the same words sent
    the day before (outside GHL), is recorded as its own message and the dead letter stays for an
    operator."""
    world.verity.faults(lost_response_rate=1.0)
    world.verity.sim.receipt_delay_seconds = 3600  # the send's own receipts have not come yet
    payload = agent_send(world)
    await world.deliver_provider_message(payload)
    await world.process()
    world.verity.faults()

    await world.deliver_texting(sent("tlx_OTHER_TEXT"))  # same person, different text
    day_before = {**sent("tlx_DAY_BEFORE"), "body": payload["message"]}
    day_before["timestamp"] = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    await world.deliver_texting(day_before)  # same words, sent before the agent's request
    await world.process()
    assert [e.status for e in await rows(world.db, WebhookEvent)] == ["error"]
    assert [e.status for e in await rows(world.db, TextingWebhookEvent)] == ["done", "done"]
    copies = {m.get("altId") for m in ghl_messages(world) if m["id"] != payload["messageId"]}
    assert copies == {"tlx_OTHER_TEXT", "tlx_DAY_BEFORE"}
    assert ghl_message(world, payload["messageId"])["status"] == "failed"


async def test_r_txt_5_an_unconfirmed_send_is_resent_only_on_the_operators_word(world: SyncWorld) -> None:
    """R-IDEM-2, R-TXT-5: the request left and Verity answered 504 without sending. The send is
    maybe done: dead-lettered, and a plain replay does not send either (the intent stands). The
    operator checks Verity, finds nothing, and replays with `events replay --resend-unconfirmed`
    (the real command, as a process): the text goes out exactly once and follows its receipts."""
    world.verity.faults(error_rate=1.0, error_status=504)  # answered 504 before any send
    payload = agent_send(world)
    await world.deliver_provider_message(payload)
    await world.process()
    world.verity.faults()
    [event] = await rows(world.db, WebhookEvent)
    assert event.status == "error"
    assert "Verity send not confirmed" in (event.error_message or "")

    await replay_event(world.db, event.id)
    await world.process()
    assert world.verity.sim.sent_messages == []
    [event] = await rows(world.db, WebhookEvent)
    assert event.status == "error"
    assert ghl_message(world, payload["messageId"])["status"] == "failed"

    env = {"PATH": os.environ.get("PATH", ""), "DATABASE_URL": world.settings.database_url}
    replay = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "df_middleware.cli",
            "events",
            "replay",
            str(event.id),
            "--resend-unconfirmed",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert replay.returncode == 0, replay.stderr
    assert "1 unconfirmed write(s) will be made again" in replay.stdout
    await world.process()
    await settle(world)
    assert len(world.verity.sim.sent_messages) == 1
    [event] = await rows(world.db, WebhookEvent)
    assert event.status == "done"
    assert ghl_message(world, payload["messageId"])["status"] == "delivered"


# --- R-TXT-2 ---------------------------------------------------------------------------------------


async def test_r_txt_2_text_sent_outside_ghl_is_recorded_once_as_outbound(world: SyncWorld) -> None:
    await world.deliver_texting(sent("tlx_OUT_1"))
    await world.process()
    delivered = {
        "eventType": "message.delivered",
        "messageId": "tlx_OUT_1",
        "conversationId": "chat_7781",
        "direction": "outbound",
        "from": BUSINESS_LINE,
        "to": PERSON,
        "timestamp": "2026-11-24T16:52:03.000Z",
        "status": "delivered",
    }
    await world.deliver_texting(delivered)
    await world.process()

    [message] = ghl_messages(world)
    assert (message["direction"], message["altId"], message["status"]) == (
        "outbound",
        "tlx_OUT_1",
        "delivered",
    )
    assert message["body"] == "Great, I have you down for Tuesday at 3pm."
    [mapping] = await rows(world.db, MessageMapping)
    assert (mapping.direction, mapping.status, mapping.to_number) == ("outbound", "delivered", PERSON)

    events = await rows(world.db, TextingWebhookEvent)
    sent_event = next(e for e in events if e.event_type == "message.sent")
    await replay_event(world.db, sent_event.id)
    await world.process()
    assert len(ghl_messages(world)) == 1
    assert (await rows(world.db, MessageMapping))[0].status == "delivered"  # never moves back


async def test_r_txt_3_receipt_for_an_unknown_message_is_skipped_with_reason(world: SyncWorld) -> None:
    await world.deliver_texting(
        {"eventType": "message.failed", "messageId": "tlx_NOPE", "to": PERSON, "errorCode": "30003"}
    )
    await world.process()
    [row] = await log_rows(world.db)
    assert row.status == "skipped"
    assert "unknown message" in (row.message or "")
    assert ghl_messages(world) == []


async def test_r_txt_4_enabled_mirror_says_why_nothing_reaches_aloware(world: SyncWorld) -> None:
    world.settings = world.settings.model_copy(update={"texting_sync_to_aloware": True})
    contact = world.ghl.sim.create_contact(LOCATION, {"phone": PERSON}).contact
    async with world.db.session() as session:
        session.add(
            ContactMapping(
                ghl_contact_id=contact["id"],
                aloware_contact_id="77",
                phone_number=PERSON,
                sync_direction="aloware_to_ghl",
            )
        )
    await world.deliver_texting(received("tlx_MIRROR"))
    await world.process()
    [mirror] = await log_rows(world.db, "texting_to_aloware")
    assert mirror.status == "skipped"
    assert "no call" in (mirror.message or "")
    assert len(ghl_messages(world)) == 1


# --- pure decisions --------------------------------------------------------------------------------


def test_ghl_status_for_receipts_has_no_sent() -> None:
    assert ghl_status_for("message.delivered") == "delivered"
    assert ghl_status_for("message.failed") == "failed"
    assert ghl_status_for("message.sent") is None


def test_provider_error_always_has_code_type_and_message() -> None:
    assert provider_error("40300", "Destination is a landline").body() == {
        "code": "40300",
        "type": "saas",
        "message": "Destination is a landline",
    }
    fallback = provider_error(None, None)
    assert fallback.code == "unknown"
    assert fallback.message


@pytest.mark.parametrize(
    ("current", "new", "advances"),
    [
        (None, "pending", True),
        ("pending", "sent", True),
        ("sent", "delivered", True),
        ("pending", "failed", True),
        ("delivered", "sent", False),
        ("delivered", "delivered", False),
        ("failed", "delivered", False),
    ],
)
def test_status_only_moves_forward(current: str | None, new: str, advances: bool) -> None:
    assert status_advances(current, new) is advances


def test_sent_branch() -> None:
    assert sent_branch(mapped=True, own_send=True) == "echo"
    assert sent_branch(mapped=False, own_send=True) == "own_send_unrecorded"
    assert sent_branch(mapped=False, own_send=False) == "record_copy"


def test_mirror_decision() -> None:
    assert mirror_decision(False, "77") == "disabled"
    assert mirror_decision(True, None) == "not_mapped"
    assert mirror_decision(True, "77") == "no_api"


def _unavailable(status: int | None, cause: Exception | None = None) -> RemoteUnavailable:
    error = RemoteUnavailable("x", system="verity", endpoint="POST /send", status_code=status)
    error.__cause__ = cause
    return error


def test_classify_send_failure_retries_only_what_certainly_did_not_send() -> None:
    request = httpx.Request("POST", "http://verity")
    assert classify_send_failure(_unavailable(429)) == "not_sent"
    assert classify_send_failure(_unavailable(503)) == "not_sent"
    assert (
        classify_send_failure(_unavailable(None, httpx.ConnectError("refused", request=request)))
        == "not_sent"
    )
    assert (
        classify_send_failure(RemoteUnauthorized("x", system="verity", endpoint="e", body=None)) == "not_sent"
    )
    assert (
        classify_send_failure(RemoteRejected("x", system="verity", endpoint="e", status_code=422, body=None))
        == "not_sent"
    )
    assert classify_send_failure(_unavailable(None, httpx.ReadTimeout("slow", request=request))) == "unknown"
    assert classify_send_failure(_unavailable(502)) == "unknown"
    assert classify_send_failure(_unavailable(500)) == "unknown"


def test_texting_key_falls_back_to_the_event() -> None:
    from datetime import UTC

    from df_middleware.sync.registry import ClaimedEvent
    from df_middleware.texting_payload import normalize_texting_payload

    event = ClaimedEvent(
        kind="texting",
        source="texting",
        event_type="message.received",
        entity_type="message",
        entity_id=None,
        ordering_key="k",
        payload={},
        attempts=1,
        received_at=datetime.now(UTC),
        id=uuid.uuid4(),
    )
    assert texting.texting_key(normalize_texting_payload({"messageId": "tlx_1"}), event) == "tlx_1"
    assert texting.texting_key(normalize_texting_payload({}), event) == f"event:{event.id}"
