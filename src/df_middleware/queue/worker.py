"""The worker: claim due events from the three event tables, run their handlers, record outcomes.

One round, in the order a reader should follow it:

1. `claim_due_events` — one UPDATE … RETURNING per table moves due rows to `processing` with a
   lease (`locked_until`, `locked_by`) and counts the attempt (R-Q-1). A row is due when it is
   pending and its `next_attempt_at` has come, or when it is processing under an expired lease
   (its worker crashed). A row waits while an earlier active row of the same `ordering_key`
   exists in any of the three tables, so one entity's events run one at a time, in order (R-Q-4).
2. `_process` — resolve the handler, run it, and write the outcome (R-Q-3):
   success/skip → `done` with the handler's sync_log rows and effects, and the other events it
   resolves marked done (`HandlerResult.resolves`), in one transaction;
   failure → back to `pending` with a jittered exponential delay, or `error` (dead letter) with
   one error row in sync_log when the failure is permanent or attempts are used up.
   Every outcome write is guarded by `locked_by = me AND status = 'processing'`: a worker whose
   lease was taken over writes nothing.
3. `run` — loop: claim as many events as there are free slots (WORKER_CONCURRENCY), wait for a
   NOTIFY (PostgreSQL) or the poll interval, repeat; extend leases while events are in flight;
   on stop, finish or release in-flight events (R-Q-6).

Workers coordinate only through the database (R-RUN-4): any number may run at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import structlog
from sqlalchemy import (
    ColumnClause,
    ColumnElement,
    Integer,
    String,
    Text,
    and_,
    bindparam,
    exists,
    insert,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from tenacity import RetryCallState, Retrying, wait_random_exponential

from df_middleware.config import Settings
from df_middleware.connectors.suite import Connectors
from df_middleware.db.models import SyncEffect, SyncLog
from df_middleware.db.session import CONNECT_TIMEOUT_SECONDS, Database, asyncpg_dsn
from df_middleware.db.types import UTCDateTime, utcnow
from df_middleware.errors import PermanentError, RetryableError, SyncError
from df_middleware.observability import CLAIM_LATENCY, EVENTS_PROCESSED, PROCESSING_DURATION, get_logger
from df_middleware.queue.event_tables import EVENT_TABLES, EVENT_TABLES_BY_KIND, EventTable
from df_middleware.queue.operations import EventNotFound, EventStateError, mark_done_in
from df_middleware.sync.registry import (
    ClaimedEvent,
    EffectRecord,
    EventResolution,
    HandlerContext,
    HandlerRegistry,
    HandlerResult,
    SyncLogEntry,
    default_registry,
)

log = get_logger(__name__)

#: The channel the migration's trigger notifies when a row becomes pending (R-Q-2).
NOTIFY_CHANNEL = "df_events"
#: How often an idle LISTEN connection is checked for life (a dead one is replaced).
LISTENER_CHECK_SECONDS = 30.0
LISTENER_MAX_RECONNECT_SECONDS = 30.0
#: Error messages are stored for operators, not as a traceback archive.
MAX_ERROR_CHARS = 2000

# Status literals are rendered inline (not as bind parameters) so that PostgreSQL's generic
# plans and SQLite's planner can both match the partial `*_ordering_active_idx` predicate.
PENDING: ColumnClause[str] = literal_column("'pending'", String)
PROCESSING: ColumnClause[str] = literal_column("'processing'", String)

ContextFactory = Callable[[], HandlerContext]


class LeaseLost(Exception):
    """The event is no longer ours (lease expired and another worker took it, or an operator
    changed it): the outcome transaction is rolled back and nothing is written."""


def retry_delay(attempts: int, *, base: float, cap: float, retry_after: float | None = None) -> float:
    """Seconds until the next attempt after `attempts` failed ones (R-Q-3).

    Full-jitter exponential backoff: uniform in [0, min(cap, base * 2**(attempts-1))]. A
    `Retry-After` from the remote is a lower bound: the remote knows when it can take us again.
    """
    state = RetryCallState(retry_object=Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = max(1, attempts)
    delay = float(wait_random_exponential(multiplier=base, max=cap)(state))
    if retry_after is not None and retry_after > delay:
        return float(retry_after)
    return delay


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text[:MAX_ERROR_CHARS]


# The claim's parameters. Statements are built once per table and reused: building the
# correlated subqueries costs more CPU than running them.
NOW = bindparam("now", type_=UTCDateTime())
LEASE_END = bindparam("lease_end", type_=UTCDateTime())
WORKER_ID = bindparam("worker_id", type_=Text())
LIMIT = bindparam("limit", type_=Integer())


@functools.cache
def claim_statement(event_table: EventTable) -> Any:
    """UPDATE … RETURNING that leases up to :limit due rows of one table, oldest first (R-Q-1).

    Parameters: now, lease_end, worker_id, limit.
    """
    table = event_table.table
    candidate = table.alias("candidate")
    chosen = (
        select(candidate.c.id)
        .where(_claimable(candidate))
        .order_by(candidate.c.received_at, candidate.c.id)
        .limit(LIMIT)
        # PostgreSQL: concurrent claimers skip each other's rows instead of waiting.
        # SQLite ignores this; its BEGIN IMMEDIATE makes the statement the only writer.
        .with_for_update(skip_locked=True)
    )
    return (
        update(table)
        .where(table.c.id.in_(chosen))
        .values(
            status="processing",
            locked_until=LEASE_END,
            locked_by=WORKER_ID,
            attempts=table.c.attempts + 1,
        )
        .returning(
            table.c.id,
            table.c.event_type,
            table.c.payload_json,
            table.c.attempts,
            table.c.received_at,
            table.c.ordering_key,
            *event_table.identity_columns(),
        )
    )


def _claimable(candidate: Any) -> ColumnElement[bool]:
    """Due rows whose ordering key has no earlier active row in any event table (R-Q-1, R-Q-4)."""
    due = or_(
        and_(candidate.c.status == PENDING, candidate.c.next_attempt_at <= NOW),
        and_(candidate.c.status == PROCESSING, candidate.c.locked_until < NOW),
    )
    waits_for = [~exists(_blocking_rows(other, candidate)) for other in EVENT_TABLES]
    # Implied by `due`, but stated so the planner can walk `*_active_received_idx` in order.
    active = candidate.c.status.in_([PENDING, PROCESSING])
    return and_(active, due, *waits_for)


def _blocking_rows(other: EventTable, candidate: Any) -> Any:
    """Rows of `other` that must finish before `candidate` may start.

    Same ordering key, still active, and either received earlier (ties broken by id) or being
    processed right now under a live lease (e.g. a replayed older event must not overtake it).
    """
    earlier = other.table.alias(f"earlier_{other.kind}")
    return select(literal_column("1")).where(
        earlier.c.ordering_key == candidate.c.ordering_key,
        earlier.c.status.in_([PENDING, PROCESSING]),
        earlier.c.id != candidate.c.id,
        or_(
            earlier.c.received_at < candidate.c.received_at,
            and_(earlier.c.received_at == candidate.c.received_at, earlier.c.id < candidate.c.id),
            and_(earlier.c.status == PROCESSING, earlier.c.locked_until >= NOW),
        ),
    )


@dataclass
class _InFlight:
    event: ClaimedEvent
    task: asyncio.Task[None]


class Worker:
    """Claims and processes events until stopped. See the module docstring for the flow."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        registry: HandlerRegistry | None = None,
        *,
        worker_id: str | None = None,
        context_factory: ContextFactory | None = None,
        connectors: Connectors | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.connectors = connectors
        self.registry = registry if registry is not None else default_registry()
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._context_factory = context_factory or (
            lambda: HandlerContext(settings=settings, db=db, connectors=connectors)
        )
        self._in_flight: dict[uuid.UUID, _InFlight] = {}
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._running = False
        self._first_table = 0

    @property
    def lease(self) -> timedelta:
        return timedelta(seconds=self.settings.lease_seconds)

    @property
    def free_slots(self) -> int:
        return self.settings.worker_concurrency - len(self._in_flight)

    # --- claiming --------------------------------------------------------------------------------

    async def claim_due_events(self, limit: int) -> list[ClaimedEvent]:
        """Lease up to `limit` due events, oldest first, across the three tables.

        One statement per table, in one transaction. Tables are tried in turn, starting one
        further each call, so a busy table cannot starve the others.
        """
        now = utcnow()
        start = self._first_table
        self._first_table = (start + 1) % len(EVENT_TABLES)
        claimed: list[ClaimedEvent] = []
        async with self.db.session() as session:
            for event_table in EVENT_TABLES[start:] + EVENT_TABLES[:start]:
                if len(claimed) >= limit:
                    break
                parameters = {
                    "now": now,
                    "lease_end": now + self.lease,
                    "worker_id": self.worker_id,
                    "limit": limit - len(claimed),
                }
                rows = (await session.execute(claim_statement(event_table), parameters)).mappings().all()
                claimed += [self._claimed_event(event_table, row) for row in rows]
        # RETURNING does not promise an order; handlers start oldest first.
        return sorted(claimed, key=lambda e: (e.received_at, e.id))

    @staticmethod
    def _claimed_event(event_table: EventTable, row: Mapping[Any, Any]) -> ClaimedEvent:
        return ClaimedEvent(
            kind=event_table.kind,
            id=row["id"],
            source=event_table.source(row),
            event_type=row["event_type"],
            entity_type=event_table.entity_type(row),
            entity_id=event_table.entity_id(row),
            ordering_key=row["ordering_key"],
            payload=dict(row["payload_json"] or {}),
            attempts=row["attempts"],
            received_at=row["received_at"],
        )

    # --- processing one event ----------------------------------------------------------------------

    async def _process(self, event: ClaimedEvent) -> None:
        """Run one event's handler and record its outcome. Never raises except on cancellation."""
        with structlog.contextvars.bound_contextvars(
            event_id=str(event.id), event_kind=event.kind, event_type=event.event_type
        ):
            started_at = utcnow()
            if event.attempts == 1:
                table = EVENT_TABLES_BY_KIND[event.kind].name
                CLAIM_LATENCY.labels(table).observe(
                    max(0.0, (started_at - event.received_at).total_seconds())
                )
            clock = time.perf_counter()
            name = "unresolved"
            context = HandlerContext(settings=self.settings, db=self.db, connectors=self.connectors)
            try:
                name, handler = self.registry.resolve(event)
                context = self._context_factory()
                if event.attempts > self.settings.max_attempts:
                    outcome = await self._give_up(event, context, started_at)
                else:
                    result = await handler(context, event)
                    outcome = await self._complete(event, result)
            except LeaseLost:
                outcome = "lease_lost"
                log.warning("lease lost; outcome discarded", handler=name, worker=self.worker_id)
            except Exception as exc:
                outcome = await self._fail(event, exc, context, started_at, handler=name)
            duration = time.perf_counter() - clock
            PROCESSING_DURATION.labels(name).observe(duration)
            EVENTS_PROCESSED.labels(name, outcome).inc()
            log.info(
                "event processed", handler=name, outcome=outcome, attempts=event.attempts, seconds=duration
            )

    async def _complete(self, event: ClaimedEvent, result: HandlerResult) -> str:
        """done + sync_log rows + effects + resolved events, in one transaction (R-Q-3, R-Q-7,
        R-IDEM-2)."""
        async with self.db.session() as session:
            await self._finish_claim(session, event, status="done", processed_at=utcnow(), error_message=None)
            await self._write_log(session, event, result.entries)
            await self._record_effects(session, event, result.effects)
            resolved = await self._resolve(session, result.resolves)
        for resolution, previous in resolved:
            log.info("event resolved", resolved_event_id=str(resolution.event_id), previous_status=previous)
        entries = result.entries
        return "skipped" if entries and all(e.status == "skipped" for e in entries) else "success"

    async def _fail(
        self,
        event: ClaimedEvent,
        exc: Exception,
        context: HandlerContext,
        started_at: datetime,
        *,
        handler: str,
    ) -> str:
        """Retry later, or dead-letter when retrying cannot help or attempts are used up (R-Q-3)."""
        message = _error_text(exc)
        try:
            if isinstance(exc, PermanentError) or event.attempts >= self.settings.max_attempts:
                reason = (
                    "permanent failure"
                    if isinstance(exc, PermanentError)
                    else f"gave up after {event.attempts} attempts"
                )
                await self._dead_letter(
                    event,
                    context,
                    started_at,
                    reason=reason,
                    error=message,
                    retries_ran_out=not isinstance(exc, PermanentError),
                )
                log.error(
                    "event dead-lettered",
                    handler=handler,
                    error=message,
                    exc_info=None if isinstance(exc, SyncError) else exc,
                )
                return "dead_letter"
            delay = retry_delay(
                event.attempts,
                base=self.settings.retry_base_seconds,
                cap=self.settings.retry_max_seconds,
                retry_after=getattr(exc, "retry_after", None),
            )
            async with self.db.session() as session:
                await self._finish_claim(
                    session,
                    event,
                    status="pending",
                    next_attempt_at=utcnow() + timedelta(seconds=delay),
                    error_message=message,
                )
            # Known failures are routine; anything else is a bug worth a traceback.
            log.warning(
                "event will be retried",
                handler=handler,
                error=message,
                retry_in_seconds=round(delay, 3),
                exc_info=None if isinstance(exc, SyncError) else exc,
            )
            return "retry"
        except LeaseLost:
            log.warning("lease lost; failure not recorded", handler=handler, error=message)
            return "lease_lost"
        except Exception:
            # The database itself is failing: the lease will expire and the event be retried.
            log.exception("could not record the outcome; the event will be retried after its lease")
            return "unrecorded"

    async def _give_up(self, event: ClaimedEvent, context: HandlerContext, started_at: datetime) -> str:
        """A row claimed beyond MAX_ATTEMPTS: earlier attempts ended with no outcome (the worker
        died mid-event, e.g. a poison event). Dead-letter it instead of crashing another worker."""
        await self._dead_letter(
            event,
            context,
            started_at,
            reason=f"gave up after {event.attempts - 1} attempts",
            error="no outcome recorded for the last attempt (worker stopped or lost its lease)",
            retries_ran_out=True,
        )
        log.error("event dead-lettered: attempts exhausted without an outcome")
        return "dead_letter"

    async def _dead_letter(
        self,
        event: ClaimedEvent,
        context: HandlerContext,
        started_at: datetime,
        *,
        reason: str,
        error: str,
        retries_ran_out: bool = False,
    ) -> None:
        """`error` status plus exactly one sync_log error row (R-Q-3, R-Q-7), and, when its
        retries ran out (not a PermanentError: the handler that raised it decided, and could say
        so, itself), the follow-up events its flow queues to tell the people who wait on it, in
        the same transaction: dead-lettered and followed up together or neither, whatever dies
        or is down next (break14 finding 5)."""
        entity_id = event.entity_id or str(event.id)
        entry = SyncLogEntry(
            direction=context.direction,
            entity_type=event.entity_type,
            entity_id=entity_id,
            source_id=entity_id,
            status="error",
            message=reason,
            error_message=error,
            started_at=started_at,
            finished_at=utcnow(),
        )
        follow_ups = self.registry.dead_letter_follow_ups(event, error) if retries_ran_out else ()
        async with self.db.session() as session:
            await self._finish_claim(session, event, status="error", error_message=error)
            await self._write_log(session, event, [entry])
            session.add_all(follow_ups)
        for follow_up in follow_ups:
            log.info("follow-up queued with the dead letter", follow_up_type=follow_up.event_type)

    async def _finish_claim(self, session: AsyncSession, event: ClaimedEvent, **values: Any) -> None:
        """Release our lease with the outcome's values, or raise LeaseLost if it is not ours."""
        table = EVENT_TABLES_BY_KIND[event.kind].table
        result = await session.execute(
            update(table)
            .where(
                table.c.id == event.id,
                table.c.locked_by == self.worker_id,
                table.c.status == "processing",
            )
            .values(locked_until=None, locked_by=None, **values)
        )
        if getattr(result, "rowcount", 0) == 0:
            raise LeaseLost(str(event.id))

    @staticmethod
    async def _write_log(session: AsyncSession, event: ClaimedEvent, entries: Sequence[SyncLogEntry]) -> None:
        if not entries:
            return
        rows = [
            {
                "direction": e.direction,
                "entity_type": e.entity_type,
                "entity_id": e.entity_id,
                "source_id": e.source_id,
                "target_id": e.target_id,
                "status": e.status,
                "message": e.message,
                "error_message": e.error_message,
                "started_at": e.started_at,
                "finished_at": e.finished_at,
                "correlation_id": str(event.id),
            }
            for e in entries
        ]
        await session.execute(insert(SyncLog), rows)

    @staticmethod
    async def _record_effects(
        session: AsyncSession, event: ClaimedEvent, effects: Sequence[EffectRecord]
    ) -> None:
        """Record the handler's effects as done: insert keys not yet recorded, complete intents
        still `started` (the ledger records each write the moment it answers, so this is mostly a
        no-op). A replayed event may report an effect its first run already recorded; that is
        expected, not a conflict."""
        if not effects:
            return
        keys = [e.effect_key for e in effects]
        found = await session.execute(
            select(SyncEffect.effect_key, SyncEffect.state).where(SyncEffect.effect_key.in_(keys))
        )
        known: dict[str, str] = {key: state for key, state in found.all()}
        rows = [
            {
                "effect_key": e.effect_key,
                "event_id": str(event.id),
                "target_system": e.target_system,
                "target_id": e.target_id,
                "state": "done",
            }
            for e in effects
            if e.effect_key not in known
        ]
        if rows:
            await session.execute(insert(SyncEffect), rows)
        for effect in effects:
            if known.get(effect.effect_key) == "started":
                await session.execute(
                    update(SyncEffect)
                    .where(SyncEffect.effect_key == effect.effect_key, SyncEffect.state == "started")
                    .values(state="done", target_id=effect.target_id, event_id=str(event.id))
                )

    @staticmethod
    async def _resolve(
        session: AsyncSession, resolutions: Sequence[EventResolution]
    ) -> list[tuple[EventResolution, str]]:
        """Mark the events a handler resolved done, as the queue's mark-done does; returns those
        that changed, with the status they left.

        An event that no longer exists has nothing left to resolve. One that cannot be marked done
        now (a worker is processing it, e.g. an operator's replay, or it changed meanwhile) makes
        the whole outcome roll back and the event be retried: by then it will have ended.
        """
        changed: list[tuple[EventResolution, str]] = []
        for resolution in resolutions:
            try:
                previous = await mark_done_in(session, resolution.event_id, resolution.actor)
            except EventNotFound:
                log.warning("event to resolve no longer exists", resolved_event_id=str(resolution.event_id))
                continue
            except EventStateError as exc:
                raise RetryableError(f"could not resolve event {resolution.event_id} yet: {exc}") from exc
            if previous is not None:
                changed.append((resolution, previous))
        return changed

    # --- leases ----------------------------------------------------------------------------------

    async def _extend_leases(self) -> None:
        """Push `locked_until` forward for every event this worker still has in flight."""
        now = utcnow()
        by_kind: dict[str, list[uuid.UUID]] = {}
        for in_flight in list(self._in_flight.values()):
            by_kind.setdefault(in_flight.event.kind, []).append(in_flight.event.id)
        if not by_kind:
            return
        async with self.db.session() as session:
            for kind, ids in by_kind.items():
                table = EVENT_TABLES_BY_KIND[kind].table
                await session.execute(
                    update(table)
                    .where(
                        table.c.id.in_(ids),
                        table.c.locked_by == self.worker_id,
                        table.c.status == "processing",
                    )
                    .values(locked_until=now + self.lease)
                )

    async def _keep_leases(self) -> None:
        """Heartbeat: a long handler must not look like a crashed one."""
        interval = self.settings.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self._extend_leases()
            except Exception as exc:
                log.warning("could not extend leases", error=_error_text(exc))

    @contextlib.asynccontextmanager
    async def _leases_kept(self) -> AsyncIterator[None]:
        heartbeat = asyncio.create_task(self._keep_leases(), name=f"lease-heartbeat:{self.worker_id}")
        try:
            yield
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def release(self, events: Sequence[ClaimedEvent]) -> int:
        """Give unfinished events back: `pending`, lease cleared, the attempt not counted (R-Q-6).

        Only rows still leased by this worker are touched, so an event that finished (or was
        taken over) meanwhile keeps its state.
        """
        released = 0
        by_kind: dict[str, list[uuid.UUID]] = {}
        for event in events:
            by_kind.setdefault(event.kind, []).append(event.id)
        async with self.db.session() as session:
            for kind, ids in by_kind.items():
                table = EVENT_TABLES_BY_KIND[kind].table
                result = await session.execute(
                    update(table)
                    .where(
                        table.c.id.in_(ids),
                        table.c.locked_by == self.worker_id,
                        table.c.status == "processing",
                    )
                    .values(
                        status="pending",
                        attempts=table.c.attempts - 1,
                        locked_until=None,
                        locked_by=None,
                    )
                )
                released += getattr(result, "rowcount", 0)
        return released

    # --- running ---------------------------------------------------------------------------------

    def _start(self, event: ClaimedEvent) -> asyncio.Task[None]:
        task = asyncio.create_task(self._process(event), name=f"event:{event.id}")
        self._in_flight[event.id] = _InFlight(event, task)

        def finished(done: asyncio.Task[None]) -> None:
            self._in_flight.pop(event.id, None)
            self._wakeup.set()  # a slot is free: claim again
            if not done.cancelled() and done.exception() is not None:  # a bug in _process itself
                log.error("event task crashed", event_id=str(event.id), exc_info=done.exception())

        task.add_done_callback(finished)
        return task

    async def _cancel_and_release(self, entries: Sequence[_InFlight]) -> None:
        for entry in entries:
            entry.task.cancel()
        await asyncio.gather(*(entry.task for entry in entries), return_exceptions=True)
        released = await self.release([entry.event for entry in entries])
        if released:
            log.info("released unfinished events", count=released)

    async def run_once(self) -> int:
        """Claim one batch, process it to the end, and return how many events were processed."""
        events = await self.claim_due_events(min(self.settings.worker_batch, self.free_slots))
        if not events:
            return 0
        async with self._leases_kept():
            tasks = [self._start(event) for event in events]
            try:
                await asyncio.gather(*tasks)
            except asyncio.CancelledError:
                await self._cancel_and_release([e for e in self._in_flight.values() if e.task in tasks])
                raise
        return len(events)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Process events until `stop` is set or `stop()` is called, then shut down gracefully.

        A stop requested before `run` starts is honoured: the worker then exits at once. A
        stopped worker stays stopped (build a new one to start again).
        """
        if self._running:
            raise RuntimeError("this worker is already running")
        self._running = True
        self._stopped.clear()
        helpers = [asyncio.create_task(self._keep_leases(), name="lease-heartbeat")]
        if stop is not None:
            helpers.append(asyncio.create_task(self._stop_when(stop), name="stop-watch"))
        if self.db.is_postgres:
            helpers.append(asyncio.create_task(self._listen_for_new_events(), name="listen"))
        log.info("worker started", worker=self.worker_id, concurrency=self.settings.worker_concurrency)
        try:
            await self._claim_loop()
        finally:
            try:
                await self._drain()
            finally:
                for helper in helpers:
                    helper.cancel()
                await asyncio.gather(*helpers, return_exceptions=True)
                self._running = False
                self._stopped.set()
                log.info("worker stopped", worker=self.worker_id)

    async def stop(self) -> None:
        """Stop claiming, let in-flight events finish within the grace period, release the rest."""
        self._stopping.set()
        self._wakeup.set()
        if self._running:
            await self._stopped.wait()

    async def _stop_when(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._stopping.set()
        self._wakeup.set()

    async def _claim_loop(self) -> None:
        while not self._stopping.is_set():
            wanted = min(self.settings.worker_batch, self.free_slots)
            if wanted > 0:
                try:
                    events = await self.claim_due_events(wanted)
                except Exception as exc:
                    log.warning("claim failed; retrying after the poll interval", error=_error_text(exc))
                    events = []
                for event in events:
                    self._start(event)
                if events and len(events) == wanted and not self._stopping.is_set():
                    continue  # a full batch: there is probably more
            await self._wait_for_work()

    async def _wait_for_work(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout=self.settings.poll_seconds)
        self._wakeup.clear()

    async def _drain(self) -> None:
        """Graceful shutdown (R-Q-6): wait up to SHUTDOWN_GRACE_SECONDS, then release the rest."""
        entries = list(self._in_flight.values())
        if not entries:
            return
        log.info("waiting for in-flight events", count=len(entries))
        _, unfinished = await asyncio.wait(
            [entry.task for entry in entries], timeout=self.settings.shutdown_grace_seconds
        )
        if unfinished:
            await self._cancel_and_release([entry for entry in entries if entry.task in unfinished])

    # --- wake-up (PostgreSQL) ----------------------------------------------------------------------

    def _on_notify(self, *_args: object) -> None:
        self._wakeup.set()

    async def _listen_for_new_events(self) -> None:
        """LISTEN df_events on a dedicated connection; reconnect with backoff when it drops.

        While the listener is down the claim loop still polls every POLL_SECONDS, so a lost
        connection costs latency, never events.
        """
        dsn = asyncpg_dsn(self.db.database_url)
        backoff = 1.0
        while True:
            try:
                await self._listen_until_lost(dsn)
                log.warning("LISTEN connection closed; polling until it is back")
                backoff = 1.0
            except Exception as exc:
                log.warning("LISTEN connection failed; polling until it is back", error=_error_text(exc))
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, LISTENER_MAX_RECONNECT_SECONDS)

    async def _listen_until_lost(self, dsn: str) -> None:
        connection = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_SECONDS)
        try:
            lost = asyncio.Event()
            connection.add_termination_listener(lambda _connection: lost.set())
            await connection.add_listener(NOTIFY_CHANNEL, self._on_notify)
            log.debug("listening for new events", channel=NOTIFY_CHANNEL)
            self._wakeup.set()  # rows inserted while nobody was listening
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), timeout=LISTENER_CHECK_SECONDS)
                if not lost.is_set():
                    await connection.fetchval("SELECT 1")  # a silently dead connection raises here
        finally:
            connection.terminate()
