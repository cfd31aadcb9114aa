"""Claiming: which rows a worker may take, when, and how many workers share a queue safely."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from sqlalchemy import func, select, update

from df_middleware.config import Settings
from df_middleware.db.models import EVENT_MODELS, SyncLog
from df_middleware.db.session import Database
from df_middleware.db.types import utcnow
from df_middleware.queue.worker import Worker
from df_middleware.sync.registry import (
    ClaimedEvent,
    HandlerContext,
    HandlerRegistry,
    HandlerResult,
    SyncLogEntry,
)
from tests.event_factory import (
    ago,
    count_status,
    event_row,
    event_state,
    insert_event,
    insert_events,
    wait_until,
)

#: The event type each table's test rows carry, so one recording handler serves all three.
TYPES = {
    "webhook": ("ghl", "ContactUpdate"),
    "texting": ("texting", "message.received"),
    "broadcast": ("broadcast", "analytics_updated"),
}


def success(event: ClaimedEvent) -> HandlerResult:
    entity_id = event.entity_id or str(event.id)
    return HandlerResult(
        entries=[SyncLogEntry("internal", event.entity_type, entity_id, entity_id, "success", message="ok")]
    )


def recording_registry(
    runs: list[ClaimedEvent], *, pause: Callable[[ClaimedEvent], Any] | None = None
) -> HandlerRegistry:
    """A registry whose handler appends each event it starts to `runs`."""
    registry = HandlerRegistry()

    async def record(_ctx: HandlerContext, event: ClaimedEvent) -> HandlerResult:
        runs.append(event)
        if pause is not None:
            await pause(event)
        return success(event)

    for source, event_type in TYPES.values():
        registry.register(source, event_type)(record)
    return registry


def row(kind: str, **values: Any) -> dict[str, Any]:
    source, event_type = TYPES[kind]
    if kind == "webhook":
        values.setdefault("source", source)
    return event_row(kind, event_type=event_type, **values)


async def test_claim_takes_only_due_rows_oldest_first(
    db: Database, make_settings: Callable[..., Settings]
) -> None:
    """R-Q-1, R-Q-5: due pending rows go to processing with a lease and a counted attempt;
    future retries, finished, dead-lettered and quarantined rows stay where they are."""
    settings = make_settings(lease_seconds=300)
    due = await insert_events(db, "webhook", [row("webhook", received_at=ago(30 - i)) for i in range(3)])
    later = await insert_event(db, next_attempt_at=utcnow() + timedelta(minutes=5))
    others = [await insert_event(db, status=status) for status in ("done", "error", "quarantined")]
    worker = Worker(settings, db, HandlerRegistry(), worker_id="w1")

    before = utcnow()
    claimed = await worker.claim_due_events(10)

    assert [e.id for e in claimed] == due
    assert all(e.attempts == 1 and e.kind == "webhook" and e.source == "ghl" for e in claimed)
    for event_id in due:
        state = await event_state(db, event_id)
        assert (state.status, state.attempts, state.locked_by) == ("processing", 1, "w1")
        assert before + timedelta(seconds=299) <= state.locked_until <= utcnow() + timedelta(seconds=300)
    assert (await event_state(db, later)).status == "pending"
    assert [(await event_state(db, i)).status for i in others] == ["done", "error", "quarantined"]
    assert await worker.claim_due_events(10) == []


async def test_claim_is_bounded_by_batch_and_free_slots(
    db: Database, make_settings: Callable[..., Settings]
) -> None:
    """R-Q-1: a round claims at most min(WORKER_BATCH, free concurrency slots)."""
    await insert_events(db, "webhook", [row("webhook") for _ in range(7)])
    runs: list[ClaimedEvent] = []
    small_batch = Worker(make_settings(worker_batch=2, worker_concurrency=8), db, recording_registry(runs))
    assert await small_batch.run_once() == 2
    few_slots = Worker(make_settings(worker_batch=50, worker_concurrency=3), db, recording_registry(runs))
    assert await few_slots.run_once() == 3
    assert len(runs) == 5
    assert await count_status(db, "webhook", "done") == 5


async def test_claim_reads_each_table_shape(db: Database, make_settings: Callable[..., Settings]) -> None:
    """R-Q-1: one worker serves the three tables; source and entity come from each table's columns."""
    await insert_event(db, "webhook", source="aloware", event_type="Contact Updated", entity_id="a1")
    await insert_event(
        db, "texting", event_type="message.received", entity_id="m1", payload={"messageId": "m1"}
    )
    await insert_event(db, "broadcast", event_type="analytics_updated", entity_id="b1")
    claimed = await Worker(make_settings(), db, HandlerRegistry()).claim_due_events(10)
    shapes = sorted((e.kind, e.source, e.entity_type, e.entity_id) for e in claimed)
    assert shapes == [
        ("broadcast", "broadcast", "broadcast", "b1"),
        ("texting", "texting", "message", "m1"),
        ("webhook", "aloware", "contact", "a1"),
    ]
    texting = next(e for e in claimed if e.kind == "texting")
    assert texting.payload == {"messageId": "m1"}


async def test_same_ordering_key_runs_one_at_a_time_in_received_order(
    db: Database, make_settings: Callable[..., Settings]
) -> None:
    """R-Q-4: of three events of one key only the oldest is claimable; the others follow in
    received order, while an unrelated key is not held up."""
    key = "ghl:contact:c1"
    first, second, third = await insert_events(
        db, "webhook", [row("webhook", ordering_key=key, received_at=ago(10 - i)) for i in range(3)]
    )
    other = await insert_event(
        db, event_type="ContactUpdate", ordering_key="ghl:contact:c2", received_at=ago(5)
    )
    runs: list[ClaimedEvent] = []
    worker = Worker(make_settings(), db, recording_registry(runs))

    claimed = await worker.claim_due_events(10)
    assert {e.id for e in claimed} == {first, other}
    assert await worker.claim_due_events(10) == []  # `second` waits for `first`
    await worker.release(claimed)

    while await worker.run_once():
        pass
    assert [e.id for e in runs if e.ordering_key == key] == [first, second, third]


async def test_ordering_holds_across_the_three_tables(
    db: Database, make_settings: Callable[..., Settings]
) -> None:
    """R-Q-4: a phone's SMS, call and broadcast events share `phone:<E.164>` and run one at a time,
    in received order, although they live in different tables."""
    key = "phone:+19195550100"
    plan = ["webhook", "texting", "webhook", "broadcast", "texting"]
    ids = []
    for i, kind in enumerate(plan):
        ids += await insert_events(db, kind, [row(kind, ordering_key=key, received_at=ago(60 - i))])
    runs: list[ClaimedEvent] = []
    worker = Worker(make_settings(), db, recording_registry(runs))

    for expected in ids:
        claimed = await worker.claim_due_events(10)
        assert [e.id for e in claimed] == [expected]
        await worker.release(claimed)
        assert await worker.run_once() == 1
    assert [e.id for e in runs] == ids
    assert [e.kind for e in runs] == plan


async def test_live_lease_of_a_newer_event_holds_back_an_older_replayed_one(
    db: Database, make_settings: Callable[..., Settings]
) -> None:
    """R-Q-4: an older event replayed while a newer one of its key is in flight waits for it."""
    key = "ghl:contact:c9"
    older = await insert_event(db, ordering_key=key, received_at=ago(60))
    newer = await insert_event(
        db,
        ordering_key=key,
        received_at=ago(30),
        status="processing",
        attempts=1,
        locked_by="other-worker",
        locked_until=utcnow() + timedelta(minutes=5),
    )
    worker = Worker(make_settings(), db, HandlerRegistry())
    assert await worker.claim_due_events(10) == []

    # The other worker dies: its lease runs out. Received order decides again: older first.
    await _expire_lease(db, newer)
    assert [e.id for e in await worker.claim_due_events(10)] == [older]


async def _expire_lease(db: Database, event_id: uuid.UUID, kind: str = "webhook") -> None:
    model = EVENT_MODELS[kind]
    async with db.session() as session:
        await session.execute(update(model).where(model.id == event_id).values(locked_until=ago(1)))


async def test_expired_lease_is_claimed_again_and_the_late_outcome_is_discarded(
    db: Database, make_settings: Callable[..., Settings]
) -> None:
    """R-Q-1, R-Q-3, R-REL-1: a crashed worker's event is processed once by another worker after
    the lease expires; if the first worker comes back, its outcome is not written."""
    settings = make_settings()
    event_id = await insert_event(db)
    first_runs: list[ClaimedEvent] = []
    resume = asyncio.Event()

    async def hang(_event: ClaimedEvent) -> None:
        await resume.wait()

    stalled = Worker(settings, db, recording_registry(first_runs, pause=hang), worker_id="stalled")
    stalled_round = asyncio.create_task(stalled.run_once())
    await wait_until(lambda: _true(len(first_runs) == 1))

    second_runs: list[ClaimedEvent] = []
    rescuer = Worker(settings, db, recording_registry(second_runs), worker_id="rescuer")
    assert await rescuer.run_once() == 0  # the lease is still live
    await _expire_lease(db, event_id)
    assert await rescuer.run_once() == 1

    resume.set()  # the stalled worker finishes late; its lease is gone
    assert await stalled_round == 1
    state = await event_state(db, event_id)
    assert (state.status, state.attempts, state.locked_by) == ("done", 2, None)
    assert len(second_runs) == 1
    async with db.session() as session:
        rows = await session.scalar(select(func.count()).where(SyncLog.correlation_id == str(event_id)))
    assert rows == 1


async def test_abandoned_claim_is_recovered_by_another_worker(
    db: Database, make_settings: Callable[..., Settings]
) -> None:
    """R-Q-1: a claim whose worker vanished (never finished) is picked up once its lease expires."""
    settings = make_settings()
    event_id = await insert_event(db)
    crashed = Worker(settings, db, HandlerRegistry(), worker_id="crashed")
    assert len(await crashed.claim_due_events(1)) == 1

    runs: list[ClaimedEvent] = []
    survivor = Worker(settings, db, recording_registry(runs), worker_id="survivor")
    assert await survivor.run_once() == 0
    await _expire_lease(db, event_id)
    assert await survivor.run_once() == 1
    assert await survivor.run_once() == 0
    assert [e.id for e in runs] == [event_id]
    assert (await event_state(db, event_id)).status == "done"


async def _true(value: bool) -> bool:
    return value


async def test_two_workers_process_every_event_once_in_key_order(
    database_url: str, make_settings: Callable[..., Settings]
) -> None:
    """R-Q-1, R-Q-4, R-REL-5, R-RUN-4: two workers (separate connection pools, as two processes
    would have) drain 300 events over 20 ordering keys spread across the three tables: every
    event runs exactly once, never two of one key at a time, and each key in received order."""
    settings = make_settings(worker_concurrency=8, worker_batch=8, poll_seconds=0.01)
    rng = random.Random(5)
    start = utcnow() - timedelta(hours=1)
    rows_by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    received: dict[str, list[uuid.UUID]] = defaultdict(list)
    for i in range(300):
        kind = rng.choice(list(TYPES))
        key = f"phone:+1919555{rng.randrange(20):04d}"
        values = row(kind, ordering_key=key, received_at=start + timedelta(milliseconds=i))
        rows_by_kind[kind].append(values)
        received[key].append(values["id"])

    runs: list[ClaimedEvent] = []
    active: set[str] = set()
    overlaps: list[str] = []

    async def jitter(event: ClaimedEvent) -> None:
        if event.ordering_key in active:
            overlaps.append(event.ordering_key)
        active.add(event.ordering_key)
        await asyncio.sleep(rng.random() / 500)
        active.discard(event.ordering_key)

    databases = [Database(database_url), Database(database_url)]
    setup = databases[0]
    for kind, rows in rows_by_kind.items():
        await insert_events(setup, kind, rows)
    per_worker: dict[str, list[ClaimedEvent]] = {"w0": [], "w1": []}

    def registry_of(name: str) -> HandlerRegistry:
        async def pause(event: ClaimedEvent) -> None:
            per_worker[name].append(event)
            await jitter(event)

        return recording_registry(runs, pause=pause)

    workers = [
        Worker(settings, database, registry_of(name), worker_id=name)
        for name, database in zip(per_worker, databases, strict=True)
    ]
    stop = asyncio.Event()
    running = [asyncio.create_task(worker.run(stop)) for worker in workers]

    async def all_done() -> bool:
        return sum([await count_status(setup, kind, "done") for kind in TYPES]) == 300

    try:
        await wait_until(all_done, timeout=60)
    finally:
        stop.set()
        await asyncio.gather(*running)
        for database in databases[1:]:
            await database.dispose()

    counts: dict[uuid.UUID, int] = defaultdict(int)
    for event in runs:
        counts[event.id] += 1
    assert len(counts) == 300
    assert set(counts.values()) == {1}
    assert overlaps == []
    assert all(len(events) > 30 for events in per_worker.values())  # both really competed
    started: dict[str, list[uuid.UUID]] = defaultdict(list)
    for event in runs:
        started[event.ordering_key].append(event.id)
    assert started == received
    async with setup.session() as session:
        assert await session.scalar(select(func.count()).select_from(SyncLog)) == 300
    await setup.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgresql"])
async def test_notify_wakes_an_idle_worker(
    backend: str, db: Database, database_url: str, make_settings: Callable[..., Settings]
) -> None:
    """R-Q-2: on PostgreSQL an insert wakes a LISTENing worker: with a poll interval of an hour,
    the event being processed at all (within a generous deadline) proves the NOTIFY woke it."""
    runs: list[ClaimedEvent] = []
    worker = Worker(make_settings(poll_seconds=3600), db, recording_registry(runs))
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        await wait_until(lambda: _is_listening(database_url), timeout=60)
        await insert_event(db)
        await wait_until(lambda: _true(len(runs) == 1), timeout=60)
    finally:
        stop.set()
        await running


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgresql"])
async def test_listener_reconnects_after_losing_its_connection(
    backend: str, db: Database, database_url: str, make_settings: Callable[..., Settings]
) -> None:
    """R-Q-2: when the LISTEN connection dies, the worker reconnects and NOTIFY wakes it again."""
    runs: list[ClaimedEvent] = []
    worker = Worker(make_settings(poll_seconds=3600), db, recording_registry(runs))
    stop = asyncio.Event()
    running = asyncio.create_task(worker.run(stop))
    try:
        await wait_until(lambda: _is_listening(database_url), timeout=60)
        [old_pid] = await _listener_pids(database_url)
        await _admin(database_url, f"SELECT pg_terminate_backend({old_pid})")
        await wait_until(lambda: _listening_again(database_url, old_pid), timeout=60)
        await insert_event(db)
        await wait_until(lambda: _true(len(runs) == 1), timeout=60)
    finally:
        stop.set()
        await running


async def _admin(database_url: str, query: str) -> Any:
    from df_middleware.db.session import asyncpg_dsn

    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        return await connection.fetch(query)
    finally:
        await connection.close()


async def _listener_pids(database_url: str) -> list[int]:
    rows = await _admin(
        database_url,
        "SELECT pid FROM pg_stat_activity "
        "WHERE datname = current_database() AND query LIKE 'LISTEN%df_events%'",
    )
    return [row["pid"] for row in rows]


async def _is_listening(database_url: str) -> bool:
    return bool(await _listener_pids(database_url))


async def _listening_again(database_url: str, old_pid: int) -> bool:
    return any(pid != old_pid for pid in await _listener_pids(database_url))


async def test_heartbeat_extends_the_lease_of_a_long_event(
    db: Database, make_settings: Callable[..., Settings]
) -> None:
    """R-Q-1: while a handler runs, its lease is extended (every LEASE_SECONDS/3), so a slow
    event is not mistaken for a crashed one."""
    event_id = await insert_event(db)
    leases: list[Any] = []
    finish = asyncio.Event()

    async def hold(_event: ClaimedEvent) -> None:
        await finish.wait()

    worker = Worker(make_settings(lease_seconds=5), db, recording_registry([], pause=hold))
    running = asyncio.create_task(worker.run_once())

    async def extended() -> bool:
        lease = (await event_state(db, event_id)).locked_until
        if lease is not None:
            leases.append(lease)
        return len(leases) > 1 and leases[-1] > leases[0]

    try:
        await wait_until(extended, timeout=60, interval=0.1)
    finally:
        finish.set()
        await running
    assert (await event_state(db, event_id)).status == "done"


async def test_stop_finishes_or_releases_in_flight_events(
    db: Database, make_settings: Callable[..., Settings]
) -> None:
    """R-Q-6: on stop, claiming stops; an event that finishes within the grace period ends done,
    one that does not is cancelled and released to pending without counting the attempt."""
    settings = make_settings(shutdown_grace_seconds=5.0)
    stuck = await insert_event(db, event_type="ContactUpdate", received_at=ago(20))
    quick = await insert_event(db, event_type="ContactUpdate", received_at=ago(10))
    never_claimed = await insert_event(db, ordering_key="ghl:contact:x", received_at=ago(5))
    runs: list[ClaimedEvent] = []
    started = asyncio.Event()
    forever = asyncio.Event()
    finish_quick = asyncio.Event()

    async def pause(event: ClaimedEvent) -> None:
        if len(runs) == 2:
            started.set()
        if event.id == stuck:
            await forever.wait()
        else:
            await finish_quick.wait()  # finishes during the grace period, once the stop has begun

    worker = Worker(settings, db, recording_registry(runs, pause=pause), worker_id="w1")
    # Hold back the third event so that it is still pending when we stop.
    async with db.session() as session:
        model = EVENT_MODELS["webhook"]
        await session.execute(
            update(model)
            .where(model.id == never_claimed)
            .values(next_attempt_at=utcnow() + timedelta(hours=1))
        )
    running = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), timeout=60)
    stopping = asyncio.create_task(worker.stop())
    await asyncio.sleep(0)  # let the stop begin: claiming ends, the grace period starts
    finish_quick.set()
    await stopping
    assert running.done()

    released = await event_state(db, stuck)
    assert (released.status, released.attempts, released.locked_by, released.locked_until) == (
        "pending",
        0,
        None,
        None,
    )
    assert (await event_state(db, quick)).status == "done"
    assert (await event_state(db, never_claimed)).status == "pending"
