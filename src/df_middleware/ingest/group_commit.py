"""Group commit of webhook inserts on PostgreSQL (R-IN-6, R-PERF-1).

Concurrent requests for one event table share one statement:

    WITH input AS (SELECT * FROM unnest($1::uuid[], $2::text[], …)),
         inserted AS (INSERT … SELECT … FROM input ON CONFLICT (dedupe_key) DO NOTHING RETURNING …)
    SELECT dedupe_key, id, duplicate …

so N webhooks cost one round trip, one commit (one WAL flush) and one NOTIFY instead of N. Nothing
waits for a timer: the first request of an idle table is flushed at once, alone; requests that
arrive while a flush is in flight form the next batch. Every request still gets its answer only
after its row is committed (R-IN-2).

A batch that fails for a reason other than the database being unavailable is retried row by
row through the single-row path, so one bad row cannot fail its neighbours.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import orjson
from sqlalchemy import JSON, Boolean, Integer, Table, Text, Uuid

from df_middleware.db.models import EVENT_MODELS
from df_middleware.db.session import Database, is_unavailable
from df_middleware.db.types import UTCDateTime

#: Most rows in one statement: large enough to amortise, small enough to keep latency flat.
MAX_BATCH = 200
#: Most JSON text in one statement: asyncpg copies a batch's arrays while encoding them, so a
#: batch of large payloads costs a multiple of their size in memory; past this a batch ends
#: (bench/large_bodies.py: 240 → 170 MB peak RSS under a hundred 1 MiB webhooks at once).
MAX_BATCH_BYTES = 2 * 1_048_576


def _array_type(column_type: Any) -> str:
    """The PostgreSQL array type a column's values travel in (JSON travels as text, cast after)."""
    if isinstance(column_type, UTCDateTime):
        return "timestamptz[]"
    if isinstance(column_type, Uuid):
        return "uuid[]"
    if isinstance(column_type, Boolean):
        return "boolean[]"
    if isinstance(column_type, Integer):
        return "integer[]"
    if isinstance(column_type, JSON | Text):
        return "text[]"
    raise TypeError(f"no array type for {column_type!r}")


def batch_insert_sql(table: Table, columns: Sequence[str]) -> str:
    """The statement that stores a batch of rows and says, per dedupe key, which id answers it.

    The existing row of a duplicate is looked up by a correlated subquery (an index probe run only
    when the insert did nothing), never a join the planner might turn into a scan of the table.
    """
    arrays = ", ".join(f"${i}::{_array_type(table.c[name].type)}" for i, name in enumerate(columns, 1))
    names = ", ".join(columns)
    values = ", ".join(
        f"input.{name}::jsonb" if isinstance(table.c[name].type, JSON) else f"input.{name}"
        for name in columns
    )
    return f"""
        WITH input AS (SELECT * FROM unnest({arrays}) AS input({names})),
        inserted AS (
            INSERT INTO {table.name} ({names})
            SELECT {values} FROM input
            ON CONFLICT (dedupe_key) DO NOTHING
            RETURNING id, dedupe_key
        )
        SELECT
            input.dedupe_key,
            coalesce(
                inserted.id,
                (SELECT existing.id FROM {table.name} AS existing
                 WHERE existing.dedupe_key = input.dedupe_key)
            ) AS id,
            inserted.id IS NULL AS duplicate
        FROM input
        LEFT JOIN inserted ON inserted.dedupe_key = input.dedupe_key
    """


def _resolve(done: asyncio.Future[tuple[uuid.UUID, bool]], outcome: Any) -> None:
    """Answer one waiting request, unless it has gone (a cancelled request has no one to tell)."""
    if done.done():
        return
    if isinstance(outcome, BaseException):
        done.set_exception(outcome)
    else:
        done.set_result(outcome)


def _wire_value(value: Any) -> Any:
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return value


@dataclass
class _Waiting:
    row: dict[str, Any]
    done: asyncio.Future[tuple[uuid.UUID, bool]]
    #: The row as the batch statement sends it (JSON as text), made once when it joins a batch.
    wire: dict[str, Any] = field(default_factory=dict)


def _next_batch(queue: list[_Waiting]) -> list[_Waiting]:
    """The rows of the next statement: at most MAX_BATCH rows and, past the first, at most
    MAX_BATCH_BYTES of JSON text. Each row is serialised here, once."""
    batch: list[_Waiting] = []
    size = 0
    for waiting in queue[:MAX_BATCH]:
        if batch and size >= MAX_BATCH_BYTES:
            break
        waiting.wire = {name: _wire_value(value) for name, value in waiting.row.items()}
        size += sum(len(value) for value in waiting.wire.values() if isinstance(value, str))
        batch.append(waiting)
    return batch


@dataclass
class _TableBatcher:
    kind: str
    table: Table
    queue: list[_Waiting] = field(default_factory=list)
    flushing: bool = False
    sql: dict[tuple[str, ...], str] = field(default_factory=dict)


class GroupCommit:
    """Batches concurrent inserts per event table. One per process (it holds no state that
    matters across processes: every answer is given only after its own commit)."""

    def __init__(self, db: Database, single_row: Any) -> None:
        if not db.is_postgres:
            raise ValueError("group commit is for PostgreSQL")
        self.db = db
        self._single_row = single_row  # async (kind, row) -> (id, duplicate): the fallback path
        self._tables = {
            kind: _TableBatcher(kind, cast(Table, model.__table__)) for kind, model in EVENT_MODELS.items()
        }
        self._tasks: set[asyncio.Task[None]] = set()

    async def store(self, kind: str, row: dict[str, Any]) -> tuple[uuid.UUID, bool]:
        """Store one row (with the rows of concurrent requests); (id, duplicate) once committed."""
        batcher = self._tables[kind]
        waiting = _Waiting(row, asyncio.get_running_loop().create_future())
        batcher.queue.append(waiting)
        if not batcher.flushing:
            batcher.flushing = True
            task = asyncio.create_task(self._flush(batcher))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await waiting.done

    async def _flush(self, batcher: _TableBatcher) -> None:
        try:
            while batcher.queue:
                batch = _next_batch(batcher.queue)
                batcher.queue = batcher.queue[len(batch) :]
                try:
                    await self._store_batch(batcher, batch)
                except BaseException as exc:
                    # Whatever went wrong, no request may wait forever for an answer.
                    for waiting in batch:
                        _resolve(waiting.done, exc)
                    if not isinstance(exc, Exception):
                        raise
        finally:
            batcher.flushing = False

    async def _store_batch(self, batcher: _TableBatcher, batch: list[_Waiting]) -> None:
        # Requests with the same dedupe key in one batch: the first one is stored, the others are
        # its duplicates (a single INSERT cannot tell them apart for us).
        first_by_key: dict[str, _Waiting] = {}
        followers: list[tuple[_Waiting, _Waiting]] = []
        for waiting in batch:
            key = waiting.row["dedupe_key"]
            if key in first_by_key:
                followers.append((waiting, first_by_key[key]))
            else:
                first_by_key[key] = waiting
        leaders = list(first_by_key.values())
        try:
            if len(leaders) == 1:
                # A lone request (an idle system): the single-row statement is cheaper than unnest.
                only = leaders[0]
                results = {only.row["dedupe_key"]: await self._single_row(batcher.kind, only.row)}
            else:
                results = await self._insert(batcher, leaders)
        except Exception as exc:
            if is_unavailable(exc) or len(leaders) == 1:
                for waiting in batch:
                    _resolve(waiting.done, exc)
                return
            results = await self._one_by_one(batcher.kind, leaders)
        for waiting in leaders:
            _resolve(waiting.done, results[waiting.row["dedupe_key"]])
        for waiting, leader in followers:
            outcome = results[leader.row["dedupe_key"]]
            _resolve(waiting.done, outcome if isinstance(outcome, BaseException) else (outcome[0], True))

    async def _insert(
        self, batcher: _TableBatcher, leaders: list[_Waiting]
    ) -> dict[str, tuple[uuid.UUID, bool] | BaseException]:
        columns = tuple(sorted(leaders[0].row))
        sql = batcher.sql.get(columns)
        if sql is None:
            sql = batcher.sql[columns] = batch_insert_sql(batcher.table, columns)
        arrays = [[w.wire[name] for w in leaders] for name in columns]
        async with self.db.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            # The raw asyncpg connection outside a transaction: the statement commits on its own.
            records = await raw.driver_connection.fetch(sql, *arrays)  # type: ignore[union-attr]
        results: dict[str, tuple[uuid.UUID, bool] | BaseException] = {}
        for record in records:
            if record["id"] is not None:
                results[record["dedupe_key"]] = (record["id"], bool(record["duplicate"]))
        missing = [w for w in leaders if w.row["dedupe_key"] not in results]
        if missing:
            # Conflicting rows committed by another process after this statement's snapshot: a
            # fresh statement sees them.
            results.update(await self._one_by_one(batcher.kind, missing))
        return results

    async def _one_by_one(
        self, kind: str, leaders: list[_Waiting]
    ) -> dict[str, tuple[uuid.UUID, bool] | BaseException]:
        results: dict[str, tuple[uuid.UUID, bool] | BaseException] = {}
        for waiting in leaders:
            try:
                results[waiting.row["dedupe_key"]] = await self._single_row(kind, waiting.row)
            except Exception as exc:
                results[waiting.row["dedupe_key"]] = exc
        return results
