"""Store a classified webhook, or find the event it duplicates (R-IN-2, R-IN-4, R-IN-6).

One statement, one round trip, no transaction around it (autocommit). On PostgreSQL concurrent
requests share one statement (group commit, see `group_commit.py`). The single-row form is a CTE that
inserts with `ON CONFLICT (dedupe_key) DO NOTHING` and, in the same statement, returns the
existing row's id when the insert did nothing, so a duplicate costs what a new event costs.
The NOTIFY that wakes workers is fired by a trigger inside that same statement.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, bindparam, exists, literal, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import Executable

from df_middleware.db.models import EVENT_MODELS
from df_middleware.db.session import Database
from df_middleware.db.types import utcnow
from df_middleware.ingest.group_commit import GroupCommit
from df_middleware.ingest.sources.common import ClassifiedEvent


@dataclass(frozen=True)
class StoreResult:
    id: uuid.UUID
    duplicate: bool


def queued_row(
    event: ClassifiedEvent, payload: dict[str, Any], *, verified: bool, request_id: str | None
) -> dict[str, Any]:
    """The row an accepted event is stored as: pending, due now, with its keys and columns."""
    now = utcnow()
    row: dict[str, Any] = {
        "id": uuid.uuid4(),
        "received_at": now,
        "next_attempt_at": now,
        "event_type": event.event_type,
        "payload_json": payload,
        "dedupe_key": event.dedupe_key,
        "status": "pending",
        "attempts": 0,
        "ordering_key": event.ordering_key,
        "signature_verified": verified,
        "request_id": request_id,
        **event.columns,
    }
    if event.kind == "webhook":
        row["entity_type"] = event.entity_type
        row["entity_id"] = event.entity_id or ""
    return row


def _table(kind: str) -> Table:
    return cast(Table, EVENT_MODELS[kind].__table__)


def _param(column: str) -> str:
    # Bind names must differ from column names inside INSERT … VALUES.
    return f"p_{column}"


@functools.cache
def _insert_statement(dialect: str, kind: str, columns: tuple[str, ...]) -> Executable:
    """The store statement for one table and column set, built once.

    Building SQLAlchemy Core constructs per request was the largest cost of ingest (measured in
    docs/benchmarks.md); a statement built once with bind parameters is compiled once and then
    only executed.
    """
    table = _table(kind)
    values = {name: bindparam(_param(name), type_=table.c[name].type) for name in columns}
    if dialect == "postgresql":
        inserted = (
            pg_insert(table)
            .values(values)
            .on_conflict_do_nothing(index_elements=[table.c.dedupe_key])
            .returning(table.c.id)
            .cte("inserted")
        )
        return select(inserted.c.id, literal(False).label("duplicate")).union_all(
            select(table.c.id, literal(True)).where(
                table.c.dedupe_key == values["dedupe_key"], ~exists(select(inserted.c.id))
            )
        )
    return (
        sqlite_insert(table)
        .values(values)
        .on_conflict_do_nothing(index_elements=[table.c.dedupe_key])
        .returning(table.c.id)
    )


@functools.cache
def _lookup_statement(kind: str) -> Executable:
    table = _table(kind)
    return select(table.c.id).where(table.c.dedupe_key == bindparam("dedupe_key"))


async def _existing_id(conn: AsyncConnection, kind: str, dedupe_key: str) -> uuid.UUID:
    found = await conn.scalar(_lookup_statement(kind), {"dedupe_key": dedupe_key})
    if found is None:  # pragma: no cover - the conflicting row cannot vanish: events are never deleted early
        raise RuntimeError(f"dedupe conflict on {dedupe_key!r} but no row found")
    return cast(uuid.UUID, found)


class EventStore:
    """Stores events for the webhook endpoints of one server process.

    On PostgreSQL concurrent requests are group-committed (`group_commit.py`); a lone request is
    still one statement, flushed at once. On SQLite each request is its own statement.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self._group = GroupCommit(db, self.store_row) if db.is_postgres else None

    async def store(
        self,
        event: ClassifiedEvent,
        payload: dict[str, Any],
        *,
        verified: bool,
        request_id: str | None = None,
    ) -> StoreResult:
        """Insert the event unless its dedupe key exists; say which happened (after the commit)."""
        row = queued_row(event, payload, verified=verified, request_id=request_id)
        event_id, duplicate = await self.store_row_grouped(event.kind, row)
        return StoreResult(event_id, duplicate)

    async def store_row_grouped(self, kind: str, row: dict[str, Any]) -> tuple[uuid.UUID, bool]:
        """One row, sharing a statement with concurrent ones where the engine allows it."""
        if self._group is not None:
            return await self._group.store(kind, row)
        return await self.store_row(kind, row)

    async def store_row(self, kind: str, row: dict[str, Any]) -> tuple[uuid.UUID, bool]:
        """One row, one statement: (id, duplicate)."""
        columns = tuple(sorted(row))
        statement = _insert_statement(self.db.dialect, kind, columns)
        params = {_param(name): row[name] for name in columns}
        async with self.db.autocommit() as conn:
            if self.db.is_postgres:
                found = (await conn.execute(statement, params)).first()
                if found is not None:
                    return found[0], bool(found[1])
                # The conflicting row was committed by a concurrent request after this statement's
                # snapshot was taken: it is visible to a fresh statement.
                return await _existing_id(conn, kind, row["dedupe_key"]), True
            new_id = await conn.scalar(statement, params)
            if new_id is not None:
                return new_id, False
            return await _existing_id(conn, kind, row["dedupe_key"]), True
