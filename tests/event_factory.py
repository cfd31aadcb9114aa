"""Insert event rows directly (no HTTP), and wait for queue outcomes, for the queue tests."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select

from df_middleware.db.models import EVENT_MODELS, SyncLog
from df_middleware.db.session import Database
from df_middleware.db.types import utcnow

_sequence = itertools.count()


def event_row(
    kind: str = "webhook",
    *,
    ordering_key: str | None = None,
    event_type: str = "ContactUpdate",
    source: str = "ghl",
    entity_type: str = "contact",
    entity_id: str | None = None,
    payload: dict[str, Any] | None = None,
    status: str = "pending",
    attempts: int = 0,
    received_at: datetime | None = None,
    next_attempt_at: datetime | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Values for one row of the `kind` table, every NOT NULL column filled."""
    n = next(_sequence)
    entity_id = entity_id or f"{entity_type}-{n}"
    now = utcnow()
    row: dict[str, Any] = {
        "id": uuid.uuid4(),
        "received_at": received_at or now,
        "event_type": event_type,
        "payload_json": payload if payload is not None else {"n": n},
        "dedupe_key": f"test:{uuid.uuid4()}",
        "status": status,
        "attempts": attempts,
        "next_attempt_at": next_attempt_at or received_at or now,
        "ordering_key": ordering_key or f"{source}:{entity_type}:{entity_id}",
        "signature_verified": True,
    }
    if kind == "webhook":
        row.update(source=source, entity_type=entity_type, entity_id=entity_id)
    elif kind == "texting":
        row.update(entity_type="message", entity_id=entity_id)
    else:
        row.update(broadcast_id=entity_id)
    row.update(extra)
    return row


async def insert_events(db: Database, kind: str, rows: list[dict[str, Any]]) -> list[uuid.UUID]:
    async with db.session() as session:
        await session.execute(insert(EVENT_MODELS[kind]), rows)
    return [row["id"] for row in rows]


async def insert_event(db: Database, kind: str = "webhook", **values: Any) -> uuid.UUID:
    (event_id,) = await insert_events(db, kind, [event_row(kind, **values)])
    return event_id


async def event_state(db: Database, event_id: uuid.UUID, kind: str = "webhook") -> Any:
    model = EVENT_MODELS[kind]
    async with db.session() as session:
        return (await session.execute(select(model).where(model.id == event_id))).scalar_one()


async def log_rows(db: Database, event_id: uuid.UUID) -> list[SyncLog]:
    async with db.session() as session:
        return list(await session.scalars(select(SyncLog).where(SyncLog.correlation_id == str(event_id))))


async def count_status(db: Database, kind: str, status: str) -> int:
    model = EVENT_MODELS[kind]
    async with db.session() as session:
        return int(await session.scalar(select(func.count()).where(model.status == status)) or 0)


async def wait_until(
    condition: Callable[[], Awaitable[bool]], *, timeout: float = 15.0, interval: float = 0.02
) -> None:
    """Poll `condition` until true; fail the test at the deadline."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


def ago(seconds: float) -> datetime:
    return utcnow() - timedelta(seconds=seconds)


#: The keys of one item of `events list --json` / `GET /api/admin/events` (SPEC §8.1).
EVENT_LIST_KEYS = {
    "id",
    "kind",
    "source",
    "event_type",
    "entity_type",
    "entity_id",
    "status",
    "attempts",
    "received_at",
    "processed_at",
    "error_message",
}
