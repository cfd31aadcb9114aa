"""Outside tests of issue 14's soak and its fixes (break14): product bugs of the shape the soak
found — a handler records something, a remote follow-up fails, and the retry sees the record and
does the wrong thing — proven with the real ingest, the real worker and the simulators over HTTP,
faults on the first attempt and the retry forced by making it due now (tests/test_soak_findings.py
has the pattern). Both databases (`sync_world`).

All seven findings are fixed (the commits name them): their tests are plain regressions now.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import select, update

from df_middleware.app import create_app
from df_middleware.config import Settings
from df_middleware.consent.store import ConsentStore
from df_middleware.db.models import AgentDirectory, BroadcastRecord, BroadcastWebhookEvent, WebhookEvent
from df_middleware.db.types import utcnow
from df_middleware.simulators.ghl import contact_webhook
from df_middleware.sync.agent_send_given_up import AGENT_TEXT_GIVEN_UP
from tests.conftest import TEST_SECRETS, Keys
from tests.sync_world import CONVERSATION_PROVIDER, LOCATION, NO_NATURAL_RETRY, SyncWorld
from tests.test_soak_findings import retry_now

PHONE = "+19195550173"


# --- helpers ---------------------------------------------------------------------------------------


async def statuses(world: SyncWorld, event_type: str) -> list[str]:
    async with world.db.session() as session:
        return sorted(
            await session.scalars(select(WebhookEvent.status).where(WebhookEvent.event_type == event_type))
        )


def agent_send(world: SyncWorld, text: str = "Still interested?", *, phone: str = PHONE) -> dict[str, Any]:
    """An agent texts a GHL contact from GHL: the simulator records the message `pending` and
    builds the `ProviderOutboundMessage` our provider's delivery URL receives."""
    contact = world.ghl.sim.create_contact(LOCATION, {"phone": phone, "firstName": "Ann"}).contact
    _, payload = world.ghl.sim.send_sms_as_user(
        LOCATION, contact["id"], text, conversation_provider_id=CONVERSATION_PROVIDER
    )
    return dict(payload)


def verity_sends(world: SyncWorld, correlation_id: str) -> list[dict[str, Any]]:
    return [m for m in world.verity.sim.sent_messages if m.get("correlationId") == correlation_id]


# --- finding 1: an unconfirmed send whose GHL "failed" could not be written is sent again --------


async def test_an_unconfirmed_send_is_not_repeated_when_ghl_was_down_at_that_moment(
    sync_world: SyncWorld,
) -> None:
    """R-IDEM-2, R-REL-1, R-REL-3 (break14 finding 1): an agent texts a person; Verity sends the
    text but its answer is lost (504 after the work was done) while GHL is down (503). The
    send's outcome is unknown, so it must never be repeated: whatever the retries do, Verity has
    sent the agent's text exactly once."""
    world = sync_world
    payload = agent_send(world)
    message_id = str(payload["messageId"])

    world.verity.faults(lost_response_rate=1.0)
    world.ghl.faults(error_rate=1.0)
    await world.deliver_provider_message(payload)
    await world.process()
    assert len(verity_sends(world, message_id)) == 1  # it went out; nobody was told

    world.verity.faults()
    world.ghl.faults()
    await retry_now(world, "ProviderOutboundMessage")
    await retry_now(world, "ProviderOutboundMessage")
    assert len(verity_sends(world, message_id)) == 1


# --- finding 2: a sequence step that failed is skipped on retry as "stale" ----------------------


async def test_a_sequence_enrolment_that_failed_is_made_on_retry(sync_world: SyncWorld) -> None:
    """R-AG-6, R-IDEM-2, R-REL-3 (break14 finding 2): an Aloware contact is created with list
    status Hot (ENABLE_ALOWARE_SEQUENCES, Hot → a sequence). The first attempt creates the GHL
    contact, then Aloware answers 503 to the sequence calls, so the event is retried. The retry
    must enrol the contact in Hot's sequence."""
    sync_world.settings = sync_world.settings.model_copy(update=NO_NATURAL_RETRY)  # the test runs the retry
    world = sync_world
    sim = world.aloware.sim
    hot = sim.add_sequence("Hot leads")["id"]
    world.settings = world.settings.model_copy(
        update={"enable_aloware_sequences": True, "aloware_status_to_sequence": f"Hot={hot}"}
    )
    contact = sim.add_contact(PHONE, first_name="Dana", last_name="Reyes", email="dana@example.com")
    sim.update_contact(int(contact["id"]), aloware_list_status="Hot")
    body = sim.webhook_contact(int(contact["id"]))
    body["updated_at"] = "2026-11-24T16:00:00Z"

    world.aloware.faults(error_rate=1.0)
    assert (await world.deliver_aloware("Contact Created", body)).status_code < 300
    await world.process()
    assert world.ghl.sim.snapshot()["contacts"]  # the contact step was done …
    assert sim.enrollments.get(int(contact["id"])) is None  # … the sequence step failed …
    assert await statuses(world, "Contact Created") == ["pending"]  # … to be retried

    world.aloware.faults()
    assert await retry_now(world, "Contact Created") == 1
    assert await statuses(world, "Contact Created") == ["done"]
    assert sim.enrollments.get(int(contact["id"])) == hot


# --- finding 3: with GHL's clock ahead of ours, a resend of an older DND toggle wins -------------


def dnd_toggle(contact: dict[str, Any], status: str, stamp: datetime, webhook_id: str) -> dict[str, Any]:
    """GHL's `ContactDndUpdate` for an SMS DND toggle GHL stamped `stamp`, under `webhook_id`."""
    dnd = contact_webhook("ContactDndUpdate", contact)
    dnd["dndSettings"] = {"SMS": {"status": status, "message": "", "code": ""}}
    dnd["timestamp"] = stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    dnd["webhookId"] = webhook_id
    return dnd


async def test_a_resent_older_dnd_toggle_does_not_lift_a_newer_dnd_when_ghls_clock_is_ahead(
    sync_world: SyncWorld,
) -> None:
    """R-OPT-2, R-OPT-4, R-OPT-5, R-IDEM-1 (break14 finding 3): GHL's clock runs a minute ahead of
    the service's. A GHL user turns a contact's SMS DND off, then on again a second later; then
    GHL resends the older "off" webhook (a new webhookId, its original timestamp). The decision
    in force stays the newer one (opted out, by GHL), and an agent's text to the number is
    refused, not sent."""
    world = sync_world
    contact = world.ghl.sim.create_contact(LOCATION, {"phone": PHONE, "firstName": "Ann"}).contact
    ahead = datetime.now(UTC) + timedelta(seconds=60)  # GHL's clock: a minute fast
    off = dnd_toggle(contact, "inactive", ahead, "wh-off-1")
    on = dnd_toggle(contact, "active", ahead + timedelta(seconds=1), "wh-on-1")
    for webhook in (off, on):
        assert (await world.deliver_ghl(webhook)).status_code < 300
        await world.process()
    state = await ConsentStore(world.db).state("sms", PHONE)
    assert state is not None
    assert (state.status, state.source) == ("opted_out", "ghl")

    resend = {**off, "webhookId": "wh-off-2"}  # GHL resends the older toggle
    assert (await world.deliver_ghl(resend)).status_code < 300
    await world.process()
    state = await ConsentStore(world.db).state("sms", PHONE)
    assert state is not None
    assert (state.status, state.source) == ("opted_out", "ghl")

    _, payload = world.ghl.sim.send_sms_as_user(
        LOCATION, contact["id"], "Are you free?", conversation_provider_id=CONVERSATION_PROVIDER
    )
    await world.deliver_provider_message(dict(payload))
    await world.process()
    assert verity_sends(world, str(payload["messageId"])) == []


def _stamped(payload: dict[str, Any], stamp: datetime) -> dict[str, Any]:
    return {**payload, "timestamp": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")}


def _on_lists(world: SyncWorld) -> set[str]:
    sim = world.aloware.sim
    contact = sim.contact_by_phone(PHONE)
    assert contact is not None
    return {sim.lists[i]["name"] for i in sim.lists_of(contact["id"])}


async def test_a_late_resend_moves_no_list_when_ghls_clock_is_ahead(sync_world: SyncWorld) -> None:
    """R-AG-2, R-IDEM-1 (break14 finding 3b): as tests/test_list_signals_order.py's late resend —
    created (NEW_LEADS), tagged hot (NEW_LEADS + HOT), the creation resent — but with GHL's clock a
    minute ahead of the service's. The lead stays on both lists."""
    world = sync_world
    async with world.db.session() as session:
        session.add(AgentDirectory(agent_key="ALICE", display_name="Alice", ghl_owner_id="user-alice"))
    for key in ("NEW_LEADS", "HOT"):
        world.aloware.sim.add_list(f"DF_ALICE_{key}")
    ahead = datetime.now(UTC) + timedelta(seconds=60)
    write = world.ghl.sim.create_contact(
        LOCATION, {"firstName": "Lena", "phone": PHONE, "assignedTo": "user-alice"}
    )
    created = _stamped(contact_webhook("ContactCreate", write.contact), ahead)
    await world.deliver_ghl(created)
    await world.process()
    assert _on_lists(world) == {"DF_ALICE_NEW_LEADS"}

    tagged = world.ghl.sim.add_tags(LOCATION, write.contact["id"], ["hot"])
    later = ahead + timedelta(seconds=1)
    for event in tagged.events:
        await world.deliver_ghl(_stamped(contact_webhook(event, tagged.contact), later))
    await world.process()
    assert _on_lists(world) == {"DF_ALICE_NEW_LEADS", "DF_ALICE_HOT"}

    await world.deliver_ghl({**created, "webhookId": "resent-create-1"})
    await world.process()
    assert _on_lists(world) == {"DF_ALICE_NEW_LEADS", "DF_ALICE_HOT"}


# --- finding 4: two first placements at once create an agent's list twice ---------------------


async def test_two_leads_placed_at_once_make_one_list(sync_world: SyncWorld) -> None:
    """R-AG-3 (break14 finding 4): Alice has no lists in Aloware yet and ALOWARE_CREATE_LISTS is
    on. Two new leads of hers arrive together and are processed in one batch: Aloware ends with
    one list named DF_ALICE_NEW_LEADS, holding both."""
    world = sync_world
    world.settings = world.settings.model_copy(update={"aloware_create_lists": True})
    async with world.db.session() as session:
        session.add(AgentDirectory(agent_key="ALICE", display_name="Alice", ghl_owner_id="user-alice"))
    world.aloware.faults(latency_ms=150)  # Aloware's ordinary answer time (the soak: 100-250 ms)
    for index, phone in enumerate(("+19195550174", "+19195550175")):
        write = world.ghl.sim.create_contact(
            LOCATION, {"firstName": f"Lead{index}", "phone": phone, "assignedTo": "user-alice"}
        )
        assert (await world.deliver_ghl(contact_webhook("ContactCreate", write.contact))).status_code < 300
    await world.process()
    named = [found for found in world.aloware.sim.lists.values() if found["name"] == "DF_ALICE_NEW_LEADS"]
    assert len(named) == 1, [(found["id"], found["contact_ids"]) for found in named]
    assert len(named[0]["contact_ids"]) == 2


def inbound_text(message_id: str, body: str, stamp: datetime) -> dict[str, Any]:
    """Verity's `message.received` for a text from PHONE, dated `stamp` by Verity's clock."""
    return {
        "eventType": "message.received",
        "messageId": message_id,
        "conversationId": f"chat_{PHONE.removeprefix('+')}",
        "direction": "inbound",
        "from": PHONE,
        "to": "+19195550000",
        "body": body,
        "timestamp": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "status": "received",
    }


async def test_a_start_sent_before_a_stop_does_not_win_when_verity_clock_is_ahead(
    sync_world: SyncWorld,
) -> None:
    """R-OPT-2, R-OPT-4 (break14 finding 3c): Verity's clock runs a minute ahead of the service's.
    A person texts START, then STOP a second later; Verity delivers the STOP first and the START
    after it (as the soak's `consent_reversed` step does). The STOP is the newer decision: the
    number stays opted out and an agent's text to it is refused."""
    world = sync_world
    contact = world.ghl.sim.create_contact(LOCATION, {"phone": PHONE, "firstName": "Ann"}).contact
    ahead = datetime.now(UTC) + timedelta(seconds=60)
    start = inbound_text("tlx_B14START", "START", ahead)
    stop = inbound_text("tlx_B14STOP", "STOP", ahead + timedelta(seconds=1))
    for text in (stop, start):  # delivered newest first
        assert (await world.deliver_texting(text)).status_code < 300
        await world.process()
    state = await ConsentStore(world.db).state("sms", PHONE)
    assert state is not None
    assert (state.status, state.source) == ("opted_out", "texting")

    _, payload = world.ghl.sim.send_sms_as_user(
        LOCATION, contact["id"], "Are you free?", conversation_provider_id=CONVERSATION_PROVIDER
    )
    await world.deliver_provider_message(dict(payload))
    await world.process()
    assert verity_sends(world, str(payload["messageId"])) == []


def broadcast_event(event_type: str, event_id: str, stamp: datetime, delivered: int) -> dict[str, Any]:
    """A Verity broadcast event for `bc_b14`, dated `stamp` by Verity's clock."""
    return {
        "broadcastId": "bc_b14",
        "eventType": event_type,
        "eventId": event_id,
        "timestamp": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "analytics": {
            "broadcastName": "Spring offer",
            "channel": "SMS",
            "sentAt": "2026-11-24T20:00:00Z",
            "recipients": 1200,
            "sent": 1180,
            "delivered": delivered,
            "pending": 20,
            "failed": 25,
            "bounced": 5,
            "optedOut": 6,
            "responses": 97,
            "appointmentsSet": 12,
        },
    }


async def test_a_late_older_snapshot_does_not_overwrite_the_final_numbers_when_verity_clock_is_ahead(
    sync_world: SyncWorld,
) -> None:
    """R-BC-3 (break14 finding 3d): as test_sync_broadcasts' late older event, but with Verity's
    clock a minute ahead of ours: the completion (stamped +60 s) is written; an analytics_updated
    stamped +30 s arrives after it. When its throttle has passed, the record still holds the
    completion's numbers."""
    world = sync_world
    ahead = datetime.now(UTC) + timedelta(seconds=60)
    final = broadcast_event("broadcast_completed", "bcev_b14_final", ahead, 1150)
    assert (await world.deliver_broadcast(final)).status_code < 300
    await world.process()
    late = broadcast_event("analytics_updated", "bcev_b14_late", ahead - timedelta(seconds=30), 800)
    assert (await world.deliver_broadcast(late)).status_code < 300
    await world.process()

    # The throttle's interval passes (as test_sync_broadcasts does it): the last write and the
    # deferred retry move a minute back.
    async with world.db.session() as session:
        kept = await session.get(BroadcastRecord, "bc_b14")
        assert kept is not None
        assert kept.written_at is not None
        kept.written_at -= timedelta(seconds=61)
        await session.execute(
            update(BroadcastWebhookEvent)
            .where(BroadcastWebhookEvent.status == "pending")
            .values(next_attempt_at=utcnow())
        )
    await world.process()
    [record] = [r for r in world.ghl.sim.records.values() if r.properties.get("broadcast_id") == "bc_b14"]
    assert record.properties["delivered"] == 1150


# --- finding 5: an agent text given up on is left pending in GHL when GHL was down then --------


async def test_a_given_up_agent_text_is_shown_failed_even_if_ghl_was_down_at_that_moment(
    sync_world: SyncWorld,
) -> None:
    """R-TXT-5, R-TXT-3 (break14 finding 5): Verity refuses every attempt of an agent's text (503)
    until its retries run out; at that moment GHL is down too. Once GHL is back, the agent's GHL
    message shows `failed` (not `pending` forever), and nothing was sent."""
    world = sync_world
    world.settings = world.settings.model_copy(update=NO_NATURAL_RETRY | {"max_attempts": 2})
    payload = agent_send(world)
    message_id = str(payload["messageId"])

    world.verity.faults(error_rate=1.0)
    await world.deliver_provider_message(payload)
    await world.process()
    assert await statuses(world, "ProviderOutboundMessage") == ["pending"]
    world.ghl.faults(error_rate=1.0)
    await retry_now(world, "ProviderOutboundMessage")
    assert await statuses(world, "ProviderOutboundMessage") == ["error"]

    # The follow-up queued with the dead letter met GHL down too: it waits for its retry.
    assert await statuses(world, AGENT_TEXT_GIVEN_UP) == ["pending"]
    shown = next(m for m in world.ghl.sim.snapshot()["messages"] if m["id"] == message_id)
    assert shown["status"] == "pending"

    world.verity.faults()
    world.ghl.faults()
    await retry_now(world, AGENT_TEXT_GIVEN_UP)
    assert await statuses(world, AGENT_TEXT_GIVEN_UP) == ["done"]
    assert await statuses(world, "ProviderOutboundMessage") == ["error"]  # still the operator's to see
    shown = next(m for m in world.ghl.sim.snapshot()["messages"] if m["id"] == message_id)
    assert shown["status"] == "failed"
    assert shown["error"]["code"] == "not_sent"
    assert verity_sends(world, message_id) == []


async def test_a_given_up_agent_text_replayed_and_sent_is_not_shown_failed_afterwards(
    sync_world: SyncWorld,
) -> None:
    """R-TXT-5, R-IDEM-1 (break14 finding 5): the follow-up of a given-up agent text waits for GHL
    while the operator replays the send, which goes out: the late follow-up leaves the message as
    sent (it never overwrites a sent text with `failed`), and the text left once."""
    world = sync_world
    world.settings = world.settings.model_copy(update=NO_NATURAL_RETRY | {"max_attempts": 2})
    payload = agent_send(world)
    message_id = str(payload["messageId"])

    world.verity.faults(error_rate=1.0)
    world.ghl.faults(error_rate=1.0)
    await world.deliver_provider_message(payload)
    await world.process()
    await retry_now(world, "ProviderOutboundMessage")
    assert await statuses(world, "ProviderOutboundMessage") == ["error"]
    assert await statuses(world, AGENT_TEXT_GIVEN_UP) == ["pending"]

    world.verity.faults()
    world.ghl.faults()
    async with world.db.session() as session:  # the operator's replay of the dead letter
        await session.execute(
            update(WebhookEvent)
            .where(WebhookEvent.event_type == "ProviderOutboundMessage")
            .values(status="pending", attempts=0, next_attempt_at=utcnow())
        )
    await world.process()
    assert len(verity_sends(world, message_id)) == 1
    await retry_now(world, AGENT_TEXT_GIVEN_UP)
    assert await statuses(world, AGENT_TEXT_GIVEN_UP) == ["done"]
    # Whichever ran first (the follow-up has its own ordering key, so it may have told GHL
    # "not sent" just before the replay sent it), Verity's receipts end it delivered.
    [sent] = world.verity.sim.messages.values()
    await world.verity.sim.deliver_receipts(sent)
    await world.process()
    shown = next(m for m in world.ghl.sim.snapshot()["messages"] if m["id"] == message_id)
    assert shown["status"] == "delivered"
    assert len(verity_sends(world, message_id)) == 1


# --- finding 6: our own DND echo, run again after a crash, becomes a GHL opt-out ----------------


async def test_our_dnd_echo_run_again_after_a_crash_is_still_no_decision(sync_world: SyncWorld) -> None:
    """R-OPT-5, R-LOOP-1, R-REL-1, R-IDEM-1 (break14 finding 6): a person texts STOP, then START;
    the service sets their GHL SMS DND active, then inactive, and GHL sends a ContactDndUpdate for
    each write (echoes). The worker handling the first echo dies before recording its outcome, so
    the event is claimed again after its lease. The person's START stays in force: opted in, no
    GHL-sourced decision recorded."""
    world = sync_world
    contact = world.ghl.sim.create_contact(LOCATION, {"phone": PHONE, "firstName": "Ann"}).contact
    now = datetime.now(UTC)
    for message_id, body, ago in (("tlx_B14E1", "STOP", 20), ("tlx_B14E2", "START", 10)):
        assert (
            await world.deliver_texting(inbound_text(message_id, body, now - timedelta(seconds=ago)))
        ).status_code < 300
        await world.process()
    echoes = []
    for status, ago in (("active", 15), ("inactive", 5)):  # GHL's webhooks for our two writes
        echo = dnd_toggle(contact, status, now - timedelta(seconds=ago), f"wh-echo-{status}")
        assert (await world.deliver_ghl(echo)).status_code < 300
        echoes.append(echo)
    await world.process()
    state = await ConsentStore(world.db).state("sms", PHONE)
    assert state is not None
    assert (state.status, state.source) == ("opted_in", "texting")

    # The worker that ran the first echo was killed before its outcome was committed: the row is
    # still `processing` under an expired lease, and another worker claims it again.
    async with world.db.session() as session:
        first = await session.scalar(
            select(WebhookEvent)
            .where(WebhookEvent.event_type == "ContactDndUpdate")
            .order_by(WebhookEvent.received_at)
            .limit(1)
        )
        assert first is not None
        await session.execute(
            update(WebhookEvent)
            .where(WebhookEvent.id == first.id)
            .values(status="processing", locked_until=utcnow() - timedelta(seconds=1), locked_by="killed")
        )
    await world.process()
    state = await ConsentStore(world.db).state("sms", PHONE)
    assert state is not None
    assert (state.status, state.source) == ("opted_in", "texting")


# --- finding 7: a PostgreSQL restart answers webhooks 500, not 503 ---------------------------------


def _error_response(sqlstate: str, message: str) -> bytes:
    fields = b"".join(
        kind + value.encode() + b"\0"
        for kind, value in ((b"S", "FATAL"), (b"V", "FATAL"), (b"C", sqlstate), (b"M", message))
    )
    body = fields + b"\0"
    return b"E" + struct.pack("!I", len(body) + 4) + body


@contextlib.asynccontextmanager
async def postgres_shutting_down() -> AsyncIterator[str]:
    """A PostgreSQL server in the middle of a restart, as the soak's `pg_restart` meets it: every
    connection is refused at start-up with FATAL 57P03 "the database system is shutting down"
    (what PostgreSQL answers during a fast shutdown and while starting up). Yields its URL."""

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                length = struct.unpack("!I", await reader.readexactly(4))[0]
                packet = await reader.readexactly(length - 4)
                if struct.unpack("!I", packet[:4])[0] in (80877103, 80877104):  # SSL / GSS request
                    writer.write(b"N")
                    await writer.drain()
                    continue
                writer.write(_error_response("57P03", "the database system is shutting down"))
                await writer.drain()
                break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/soak"
    finally:
        server.close()
        await server.wait_closed()


async def test_a_webhook_during_a_postgres_restart_gets_503_with_retry_after(keys: Keys) -> None:
    """R-IN-2, R-REL-2, R-SEC-3 (break14 finding 7): while PostgreSQL is shutting down for a
    restart it refuses connections with 57P03; a webhook arriving then is answered 503 with
    Retry-After (the sender retries), never a 500."""
    async with postgres_shutting_down() as url:
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            database_url=url,
            ghl_webhook_ed25519_public_key=keys.ed25519_public_pem,
            auto_migrate=False,
            log_format="json",
            **TEST_SECRETS,
        )
        app = create_app(settings, run_worker=False)
        body = b'{"type":"ContactUpdate","id":"c-1","webhookId":"wh-b14-1","locationId":"loc_test"}'
        headers = {"content-type": "application/json", "x-ghl-signature": keys.ed25519_sign(body)}
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                response = await client.post("/api/webhooks/ghl", content=body, headers=headers)
        finally:
            await app.state.db.dispose()
        assert response.status_code == 503, response.text
        assert "retry-after" in response.headers
