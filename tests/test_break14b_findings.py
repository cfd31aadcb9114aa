"""Outside tests of two fixes of issue 14 (break14b): the agent text given up on, told to GHL by a
follow-up event queued with the dead letter (service/agent_text.given_up), and the echo guard's
provisional entity for a GHL contact create (R-LOOP-1). Real ingest, the real worker and the
simulators over HTTP, both databases (`sync_world`). Findings 1-4 and 6-8 are fixed (the commits
name them) and their tests are regressions; finding 5 (Aloware's echo of our Lead API write taken
before the write's follow-up lookup) is fixed too: a Lead API write that creates the Aloware
contact remembers its fingerprint first, under the provisional entity (the phone).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from sqlalchemy import select, update

import df_middleware.sync.contacts as contacts
import df_middleware.sync.contacts_aloware as contacts_aloware
import df_middleware.sync.texting as texting
import tests.test_break14_findings as break14
from df_middleware.app import create_app
from df_middleware.db.models import EchoGuard as EchoGuardRow
from df_middleware.db.models import SyncLog, WebhookEvent
from df_middleware.db.types import utcnow
from df_middleware.queue.operations import replay_event
from df_middleware.queue.worker import Worker
from df_middleware.simulators.ghl import contact_webhook
from df_middleware.simulators.verity import SEND_MESSAGE_PATH
from df_middleware.sync.agent_send_given_up import AGENT_TEXT_GIVEN_UP
from df_middleware.sync.echoes import EchoGuard, provisional_entity
from tests.conftest import TEST_SECRETS
from tests.servers import serve_app
from tests.sync_world import CONVERSATION_PROVIDER, LOCATION, SyncWorld
from tests.test_break14_findings import NO_NATURAL_RETRY, statuses
from tests.test_interrupted_writes import (
    STEP_DEADLINE,
    AnswerHold,
    event_statuses,
    exit_code,
    interrupt_mid_write,
    log_tail,
)
from tests.test_interrupted_writes import deliver as delivered_id
from tests.test_soak_findings import opted_out, retry_now
from tests.worker_processes import StartWorker

PHONE = "+19195550161"  # the number test_soak_findings.opted_out opts out


# --- helpers ---------------------------------------------------------------------------------------


def agent_send(world: SyncWorld, text: str = "Still interested?") -> dict[str, Any]:
    """An agent texts this module's number from GHL (see test_break14_findings.agent_send)."""
    return break14.agent_send(world, text, phone=PHONE)


def ghl_message(world: SyncWorld, message_id: str) -> dict[str, Any]:
    return next(m for m in world.ghl.sim.snapshot()["messages"] if m["id"] == message_id)


def verity_sends(world: SyncWorld, correlation_id: str) -> list[dict[str, Any]]:
    return [m for m in world.verity.sim.sent_messages if m.get("correlationId") == correlation_id]


async def expire_leases(world: SyncWorld) -> None:
    """The worker that held these claims is gone (killed): its leases run out."""
    async with world.db.session() as session:
        await session.execute(
            update(WebhookEvent)
            .where(WebhookEvent.status == "processing")
            .values(locked_until=utcnow().replace(year=2000))
        )


# --- fix 1: the given-up agent text ---------------------------------------------------------------


async def test_a_send_killed_after_verity_took_it_and_given_up_is_not_shown_never_sent(
    sync_world: SyncWorld,
) -> None:
    """R-TXT-5, R-IDEM-2, R-TXT-3: an agent's text; the worker's last allowed attempt dies (task
    cancelled, as a kill) after Verity accepted the text but before the outcome was recorded. The
    next worker gives it up (attempts exhausted without an outcome). Verity did send it and its
    receipts arrive: the agent must end up seeing the text as delivered, not 'could not be sent'."""
    world = sync_world
    world.use_modules(texting)
    world.settings = world.settings.model_copy(update={"max_attempts": 1})
    world.verity.sim.receipt_delay_seconds = 3600  # receipts come later, after the give-up
    payload = agent_send(world)
    message_id = str(payload["messageId"])
    await world.deliver_provider_message(payload)

    assert world.connectors is not None
    verity = world.connectors.verity
    assert verity is not None
    real_send = verity.send_message
    never = asyncio.Event()

    async def send_then_die(*args: Any, **kwargs: Any) -> Any:
        await real_send(*args, **kwargs)  # Verity took the text …
        await never.wait()  # … and the worker dies before recording anything

    verity.send_message = send_then_die  # type: ignore[method-assign]
    worker = world.worker()
    task = asyncio.create_task(worker.run_once())
    try:
        for _ in range(500):
            if verity_sends(world, message_id):
                break
            await asyncio.sleep(0.01)
        assert len(verity_sends(world, message_id)) == 1
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        verity.send_message = real_send  # type: ignore[method-assign]
    await expire_leases(world)

    await world.process()  # given up; its follow-up runs
    assert await statuses(world, "ProviderOutboundMessage") == ["error"]
    assert len(verity_sends(world, message_id)) == 1

    # Verity's receipts for the text that did go out (message.sent, message.delivered).
    world.verity.sim.receipt_delay_seconds = 0
    [sent] = world.verity.sim.messages.values()
    await world.verity.sim.deliver_receipts(sent)
    await world.process()
    assert sent.receipts == ["message.sent", "message.delivered"]
    outbound = [m for m in world.ghl.sim.snapshot()["messages"] if m["direction"] == "outbound"]
    assert ghl_message(world, message_id)["status"] == "delivered"
    assert [m["id"] for m in outbound] == [message_id]  # R-TXT-2: no second copy of the text


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_a_real_worker_killed_mid_send_on_its_last_attempt_leaves_the_text_delivered(
    sync_world: SyncWorld, start_worker: StartWorker, tmp_path: Path
) -> None:
    """R-TXT-5, R-IDEM-2, R-TXT-3 (test_interrupted_writes' scenario on the last attempt): the send
    is made, its answer held, the worker SIGKILLed; the second worker finds the attempts used up.
    Verity's receipts come: the GHL message must end `delivered`, one copy."""
    world = sync_world
    world.settings = world.settings.model_copy(update={"max_attempts": 1})
    payload = agent_send(world, "See you Tuesday at 3!")
    message_id = str(payload["messageId"])
    hold = AnswerHold(world.verity, "POST", re.escape(SEND_MESSAGE_PATH))
    event_id = await delivered_id(world.deliver_provider_message(dict(payload)))
    second, _made = await interrupt_mid_write(
        world, hold, "sigkill", event_id, start_worker, tmp_path, lambda: world.verity.sim.sent_messages
    )
    try:
        assert await world.verity.sim.drain(STEP_DEADLINE)
        deadline = time.monotonic() + STEP_DEADLINE
        while True:
            found = await event_statuses(world)
            kinds = {kind for kind, status, _ in found if status in {"done", "error"}}
            settled = all(status in {"done", "error"} for _, status, _ in found)
            if settled and {"message.sent", "message.delivered"} <= kinds:
                break
            assert time.monotonic() < deadline, f"{found}\n{log_tail(tmp_path, 'worker-2')}"
            await asyncio.sleep(0.1)
    finally:
        second.send_signal(signal.SIGTERM)
        await exit_code(second, STEP_DEADLINE)
    assert len(verity_sends(world, message_id)) == 1
    outbound = [m for m in world.ghl.sim.snapshot()["messages"] if m["direction"] == "outbound"]
    assert ghl_message(world, message_id)["status"] == "delivered", outbound
    assert [m["id"] for m in outbound] == [message_id]


async def test_a_given_up_text_replayed_after_ghl_was_told_follows_its_receipts(
    sync_world: SyncWorld,
) -> None:
    """R-TXT-5, R-TXT-3: Verity refuses every attempt; the send is dead-lettered and its follow-up
    sets the GHL message failed (not_sent). The operator then replays the send (the queue's own
    replay), Verity takes it: the text leaves once and the GHL message follows its receipts to
    delivered, with no second copy."""
    world = sync_world
    world.use_modules(texting)
    world.settings = world.settings.model_copy(update={"max_attempts": 1})
    payload = agent_send(world)
    message_id = str(payload["messageId"])
    world.verity.faults(error_rate=1.0, error_status=503)
    await world.deliver_provider_message(payload)
    await world.process()
    assert await statuses(world, AGENT_TEXT_GIVEN_UP) == ["done"]
    assert ghl_message(world, message_id)["error"]["code"] == "not_sent"

    world.verity.faults()
    async with world.db.session() as session:
        send_id = await session.scalar(
            select(WebhookEvent.id).where(WebhookEvent.event_type == "ProviderOutboundMessage")
        )
    assert send_id is not None
    await replay_event(world.db, send_id)
    await world.process()
    assert await world.verity.sim.drain()
    await world.process()
    assert len(verity_sends(world, message_id)) == 1
    assert await statuses(world, "ProviderOutboundMessage") == ["done"]
    assert ghl_message(world, message_id)["status"] == "delivered"
    outbound = [m for m in world.ghl.sim.snapshot()["messages"] if m["direction"] == "outbound"]
    assert [m["id"] for m in outbound] == [message_id]

    # The follow-up replayed now (an operator's second thought) leaves the sent text alone.
    async with world.db.session() as session:
        follow_up_id = await session.scalar(
            select(WebhookEvent.id).where(WebhookEvent.event_type == AGENT_TEXT_GIVEN_UP)
        )
    assert follow_up_id is not None
    await replay_event(world.db, follow_up_id)
    await world.process()
    assert await statuses(world, AGENT_TEXT_GIVEN_UP) == ["done"]
    assert ghl_message(world, message_id)["status"] == "delivered"


async def test_a_follow_up_whose_ghl_message_is_gone_is_skipped_not_dead_lettered(
    sync_world: SyncWorld,
) -> None:
    """R-TXT-5: the given-up text's GHL message no longer exists (deleted in GHL): the follow-up
    is done (skipped), not retried until it is dead-lettered."""
    world = sync_world
    world.use_modules(texting)
    world.settings = world.settings.model_copy(update={"max_attempts": 1})
    payload = agent_send(world)
    payload["messageId"] = "gone-message-id"
    world.verity.faults(error_rate=1.0, error_status=503)
    await world.deliver_provider_message(payload)
    await world.process()
    assert await statuses(world, "ProviderOutboundMessage") == ["error"]
    assert await statuses(world, AGENT_TEXT_GIVEN_UP) == ["done"]


def cli(world: SyncWorld, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ.get("PATH", ""), "DATABASE_URL": world.settings.database_url}
    return subprocess.run(
        [sys.executable, "-m", "df_middleware.cli", "events", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_a_dead_follow_up_is_seen_and_replayed_by_the_operator(sync_world: SyncWorld) -> None:
    """R-TXT-5, R-Q-3, R-Q-7: Verity and GHL down through every retry: the send and then its
    follow-up are dead-lettered. The operator lists `--source service` (the real CLI), opens it in
    the admin API (detail, source filter), replays it with the CLI once GHL is back: the agent's
    message ends failed (not_sent) and nothing was sent."""
    world = sync_world
    world.use_modules(texting)
    world.settings = world.settings.model_copy(update={"max_attempts": 1})
    payload = agent_send(world)
    message_id = str(payload["messageId"])
    world.verity.faults(error_rate=1.0, error_status=503)
    world.ghl.faults(error_rate=1.0, error_status=503)
    await world.deliver_provider_message(payload)
    await world.process()
    assert await statuses(world, "ProviderOutboundMessage") == ["error"]
    assert await statuses(world, AGENT_TEXT_GIVEN_UP) == ["error"]

    listed = await asyncio.to_thread(cli, world, "list", "--source", "service", "--status", "error", "--json")
    assert listed.returncode == 0, listed.stderr
    [item] = json.loads(listed.stdout)["items"]
    assert (item["source"], item["event_type"], item["entity_id"]) == (
        "service",
        AGENT_TEXT_GIVEN_UP,
        message_id,
    )

    secret = "admin-secret-break14b"
    settings = world.settings.model_copy(update={"df_admin_secret": SecretStr(secret)})
    with serve_app(create_app(settings, run_worker=False)) as url:
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {secret}"}, timeout=30
        ) as client:
            page = await client.get("/api/admin/events", params={"source": "service"})
            assert page.status_code == 200, page.text
            assert [e["id"] for e in page.json()["items"]] == [item["id"]]
            detail = await client.get(f"/api/admin/events/{item['id']}")
            assert detail.status_code == 200, detail.text
            assert "503" in json.dumps(detail.json())

    world.ghl.faults()
    world.verity.faults()
    replayed = await asyncio.to_thread(cli, world, "replay", item["id"])
    assert replayed.returncode == 0, replayed.stderr
    await world.process()
    assert await statuses(world, AGENT_TEXT_GIVEN_UP) == ["done"]
    assert ghl_message(world, message_id)["error"]["code"] == "not_sent"
    assert verity_sends(world, message_id) == []
    assert await statuses(world, "ProviderOutboundMessage") == ["error"]


async def test_ingest_cannot_forge_a_service_follow_up(sync_world: SyncWorld) -> None:
    """R-TXT-5, R-SEC: a signed GHL webhook typed `agent_text.given_up` naming an agent's pending
    message is stored as a GHL event and never sets the message failed."""
    world = sync_world
    world.use_modules(texting)
    payload = agent_send(world)
    message_id = str(payload["messageId"])
    forged = {"type": AGENT_TEXT_GIVEN_UP, "locationId": LOCATION, "messageId": message_id, "id": message_id}
    answer = await world.deliver_ghl(forged)
    assert answer.status_code < 500
    await world.process()
    async with world.db.session() as session:
        sources = list(await session.scalars(select(WebhookEvent.source)))
    assert "service" not in sources
    assert ghl_message(world, message_id)["status"] == "pending"


async def test_a_refused_text_ghl_never_heard_of_is_told_by_the_follow_up(sync_world: SyncWorld) -> None:
    """R-OPT-4, R-TXT-5: an agent texts an opted-out number while GHL is down through every retry.
    The refusal is recorded, GHL cannot be told, the send is dead-lettered. GHL comes back: the
    follow-up queued with the dead letter (retried like any event) must leave the message failed
    (opted_out), not pending; nothing is sent."""
    world = sync_world
    world.use_modules(texting)
    world.settings = world.settings.model_copy(update=NO_NATURAL_RETRY | {"max_attempts": 2})
    await opted_out(world)
    payload = agent_send(world)
    message_id = str(payload["messageId"])

    world.ghl.faults(error_rate=1.0)
    await world.deliver_provider_message(payload)
    await world.process()
    await retry_now(world, "ProviderOutboundMessage")
    assert await statuses(world, "ProviderOutboundMessage") == ["error"]
    assert ghl_message(world, message_id)["status"] == "pending"

    world.ghl.faults()
    await retry_now(world, AGENT_TEXT_GIVEN_UP)
    assert await statuses(world, AGENT_TEXT_GIVEN_UP) == ["done"]
    assert world.verity.sim.sent_messages == []
    assert ghl_message(world, message_id)["status"] == "failed"


# --- fix 2: the echo guard's provisional entity ----------------------------------------------------


def _ghl_sends_webhooks(world: SyncWorld) -> None:
    world.ghl.sim.webhook_url = f"{world.service_url}/api/webhooks/ghl"
    world.ghl.sim.webhook_signing_key = world.keys.ed25519_private


async def _ghl_webhooks_delivered(world: SyncWorld, count: int) -> None:
    webhooks = world.ghl.sim.webhooks
    for _ in range(3000):
        if len(webhooks.deliveries) >= count and not webhooks.pending:
            break
        await asyncio.sleep(0.01)
    assert len(webhooks.deliveries) == count, [d.event for d in webhooks.deliveries]
    assert all(d.ok for d in webhooks.deliveries)


async def _edit_in_ghl(world: SyncWorld, ghl_id: str, **fields: Any) -> None:
    async with httpx.AsyncClient(base_url=world.ghl.url) as client:
        answer = await client.post("/_sim/ui/contacts", json={"id": ghl_id, "locationId": LOCATION, **fields})
    assert answer.status_code == 200, answer.text


def _lose_the_upsert_answer(world: SyncWorld) -> None:
    """GHL creates the contact but the answer to our upsert is lost (the simulator's
    lost_response fault, for that one request only)."""
    assert world.connectors is not None
    ghl = world.connectors.ghl
    assert ghl is not None
    real_upsert = ghl.upsert_contact

    async def lost(upsert: Any) -> Any:
        ghl.upsert_contact = real_upsert  # type: ignore[method-assign]
        world.ghl.faults(lost_response_rate=1.0)
        try:
            return await real_upsert(upsert)
        finally:
            world.ghl.faults()

    ghl.upsert_contact = lost  # type: ignore[method-assign,assignment]


async def _created_through_a_lost_answer(world: SyncWorld) -> tuple[str, int]:
    """An Aloware contact 'Dana' created in GHL; the upsert's answer lost, the retry finds the
    contact (the ledger's find_existing). GHL's own ContactCreate never reached us."""
    world.settings = world.settings.model_copy(update=NO_NATURAL_RETRY)  # the test runs the retry
    world.use_modules(contacts, contacts_aloware)
    dana = world.aloware.sim.add_contact(PHONE, first_name="Dana", last_name="Reyes")
    _lose_the_upsert_answer(world)
    await world.deliver_aloware("Contact Created", world.aloware.sim.webhook_contact(int(dana["id"])))
    await world.process()
    assert await statuses(world, "Contact Created") == ["pending"]
    await retry_now(world, "Contact Created")
    assert await statuses(world, "Contact Created") == ["done"]
    [ghl_contact] = world.ghl.sim.snapshot()["contacts"]
    assert ghl_contact["firstName"] == "Dana"
    return str(ghl_contact["id"]), int(dana["id"])


async def test_a_rename_back_after_a_create_whose_answer_was_lost_is_synced(sync_world: SyncWorld) -> None:
    """R-LOOP-1, R-C-1: we create 'Dana' in GHL, the answer is lost and the retry finds her. A GHL
    user renames her 'Danielle' (synced to Aloware), then back to 'Dana' within ECHO_TTL: a
    genuine change, and Aloware ends with 'Dana'."""
    world = sync_world
    ghl_id, aloware_id = await _created_through_a_lost_answer(world)
    _ghl_sends_webhooks(world)

    await _edit_in_ghl(world, ghl_id, firstName="Danielle")
    await _ghl_webhooks_delivered(world, 1)
    await world.process()
    assert world.aloware.sim.contacts[aloware_id]["first_name"] == "Danielle"

    await _edit_in_ghl(world, ghl_id, firstName="Dana")
    await _ghl_webhooks_delivered(world, 2)
    await world.process()
    assert world.aloware.sim.contacts[aloware_id]["first_name"] == "Dana"


async def test_a_second_create_on_a_phone_keeps_its_own_echo(db: Any) -> None:
    """R-LOOP-1: create 1 on a phone; its echo came before the answer (consumed the provisional
    fingerprint). Create 2 on the same phone within ECHO_TTL (another person, answered first):
    its echo, after the answer, is still recognised as ours."""
    guard = EchoGuard(db, ttl_seconds=900)
    early = provisional_entity(PHONE)
    ann = {"first_name": "Ann", "phone": PHONE}
    await guard.remember("ghl", early, ann)
    assert await guard.is_echo("ghl", "g1", ann, by="echo-1", provisional=early)
    await guard.settle_provisional("ghl", early, "g1", ann)

    bob = {"first_name": "Bob", "phone": PHONE}
    await guard.remember("ghl", early, bob)
    await guard.settle_provisional("ghl", early, "g2", bob)
    assert await guard.is_echo("ghl", "g2", bob, by="echo-2", provisional=early)


async def test_aloware_echo_of_our_lead_write_processed_before_the_answer_is_no_change(
    sync_world: SyncWorld,
) -> None:
    """R-LOOP-1, R-C-2 (the mirror of the GHL create race fix 2 closed): a GHL contact is created
    in Aloware through the Lead API; Aloware's `Contact Created` about it reaches the service and
    another worker processes it while the writing event still waits for its follow-up lookup.
    The echo is recognised: nothing is written back to GHL."""
    world = sync_world
    world.use_modules(contacts, contacts_aloware)
    sim = world.aloware.sim
    sim.webhook_url = f"{world.service_url}/api/webhooks/aloware"
    sim.webhook_bearer_token = TEST_SECRETS["aloware_webhook_bearer_token"]
    sim.emit_contact_events = True
    ghl_contact = world.ghl.sim.create_contact(
        LOCATION, {"phone": PHONE, "firstName": "Dana", "lastName": "Reyes", "email": "dana@example.com"}
    ).contact
    assert world.connectors is not None
    aloware = world.connectors.aloware
    assert aloware is not None
    real_find = aloware.find_contact_by_phone
    echo_processed = asyncio.Event()

    async def find_after_the_echo(phone: Any) -> Any:
        if not echo_processed.is_set() and world.aloware.requests("POST", "/api/v1/webhook/forms"):
            for _ in range(3000):
                if sim.webhooks.deliveries and not sim.webhooks.pending:
                    break
                await asyncio.sleep(0.01)
            if sim.webhooks.deliveries:
                echo_processed.set()
                await world.worker().run_once()  # another worker takes Aloware's webhook now
        return await real_find(phone)

    def ghl_writes_now() -> list[Any]:
        return [
            r for r in world.ghl.requests() if r.method in {"POST", "PUT"} and not r.path.endswith("/search")
        ]

    ghl_writes_before = ghl_writes_now()
    aloware.find_contact_by_phone = find_after_the_echo  # type: ignore[method-assign]
    try:
        await world.deliver_ghl(contact_webhook("ContactCreate", ghl_contact))
        await world.process()
    finally:
        aloware.find_contact_by_phone = real_find  # type: ignore[method-assign]
    await world.process()
    assert echo_processed.is_set()
    ghl_writes = ghl_writes_now()
    assert ghl_writes == ghl_writes_before, [(r.method, r.path) for r in ghl_writes]
    async with world.db.session() as session:
        rows = [(r.direction, r.status, r.message) for r in await session.scalars(select(SyncLog))]
    assert ("aloware_to_ghl", "skipped", contacts.ECHO) in rows, rows


async def test_a_lead_write_whose_lookup_failed_leaves_no_provisional_fingerprint(
    sync_world: SyncWorld,
) -> None:
    """R-LOOP-1, R-IDEM-2 (finding 5's fix, and the mirror of finding 2 on Aloware's side): the
    Lead API write creates Dana in Aloware but the lookup right after it finds nobody (the event
    is retried). The retry finds the contact the first attempt made: the provisional fingerprint
    goes (it must not wait ECHO_TTL to swallow a genuine change), the contact's own id holds one,
    and no second contact is made."""
    world = sync_world
    world.use_modules(contacts, contacts_aloware)
    world.settings = world.settings.model_copy(update=NO_NATURAL_RETRY)
    ghl_contact = world.ghl.sim.create_contact(LOCATION, {"phone": PHONE, "firstName": "Dana"}).contact
    assert world.connectors is not None
    aloware = world.connectors.aloware
    assert aloware is not None
    real_find = aloware.find_contact_by_phone
    missed: list[str] = []

    async def nobody_right_after_the_write(phone: Any) -> Any:
        if world.aloware.requests("POST", "/api/v1/webhook/forms") and not missed:
            missed.append(str(phone))
            return None
        return await real_find(phone)

    aloware.find_contact_by_phone = nobody_right_after_the_write  # type: ignore[method-assign]
    try:
        await world.deliver_ghl(contact_webhook("ContactCreate", ghl_contact))
        await world.process()
        assert missed
        assert await statuses(world, "ContactCreate") == ["pending"]
        await retry_now(world, "ContactCreate")
    finally:
        aloware.find_contact_by_phone = real_find  # type: ignore[method-assign]
    assert await statuses(world, "ContactCreate") == ["done"]
    made = world.aloware.sim.contact_by_phone(PHONE)
    assert made is not None
    assert len([c for c in world.aloware.sim.snapshot()["contacts"] if c["phone_number"] == PHONE]) == 1
    async with world.db.session() as session:
        rows = [
            (r.entity_id, r.consumed_by)
            for r in await session.scalars(select(EchoGuardRow).where(EchoGuardRow.system == "aloware"))
        ]
    assert rows == [(str(made["id"]), None)]


async def test_a_verity_refusal_while_ghl_times_out_is_not_held_as_maybe_sent(sync_world: SyncWorld) -> None:
    """R-TXT-5, R-IDEM-2: Verity refuses the agent's text (401: nothing sent) while GHL answers 504.
    The text certainly did not leave: it must not be dead-lettered as an unconfirmed send that
    'may or may not have gone out' (operator told to check Verity and --resend-unconfirmed)."""
    world = sync_world
    world.use_modules(texting)
    payload = agent_send(world)
    world.verity.sim.api_key = "not-the-service-key"
    world.ghl.faults(error_rate=1.0, error_status=504)
    await world.deliver_provider_message(payload)
    await world.process()
    async with world.db.session() as session:
        [error] = await session.scalars(
            select(WebhookEvent.error_message).where(WebhookEvent.event_type == "ProviderOutboundMessage")
        )
    assert "Verity send not confirmed" not in (error or ""), error


async def test_the_agents_next_text_is_not_held_behind_the_follow_up_waiting_for_ghl(
    sync_world: SyncWorld,
) -> None:
    """R-TXT-5, R-Q-4: Verity refused an agent's text until it was given up; its follow-up waits
    for GHL (down). Verity is back; the agent texts the person again: the new text, which needs
    only Verity, goes out while GHL is still down."""
    world = sync_world
    world.settings = world.settings.model_copy(update=NO_NATURAL_RETRY)
    world.use_modules(texting)
    first = agent_send(world)
    world.verity.faults(error_rate=1.0, error_status=503)
    world.ghl.faults(error_rate=1.0, error_status=503)
    await world.deliver_provider_message(first)
    worker = Worker(
        world.settings.model_copy(update={"max_attempts": 1}),
        world.db,
        world.registry,
        connectors=world.connectors,
    )
    await worker.run_once()  # the send, dead-lettered with its follow-up
    await world.process()  # the follow-up meets GHL down: retried later
    assert await statuses(world, "ProviderOutboundMessage") == ["error"]
    assert await statuses(world, AGENT_TEXT_GIVEN_UP) == ["pending"]

    world.verity.faults()
    _, second = world.ghl.sim.send_sms_as_user(
        LOCATION, str(first["contactId"]), "Call me back?", conversation_provider_id=CONVERSATION_PROVIDER
    )
    await world.deliver_provider_message(second)
    await world.process()
    assert len(verity_sends(world, str(second["messageId"]))) == 1


async def test_settling_one_create_keeps_the_fingerprint_of_another_in_flight(db: Any) -> None:
    """R-LOOP-1: two creates on one phone in flight at once (Ann's and Bob's); Ann's is answered
    and settled first; GHL's webhook about Bob's write, taken before Bob's answer, is an echo."""
    guard = EchoGuard(db, ttl_seconds=900)
    early = provisional_entity(PHONE)
    ann = {"first_name": "Ann", "phone": PHONE}
    bob = {"first_name": "Bob", "phone": PHONE}
    await guard.remember("ghl", early, ann)
    await guard.remember("ghl", early, bob)
    await guard.settle_provisional("ghl", early, "g1", ann)
    assert await guard.is_echo("ghl", "g2", bob, by="echo-bob", provisional=early)


async def test_a_maybe_sent_text_while_ghl_is_down_through_every_retry_is_not_told_not_sent(
    sync_world: SyncWorld,
) -> None:
    """R-TXT-5, R-IDEM-2, R-TXT-2: Verity sends the agent's text but its answer is lost (504) while
    GHL is down through every retry of the send. Once GHL is back the agent must see the text as
    it went (delivered, by its receipts), one copy, never 'could not be sent'."""
    world = sync_world
    world.use_modules(texting)
    world.settings = world.settings.model_copy(update=NO_NATURAL_RETRY | {"max_attempts": 2})
    world.verity.sim.receipt_delay_seconds = 3600  # Verity's receipts come after the outage
    payload = agent_send(world)
    message_id = str(payload["messageId"])
    world.verity.faults(lost_response_rate=1.0)
    world.ghl.faults(error_rate=1.0, error_status=503)
    await world.deliver_provider_message(payload)
    await world.process()
    await retry_now(world, "ProviderOutboundMessage")
    assert await statuses(world, "ProviderOutboundMessage") == ["error"]
    assert len(verity_sends(world, message_id)) == 1  # it went out

    world.verity.faults()
    world.ghl.faults()
    await retry_now(world, AGENT_TEXT_GIVEN_UP)
    world.verity.sim.receipt_delay_seconds = 0
    [sent] = world.verity.sim.messages.values()
    await world.verity.sim.deliver_receipts(sent)
    await world.process()
    assert len(verity_sends(world, message_id)) == 1
    outbound = [m for m in world.ghl.sim.snapshot()["messages"] if m["direction"] == "outbound"]
    shown = ghl_message(world, message_id)
    assert (shown["status"], (shown.get("error") or {}).get("code")) == ("delivered", None), outbound
    assert [m["id"] for m in outbound] == [message_id]
