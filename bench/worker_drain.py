"""How fast one worker drains a backlog of events whose handler does nothing (not a test).

`python bench/worker_drain.py [--events N] [--no-analyze]` creates a PostgreSQL database on
127.0.0.1:5432, inserts N pending GHL events (distinct people, so nothing waits on ordering),
optionally ANALYZEs the table as autovacuum would on a long-lived one, then lets one Worker claim
and process them (`run_once` rounds of WORKER_CONCURRENCY events) and prints one JSON line:
events/s, median claim time on the full backlog, and whether the table had statistics. It
measures the queue's own overhead: the claim statement and the outcome transaction per event.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid

import asyncpg
from sqlalchemy import insert

from df_middleware.config import Settings
from df_middleware.db.migrate import upgrade
from df_middleware.db.models import WebhookEvent
from df_middleware.db.session import Database
from df_middleware.db.types import utcnow
from df_middleware.observability import configure_logging
from df_middleware.queue.worker import Worker

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


async def run(events: int, analyze: bool) -> dict[str, object]:
    name = f"dfm_drain_{uuid.uuid4().hex[:8]}"
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    admin = await asyncpg.connect(ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    db = Database(url)
    try:
        await upgrade(url)
        now = utcnow()
        rows = [
            {
                "id": uuid.uuid4(),
                "received_at": now,
                "next_attempt_at": now,
                "event_type": "ContactUpdate",
                "payload_json": {"type": "ContactUpdate", "id": f"c{i}"},
                "dedupe_key": f"drain:{i}",
                "status": "pending",
                "attempts": 0,
                "ordering_key": f"ghl:contact:c{i}",
                "signature_verified": True,
                "source": "ghl",
                "entity_type": "contact",
                "entity_id": f"c{i}",
            }
            for i in range(events)
        ]
        async with db.session() as session:
            for start in range(0, events, 1000):
                await session.execute(insert(WebhookEvent), rows[start : start + 1000])
        if analyze:
            async with db.engine.connect() as conn:
                await conn.exec_driver_sql("ANALYZE webhook_events")
                await conn.commit()
        worker = Worker(Settings(_env_file=None, database_url=url, log_level="warning"), db)  # type: ignore[call-arg]
        # Claim cost alone, on the full backlog (claimed events are handed straight back).
        claim_ms: list[float] = []
        for _ in range(20):
            t0 = time.perf_counter()
            claimed = await worker.claim_due_events(worker.settings.worker_concurrency)
            claim_ms.append((time.perf_counter() - t0) * 1000)
            await worker.release(claimed)
        started = time.perf_counter()
        processed = 0
        while processed < events:
            processed += await worker.run_once()
        elapsed = time.perf_counter() - started
        return {
            "bench": "worker_drain",
            "events": events,
            "analyzed": analyze,
            "events_per_s": round(processed / elapsed, 1),
            "claim_ms_p50": round(statistics.median(claim_ms), 2),
            "concurrency": worker.settings.worker_concurrency,
        }
    finally:
        await db.dispose()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--no-analyze", action="store_true", help="Leave the table without statistics.")
    args = parser.parse_args()
    configure_logging("warning", "json")
    result = asyncio.run(run(args.events, not args.no_analyze))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
