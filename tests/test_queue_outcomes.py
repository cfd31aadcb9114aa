"""Outcomes of processing: done, skipped, retried with backoff, dead-lettered (R-Q-3, R-Q-7)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from df_middleware.config import Settings
from df_middleware.db.models import GhlOauthToken, SyncEffect, WebhookEvent
from df_middleware.db.session import Database
from df_middleware.db.types import utcnow
from df_middleware.errors import PermanentError, RetryableError
from df_middleware.queue.worker import Worker, retry_delay
from df_middleware.sync.registry import (
    ClaimedEvent,
    EffectRecord,
    HandlerContext,
    HandlerRegistry,
    HandlerResult,
    SyncLogEntry,
    default_registry,
)
from tests.event_factory import event_state, insert_event, log_rows


def failing_registry(error: Exception, runs: list[ClaimedEvent] | None = None) -> HandlerRegistry:
    registry = HandlerRegistry()

    @registry.register("ghl", "ContactUpdate")
    async def fail(ctx: HandlerContext, event: ClaimedEvent) -> HandlerResult:
        if runs is not None:
            runs.append(event)
        ctx.direction = "ghl_to_aloware"
        raise error

    return registry


async def make_due(db: Database, event_id: uuid.UUID) -> None:
    """Time travel for one row: its retry delay has passed."""
    async with db.session() as session:
        await session.execute(
            update(WebhookEvent)
            .where(WebhookEvent.id == event_id)
            .values(next_attempt_at=utcnow() - timedelta(seconds=1))
        )


async def effects(db: Database) -> list[SyncEffect]:
    async with db.session() as session:
        return list(await session.scalars(select(SyncEffect)))


async def test_success_writes_log_rows_and_effects_with_done(
    db: Database, make_settings: Callable[..., Settings]
) -> None:
    """R-Q-3, R-Q-7, R-IDEM-2: success → done with processed_at, the handler's sync_log rows
    (correlation_id = event id) and its effects, all in one transaction; a replay reporting the
    same effect again does not duplicate it."""
    registry = HandlerRegistry()

    @registry.register("ghl", "contactupdate")  # matched ignoring case
    async def sync_contact(_ctx: HandlerContext, event: ClaimedEvent) -> HandlerResult:
        return HandlerResult(
            entries=[
                SyncLogEntry(
                    "ghl_to_aloware", "contact", "c1", "c1", "success", message="upserted", target_id="a1"
                )
            ],
            effects=[EffectRecord(f"aloware:upsert:{event.entity_id}", "aloware", "a1")],
        )

    event_id = await insert_event(db, entity_id="c1")
    worker = Worker(make_settings(), db, registry)
    label = {"handler": f"{__name__}.{sync_contact.__qualname__}", "outcome": "success"}
    before = REGISTRY.get_sample_value("df_events_processed_total", label) or 0
    assert await worker.run_once() == 1
    assert REGISTRY.get_sample_value("df_events_processed_total", label) == before + 1

    state = await event_state(db, event_id)
    assert (state.status, state.error_message, state.locked_by, state.locked_until) == (
        "done",
        None,
        None,
        None,
    )
    assert state.processed_at is not None
    [row] = await log_rows(db, event_id)
    assert (row.direction, row.status, row.message, row.target_id) == (
        "ghl_to_aloware",
        "success",
        "upserted",
        "a1",
    )
    assert row.finished_at is not None
    assert row.started_at <= row.finished_at
    [effect] = await effects(db)
    assert (effect.effect_key, effect.event_id, effect.target_id) == (
        "aloware:upsert:c1",
        str(event_id),
        "a1",
    )

    async with db.session() as session:
        await session.execute(update(WebhookEvent).values(status="pending", next_attempt_at=utcnow()))
    assert await worker.run_once() == 1
    assert len(await effects(db)) == 1
    assert len(await log_rows(db, event_id)) == 2


@pytest.mark.parametrize(
    "error",
    [
        RetryableError("GHL answered 503"),
        httpx.ConnectTimeout("timed out"),
        httpx.ConnectError("connection refused"),
        OperationalError("UPDATE x", {}, Exception("deadlock detected")),
        KeyError("surprise"),
    ],
    ids=["retryable", "timeout", "transport", "database", "unexpected"],
)
async def test_retryable_failure_goes_back_to_pending_with_backoff(
    db: Database, make_settings: Callable[..., Settings], error: Exception
) -> None:
    """R-Q-3: network errors, timeouts, database conflicts and unexpected exceptions → pending,
    next attempt within the first backoff window (RETRY_BASE_SECONDS), error recorded, no
    sync_log row."""
    event_id = await insert_event(db)
    worker = Worker(make_settings(retry_base_seconds=2.0, max_attempts=5), db, failing_registry(error))
    before = utcnow()
    assert await worker.run_once() == 1
    state = await event_state(db, event_id)
    assert (state.status, state.attempts, state.locked_by) == ("pending", 1, None)
    assert state.error_message.startswith(type(error).__name__)
    assert before <= state.next_attempt_at <= utcnow() + timedelta(seconds=2)
    assert await log_rows(db, event_id) == []


def test_backoff_is_full_jitter_exponential_with_a_cap() -> None:
    """R-Q-3: delay after attempt n is uniform in [0, min(cap, base·2^(n-1))]."""
    for attempts in range(1, 15):
        bound = min(3600.0, 10.0 * 2 ** (attempts - 1))
        samples = [retry_delay(attempts, base=10.0, cap=3600.0) for _ in range(300)]
        assert all(0.0 <= s <= bound for s in samples)
        assert max(samples) > bound * 0.8  # jitter spans the window, not a fixed point
        assert min(samples) < bound * 0.2


def test_retry_after_wins_only_when_larger() -> None:
    """R-Q-3: a remote Retry-After is a lower bound for the delay."""
    assert retry_delay(1, base=10.0, cap=3600.0, retry_after=120.0) == 120.0
    assert retry_delay(30, base=10.0, cap=3600.0, retry_after=1.0) >= 1.0
    assert retry_delay(1, base=10.0, cap=3600.0, retry_after=None) <= 10.0


async def test_retry_after_from_the_remote_sets_the_next_attempt(
    db: Database, make_settings: Callable[..., Settings]
) -> None:
    """R-Q-3: RetryableError(retry_after=120) from a 429 → next attempt not before 120 s."""
    event_id = await insert_event(db)
    error = RetryableError("GHL answered 429", retry_after=120)
    worker = Worker(make_settings(retry_base_seconds=1.0), db, failing_registry(error))
    before = utcnow()
    await worker.run_once()
    state = await event_state(db, event_id)
    assert before + timedelta(seconds=120) <= state.next_attempt_at <= utcnow() + timedelta(seconds=121)
    assert state.error_message == "RetryableError: GHL answered 429"


async def test_dead_letter_after_max_attempts_with_one_error_row(
    db: Database, make_settings: Callable[..., Settings]
) -> None:
    """R-Q-3, R-Q-7: after MAX_ATTEMPTS retryable failures the event is `error` with its message
    and exactly one sync_log error row (none for the earlier, retried attempts)."""
    event_id = await insert_event(db, entity_id="c7")
    runs: list[ClaimedEvent] = []
    worker = Worker(make_settings(max_attempts=3), db, failing_registry(RetryableError("still down"), runs))
    for attempt in (1, 2):
        assert await worker.run_once() == 1
        state = await event_state(db, event_id)
        assert (state.status, state.attempts) == ("pending", attempt)
        assert await log_rows(db, event_id) == []
        await make_due(db, event_id)
    assert await worker.run_once() == 1

    state = await event_state(db, event_id)
    assert (state.status, state.attempts, state.error_message) == ("error", 3, "RetryableError: still down")
    assert state.locked_by is None
    [row] = await log_rows(db, event_id)
    assert (row.status, row.direction, row.entity_id, row.error_message) == (
        "error",
        "ghl_to_aloware",
        "c7",
        "RetryableError: still down",
    )
    assert await worker.run_once() == 0  # dead letters are never claimed
    assert len(runs) == 3


async def test_permanent_error_dead_letters_at_once(
    db: Database, make_settings: Callable[..., Settings]
) -> None:
    """R-Q-3: PermanentError (e.g. a 422 from the remote) → `error` on the first attempt, one row."""
    event_id = await insert_event(db)
    worker = Worker(make_settings(), db, failing_registry(PermanentError("GHL answered 422: bad phone")))
    await worker.run_once()
    state = await event_state(db, event_id)
    assert (state.status, state.attempts) == ("error", 1)
    assert state.error_message == "PermanentError: GHL answered 422: bad phone"
    rows = await log_rows(db, event_id)
    assert [(r.status, r.message) for r in rows] == [("error", "permanent failure")]


async def test_event_claimed_beyond_max_attempts_is_dead_lettered_without_running(
    db: Database, make_settings: Callable[..., Settings]
) -> None:
    """R-Q-3, R-REL-1: an event whose workers kept dying mid-run (lease expired at the last
    attempt) is dead-lettered when claimed again, instead of taking down another worker."""
    event_id = await insert_event(
        db, status="processing", attempts=3, locked_by="dead", locked_until=utcnow() - timedelta(seconds=1)
    )
    runs: list[ClaimedEvent] = []
    worker = Worker(make_settings(max_attempts=3), db, failing_registry(RuntimeError("boom"), runs))
    assert await worker.run_once() == 1
    state = await event_state(db, event_id)
    assert (state.status, state.attempts) == ("error", 4)
    assert runs == []
    assert [r.status for r in await log_rows(db, event_id)] == ["error"]


async def test_no_handler_yet_is_a_visible_skip(db: Database, make_settings: Callable[..., Settings]) -> None:
    """R-Q-3: a recognised event without a handler ends done with one `skipped: no handler yet` row."""
    event_id = await insert_event(db, event_type="NoteCreate", entity_type="note")
    await Worker(make_settings(), db, default_registry()).run_once()
    assert (await event_state(db, event_id)).status == "done"
    rows = await log_rows(db, event_id)
    assert [(r.status, r.message, r.direction) for r in rows] == [("skipped", "no handler yet", "internal")]


async def test_unknown_event_is_skipped_as_unsupported(
    db: Database, make_settings: Callable[..., Settings]
) -> None:
    """R-Q-3, R-IN-5: an event ingest could not classify ends done, `skipped: unsupported event`."""
    registry = HandlerRegistry()
    ran: list[str] = []

    @registry.register("aloware", "Mystery Event")
    async def never(_ctx: HandlerContext, _event: ClaimedEvent) -> HandlerResult:
        ran.append("ran")
        return HandlerResult()

    event_id = await insert_event(db, source="aloware", event_type="Mystery Event", entity_type="unknown")
    await Worker(make_settings(), db, registry).run_once()
    assert (await event_state(db, event_id)).status == "done"
    assert [(r.status, r.message) for r in await log_rows(db, event_id)] == [("skipped", "unsupported event")]
    assert ran == []


def recording(ran: list[str]) -> HandlerRegistry:
    registry = HandlerRegistry()

    @registry.register("ghl", "ContactUpdate", "AppInstall")
    async def handle(_ctx: HandlerContext, event: ClaimedEvent) -> HandlerResult:
        ran.append(str(event.payload.get("locationId")))
        return HandlerResult.skipped(event, "handled")

    return registry


async def test_foreign_location_is_skipped_without_running_the_handler(
    db: Database, make_settings: Callable[..., Settings]
) -> None:
    """§3.1: a GHL event of another location (not GHL_LOCATION_ID, not installed through OAuth)
    is done with `skipped: foreign location`; our location, an installed location and install
    events themselves reach the handler."""
    async with db.session() as session:
        session.add(GhlOauthToken(location_id="loc_installed", access_token="x", expires_at=utcnow()))
    foreign = await insert_event(db, payload={"locationId": "loc_other"})
    ours = await insert_event(db, payload={"locationId": "loc_test"})
    installed = await insert_event(db, payload={"locationId": "loc_installed"})
    install = await insert_event(
        db, event_type="AppInstall", entity_type="app", payload={"locationId": "loc_new"}
    )
    ran: list[str] = []
    worker = Worker(make_settings(ghl_location_id="loc_test"), db, recording(ran))
    assert await worker.run_once() == 4

    assert sorted(ran) == ["loc_installed", "loc_new", "loc_test"]
    assert (await event_state(db, foreign)).status == "done"
    assert [(r.status, r.message) for r in await log_rows(db, foreign)] == [("skipped", "foreign location")]
    for event_id in (ours, installed, install):
        assert [r.message for r in await log_rows(db, event_id)] == ["handled"]


async def test_nothing_is_foreign_without_a_configured_location(
    db: Database, make_settings: Callable[..., Settings]
) -> None:
    """§3.1: with GHL_LOCATION_ID unset and no OAuth installation there is nothing to compare
    with, so events are processed rather than all skipped."""
    await insert_event(db, payload={"locationId": "loc_any"})
    ran: list[str] = []
    await Worker(make_settings(ghl_location_id=None), db, recording(ran)).run_once()
    assert ran == ["loc_any"]


def test_registry_refuses_a_second_handler_for_one_event() -> None:
    """R-IN-5: one (source, event type) has one handler; names match ignoring case."""
    registry = HandlerRegistry()

    @registry.register("ghl", "ContactCreate", "contact.created")
    async def first(_ctx: HandlerContext, event: ClaimedEvent) -> HandlerResult:
        return HandlerResult.skipped(event, "x")

    assert ("GHL", "CONTACTCREATE") in registry
    with pytest.raises(ValueError, match="already handled"):
        registry.register("ghl", "contactcreate")(first)
