"""A handler settles another event through the worker's outcome (R-Q-3, R-Q-7, R-IDEM-2, R-TXT-5).

Handlers never write event rows: when one learns that another stored event is settled (Verity's
late receipt of a dead-lettered send), it returns `HandlerResult.resolves` and the worker marks
that event done with the queue's own mark-done, in the transaction that records the handler's
outcome. The first tests use a small registry on both engines; the last ones run the real
texting handlers with the simulators and interrupt a late confirmation before its outcome is
committed, as a killed process would.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import delete, select, update

import df_middleware.sync.texting as texting
from df_middleware.config import Settings
from df_middleware.db.models import MessageMapping, SyncLog, TextingWebhookEvent, WebhookEvent
from df_middleware.db.session import Database
from df_middleware.db.types import utcnow
from df_middleware.queue.operations import get_event, quarantine_event
from df_middleware.queue.worker import Worker
from df_middleware.sync.registry import (
    ClaimedEvent,
    EventResolution,
    HandlerContext,
    HandlerRegistry,
    HandlerResult,
    SyncLogEntry,
)
from tests.event_factory import event_state, insert_event, log_rows
from tests.sync_world import CONVERSATION_PROVIDER, LOCATION, SyncWorld


def resolving_registry(resolves: Callable[[ClaimedEvent], list[EventResolution]]) -> HandlerRegistry:
    """A registry whose one handler reports a success and resolves what `resolves` says."""
    registry = HandlerRegistry()

    @registry.register("ghl", "ContactUpdate")
    async def settle(_ctx: HandlerContext, event: ClaimedEvent) -> HandlerResult:
        entry = SyncLogEntry("internal", "contact", "c1", "c1", "success", message="settled")
        return HandlerResult(entries=[entry], resolves=resolves(event))

    return registry


async def test_the_worker_resolves_what_the_handler_names_with_its_outcome(
    db: Database, make_settings: Callable[..., Settings]
) -> None:
    """R-Q-3, R-Q-7: the handler's event ends `done` and the dead letter it resolves is marked done
    with a sync_log row naming who resolved it; an event already done is left as it is, and an
    event that no longer exists has nothing left to resolve (the outcome is still recorded)."""
    dead_letter = await insert_event(db, status="error", error_message="boom", entity_id="dl")
    already_done = await insert_event(db, status="done", entity_id="done")
    gone = uuid.uuid4()
    registry = resolving_registry(
        lambda _event: [
            EventResolution(dead_letter, actor="the receipt"),
            EventResolution(already_done, actor="the receipt"),
            EventResolution(gone, actor="the receipt"),
        ]
    )
    event_id = await insert_event(db, entity_id="c1")

    assert await Worker(make_settings(), db, registry).run_once() == 1

    assert (await event_state(db, event_id)).status == "done"
    resolved = await event_state(db, dead_letter)
    assert (resolved.status, resolved.error_message) == ("done", None)
    assert [(r.status, r.message) for r in await log_rows(db, dead_letter)] == [
        ("skipped", "marked done by the receipt")
    ]
    assert await log_rows(db, already_done) == []
    assert [r.message for r in await log_rows(db, event_id)] == ["settled"]


async def test_a_resolution_is_committed_with_the_outcome_or_not_at_all(
    db: Database, make_settings: Callable[..., Settings]
) -> None:
    """R-Q-3, R-IDEM-2: an operator quarantines the event while its handler runs, so the worker's
    outcome is discarded (its lease is gone); the resolution it carried is discarded with it and
    the dead letter stays for whoever handles the quarantined event."""
    dead_letter = await insert_event(db, status="error", error_message="boom")
    event_id = await insert_event(db, entity_id="c1")
    registry = HandlerRegistry()

    @registry.register("ghl", "ContactUpdate")
    async def settle_while_quarantined(ctx: HandlerContext, event: ClaimedEvent) -> HandlerResult:
        await quarantine_event(ctx.db, event.id, "dispute", actor="ops@example.com")
        return HandlerResult(resolves=[EventResolution(dead_letter, actor="the receipt")])

    await Worker(make_settings(), db, registry).run_once()

    assert (await event_state(db, event_id)).status == "quarantined"
    assert (await event_state(db, dead_letter)).status == "error"
    assert await log_rows(db, dead_letter) == []


async def test_a_resolution_that_cannot_apply_yet_retries_the_event(
    db: Database, make_settings: Callable[..., Settings]
) -> None:
    """R-Q-3: the event to resolve is being processed (an operator replayed it and a worker holds
    it), so it cannot be marked done now: the whole outcome rolls back and the event is retried;
    once the other event has ended, the retry resolves nothing more and ends `done`."""
    busy = await insert_event(
        db,
        status="processing",
        locked_by="another-worker",
        locked_until=utcnow() + timedelta(minutes=5),
        entity_id="busy",
    )
    event_id = await insert_event(db, entity_id="c1")
    registry = resolving_registry(lambda _event: [EventResolution(busy, actor="the receipt")])
    worker = Worker(make_settings(), db, registry)

    await worker.run_once()

    retried = await event_state(db, event_id)
    assert (retried.status, retried.attempts) == ("pending", 1)
    assert "being processed by another-worker" in (retried.error_message or "")
    assert await log_rows(db, event_id) == []
    assert (await event_state(db, busy)).status == "processing"

    async with db.session() as session:  # the other worker finishes; the retry's delay passes
        await session.execute(
            update(WebhookEvent).where(WebhookEvent.id == busy).values(status="done", locked_by=None)
        )
        await session.execute(
            update(WebhookEvent).where(WebhookEvent.id == event_id).values(next_attempt_at=utcnow())
        )
    await worker.run_once()

    assert (await event_state(db, event_id)).status == "done"
    assert await log_rows(db, busy) == []


# --- the late confirmation of an unconfirmed Verity send, interrupted --------------------------------


@pytest.fixture
def world(sync_world: SyncWorld) -> SyncWorld:
    sync_world.use_modules(texting)
    return sync_world


async def dead_lettered_send(world: SyncWorld) -> tuple[dict[str, str], uuid.UUID]:
    """An agent's SMS that Verity sends but whose answer is lost: dead-lettered as unconfirmed.
    Verity's receipts (`message.sent`, `message.delivered`) are then stored, not yet processed."""
    world.verity.faults(lost_response_rate=1.0)
    contact = world.ghl.sim.create_contact(LOCATION, {"phone": "+19195551234", "firstName": "Ann"}).contact
    _, payload = world.ghl.sim.send_sms_as_user(
        LOCATION, contact["id"], "See you Tuesday!", conversation_provider_id=CONVERSATION_PROVIDER
    )
    await world.deliver_provider_message(dict(payload))
    assert await world.worker().run_once() == 1  # the send alone: its receipts are not stored yet
    world.verity.faults()
    async with world.db.session() as session:
        [(dead_letter, status)] = (await session.execute(select(WebhookEvent.id, WebhookEvent.status))).all()
    assert status == "error"
    assert await world.verity.sim.drain()
    return dict(payload), dead_letter


async def run_handler_and_die(world: SyncWorld) -> HandlerResult:
    """A worker claims the oldest receipt and runs its handler to the end, then the process dies
    before the worker records the outcome: the lease is left to expire."""
    worker = world.worker()
    [event] = await worker.claim_due_events(1)
    assert event.event_type == "message.sent"
    _, handler = world.registry.resolve(event)
    result = await handler(HandlerContext(world.settings, world.db, connectors=world.connectors), event)
    async with world.db.session() as session:
        await session.execute(
            update(TextingWebhookEvent)
            .where(TextingWebhookEvent.id == event.id)
            .values(locked_until=utcnow() - timedelta(seconds=1))
        )
    return result


@pytest.mark.parametrize("died", ["after the mapping", "between the send's record and the mapping"])
async def test_a_late_confirmation_cut_short_is_finished_by_its_retry(world: SyncWorld, died: str) -> None:
    """R-TXT-5, R-IDEM-2, R-Q-3: Verity's `message.sent` shows the unconfirmed send went out. Its
    handler puts the GHL message back to pending, records the send against the dead letter and maps
    it; the process dies before the worker commits the outcome that resolves the dead letter (also
    when it dies before the mapping). The retry of the same receipt finds the send recorded and
    still resolves the dead letter: nothing sent twice, the GHL message follows the receipts."""
    payload, dead_letter = await dead_lettered_send(world)

    interrupted = await run_handler_and_die(world)
    assert [r.event_id for r in interrupted.resolves] == [dead_letter]
    if died != "after the mapping":
        async with world.db.session() as session:
            await session.execute(delete(MessageMapping))
    assert (await event_state(world.db, dead_letter)).status == "error"

    await world.process()

    resolved = await get_event(world.db, dead_letter)
    assert resolved is not None
    assert resolved["status"] == "done"
    assert any(
        (row["message"] or "").startswith("marked done by df-middleware: Verity confirmed the send")
        for row in resolved["sync_log"]
    )
    assert len(world.verity.sim.sent_messages) == 1
    texting_id = world.verity.sim.sent_messages[0]["messageId"]
    assert [e["effect_key"] for e in resolved["effects"]] == [f"verity:send:{payload['messageId']}"]
    original = next(m for m in world.ghl.sim.snapshot()["messages"] if m["id"] == payload["messageId"])
    assert original["statusHistory"][-1] == "delivered"
    assert "failed" in original["statusHistory"]
    async with world.db.session() as session:
        [mapping] = await session.scalars(select(MessageMapping))
        receipts = list(await session.scalars(select(TextingWebhookEvent.status)))
        resolved_by = list(
            await session.scalars(select(SyncLog.message).where(SyncLog.message.contains("dead letter")))
        )
    assert (mapping.ghl_message_id, mapping.texting_message_id, mapping.status) == (
        payload["messageId"],
        texting_id,
        "delivered",
    )
    assert receipts == ["done", "done"]
    assert len(resolved_by) == 1  # the retry's own row says it resolved the dead letter
