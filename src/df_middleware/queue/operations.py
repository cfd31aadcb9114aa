"""Operator actions on stored events: list, inspect, replay, mark done, quarantine, prune, stats.

The CLI (`df-middleware events …`, `prune`) and the admin API call these functions; they hold
the rules, the callers only parse and print. Every state change is a guarded UPDATE (`WHERE
status = <the status just checked>`), so an action racing a worker either wins cleanly or
reports that the event changed under it — it never half-applies.

Rules worth knowing:
- An event being processed (`processing`) cannot be replayed or marked done: its worker still
  owns it. Quarantining it is allowed (the way to stop a poison event); the worker's outcome
  is then discarded, because outcome writes require the worker's own lease.
- `quarantine_events` lists exactly the currently quarantined events: un-quarantining (or
  marking a quarantined event done) deletes the row. The act itself is logged with its actor.
- Replaying never forgets recorded effects (sync_effects): they are what makes a replay safe.
  The one exception is the operator's `resend_unconfirmed`, which drops the event's intents
  (writes of unknown outcome) after the operator checked they were not made.
  For the same reason `prune` keeps every effect and sync_log row of an event that is still
  stored, however old (see `prune`).
- The worker marks events that a handler resolved done with `mark_done_in`, inside its outcome's
  transaction: handlers reach event rows only through this module.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Collection
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Row,
    Table,
    and_,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from df_middleware.db.models import (
    EVENT_STATUSES,
    Base,
    ContactMapping,
    EchoGuard,
    GhlConversation,
    OAuthStateUse,
    QuarantineEvent,
    SyncEffect,
    SyncLog,
)
from df_middleware.db.session import Database
from df_middleware.db.types import utcnow
from df_middleware.observability import QUEUE_DEPTH, QUEUE_OLDEST_PENDING_AGE, get_logger
from df_middleware.queue.event_tables import EVENT_TABLES, EVENT_TABLES_BY_KIND, EventTable

log = get_logger(__name__)

MAX_PAGE_SIZE = 200
#: Statuses a replay may start from. Quarantined events must be un-quarantined first; a
#: processing event belongs to its worker.
REPLAYABLE_STATUSES = ("pending", "done", "error")


class EventOperationError(ValueError):
    """An operator action that cannot be done; the message says why (shown to the operator).

    A ValueError, so callers that only tell "bad request" from "crash" treat it right; the
    admin API maps EventNotFound to 404 and EventStateError to 409."""


class EventNotFound(EventOperationError):
    def __init__(self, event_id: object) -> None:
        super().__init__(f"no event with id {event_id}")
        self.event_id = event_id


class EventStateError(EventOperationError):
    """The event's status does not allow the action (e.g. replaying a quarantined event)."""


@dataclass(frozen=True)
class EventFilters:
    """The filters of `GET /api/admin/events` and `events list`."""

    kind: str | None = None
    source: str | None = None
    status: str | None = None
    event_type: str | None = None
    entity_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        if self.kind is not None and self.kind not in EVENT_TABLES_BY_KIND:
            raise ValueError(f"kind must be one of {', '.join(EVENT_TABLES_BY_KIND)}")
        if self.status is not None and self.status not in EVENT_STATUSES:
            raise ValueError(f"status must be one of {', '.join(EVENT_STATUSES)}")
        for bound in (self.since, self.until):
            if bound is not None and bound.tzinfo is None:
                raise ValueError("since/until need a time zone")

    def tables(self) -> list[EventTable]:
        """The tables these filters can match: a kind, or a source only one table holds."""
        tables = [EVENT_TABLES_BY_KIND[self.kind]] if self.kind else list(EVENT_TABLES)
        if self.source is not None:
            # texting and broadcast rows have a fixed source; webhook rows a column.
            tables = [t for t in tables if t.kind == "webhook" or t.kind == self.source]
        return tables

    def conditions(self, event_table: EventTable) -> list[ColumnElement[bool]]:
        t = event_table.table
        conditions: list[ColumnElement[bool]] = []
        if self.source is not None and event_table.kind == "webhook":
            conditions.append(t.c.source == self.source)
        if self.status is not None:
            conditions.append(t.c.status == self.status)
        if self.event_type is not None:
            conditions.append(func.lower(t.c.event_type) == self.event_type.lower())
        if self.entity_id is not None:
            conditions.append(event_table.entity_id_column == self.entity_id)
        if self.since is not None:
            conditions.append(t.c.received_at >= self.since)
        if self.until is not None:
            conditions.append(t.c.received_at < self.until)
        return conditions


@dataclass(frozen=True)
class EventPage:
    """One page of events, newest first; pass `next_cursor` back for the next page (None: last)."""

    items: list[dict[str, Any]]
    next_cursor: str | None


@dataclass(frozen=True)
class QueueStats:
    """Queue depth per (table, status) and the age in seconds of each table's oldest pending row."""

    depth: list[tuple[str, str, int]]
    oldest_pending_age: dict[str, float | None]


# --- reading -------------------------------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def encode_cursor(received_at: datetime, event_id: uuid.UUID) -> str:
    raw = json.dumps([received_at.isoformat(), str(event_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        received_at, event_id = json.loads(raw)
        position = (datetime.fromisoformat(received_at), uuid.UUID(event_id))
        position[0].astimezone(UTC)  # a forged time may lie outside what UTC can hold
    except (binascii.Error, ValueError, TypeError, AttributeError, OverflowError) as exc:
        raise ValueError("invalid cursor") from exc
    if position[0].tzinfo is None:
        raise ValueError("invalid cursor")
    return position


def _summary_columns(event_table: EventTable) -> list[Any]:
    t = event_table.table
    return [
        t.c.id,
        t.c.event_type,
        t.c.status,
        t.c.attempts,
        t.c.received_at,
        t.c.processed_at,
        t.c.error_message,
        *event_table.identity_columns(),
    ]


def _summary(event_table: EventTable, row: Any) -> dict[str, Any]:
    """The list item of SPEC §8.1, JSON-ready."""
    return {
        "id": str(row["id"]),
        "kind": event_table.kind,
        "source": event_table.source(row),
        "event_type": row["event_type"],
        "entity_type": event_table.entity_type(row),
        "entity_id": event_table.entity_id(row),
        "status": row["status"],
        "attempts": row["attempts"],
        "received_at": _iso(row["received_at"]),
        "processed_at": _iso(row["processed_at"]),
        "error_message": row["error_message"],
    }


async def list_events(
    db: Database,
    *,
    kind: str | None = None,
    source: str | None = None,
    status: str | None = None,
    event_type: str | None = None,
    entity_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> EventPage:
    """Events of all (or one kind of) tables, newest first, keyset-paginated.

    Each table is read newest-first up to `limit + 1` rows past the cursor and the results are
    merged, so a page costs at most three index-ordered reads whatever the table sizes.
    Raises ValueError for an unknown kind or status or a malformed cursor.
    """
    filters = EventFilters(kind, source, status, event_type, entity_id, since, until)
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    position = decode_cursor(cursor) if cursor else None
    found: list[tuple[datetime, uuid.UUID, dict[str, Any]]] = []
    async with db.session() as session:
        for event_table in filters.tables():
            t = event_table.table
            conditions = filters.conditions(event_table)
            if position is not None:
                received_at, event_id = position
                conditions.append(
                    or_(
                        t.c.received_at < received_at, and_(t.c.received_at == received_at, t.c.id < event_id)
                    )
                )
            statement = (
                select(*_summary_columns(event_table))
                .where(*conditions)
                .order_by(t.c.received_at.desc(), t.c.id.desc())
                .limit(limit + 1)
            )
            for row in (await session.execute(statement)).mappings():
                found.append((row["received_at"], row["id"], _summary(event_table, row)))
    found.sort(key=lambda item: (item[0], item[1]), reverse=True)
    page = found[:limit]
    next_cursor = encode_cursor(page[-1][0], page[-1][1]) if len(found) > limit else None
    return EventPage(items=[item for _, _, item in page], next_cursor=next_cursor)


def _as_uuid(event_id: uuid.UUID | str) -> uuid.UUID:
    if isinstance(event_id, uuid.UUID):
        return event_id
    try:
        return uuid.UUID(str(event_id))
    except ValueError:
        raise EventNotFound(event_id) from None


async def _find(session: AsyncSession, event_id: uuid.UUID) -> tuple[EventTable, Row[Any]]:
    """The table holding an event id, and its row; EventNotFound when no table has it."""
    for event_table in EVENT_TABLES:
        t = event_table.table
        row = (await session.execute(select(t).where(t.c.id == event_id))).first()
        if row is not None:
            return event_table, row
    raise EventNotFound(event_id)


async def get_event(db: Database, event_id: uuid.UUID | str) -> dict[str, Any] | None:
    """Everything about one event: its row, payload, sync_log rows, effects and quarantine record.

    The payload is returned as stored; masking for display is the caller's job (R-SEC-4).
    """
    try:
        key = _as_uuid(event_id)
    except EventNotFound:
        return None
    async with db.session() as session:
        try:
            event_table, row = await _find(session, key)
        except EventNotFound:
            return None
        fields = row._mapping
        detail = _summary(event_table, fields)
        detail.update(
            payload=fields["payload_json"],
            dedupe_key=fields["dedupe_key"],
            ordering_key=fields["ordering_key"],
            next_attempt_at=_iso(fields["next_attempt_at"]),
            locked_until=_iso(fields["locked_until"]),
            locked_by=fields["locked_by"],
            signature_verified=fields["signature_verified"],
            request_id=fields["request_id"],
        )
        if event_table.kind == "texting":
            detail.update(
                conversation_id=fields["conversation_id"],
                from_number=fields["from_number"],
                to_number=fields["to_number"],
            )
        log_rows = await session.scalars(
            select(SyncLog).where(SyncLog.correlation_id == str(key)).order_by(SyncLog.started_at)
        )
        detail["sync_log"] = [
            {
                "id": str(entry.id),
                "direction": entry.direction,
                "entity_type": entry.entity_type,
                "entity_id": entry.entity_id,
                "source_id": entry.source_id,
                "target_id": entry.target_id,
                "status": entry.status,
                "message": entry.message,
                "error_message": entry.error_message,
                "started_at": _iso(entry.started_at),
                "finished_at": _iso(entry.finished_at),
            }
            for entry in log_rows
        ]
        effects = await session.scalars(
            select(SyncEffect).where(SyncEffect.event_id == str(key)).order_by(SyncEffect.created_at)
        )
        detail["effects"] = [
            {
                "effect_key": effect.effect_key,
                "target_system": effect.target_system,
                "target_id": effect.target_id,
                "state": effect.state,
                "created_at": _iso(effect.created_at),
            }
            for effect in effects
        ]
        quarantine = await _quarantine_row(session, event_table, key)
        detail["quarantine"] = (
            None
            if quarantine is None
            else {
                "reason": quarantine.reason,
                "quarantined_at": _iso(quarantine.quarantined_at),
                "quarantined_by": quarantine.quarantined_by,
            }
        )
    return detail


async def _quarantine_row(
    session: AsyncSession, event_table: EventTable, event_id: uuid.UUID
) -> QuarantineEvent | None:
    return await session.scalar(
        select(QuarantineEvent).where(
            QuarantineEvent.event_source == event_table.kind, QuarantineEvent.event_id == str(event_id)
        )
    )


# --- changing one event --------------------------------------------------------------------------


async def _transition(
    session: AsyncSession,
    event_id: uuid.UUID,
    *,
    action: str,
    allowed_from: Collection[str],
    values: dict[str, Any],
) -> tuple[EventTable, str]:
    """Apply `values` if the event's status is in `allowed_from`; return its table and old status.

    The status check is repeated in the UPDATE itself, so a worker changing the row between the
    read and the write makes the action fail with a clear message instead of overwriting it.
    """
    event_table, row = await _find(session, event_id)
    status = row._mapping["status"]
    if status not in allowed_from:
        raise EventStateError(_refusal(action, event_id, row._mapping))
    t = event_table.table
    result = await session.execute(update(t).where(t.c.id == event_id, t.c.status == status).values(**values))
    if getattr(result, "rowcount", 0) != 1:
        raise EventStateError(f"event {event_id} changed while trying to {action} it; try again")
    return event_table, status


def _refusal(action: str, event_id: uuid.UUID, row: Any) -> str:
    status = row["status"]
    if status == "quarantined":
        return f"event {event_id} is quarantined; unquarantine it before you {action} it"
    if status == "processing":
        return (
            f"event {event_id} is being processed by {row['locked_by']} (lease until "
            f"{_iso(row['locked_until'])}); wait for it to finish"
            + ("" if action == "quarantine" else ", or quarantine it")
        )
    return f"cannot {action} event {event_id}: its status is {status}"


def _back_to_pending() -> dict[str, Any]:
    """A fresh start: due now, attempts from zero, no stale error or lease."""
    return {
        "status": "pending",
        "next_attempt_at": utcnow(),
        "attempts": 0,
        "error_message": None,
        "processed_at": None,
        "locked_until": None,
        "locked_by": None,
    }


async def _summary_of(session: AsyncSession, event_id: uuid.UUID) -> dict[str, Any]:
    event_table, row = await _find(session, event_id)
    return _summary(event_table, row._mapping)


async def replay_event(
    db: Database,
    event_id: uuid.UUID | str,
    *,
    actor: str | None = None,
    resend_unconfirmed: bool = False,
) -> dict[str, Any]:
    """Process an event again from scratch: `pending`, due now, attempts reset.

    Recorded effects are kept, so remote writes the event already made are not made twice
    (R-IDEM-1), and an unconfirmed write (an intent with no outcome: maybe done, R-IDEM-2) is
    still not repeated. `resend_unconfirmed` is the operator's word that they checked the remote
    system and those writes were not made: the event's intents are dropped with the replay, so
    it makes them again. Refused for quarantined events (un-quarantine first) and events in
    processing.
    """
    key = _as_uuid(event_id)
    async with db.session() as session:
        _, previous = await _transition(
            session, key, action="replay", allowed_from=REPLAYABLE_STATUSES, values=_back_to_pending()
        )
        forgotten = 0
        if resend_unconfirmed:
            result = await session.execute(
                delete(SyncEffect).where(SyncEffect.event_id == str(key), SyncEffect.state == "started")
            )
            forgotten = int(getattr(result, "rowcount", 0) or 0)
        summary = await _summary_of(session, key)
        summary["unconfirmed_writes_forgotten"] = forgotten
    log.info(
        "event replayed",
        event_id=str(key),
        previous_status=previous,
        actor=actor,
        unconfirmed_writes_forgotten=forgotten,
    )
    return summary


async def bulk_replay(
    db: Database,
    *,
    kind: str | None = None,
    source: str | None = None,
    status: str = "error",
    event_type: str | None = None,
    entity_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    actor: str | None = None,
) -> int:
    """Replay every event matching the filters; returns how many. Defaults to dead letters.

    Only replayable statuses can be chosen, so a bulk replay can never pick up quarantined
    events or events a worker holds.
    """
    if status not in REPLAYABLE_STATUSES:
        raise ValueError(f"bulk replay works on status {', '.join(REPLAYABLE_STATUSES)}, not {status!r}")
    filters = EventFilters(kind, source, status, event_type, entity_id, since, until)
    replayed = 0
    async with db.session() as session:
        for event_table in filters.tables():
            t = event_table.table
            result = await session.execute(
                update(t).where(*filters.conditions(event_table)).values(**_back_to_pending())
            )
            replayed += getattr(result, "rowcount", 0)
    log.info("events replayed in bulk", count=replayed, filters=asdict(filters), actor=actor)
    return replayed


async def mark_done(db: Database, event_id: uuid.UUID | str, actor: str) -> dict[str, Any]:
    """An operator resolves an event without processing it: `done`, with a sync_log row saying who.

    Allowed from pending, error and quarantined (the quarantine record is then removed);
    an already-done event is left as it is.
    """
    key = _as_uuid(event_id)
    async with db.session() as session:
        previous = await mark_done_in(session, key, actor)
        summary = await _summary_of(session, key)
    if previous is not None:
        log.info("event marked done", event_id=str(key), previous_status=previous, actor=actor)
    return summary


async def mark_done_in(session: AsyncSession, event_id: uuid.UUID | str, actor: str) -> str | None:
    """`mark_done` inside the caller's transaction; returns the status it left (None: already done).

    The worker applies a handler's `EventResolution` with it, in the transaction that records the
    handler's own outcome, so the resolution and the outcome are committed together or not at all.
    Raises EventNotFound, or EventStateError when the event is being processed or changed meanwhile.
    """
    key = _as_uuid(event_id)
    event_table, row = await _find(session, key)
    if row._mapping["status"] == "done":
        return None
    _, previous = await _transition(
        session,
        key,
        action="mark done",
        allowed_from=("pending", "error", "quarantined"),
        values={
            "status": "done",
            "processed_at": utcnow(),
            "error_message": None,
            "locked_until": None,
            "locked_by": None,
        },
    )
    fields = row._mapping
    entity_id = event_table.entity_id(fields) or str(key)
    await session.execute(
        insert(SyncLog).values(
            direction="internal",
            entity_type=event_table.entity_type(fields),
            entity_id=entity_id,
            source_id=entity_id,
            status="skipped",
            message=f"marked done by {actor}",
            started_at=utcnow(),
            finished_at=utcnow(),
            correlation_id=str(key),
        )
    )
    await _delete_quarantine_row(session, event_table, key)
    return previous


async def quarantine_event(
    db: Database, event_id: uuid.UUID | str, reason: str, actor: str, *, while_processing: bool = True
) -> dict[str, Any]:
    """Set an event aside (R-Q-5): `quarantined`, never claimed, with one quarantine_events row.

    `while_processing=False` (the admin API, SPEC §8.1) refuses an event a worker holds with
    EventStateError, in the same guarded update, instead of discarding the worker's outcome.

    Quarantining a quarantined event changes nothing (the first reason and actor are kept).
    """
    key = _as_uuid(event_id)
    async with db.session() as session:
        event_table, row = await _find(session, key)
        if row._mapping["status"] != "quarantined":
            await _transition(
                session,
                key,
                action="quarantine",
                allowed_from=[
                    s
                    for s in EVENT_STATUSES
                    if s != "quarantined" and (while_processing or s != "processing")
                ],
                values={"status": "quarantined", "locked_until": None, "locked_by": None},
            )
        if await _quarantine_row(session, event_table, key) is None:
            session.add(
                QuarantineEvent(
                    event_id=str(key),
                    event_source=event_table.kind,
                    reason=reason,
                    quarantined_at=utcnow(),
                    quarantined_by=actor,
                )
            )
            log.info("event quarantined", event_id=str(key), reason=reason, actor=actor)
        await session.flush()
        return await _summary_of(session, key)


async def unquarantine_event(db: Database, event_id: uuid.UUID | str, actor: str) -> dict[str, Any]:
    """Return a quarantined event to `pending` (due now, attempts reset) and drop its record."""
    key = _as_uuid(event_id)
    async with db.session() as session:
        event_table, _ = await _transition(
            session, key, action="unquarantine", allowed_from=("quarantined",), values=_back_to_pending()
        )
        await _delete_quarantine_row(session, event_table, key)
        summary = await _summary_of(session, key)
    log.info("event unquarantined", event_id=str(key), actor=actor)
    return summary


async def _delete_quarantine_row(session: AsyncSession, event_table: EventTable, event_id: uuid.UUID) -> None:
    await session.execute(
        delete(QuarantineEvent).where(
            QuarantineEvent.event_source == event_table.kind, QuarantineEvent.event_id == str(event_id)
        )
    )


# --- retention and stats --------------------------------------------------------------------------


#: Rows looked at per statement when pruning rows that belong to an event: their ids go into
#: `IN (…)` lists, which must stay far below the drivers' limits on bound parameters (asyncpg
#: 32767) whatever PRUNE_BATCH_SIZE says.
MAX_ROWS_PER_LOOKUP = 1000
#: Used install states are remembered this long: far past a state's own validity
#: (15 minutes, `admin/oauth.py`), after which the signed state itself is refused.
OAUTH_STATE_USE_RETENTION = timedelta(days=1)


def _key_column(table: Table) -> Any:
    """The table's one-column primary key (`id`, or `nonce`, or `ghl_contact_id`)."""
    (column,) = table.primary_key.columns
    return column


async def _delete_in_batches(db: Database, table: Table, condition: Any, batch_size: int) -> int:
    """DELETE matching rows `batch_size` at a time, one short transaction per batch, so pruning a
    large backlog never holds long locks (nor SQLite's single write lock) against ingest.

    `condition(alias)` selects the rows; each batch picks its rows through an index on the
    condition's column and deletes them by primary key."""
    key = _key_column(table)
    doomed = table.alias("doomed")
    deleted = 0
    while True:
        chosen = select(doomed.c[key.name]).where(condition(doomed)).limit(batch_size)
        async with db.session() as session:
            result = await session.execute(delete(table).where(key.in_(chosen)))
        count = int(getattr(result, "rowcount", 0))
        deleted += count
        if count < batch_size:
            return deleted


def _as_event_key(value: object) -> uuid.UUID | None:
    """An event id stored as text (`sync_effects.event_id`, `sync_log.correlation_id`), or None
    when the text names no event (NULL, or something else than an event id)."""
    if value is None:
        return None
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


async def _stored_events(session: AsyncSession, keys: Collection[uuid.UUID]) -> set[uuid.UUID]:
    """Which of these event ids still have a row, in any of the three event tables, any status."""
    found: set[uuid.UUID] = set()
    if not keys:
        return found
    for event_table in EVENT_TABLES:
        t = event_table.table
        found.update(await session.scalars(select(t.c.id).where(t.c.id.in_(list(keys)))))
    return found


async def _delete_rows_of_gone_events(
    db: Database, table: Table, aged: Any, event_id: Any, cutoff: datetime, batch_size: int
) -> int:
    """Delete rows older than `cutoff` (column `aged`) whose event (column `event_id`, the event
    id as text) no longer has a row in any event table; rows without an event age alone.

    The old rows are walked in (`aged`, primary key) order, a batch per short transaction: the
    batch is read, its events looked up by primary key, and the rows of gone events deleted;
    rows whose event still exists are stepped over and stay. Check-then-delete needs no lock: an
    event id never comes back once its row is deleted, so a row found without its event stays
    so. (The event id is text here and a native uuid in the event tables, so the look-up is
    done with parsed ids rather than a join that each engine would need written its own way.)
    """
    key = _key_column(table)
    step = min(batch_size, MAX_ROWS_PER_LOOKUP)
    deleted = 0
    after: tuple[datetime, Any] | None = None
    while True:
        batch = select(key, aged, event_id).where(aged < cutoff)
        if after is not None:
            last_aged, last_key = after
            batch = batch.where(aged >= last_aged, or_(aged > last_aged, key > last_key))
        async with db.session() as session:
            rows = (await session.execute(batch.order_by(aged, key).limit(step))).all()
            owners = {row[0]: _as_event_key(row[2]) for row in rows}
            alive = await _stored_events(session, {o for o in owners.values() if o is not None})
            doomed = [row_key for row_key, owner in owners.items() if owner is None or owner not in alive]
            if doomed:
                result = await session.execute(delete(table).where(key.in_(doomed)))
                deleted += int(getattr(result, "rowcount", 0))
        if len(rows) < step:
            return deleted
        after = (rows[-1][1], rows[-1][0])


async def prune(
    db: Database, retention_days: int, batch_size: int, *, now: datetime | None = None
) -> dict[str, int]:
    """Retention (R-DM-7, R-DM-3): delete what no longer protects or explains anything, in batches.

    In this order (docs/operations.md, "Retention", says why each rule is safe):
    - events: `done` and older than the retention. Events in any other status are never
      touched, however old. A `done` event without `processed_at` (stored done at ingest, e.g.
      a foreign location) ages by `received_at`.
    - sync_effects and sync_log: older than the retention *and* their event (`event_id`,
      `correlation_id`) gone from every event table, which after the first step includes the
      old `done` ones. An event that still exists (pending, processing, error, quarantined, or
      done within the retention) can be replayed, or its webhook redelivered as a duplicate, so
      its effects (what keeps a replay from repeating a write, intents included, R-IDEM-2) and
      its log rows (what explains its history) stay, however old.
    - ghl_conversations: not written for longer than the retention, and no live contact
      mapping for the contact (a cache; a forgotten id costs one search).
    - echo_guard: expired. oauth_state_uses: older than OAUTH_STATE_USE_RETENTION.

    Returns the number of rows deleted per table.
    """
    if retention_days < 1 or batch_size < 1:
        raise ValueError("retention_days and batch_size must be at least 1")
    now = now or utcnow()
    cutoff = now - timedelta(days=retention_days)
    counts: dict[str, int] = {}
    # Events first: a row of sync_effects or sync_log outlives its event, never the reverse.
    for event_table in EVENT_TABLES:

        def old_done(t: Any) -> ColumnElement[bool]:
            aged = or_(t.c.processed_at < cutoff, and_(t.c.processed_at.is_(None), t.c.received_at < cutoff))
            return and_(t.c.status == "done", aged)

        counts[event_table.name] = await _delete_in_batches(db, event_table.table, old_done, batch_size)
    effects = _table(SyncEffect)
    counts["sync_effects"] = await _delete_rows_of_gone_events(
        db, effects, effects.c.created_at, effects.c.event_id, cutoff, batch_size
    )
    sync_log = _table(SyncLog)
    counts["sync_log"] = await _delete_rows_of_gone_events(
        db, sync_log, sync_log.c.started_at, sync_log.c.correlation_id, cutoff, batch_size
    )

    def unused_conversation(t: Any) -> ColumnElement[bool]:
        mapped = select(ContactMapping.id).where(
            ContactMapping.ghl_contact_id == t.c.ghl_contact_id, ContactMapping.deleted_at.is_(None)
        )
        return and_(t.c.updated_at < cutoff, ~mapped.exists())

    counts["ghl_conversations"] = await _delete_in_batches(
        db, _table(GhlConversation), unused_conversation, batch_size
    )
    counts["echo_guard"] = await _delete_in_batches(
        db, _table(EchoGuard), lambda t: t.c.expires_at < now, batch_size
    )
    counts["oauth_state_uses"] = await _delete_in_batches(
        db, _table(OAuthStateUse), lambda t: t.c.used_at < now - OAUTH_STATE_USE_RETENTION, batch_size
    )
    log.info("pruned", retention_days=retention_days, **counts)
    return counts


def _table(model: type[Base]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


async def queue_stats(db: Database, *, now: datetime | None = None) -> QueueStats:
    """Depth per (table, status) and oldest pending age per table; also sets the gauges
    QUEUE_DEPTH and QUEUE_OLDEST_PENDING_AGE (0 where there is nothing), for /metrics."""
    now = now or utcnow()
    depth: list[tuple[str, str, int]] = []
    oldest: dict[str, float | None] = {}
    async with db.session() as session:
        for event_table in EVENT_TABLES:
            t = event_table.table
            counts = {status: 0 for status in EVENT_STATUSES}
            for status, count in await session.execute(select(t.c.status, func.count()).group_by(t.c.status)):
                counts[status] = count
            for status, count in counts.items():
                depth.append((event_table.name, status, count))
                QUEUE_DEPTH.labels(event_table.name, status).set(count)
            first = await session.scalar(select(func.min(t.c.received_at)).where(t.c.status == "pending"))
            age = None if first is None else max(0.0, (now - first).total_seconds())
            oldest[event_table.name] = age
            QUEUE_OLDEST_PENDING_AGE.labels(event_table.name).set(age or 0.0)
    return QueueStats(depth=depth, oldest_pending_age=oldest)
