"""Group commit of webhook inserts on PostgreSQL (R-IN-2, R-IN-4, R-IN-6, R-PERF-1)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import delete, select

from df_middleware.db.models import WebhookEvent
from df_middleware.db.session import Database
from df_middleware.db.types import utcnow
from df_middleware.ingest.group_commit import GroupCommit
from df_middleware.ingest.store import EventStore


def _row(n: int, **overrides: Any) -> dict[str, Any]:
    now = utcnow()
    row: dict[str, Any] = {
        "id": uuid.uuid4(),
        "received_at": now,
        "next_attempt_at": now,
        "event_type": "ContactUpdate",
        "payload_json": {"type": "ContactUpdate", "id": f"c{n}", "n": n},
        "dedupe_key": f"test:{n}",
        "status": "pending",
        "attempts": 0,
        "ordering_key": f"ghl:contact:c{n}",
        "signature_verified": True,
        "request_id": None,
        "source": "ghl",
        "entity_type": "contact",
        "entity_id": f"c{n}",
    }
    row.update(overrides)
    return row


@pytest.fixture
async def pg_db(pg_database_url: str) -> AsyncIterator[Database]:
    """Group commit is PostgreSQL's: these tests run on that engine only."""
    await _truncate(pg_database_url)
    database = Database(pg_database_url)
    yield database
    await database.dispose()


async def _truncate(url: str) -> None:
    database = Database(url)
    try:
        async with database.session() as session:
            await session.execute(delete(WebhookEvent))
    finally:
        await database.dispose()


async def _stored(db: Database) -> dict[str, uuid.UUID]:
    async with db.session() as session:
        rows = (await session.execute(select(WebhookEvent.dedupe_key, WebhookEvent.id))).all()
    return {key: event_id for key, event_id in rows}


@pytest.mark.postgres
async def test_a_burst_is_stored_whole_and_each_request_gets_its_own_id(pg_db: Database) -> None:
    """R-IN-2, R-IN-6: 300 concurrent inserts (with duplicates among them) share statements; every
    caller is answered after the commit with the id of its own row, duplicates with the first's."""
    store = EventStore(pg_db)
    rows = [_row(n) for n in range(250)] + [_row(n) for n in range(50)]  # 50 redeliveries
    results = await asyncio.gather(*(store.store_row_grouped("webhook", row) for row in rows))
    stored = await _stored(pg_db)
    assert len(stored) == 250
    for row, (event_id, _duplicate) in zip(rows, results, strict=True):
        assert stored[row["dedupe_key"]] == event_id
    assert [duplicate for _, duplicate in results] == [False] * 250 + [True] * 50


@pytest.mark.postgres
async def test_one_bad_row_does_not_fail_its_batch(pg_db: Database) -> None:
    """R-IN-2: a row the database refuses fails alone (its request gets the error); the others in
    its batch are stored and answered."""
    store = EventStore(pg_db)
    rows = [_row(n) for n in range(20)]
    rows[7] = _row(7, status="not-a-status")  # violates the status check constraint
    results = await asyncio.gather(
        *(store.store_row_grouped("webhook", row) for row in rows), return_exceptions=True
    )
    assert isinstance(results[7], Exception)
    assert all(not isinstance(r, Exception) for i, r in enumerate(results) if i != 7)
    stored = await _stored(pg_db)
    assert set(stored) == {f"test:{n}" for n in range(20) if n != 7}


@pytest.mark.postgres
async def test_large_payloads_are_split_into_bounded_statements(pg_db: Database) -> None:
    """R-IN-2, R-PERF-5: concurrent large payloads are stored whole, in statements of at most
    MAX_BATCH_BYTES of JSON each (plus one row), so one statement's memory stays bounded."""
    from df_middleware.ingest.group_commit import MAX_BATCH_BYTES, _next_batch, _Waiting

    big = "x" * (MAX_BATCH_BYTES // 4)
    rows = [_row(n, payload_json={"type": "ContactUpdate", "id": f"c{n}", "pad": big}) for n in range(12)]
    loop = asyncio.get_running_loop()
    queue = [_Waiting(row, loop.create_future()) for row in rows]
    sizes = []
    while queue:
        batch = _next_batch(queue)
        queue = queue[len(batch) :]
        sizes.append(len(batch))
    assert sum(sizes) == 12
    assert max(sizes) <= 5  # four quarters reach the bound; the fifth row starts the next batch
    store = EventStore(pg_db)
    results = await asyncio.gather(*(store.store_row_grouped("webhook", row) for row in rows))
    stored = await _stored(pg_db)
    assert {row["dedupe_key"]: event_id for row, (event_id, _) in zip(rows, results, strict=True)} == stored


def test_group_commit_refuses_sqlite(tmp_path: Any) -> None:
    """Group commit is PostgreSQL's; SQLite keeps one statement per request."""
    database = Database(f"sqlite:///{tmp_path}/x.db")
    with pytest.raises(ValueError, match="PostgreSQL"):
        GroupCommit(database, None)


@pytest.mark.postgres
async def test_a_request_that_goes_away_does_not_break_its_batch(pg_db: Database) -> None:
    """R-IN-2: a cancelled request (client gone) is still stored; its batch-mates are answered."""
    store = EventStore(pg_db)
    tasks = [asyncio.create_task(store.store_row_grouped("webhook", _row(n))) for n in range(30)]
    await asyncio.sleep(0)
    tasks[3].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[3], asyncio.CancelledError)
    assert all(isinstance(r, tuple) for i, r in enumerate(results) if i != 3)
    # The row of the cancelled request is committed with its batch, which nobody awaits any more:
    # wait for it to land (a generous deadline), then check that nothing else is missing.
    deadline = time.monotonic() + 30
    while len(stored := await _stored(pg_db)) < 30 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert set(stored) == {f"test:{n}" for n in range(30)}
