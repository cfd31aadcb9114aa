"""GHL calls per broadcast under a burst of events for one broadcast (issue 12 item 6, R-BC-3).

    python bench/broadcast_burst.py [--events 100] [--sqlite] [--concurrency 20]

A benchmark, not a test. One run:

1. creates a PostgreSQL database on 127.0.0.1:5432 (or a SQLite file with `--sqlite`) and migrates
   it (`run(database_url)` takes a database the caller made, and migrates it);
2. serves, in this process, the GHL simulator (GHL's 100 requests / 10 s per location; request
   bodies validated against GHL's documents when `../shared/contracts` exists) and the service's real
   ingest (`create_app(run_worker=False)`), and runs one `Worker` with the production registry
   beside them, as `serve --no-worker` + `worker` would;
3. delivers N signed `analytics_updated` webhooks (default 100) for one broadcast, as a burst: all
   at once, `--concurrency` in flight, each with its own `eventId`, a `timestamp` one second after
   the previous and numbers that grow with it (so no two are equal and the newest is known), while
   the worker runs;
   with `--spacing S`, one at a time every S seconds instead (a broadcast that keeps emitting:
   what the write throttle bounds per minute);
4. waits until the broadcast's events are all settled (none pending or processing), then stops.

What is reported (one JSON line on stdout): GHL calls made for the broadcast (the simulator's request
log, `/objects/…`), by kind (search, create, update), the most in any 60 s window, the run's
seconds, 429s, and how the events ended (written, superseded, stale, unchanged; deferrals by the
write throttle, counted from attempts), and whether the record holds the newest event's numbers.

The bound (sync/broadcasts.py): a broadcast's first write is one search and one POST; after that, at
most one `analytics_updated` PUT per 60 s, plus one per `broadcast_completed`. A burst therefore
costs at most 3 calls (search + POST for the first event processed, one PUT for the newest after
the throttle's interval), however many events it has; the run lasts about one interval when the
worker catches the burst's first event before the rest arrive.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
from sqlalchemy import func, select

from df_middleware.app import create_app as create_service
from df_middleware.config import Settings
from df_middleware.connectors.suite import Connectors
from df_middleware.db.migrate import upgrade
from df_middleware.db.models import BroadcastRecord, BroadcastWebhookEvent, SyncLog
from df_middleware.db.session import Database
from df_middleware.observability import configure_logging
from df_middleware.queue.worker import Worker
from df_middleware.simulators.ghl import DEFAULT_LOCATION_ID, DEFAULT_TOKEN, GhlSimulator
from df_middleware.simulators.ghl import create_app as create_ghl
from df_middleware.simulators.serving import serve_app
from df_middleware.sync.broadcasts import MIN_WRITE_INTERVAL
from df_middleware.sync.registry import default_registry

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
CONTRACTS = Path(__file__).resolve().parents[2] / "shared" / "contracts"
OBJECT_KEY = "custom_objects.broadcasts"
T0 = datetime(2026, 11, 24, 20, 0, tzinfo=UTC)
WINDOW_SECONDS = 60.0
#: Recipients of the broadcast: enough for 10,000 events' growing numbers to stay consistent.
RECIPIENTS = 1_000_000


def broadcast_event(broadcast_id: str, i: int) -> dict[str, Any]:
    """The i-th `analytics_updated` of the broadcast: one second after the previous, more delivered."""
    return {
        "broadcastId": broadcast_id,
        "eventType": "analytics_updated",
        "eventId": f"bcev_{i:05d}",
        "timestamp": (T0 + timedelta(seconds=i)).isoformat().replace("+00:00", "Z"),
        "analytics": {
            "broadcastName": "Burst benchmark",
            "channel": "SMS",
            "sentAt": T0.isoformat().replace("+00:00", "Z"),
            "recipients": RECIPIENTS,
            "sent": 100 * (i + 1),
            "delivered": 90 * (i + 1),
            "pending": max(0, RECIPIENTS - 100 * (i + 1)),
            "failed": 5 * (i + 1),
            "bounced": i,
            "optedOut": i // 10,
            "responses": 3 * i,
            "appointmentsSet": i // 5,
        },
    }


def _kind(method: str, path: str) -> str:
    if path.endswith("/records/search"):
        return "search"
    return "create" if method == "POST" else "update"


def max_in_window(times: Sequence[float], window: float) -> int:
    """The most timestamps in any interval of `window` seconds."""
    ordered = sorted(times)
    best, start = 0, 0
    for end, moment in enumerate(ordered):
        while moment - ordered[start] > window:
            start += 1
        best = max(best, end - start + 1)
    return best


async def _deliver(
    client: httpx.AsyncClient, secret: bytes, payload: dict[str, Any], gate: asyncio.Semaphore
) -> int:
    raw = orjson.dumps(payload)
    signature = hmac.new(secret, raw, hashlib.sha256).hexdigest()
    async with gate:
        answer = await client.post(
            "/api/webhooks/broadcast",
            content=raw,
            headers={"content-type": "application/json", "x-broadcast-signature": signature},
        )
    return answer.status_code


async def _active(db: Database, broadcast_id: str) -> int:
    async with db.session() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(BroadcastWebhookEvent)
            .where(
                BroadcastWebhookEvent.broadcast_id == broadcast_id,
                BroadcastWebhookEvent.status.in_(("pending", "processing")),
            )
        )
    return int(count or 0)


def _outcome(status: str, message: str | None) -> str:
    text = message or ""
    if status == "success":
        return "written"
    for kind in ("superseded", "stale", "unchanged"):
        if text.startswith(kind):
            return kind
    return f"{status}: {text[:60]}"


async def measure(
    database_url: str, *, events: int = 100, concurrency: int = 20, spacing: float = 0.0
) -> dict[str, Any]:
    """Deliver `events` broadcast webhooks as a burst and count GHL calls (see the module docstring)."""
    await upgrade(database_url)
    secret = secrets.token_hex(16)
    broadcast_id = f"bc_burst_{uuid.uuid4().hex[:8]}"
    ghl_sim = GhlSimulator(seed=7)
    openapi = CONTRACTS / "ghl" / "openapi"
    ghl_app = create_ghl(ghl_sim, openapi_dir=openapi if openapi.is_dir() else None)
    db = Database(database_url)
    with serve_app(ghl_app) as ghl_url:
        settings = Settings(
            _env_file=None,
            database_url=database_url,
            ghl_location_id=DEFAULT_LOCATION_ID,
            ghl_base_url=ghl_url,
            ghl_api_key=DEFAULT_TOKEN,
            verity_webhook_secret=secret,
            auto_migrate=False,
            log_level="warning",
            log_format="json",
        )
        connectors = Connectors.from_settings(settings, db)
        worker = Worker(settings, db, default_registry(), connectors=connectors)
        stop = asyncio.Event()
        try:
            with serve_app(create_service(settings, run_worker=False)) as service_url:
                running = asyncio.create_task(worker.run(stop))
                gate = asyncio.Semaphore(concurrency)
                started = time.time()
                async with httpx.AsyncClient(base_url=service_url, timeout=30) as client:
                    if spacing > 0:  # a broadcast that keeps emitting, one event at a time
                        answers = []
                        for i in range(events):
                            payload = broadcast_event(broadcast_id, i)
                            answers.append(await _deliver(client, secret.encode(), payload, gate))
                            await asyncio.sleep(spacing)
                    else:
                        answers = await asyncio.gather(
                            *(
                                _deliver(client, secret.encode(), broadcast_event(broadcast_id, i), gate)
                                for i in range(events)
                            )
                        )
                delivered = time.time()
                deadline = delivered + 3 * MIN_WRITE_INTERVAL.total_seconds() + 60
                while await _active(db, broadcast_id) and time.time() < deadline:
                    await asyncio.sleep(0.2)
                settled = time.time()
                stop.set()
                await running
        finally:
            await connectors.aclose()
        calls = [r for r in ghl_app.state.request_log.items if r.path.startswith("/objects/")]
    async with db.session() as session:
        rows = list(
            await session.execute(
                select(
                    BroadcastWebhookEvent.status, BroadcastWebhookEvent.attempts, BroadcastWebhookEvent.id
                ).where(BroadcastWebhookEvent.broadcast_id == broadcast_id)
            )
        )
        ids = [str(row.id) for row in rows]
        logs = list(
            await session.execute(
                select(SyncLog.status, SyncLog.message).where(SyncLog.correlation_id.in_(ids))
            )
        )
        kept = await session.get(BroadcastRecord, broadcast_id)
    await db.dispose()
    records = [r for r in ghl_sim.records.values() if r.object_key == OBJECT_KEY]
    newest = broadcast_event(broadcast_id, events - 1)["analytics"]
    holds_newest = (
        len(records) == 1
        and records[0].properties.get("delivered") == newest["delivered"]
        and kept is not None
        and kept.ghl_record_id == records[0].id
    )
    seconds = settled - started
    return {
        "benchmark": "broadcast_burst",
        "engine": "postgresql" if database_url.startswith("postgres") else "sqlite",
        "events": events,
        "spacing_seconds": spacing,
        "accepted": sum(1 for status in answers if status == 200),
        "settled": all(row.status == "done" for row in rows) and len(rows) == events,
        "seconds": round(seconds, 2),
        "burst_seconds": round(delivered - started, 3),
        "ghl_calls_per_broadcast": len(calls),
        "ghl_calls_by_kind": dict(Counter(_kind(r.method, r.path) for r in calls)),
        "ghl_calls_max_in_60s": max_in_window([r.at for r in calls], WINDOW_SECONDS),
        "ghl_calls_per_minute": round(len(calls) / max(seconds, WINDOW_SECONDS) * 60, 2),
        "ghl_429s": sum(1 for r in calls if r.status == 429),
        "outcomes": dict(Counter(_outcome(status, message) for status, message in logs)),
        "throttle_deferrals": sum(row.attempts - 1 for row in rows),
        "records": len(records),
        "record_holds_newest_numbers": holds_newest,
        "min_write_interval_seconds": MIN_WRITE_INTERVAL.total_seconds(),
    }


def run(
    database_url: str, *, events: int = 100, concurrency: int = 20, spacing: float = 0.0
) -> dict[str, Any]:
    """`measure` in its own event loop (for callers outside one, e.g. bench/pipeline.py's main)."""
    return asyncio.run(measure(database_url, events=events, concurrency=concurrency, spacing=spacing))


async def _pg(url: str, statement: str) -> None:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=100, help="Events of the one broadcast.")
    parser.add_argument("--concurrency", type=int, default=20, help="Webhooks in flight at once.")
    parser.add_argument(
        "--spacing",
        type=float,
        default=0.0,
        help="Seconds between events, sent one at a time (0: the burst). Shows the per-minute bound.",
    )
    parser.add_argument("--sqlite", action="store_true", help="A SQLite file instead of PostgreSQL.")
    args = parser.parse_args(argv)
    configure_logging("warning", "json")
    with contextlib.ExitStack() as stack:
        if args.sqlite:
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="dfm-bc-burst-"))
            url = f"sqlite:///{os.path.join(folder, 'bench.db')}"
        else:
            name = f"dfm_bc_burst_{os.getpid()}_{uuid.uuid4().hex[:6]}"
            asyncio.run(_pg(ADMIN_URL, f'CREATE DATABASE "{name}"'))
            stack.callback(
                lambda: asyncio.run(_pg(ADMIN_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            )
            url = f"{ADMIN_URL.rpartition('/')[0]}/{name}"
        result = run(url, events=args.events, concurrency=args.concurrency, spacing=args.spacing)
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
