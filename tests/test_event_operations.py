"""Operator actions on events (SPEC §8.1, §8.3): list, show, replay, quarantine, prune, stats."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import timedelta

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, select

from df_middleware.config import Settings
from df_middleware.db.models import EchoGuard, QuarantineEvent, SyncLog
from df_middleware.db.session import Database
from df_middleware.db.types import utcnow
from df_middleware.queue.operations import (
    EventNotFound,
    EventStateError,
    bulk_replay,
    get_event,
    list_events,
    mark_done,
    prune,
    quarantine_event,
    queue_stats,
    replay_event,
    unquarantine_event,
)
from df_middleware.queue.scheduler import Job, Scheduler
from df_middleware.queue.worker import Worker
from df_middleware.sync.registry import HandlerRegistry
from tests.event_factory import EVENT_LIST_KEYS, ago, event_state, insert_event, log_rows, wait_until


async def seed_mixed(db: Database) -> dict[str, uuid.UUID]:
    """Six events over the three tables, one minute apart (newest last)."""
    return {
        "ghl_done": await insert_event(db, status="done", received_at=ago(600), processed_at=ago(590)),
        "aloware": await insert_event(
            db,
            source="aloware",
            event_type="Call Disposed",
            entity_type="call",
            entity_id="call-1",
            received_at=ago(540),
        ),
        "texting": await insert_event(
            db, "texting", event_type="message.received", entity_id="m1", received_at=ago(480)
        ),
        "broadcast": await insert_event(
            db, "broadcast", event_type="analytics_updated", entity_id="b1", received_at=ago(420)
        ),
        "ghl_error": await insert_event(
            db, status="error", error_message="boom", attempts=10, received_at=ago(360)
        ),
        "texting_2": await insert_event(
            db, "texting", event_type="message.sent", entity_id="m2", received_at=ago(300)
        ),
    }


async def test_list_is_newest_first_across_tables_and_pages_with_a_cursor(db: Database) -> None:
    """SPEC §8.1: items newest first with exactly the documented keys; cursor pages cover every
    event once; the limit is capped at 200."""
    ids = await seed_mixed(db)
    newest_first = [
        str(ids[k]) for k in ("texting_2", "ghl_error", "broadcast", "texting", "aloware", "ghl_done")
    ]

    page = await list_events(db)
    assert [item["id"] for item in page.items] == newest_first
    assert page.next_cursor is None
    assert all(set(item) == EVENT_LIST_KEYS for item in page.items)
    broadcast = page.items[2]
    assert (broadcast["kind"], broadcast["source"], broadcast["entity_type"], broadcast["entity_id"]) == (
        "broadcast",
        "broadcast",
        "broadcast",
        "b1",
    )
    assert isinstance(broadcast["received_at"], str)

    seen: list[str] = []
    cursor = None
    while True:
        page = await list_events(db, limit=4 if cursor is None else 1, cursor=cursor)
        seen += [item["id"] for item in page.items]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == newest_first

    with pytest.raises(ValueError, match="cursor"):
        await list_events(db, cursor="not-a-cursor")
    with pytest.raises(ValueError, match="status"):
        await list_events(db, status="finished")


async def test_list_filters(db: Database) -> None:
    """SPEC §8.1: kind, source, status, event_type (any case), entity_id, since/until."""
    ids = await seed_mixed(db)

    async def listed(**filters: object) -> set[uuid.UUID]:
        page = await list_events(db, **filters)  # type: ignore[arg-type]
        return {uuid.UUID(item["id"]) for item in page.items}

    assert await listed(kind="texting") == {ids["texting"], ids["texting_2"]}
    assert await listed(source="aloware") == {ids["aloware"]}
    assert await listed(source="broadcast") == {ids["broadcast"]}
    assert await listed(status="error") == {ids["ghl_error"]}
    assert await listed(event_type="CALL DISPOSED") == {ids["aloware"]}
    assert await listed(entity_id="b1") == {ids["broadcast"]}
    assert await listed(since=ago(450), until=ago(330)) == {ids["broadcast"], ids["ghl_error"]}


async def test_get_event_shows_payload_log_and_quarantine(db: Database) -> None:
    """SPEC §8.1: one event in full: payload, dedupe and ordering keys, sync_log rows, quarantine."""
    event_id = await insert_event(
        db, payload={"id": "c1", "phone": "+19195550100"}, ordering_key="phone:+19195550100"
    )
    async with db.session() as session:
        session.add(
            SyncLog(
                direction="internal",
                entity_type="contact",
                entity_id="c1",
                source_id="c1",
                status="skipped",
                message="no phone",
                correlation_id=str(event_id),
            )
        )
    await quarantine_event(db, event_id, "poison", "ops@example.com")

    detail = await get_event(db, event_id)
    assert detail is not None
    assert detail["payload"] == {"id": "c1", "phone": "+19195550100"}
    assert detail["ordering_key"] == "phone:+19195550100"
    assert detail["dedupe_key"].startswith("test:")
    assert [row["message"] for row in detail["sync_log"]] == ["no phone"]
    assert detail["quarantine"]["reason"] == "poison"
    assert detail["quarantine"]["quarantined_by"] == "ops@example.com"
    assert await get_event(db, uuid.uuid4()) is None
    assert await get_event(db, "not-a-uuid") is None


async def test_replay_resets_a_dead_letter(db: Database, make_settings: Callable[..., Settings]) -> None:
    """SPEC §8.1: replay → pending, due now, attempts 0, error cleared; the worker takes it again."""
    event_id = await insert_event(db, status="error", attempts=10, error_message="boom")
    summary = await replay_event(db, event_id, actor="ops")
    assert (summary["status"], summary["attempts"], summary["error_message"]) == ("pending", 0, None)
    assert len(await Worker(make_settings(), db, HandlerRegistry()).claim_due_events(10)) == 1


async def test_replay_is_refused_for_quarantined_processing_and_unknown_events(db: Database) -> None:
    """R-Q-5: a quarantined event is replayed only after un-quarantine; a processing one belongs
    to its worker; an unknown id is EventNotFound."""
    quarantined = await insert_event(db, status="quarantined")
    processing = await insert_event(db, status="processing", locked_by="w9", locked_until=utcnow())
    with pytest.raises(EventStateError, match="unquarantine it"):
        await replay_event(db, quarantined)
    with pytest.raises(EventStateError, match="being processed by w9"):
        await replay_event(db, processing)
    with pytest.raises(EventNotFound):
        await replay_event(db, uuid.uuid4())
    assert (await event_state(db, quarantined)).status == "quarantined"


async def test_bulk_replay_by_filter(db: Database) -> None:
    """SPEC §8.1: bulk replay takes dead letters matching the filters and nothing else."""
    errors = [await insert_event(db, status="error", error_message="x") for _ in range(3)]
    aloware_error = await insert_event(db, source="aloware", event_type="Contact Updated", status="error")
    texting_error = await insert_event(db, "texting", event_type="message.received", status="error")
    done = await insert_event(db, status="done")
    quarantined = await insert_event(db, status="quarantined")

    assert await bulk_replay(db, source="aloware") == 1
    assert await bulk_replay(db, kind="webhook") == 3
    assert await bulk_replay(db) == 1
    for event_id in [*errors, aloware_error]:
        assert (await event_state(db, event_id)).status == "pending"
    assert (await event_state(db, texting_error, "texting")).status == "pending"
    assert (await event_state(db, done)).status == "done"
    assert (await event_state(db, quarantined)).status == "quarantined"
    with pytest.raises(ValueError, match="bulk replay"):
        await bulk_replay(db, status="quarantined")


async def test_quarantine_unquarantine_cycle(db: Database, make_settings: Callable[..., Settings]) -> None:
    """R-Q-5: quarantine sets the status and one quarantine_events row (a second quarantine changes
    nothing); the worker skips it; un-quarantine returns it to pending and the worker takes it."""
    event_id = await insert_event(db)
    worker = Worker(make_settings(), db, HandlerRegistry())

    await quarantine_event(db, event_id, "poison payload", "alice")
    again = await quarantine_event(db, event_id, "second reason", "bob")
    assert again["status"] == "quarantined"
    async with db.session() as session:
        rows = list(await session.scalars(select(QuarantineEvent)))
    assert [(r.event_id, r.event_source, r.reason, r.quarantined_by) for r in rows] == [
        (str(event_id), "webhook", "poison payload", "alice")
    ]
    assert await worker.claim_due_events(10) == []

    summary = await unquarantine_event(db, event_id, "alice")
    assert (summary["status"], summary["attempts"]) == ("pending", 0)
    async with db.session() as session:
        assert await session.scalar(select(func.count()).select_from(QuarantineEvent)) == 0
    assert [e.id for e in await worker.claim_due_events(10)] == [event_id]
    with pytest.raises(EventStateError):
        await unquarantine_event(db, event_id, "alice")


async def test_quarantining_an_event_in_flight_discards_the_workers_outcome(
    db: Database, make_settings: Callable[..., Settings]
) -> None:
    """R-Q-5: quarantine wins over a running worker: its late outcome is not written."""
    event_id = await insert_event(db)
    worker = Worker(make_settings(), db)
    [claimed] = await worker.claim_due_events(1)
    await quarantine_event(db, event_id, "stop it", "ops")
    assert await worker.release([claimed]) == 0
    state = await event_state(db, event_id)
    assert (state.status, state.locked_by) == ("quarantined", None)


async def test_mark_done_records_who(db: Database) -> None:
    """SPEC §8.1: mark-done resolves a dead letter with a sync_log row naming the operator."""
    event_id = await insert_event(db, status="error", error_message="boom")
    summary = await mark_done(db, event_id, "ops@example.com")
    assert summary["status"] == "done"
    assert summary["processed_at"] is not None
    assert [(r.status, r.message) for r in await log_rows(db, event_id)] == [
        ("skipped", "marked done by ops@example.com")
    ]
    await mark_done(db, event_id, "ops@example.com")  # already done: nothing more
    assert len(await log_rows(db, event_id)) == 1


async def test_prune_deletes_only_old_done_events_and_old_log_rows(db: Database) -> None:
    """R-DM-7: done events older than the retention go (in batches), as do old sync_log rows and
    expired echo guards; pending, processing, error and quarantined rows stay however old."""
    old, recent = ago(40 * 86400), ago(3600)
    old_done = [await insert_event(db, status="done", received_at=old, processed_at=old) for _ in range(5)]
    old_done.append(
        await insert_event(db, "texting", event_type="message.sent", status="done", received_at=old)
    )
    kept = [
        await insert_event(db, status="done", received_at=old, processed_at=recent),
        *[
            await insert_event(db, status=s, received_at=old)
            for s in ("pending", "processing", "error", "quarantined")
        ],
    ]
    async with db.session() as session:
        for started in (old, old, recent):
            session.add(
                SyncLog(
                    direction="internal",
                    entity_type="contact",
                    entity_id="c",
                    source_id="c",
                    status="success",
                    started_at=started,
                )
            )
        session.add(EchoGuard(system="ghl", entity_id="c", fingerprint="f", expires_at=ago(1)))
        session.add(
            EchoGuard(system="ghl", entity_id="c", fingerprint="g", expires_at=utcnow() + timedelta(hours=1))
        )

    counts = await prune(db, retention_days=30, batch_size=2)
    assert counts == {
        "webhook_events": 5,
        "texting_webhook_events": 1,
        "broadcast_webhook_events": 0,
        "sync_effects": 0,
        "sync_log": 2,
        "ghl_conversations": 0,
        "echo_guard": 1,
        "oauth_state_uses": 0,
    }
    for event_id in kept:
        assert await get_event(db, event_id) is not None
    for event_id in old_done:
        assert await get_event(db, event_id) is None
    async with db.session() as session:
        assert await session.scalar(select(func.count()).select_from(SyncLog)) == 1
        assert await session.scalar(select(EchoGuard.fingerprint)) == "g"


async def test_queue_stats_counts_and_sets_gauges(db: Database) -> None:
    """SPEC §8.4: depth per table and status, oldest pending age; the Prometheus gauges follow."""
    await insert_event(db, received_at=ago(120))
    await insert_event(db, received_at=ago(10))
    await insert_event(db, status="error")
    stats = await queue_stats(db)
    depth = {(table, status): count for table, status, count in stats.depth}
    assert depth[("webhook_events", "pending")] == 2
    assert depth[("webhook_events", "error")] == 1
    assert depth[("texting_webhook_events", "pending")] == 0
    assert 119 <= (stats.oldest_pending_age["webhook_events"] or 0) < 180
    assert stats.oldest_pending_age["broadcast_webhook_events"] is None
    gauge = REGISTRY.get_sample_value("df_queue_depth", {"table": "webhook_events", "status": "pending"})
    assert gauge == 2
    age = REGISTRY.get_sample_value("df_queue_oldest_pending_age_seconds", {"table": "webhook_events"})
    assert age is not None
    assert age >= 119


async def test_scheduler_runs_prune_soon_after_start(
    db: Database, make_settings: Callable[..., Settings]
) -> None:
    """R-DM-7, R-RUN-2: the scheduler's default jobs include a prune; a job runs after its first
    delay and stop() ends the scheduler."""
    settings = make_settings()
    assert [job.name for job in Scheduler(settings, db).jobs] == ["prune"]
    ran = asyncio.Event()

    async def job() -> None:
        ran.set()

    scheduler = Scheduler(
        settings, db, [Job("probe", 3600, job, first_delay=0.01)], leader_check_seconds=0.05
    )
    running = asyncio.create_task(scheduler.run())
    await asyncio.wait_for(ran.wait(), timeout=5)
    await scheduler.stop()
    assert running.done()


@pytest.mark.postgres
@pytest.mark.parametrize("backend", ["postgresql"])
async def test_only_one_scheduler_leads_on_postgresql(
    backend: str, db: Database, make_settings: Callable[..., Settings]
) -> None:
    """R-RUN-4: two schedulers against one PostgreSQL: only the advisory-lock holder runs jobs;
    when it stops, the other takes over."""
    settings = make_settings()
    runs: list[str] = []

    def scheduler(name: str) -> Scheduler:
        async def job() -> None:
            runs.append(name)

        return Scheduler(settings, db, [Job("probe", 0.05, job)], leader_check_seconds=0.05)

    first, second = scheduler("first"), scheduler("second")
    running_first = asyncio.create_task(first.run())
    await wait_until(lambda: _has(runs, "first"))
    running_second = asyncio.create_task(second.run())
    await asyncio.sleep(0.3)
    assert "second" not in runs

    await first.stop()
    await wait_until(lambda: _has(runs, "second"))
    await second.stop()
    await asyncio.gather(running_first, running_second)


async def _has(runs: list[str], name: str) -> bool:
    return name in runs
