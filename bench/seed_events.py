"""Seed a database with 1 M events (and what goes with them) for the dashboard benchmark (issue 13).

    python bench/seed_events.py                       # PostgreSQL: fresh database df_bench_dash
    python bench/seed_events.py --events 200000       # fewer
    python bench/seed_events.py --sqlite /tmp/dash.db # a SQLite file (replaced)

Not a test: it makes data and prints what it made and how long it took.

What it makes, and why that shape: an operator's tables after about a month of traffic.
- events (default 1,000,000): 80 % `webhook_events` (GHL 60 %, Aloware 38 %, operator 2 %), 15 %
  texting, 5 % broadcast; `received_at` spread evenly over the last 30 days (so the overview's last
  hour holds ~1,400 of them); statuses 93 % done, 4 % pending, 1.5 % error, 1 % quarantined,
  0.5 % processing; ~1 KB JSON payloads (a realistic row width: the heap is what a sequential scan
  pays for); entity ids drawn from 100,000 contacts;
- `sync_log`: as many rows as events (one effect per event), over the same 30 days;
- `contact_mappings` 100,000; `optout_registry` 10,000; `reconcile_runs` one per job and hour.

PostgreSQL is filled with `INSERT … SELECT generate_series` (server side, no round trips) and
then `VACUUM ANALYZE`d, as autovacuum would have done on a month-old database: index-only scans
need the visibility map. SQLite is filled with `executemany` in batches of 20,000 and `ANALYZE`d.
The schema comes from the migrations (`df-middleware migrate`), never from the models.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

DATABASE = "df_bench_dash"
DAYS = 30
CONTACTS = 100_000
MAPPINGS = 100_000
OPTOUTS = 10_000
SHARES = {"webhook_events": 0.80, "texting_webhook_events": 0.15, "broadcast_webhook_events": 0.05}
STATUSES = [("done", 0.93), ("pending", 0.04), ("error", 0.015), ("quarantined", 0.01), ("processing", 0.005)]
SOURCES = [("ghl", 0.60), ("aloware", 0.38), ("operator", 0.02)]
EVENT_TYPES = {
    "ghl": ["ContactCreate", "ContactUpdate", "ContactTagUpdate", "OpportunityStageUpdate", "InboundMessage"],
    "aloware": ["Contact Created", "Contact Updated", "Call Disposed", "Contact Disposed"],
    "operator": ["OptOut"],
    "texting": ["message.received", "message.sent", "message.delivered", "message.failed"],
    "broadcast": ["broadcast.analytics"],
}
JOBS = ("contacts", "lists", "optouts")
PAD = 880  # payload padding: ~1 KB of JSON per event


def say(message: str) -> None:
    print(f"[seed] {message}", file=sys.stderr, flush=True)


def df_middleware_command() -> str:
    beside = Path(sys.executable).with_name("df-middleware")
    found = str(beside) if beside.exists() else shutil.which("df-middleware")
    if not found:
        raise SystemExit("df-middleware is not installed (run with the project's .venv/bin/python)")
    return found


def migrate(database_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABASE_")}
    env["DATABASE_URL"] = database_url
    result = subprocess.run(
        [df_middleware_command(), "migrate"], env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"df-middleware migrate failed:\n{result.stdout}\n{result.stderr}")


def split(total: int) -> dict[str, int]:
    counts = {table: int(total * share) for table, share in SHARES.items()}
    counts["webhook_events"] += total - sum(counts.values())
    return counts


# --- PostgreSQL ----------------------------------------------------------------------------------


def _case(shares: list[tuple[str, float]], draw: str) -> str:
    """A SQL CASE picking a value by cumulative share of the uniform draw `draw` (0 ≤ draw < 1)."""
    parts, edge = [], 0.0
    for value, share in shares[:-1]:
        edge += share
        parts.append(f"WHEN {draw} < {edge:.4f} THEN '{value}'")
    return f"CASE {' '.join(parts)} ELSE '{shares[-1][0]}' END"


def _pick(values: list[str], draw: str) -> str:
    array = ", ".join(f"'{v}'" for v in values)
    return f"(ARRAY[{array}])[1 + floor({draw} * {len(values)})::int]"


def _queue_columns(table: str) -> str:
    """The shared queue columns of an event row, from the draws r1 (status) and r2 (time) of `g`."""
    status = _case(STATUSES, "r1")
    return f"""
        gen_random_uuid() AS id,
        now() - (r2 * interval '{DAYS} days') AS received_at,
        {status} AS status,
        'bench:{table}:' || i AS dedupe_key,
        r3, r4, i"""


def _pg_events_sql(table: str, count: int) -> str:
    draws = f"""
        SELECT i, random() AS r1, random() AS r2, random() AS r3, random() AS r4
        FROM generate_series(1::bigint, {count}) AS i"""
    common = f"SELECT {_queue_columns(table)} FROM ({draws}) d"
    done_at = "CASE WHEN status IN ('done', 'error') THEN received_at + interval '2 seconds' END"
    attempts = "CASE WHEN status = 'error' THEN 8 WHEN status = 'pending' THEN 0 ELSE 1 END"
    error = "CASE WHEN status IN ('error', 'quarantined') THEN 'GHL 422: phone +15551234567 is invalid' END"
    payload = f"jsonb_build_object('type', event_type, 'id', entity_id, 'body', repeat('x', {PAD}))"
    if table == "webhook_events":
        source = _case(SOURCES, "r3")
        event_type = (
            f"CASE source WHEN 'ghl' THEN {_pick(EVENT_TYPES['ghl'], 'r4')} "
            f"WHEN 'aloware' THEN {_pick(EVENT_TYPES['aloware'], 'r4')} ELSE 'OptOut' END"
        )
        return f"""
            INSERT INTO webhook_events (id, received_at, event_type, payload_json, dedupe_key, status,
                error_message, processed_at, attempts, next_attempt_at, ordering_key, signature_verified,
                source, entity_type, entity_id)
            SELECT id, received_at, event_type, {payload}, dedupe_key, status, {error}, {done_at},
                {attempts}, received_at, 'contact:' || entity_id, true, source, 'contact', entity_id
            FROM (SELECT *, {event_type} AS event_type FROM (
                SELECT *, {source} AS source, 'c' || (i * 7919 % {CONTACTS}) AS entity_id FROM ({common}) a
            ) b) c"""
    if table == "texting_webhook_events":
        return f"""
            INSERT INTO texting_webhook_events (id, received_at, event_type, payload_json, dedupe_key,
                status, error_message, processed_at, attempts, next_attempt_at, ordering_key,
                signature_verified, entity_type, entity_id, conversation_id, from_number, to_number)
            SELECT id, received_at, event_type, {payload}, dedupe_key, status, {error}, {done_at},
                {attempts}, received_at, 'phone:' || from_number, true, 'message', entity_id,
                'conv' || (i % {CONTACTS}), from_number, '+12125550100'
            FROM (SELECT *, {_pick(EVENT_TYPES["texting"], "r4")} AS event_type, 'msg' || i AS entity_id,
                '+12125' || lpad((i * 7919 % {CONTACTS})::text, 6, '0') AS from_number FROM ({common}) a) b"""
    return f"""
        INSERT INTO broadcast_webhook_events (id, received_at, event_type, payload_json, dedupe_key,
            status, error_message, processed_at, attempts, next_attempt_at, ordering_key,
            signature_verified, broadcast_id)
        SELECT id, received_at, event_type, {payload}, dedupe_key, status, {error}, {done_at},
            {attempts}, received_at, 'broadcast:' || entity_id, true, entity_id
        FROM (SELECT *, 'broadcast.analytics' AS event_type, 'bc' || (i % 500) AS entity_id
              FROM ({common}) a) b"""


def _pg_others_sql(sync_rows: int) -> list[tuple[str, str]]:
    sync_status = _case([("success", 0.90), ("skipped", 0.08), ("error", 0.02)], "r1")
    hours = DAYS * 24
    return [
        (
            "sync_log",
            f"""
            INSERT INTO sync_log (id, direction, entity_type, entity_id, source_id, target_id, status,
                started_at, finished_at, error_message, correlation_id, message)
            SELECT gen_random_uuid(), CASE WHEN r3 < 0.6 THEN 'ghl_to_aloware' ELSE 'aloware_to_ghl' END,
                'contact', 'c' || (i * 7919 % {CONTACTS}), 'c' || (i * 7919 % {CONTACTS}),
                'a' || (i * 7919 % {CONTACTS}), status, started_at, started_at + interval '300 ms',
                CASE WHEN status = 'error' THEN 'Aloware 500' END, gen_random_uuid()::text,
                CASE WHEN status = 'skipped' THEN 'unchanged (fingerprint)' ELSE 'contact updated' END
            FROM (SELECT i, r3, {sync_status} AS status, now() - (r2 * interval '{DAYS} days') AS started_at
                  FROM (SELECT i, random() AS r1, random() AS r2, random() AS r3
                        FROM generate_series(1::bigint, {sync_rows}) AS i) d) s""",
        ),
        (
            "contact_mappings",
            f"""
            INSERT INTO contact_mappings (id, aloware_contact_id, ghl_contact_id, phone_number, email,
                last_synced_at, sync_direction, created_at, updated_at, last_synced_fingerprint)
            SELECT gen_random_uuid(), 'a' || i, 'c' || i, '+12125' || lpad(i::text, 6, '0'),
                'lead' || i || '@example.com', t, 'ghl_to_aloware', t - interval '60 days', t, md5(i::text)
            FROM (SELECT i, now() - (random() * interval '{DAYS} days') AS t
                  FROM generate_series(0, {MAPPINGS - 1}) AS i) d""",
        ),
        (
            "optout_registry",
            f"""
            INSERT INTO optout_registry (id, phone_number, status, source, reason, last_event_at,
                created_at, updated_at)
            SELECT gen_random_uuid(), '+12125' || lpad((i * 13)::text, 6, '0'),
                CASE WHEN random() < 0.9 THEN 'opted_out' ELSE 'opted_in' END,
                (ARRAY['texting', 'ghl', 'aloware', 'manual'])[1 + i % 4], 'STOP', t, t, t
            FROM (SELECT i, now() - (random() * interval '{DAYS} days') AS t
                  FROM generate_series(0, {OPTOUTS - 1}) AS i) d""",
        ),
        (
            "reconcile_runs",
            f"""
            INSERT INTO reconcile_runs (id, job_name, started_at, finished_at, status, totals)
            SELECT gen_random_uuid(), job, now() - h * interval '1 hour',
                now() - h * interval '1 hour' + interval '40 seconds', 'success',
                jsonb_build_object('checked', 10000, 'written', 3, 'api_calls', 101)
            FROM generate_series(1, {hours}) AS h, unnest(ARRAY{list(JOBS)}) AS job""",
        ),
    ]


async def seed_postgres(admin_dsn: str, database: str, events: int, sync_rows: int) -> dict[str, Any]:
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin.close()
    dsn = admin_dsn.rsplit("/", 1)[0] + f"/{database}"
    started = time.monotonic()
    migrate(dsn)
    made: dict[str, Any] = {"migrate_s": round(time.monotonic() - started, 1)}
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("SELECT setseed(0.42)")
        for table, count in split(events).items():
            at = time.monotonic()
            await connection.execute(_pg_events_sql(table, count))
            made[table] = {"rows": count, "s": round(time.monotonic() - at, 1)}
            say(f"{table}: {count:,} rows in {made[table]['s']} s")
        for table, sql in _pg_others_sql(sync_rows):
            at = time.monotonic()
            status = await connection.execute(sql)
            made[table] = {"rows": int(status.split()[-1]), "s": round(time.monotonic() - at, 1)}
            say(f"{table}: {made[table]['rows']:,} rows in {made[table]['s']} s")
        at = time.monotonic()
        await connection.execute("VACUUM ANALYZE")
        made["vacuum_analyze_s"] = round(time.monotonic() - at, 1)
        size = await connection.fetchval("SELECT pg_size_pretty(pg_database_size(current_database()))")
        made["database_size"] = size
    finally:
        await connection.close()
    made["total_s"] = round(time.monotonic() - started, 1)
    made["database_url"] = dsn
    return made


# --- SQLite --------------------------------------------------------------------------------------


def _sqlite_time(moment: datetime) -> str:
    """How SQLAlchemy's SQLite DateTime (and so UTCDateTime) stores a UTC time."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _weighted(shares: list[tuple[str, float]], draw: float) -> str:
    edge = 0.0
    for value, share in shares:
        edge += share
        if draw < edge:
            return value
    return shares[-1][0]


def _sqlite_event_rows(
    table: str, count: int, now: datetime, rng: random.Random
) -> Iterator[tuple[Any, ...]]:
    pad = "x" * PAD
    for i in range(1, count + 1):
        received = now - timedelta(seconds=rng.random() * DAYS * 86400)
        status = _weighted(STATUSES, rng.random())
        done_at = _sqlite_time(received + timedelta(seconds=2)) if status in ("done", "error") else None
        attempts = 8 if status == "error" else 0 if status == "pending" else 1
        error = "GHL 422: phone +15551234567 is invalid" if status in ("error", "quarantined") else None
        contact = i * 7919 % CONTACTS
        common = (
            uuid.uuid4().hex,
            _sqlite_time(received),
            status,
            f"bench:{table}:{i}",
            error,
            done_at,
            attempts,
        )
        if table == "webhook_events":
            source = _weighted(SOURCES, rng.random())
            event_type = rng.choice(EVENT_TYPES[source])
            entity = f"c{contact}"
            ordering, extra = f"contact:{entity}", (source, "contact", entity)
        elif table == "texting_webhook_events":
            event_type = rng.choice(EVENT_TYPES["texting"])
            entity = f"msg{i}"
            phone = f"+12125{contact:06d}"
            ordering, extra = (
                f"phone:{phone}",
                ("message", entity, f"conv{i % CONTACTS}", phone, "+12125550100"),
            )
        else:
            event_type, entity = "broadcast.analytics", f"bc{i % 500}"
            ordering, extra = f"broadcast:{entity}", (entity,)
        payload = json.dumps({"type": event_type, "id": entity, "body": pad})
        yield (*common, event_type, payload, common[1], ordering, *extra)


_SQLITE_EVENT_INSERTS = {
    "webhook_events": "source, entity_type, entity_id",
    "texting_webhook_events": "entity_type, entity_id, conversation_id, from_number, to_number",
    "broadcast_webhook_events": "broadcast_id",
}


def _batched(rows: Iterator[tuple[Any, ...]], size: int = 20_000) -> Iterator[list[tuple[Any, ...]]]:
    batch: list[tuple[Any, ...]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def seed_sqlite(path: Path, events: int, sync_rows: int) -> dict[str, Any]:
    for leftover in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        leftover.unlink(missing_ok=True)
    started = time.monotonic()
    url = f"sqlite:///{path}"
    migrate(url)
    made: dict[str, Any] = {"migrate_s": round(time.monotonic() - started, 1)}
    rng = random.Random(42)
    now = datetime.now(UTC)
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=OFF")
    try:
        for table, count in split(events).items():
            at = time.monotonic()
            extra = _SQLITE_EVENT_INSERTS[table]
            marks = ", ".join("?" * (11 + len(extra.split(","))))
            sql = (
                f"INSERT INTO {table} (id, received_at, status, dedupe_key, error_message, processed_at, "
                f"attempts, event_type, payload_json, next_attempt_at, ordering_key, {extra}, "
                f"signature_verified) VALUES ({marks}, 1)"
            )
            for batch in _batched(_sqlite_event_rows(table, count, now, rng)):
                connection.executemany(sql, batch)
            connection.commit()
            made[table] = {"rows": count, "s": round(time.monotonic() - at, 1)}
            say(f"{table}: {count:,} rows in {made[table]['s']} s")
        at = time.monotonic()

        def sync_log_rows() -> Iterator[tuple[Any, ...]]:
            for i in range(1, sync_rows + 1):
                status = _weighted([("success", 0.90), ("skipped", 0.08), ("error", 0.02)], rng.random())
                begun = now - timedelta(seconds=rng.random() * DAYS * 86400)
                contact = i * 7919 % CONTACTS
                yield (
                    uuid.uuid4().hex,
                    "ghl_to_aloware" if rng.random() < 0.6 else "aloware_to_ghl",
                    f"c{contact}",
                    f"c{contact}",
                    f"a{contact}",
                    status,
                    _sqlite_time(begun),
                    _sqlite_time(begun + timedelta(milliseconds=300)),
                    "Aloware 500" if status == "error" else None,
                    str(uuid.uuid4()),
                    "unchanged (fingerprint)" if status == "skipped" else "contact updated",
                )

        for batch in _batched(sync_log_rows()):
            connection.executemany(
                "INSERT INTO sync_log (id, direction, entity_type, entity_id, source_id, target_id, status, "
                "started_at, finished_at, error_message, correlation_id, message) "
                "VALUES (?, ?, 'contact', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                batch,
            )
        connection.commit()
        made["sync_log"] = {"rows": sync_rows, "s": round(time.monotonic() - at, 1)}
        at = time.monotonic()
        mappings = []
        for i in range(MAPPINGS):
            t = _sqlite_time(now - timedelta(seconds=rng.random() * DAYS * 86400))
            mappings.append(
                (
                    uuid.uuid4().hex,
                    f"a{i}",
                    f"c{i}",
                    f"+12125{i:06d}",
                    f"lead{i}@example.com",
                    t,
                    t,
                    t,
                    f"{i:032x}",
                )
            )
        connection.executemany(
            "INSERT INTO contact_mappings (id, aloware_contact_id, ghl_contact_id, phone_number, email, "
            "last_synced_at, sync_direction, created_at, updated_at, last_synced_fingerprint) "
            "VALUES (?, ?, ?, ?, ?, ?, 'ghl_to_aloware', ?, ?, ?)",
            mappings,
        )
        optouts = []
        for i in range(OPTOUTS):
            t = _sqlite_time(now - timedelta(seconds=rng.random() * DAYS * 86400))
            status = "opted_out" if rng.random() < 0.9 else "opted_in"
            source = ("texting", "ghl", "aloware", "manual")[i % 4]
            optouts.append((uuid.uuid4().hex, f"+12125{i * 13:06d}", status, source, t, t, t))
        connection.executemany(
            "INSERT INTO optout_registry (id, phone_number, status, source, reason, last_event_at, "
            "created_at, updated_at) VALUES (?, ?, ?, ?, 'STOP', ?, ?, ?)",
            optouts,
        )
        runs = []
        for h in range(1, DAYS * 24 + 1):
            for job in JOBS:
                begun = now - timedelta(hours=h)
                totals = json.dumps({"checked": 10000, "written": 3, "api_calls": 101})
                runs.append(
                    (
                        uuid.uuid4().hex,
                        job,
                        _sqlite_time(begun),
                        _sqlite_time(begun + timedelta(seconds=40)),
                        totals,
                    )
                )
        connection.executemany(
            "INSERT INTO reconcile_runs (id, job_name, started_at, finished_at, status, totals) "
            "VALUES (?, ?, ?, ?, 'success', ?)",
            runs,
        )
        connection.commit()
        made["contact_mappings"] = {"rows": MAPPINGS}
        made["optout_registry"] = {"rows": OPTOUTS}
        made["reconcile_runs"] = {
            "rows": len(runs),
            "s_with_mappings_optouts": round(time.monotonic() - at, 1),
        }
        at = time.monotonic()
        connection.execute("ANALYZE")
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        made["analyze_s"] = round(time.monotonic() - at, 1)
    finally:
        connection.close()
    made["total_s"] = round(time.monotonic() - started, 1)
    made["database_size"] = f"{path.stat().st_size / 2**20:.0f} MB"
    made["database_url"] = url
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument(
        "--sync-log", type=int, default=None, help="sync_log rows (default: as many as events)"
    )
    parser.add_argument("--sqlite", type=Path, default=None, help="seed this SQLite file instead (replaced)")
    parser.add_argument("--database", default=DATABASE, help="PostgreSQL database to (re)create")
    parser.add_argument(
        "--pg",
        default=os.environ.get("BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="DSN of an existing database on the server, used to create the bench database",
    )
    args = parser.parse_args(argv)
    sync_rows = args.events if args.sync_log is None else args.sync_log
    if args.sqlite is not None:
        made = seed_sqlite(args.sqlite.resolve(), args.events, sync_rows)
    else:
        made = asyncio.run(seed_postgres(args.pg, args.database, args.events, sync_rows))
    say(f"done in {made['total_s']} s: {made['database_size']} at {made['database_url']}")
    print(json.dumps(made))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
