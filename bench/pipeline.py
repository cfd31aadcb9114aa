"""GHL calls per processed Aloware event, and the share of GHL's rate budget the worker uses (not a test).

`python bench/pipeline.py [--events N] [--locations K] [--latency-ms 40] [--concurrency C]
[--contacts mapped|mapped-cold|unmapped|new] [--calls-per-person R] [--call-mix disposed|call]
[--no-call-log]` measures R-PERF-3 with the real handlers (`--agent-lists` and `--broadcast-burst` run
issue 12's measurements instead: bench/agent_lists.py and bench/broadcast_burst.py):

1. starts the GHL simulator (100 requests / 10 s per location, GHL's published limit, `--latency-ms`
   added to every request) and the Aloware simulator as subprocesses (`df-middleware simulate …`),
   creates a PostgreSQL database on 127.0.0.1:5432 and migrates it;
2. sets up K locations: `loc_sim` (the simulator's default location, Private Integration Token
   `pit-sim`) is GHL_LOCATION_ID; the K-1 others are added with `POST /_sim/locations` and installed
   through OAuth (a code from `GET /oauth/chooselocation?locationId=…`, exchanged with
   `GhlTokenStore.exchange_code`). Aloware is one account synced with GHL_LOCATION_ID: its events
   name no location and the handlers use `Connectors.ghl` only, so every Aloware event lands on the
   first location and the others stay idle (they are set up to show it, and counted in `budget_used`);
3. seeds N people: with `--contacts mapped` (default, the steady state) GHL already has each contact
   (created through `/_sim/ui/contacts`, which is not rate limited) and `contact_mappings` links it to
   its Aloware contact, with the GHL profile last seen (what syncing the contact or GHL's webhook
   about it leaves); `mapped-cold`: the same without the last-seen profile (mappings from before
   migration 0005); `unmapped`: GHL has the contact but no mapping exists yet; `new`: GHL has
   nobody;
4. phase `contact_updates`: N Aloware `Contact Updated` events (R-C-2; each fills empty GHL fields
   under the default CONTACT_SOURCE_OF_TRUTH=ghl), inserted into `webhook_events` with the columns
   ingest writes (`classify_aloware`), then one in-process `Worker` (`Connectors.from_settings`)
   runs until the queue is drained;
5. phase `call_events`: N call events, same way. `--call-mix disposed` (default): N `Call Disposed`
   (R-CALL-1: note, tags and, with GHL_CALL_PROVIDER_ID set unless `--no-call-log`, the call log);
   `--call-mix call`: N/4 calls, each with the four events Aloware sends about a finished call
   (`Call Disposed`, `Recording Saved`, `Transcription Saved`, `Call Summarized`: R-CALL-2 adds a
   note each, and the summary's tags). One call per person, or with `--calls-per-person R` R calls
   each for the first people (a contact's first logged call looks its conversation up; later ones
   use the remembered id).

One JSON line. Per phase: seconds, processed/s, GHL calls (from the simulator's request log) per
event and by endpoint, 429s, event outcomes, and two budget figures:

- `budget_used`: GHL calls / (phase seconds * 10 per s * K locations), the whole phase including
  the start (a worker starts with a full budget) and the tail (fewer events than worker slots);
- `budget_used_saturated`: calls admitted by the simulator in the last whole 10 s windows
  before the queue had no pending event left (so work was queued throughout) ÷ 100 per window.
  The simulator's strict sliding window allows at most 1.00; null when that part is under 10 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
from cryptography.fernet import Fernet
from sqlalchemy import func, insert, select

from df_middleware.config import Settings
from df_middleware.connectors.suite import Connectors
from df_middleware.db.migrate import upgrade
from df_middleware.db.models import ContactMapping, SyncLog, WebhookEvent
from df_middleware.db.session import Database
from df_middleware.db.types import utcnow
from df_middleware.ingest.sources.aloware import classify_aloware
from df_middleware.ingest.store import queued_row
from df_middleware.observability import configure_logging
from df_middleware.queue.worker import Worker
from df_middleware.simulators.aloware import aloware_example
from df_middleware.simulators.ghl import (
    DEFAULT_CLIENT_ID,
    DEFAULT_CLIENT_SECRET,
    DEFAULT_LOCATION_ID,
    DEFAULT_TOKEN,
)
from df_middleware.sync.identity import GhlSighting
from df_middleware.timestamps import parse_iso8601

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
WINDOW_SECONDS = 10.0
CALLS_PER_WINDOW = 100
#: A GHL id in a path (the simulator's are 20 characters of [A-Za-z0-9]).
_ID_SEGMENT = re.compile(r"^[A-Za-z0-9]{20}$")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def simulator(system: str, *options: str) -> Iterator[str]:
    """`df-middleware simulate <system>` on a free port, stopped on exit; yields its base URL."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "df_middleware.cli", "simulate", system, "--port", str(port), *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(150):
            try:
                httpx.get(f"{url}/_sim/state", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"{system} simulator did not start")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- people and events -----------------------------------------------------------------------------


def phone_of(i: int) -> str:
    return f"+1919{2_000_000 + i:07d}"


def aloware_contact_id(i: int) -> int:
    return 500_000 + i


def contact_updated(i: int) -> dict[str, Any]:
    """Aloware's `Contact Updated` for person i: names and phone GHL has, plus fields it lacks."""
    _, body = aloware_example("Contact Updated")
    body.update(
        id=aloware_contact_id(i),
        first_name=f"First{i}",
        last_name=f"Last{i}",
        name=f"First{i} Last{i}",
        phone_number=phone_of(i),
        email=f"person{i}@example.com",
        city="Raleigh",
        updated_at=f"2026-11-25T{10 + i // 3600 % 10:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z",
    )
    return {"event": "Contact Updated", "body": body}


#: The events Aloware sends about one finished call, in the order they usually come (`--call-mix call`).
CALL_EVENT_KINDS: tuple[str, ...] = (
    "Call Disposed",
    "Recording Saved",
    "Transcription Saved",
    "Call Summarized",
)


def call_event(call: int, i: int, kind: str = "Call Disposed") -> dict[str, Any]:
    """Aloware's `kind` event (`Call Disposed` or one of its children) for call `call`, person i."""
    _, body = aloware_example(kind)
    call_id = 9_000_000 + call
    if kind == "Call Disposed":
        body.update(id=call_id, contact_id=aloware_contact_id(i))
        body["recording_url"] = f"https://recordings.example.com/{call_id}.mp3"
    else:
        child = CALL_EVENT_KINDS.index(kind)
        body.update(id=10 * call_id + child, call_id=call_id, communication_id=call_id)
        body.update(contact_id=aloware_contact_id(i))
    body["contact"].update(
        id=aloware_contact_id(i),
        first_name=f"First{i}",
        last_name=f"Last{i}",
        name=f"First{i} Last{i}",
        phone_number=phone_of(i),
        email=f"person{i}@example.com",
    )
    return {"event": kind, "body": body}


def call_events(count: int, people: int, mix: str) -> list[dict[str, Any]]:
    """`count` call events: `Call Disposed` only (mix `disposed`), or each call's four events."""
    if mix == "disposed":
        return [call_event(j, j % people) for j in range(count)]
    per_call = len(CALL_EVENT_KINDS)
    return [
        call_event(j // per_call, (j // per_call) % people, CALL_EVENT_KINDS[j % per_call])
        for j in range(count)
    ]


def event_row(payload: dict[str, Any]) -> dict[str, Any]:
    """The `webhook_events` row ingest stores for an Aloware webhook."""
    return queued_row(classify_aloware(payload), payload, verified=True, request_id=None)


# --- set-up -------------------------------------------------------------------------------------


async def install_locations(
    ghl_url: str, connectors: Connectors, settings: Settings, count: int
) -> list[str]:
    """GHL_LOCATION_ID (PIT) plus count-1 OAuth installations; returns the location ids."""
    locations = [DEFAULT_LOCATION_ID]
    async with httpx.AsyncClient(base_url=ghl_url, timeout=10) as client:
        for k in range(1, count):
            location = f"loc_bench_{k}"
            (await client.post("/_sim/locations", json={"locationId": location})).raise_for_status()
            answer = await client.get(
                "/oauth/chooselocation",
                params={
                    "response_type": "code",
                    "client_id": DEFAULT_CLIENT_ID,
                    "redirect_uri": settings.oauth_redirect_uri,
                    "locationId": location,
                },
            )
            if answer.status_code != 302:
                raise RuntimeError(f"no auth code for {location}: {answer.status_code} {answer.text}")
            code = parse_qs(urlsplit(answer.headers["location"]).query)["code"][0]
            installed = await connectors.tokens.exchange_code(code)
            if installed != location:
                raise RuntimeError(f"code for {location} installed {installed}")
            locations.append(location)
    return locations


async def seed_people(ghl_url: str, db: Database, events: int, scenario: str) -> None:
    """GHL contacts (name and phone only) and, for `mapped` / `mapped-cold`, their
    contact_mappings rows: `mapped` with the GHL profile last seen (as syncing the contact, or
    GHL's webhook about it, leaves), `mapped-cold` without (rows from before migration 0005)."""
    if scenario == "new":
        return
    ghl_ids: dict[int, str] = {}
    changed: dict[int, str | None] = {}
    limit = asyncio.Semaphore(16)
    async with httpx.AsyncClient(base_url=ghl_url, timeout=30) as client:

        async def create(i: int) -> None:
            async with limit:
                answer = await client.post(
                    "/_sim/ui/contacts",
                    json={
                        "locationId": DEFAULT_LOCATION_ID,
                        "firstName": f"First{i}",
                        "lastName": f"Last{i}",
                        "phone": phone_of(i),
                    },
                )
                answer.raise_for_status()
                created = answer.json()["contact"]
                ghl_ids[i] = created["id"]
                changed[i] = created.get("dateUpdated") or created.get("dateAdded")

        await asyncio.gather(*(create(i) for i in range(events)))
    if scenario not in ("mapped", "mapped-cold"):
        return
    now = utcnow()
    rows = [
        {
            "id": uuid.uuid4(),
            "aloware_contact_id": str(aloware_contact_id(i)),
            "ghl_contact_id": ghl_ids[i],
            "phone_number": phone_of(i),
            "email": None,
            "last_synced_at": now,
            "sync_direction": "ghl_to_aloware",
            "created_at": now,
            "updated_at": now,
            "last_synced_fingerprint": "seeded-by-bench",
            "ghl_profile": GhlSighting(
                {"first_name": f"First{i}", "last_name": f"Last{i}", "phone": phone_of(i)},
                parse_iso8601(changed[i]),
            ).dump()
            if scenario == "mapped"
            else None,
            "ghl_profile_at": now if scenario == "mapped" else None,
        }
        for i in range(events)
    ]
    async with db.session() as session:
        for start in range(0, len(rows), 1000):
            await session.execute(insert(ContactMapping), rows[start : start + 1000])


# --- one phase ----------------------------------------------------------------------------------


def endpoint_of(method: str, path: str) -> str:
    """`POST /contacts/{id}/notes`: the route template of a logged request."""
    parts = ["{id}" if _ID_SEGMENT.match(part) else part for part in path.split("/")]
    return f"{method} {'/'.join(parts)}"


async def queue_counts(db: Database) -> dict[str, int]:
    async with db.session() as session:
        rows = await session.execute(select(WebhookEvent.status, func.count()).group_by(WebhookEvent.status))
        return {status: int(n) for status, n in rows.all()}


async def run_phase(
    name: str,
    payloads: list[dict[str, Any]],
    *,
    settings: Settings,
    db: Database,
    connectors: Connectors,
    ghl_url: str,
    aloware_url: str,
    locations: list[str],
    latency_s: float,
    max_seconds: float,
) -> dict[str, Any]:
    """Queue the payloads, run one worker until none is pending or processing, and measure."""
    print(f"phase {name}: {len(payloads)} events", file=sys.stderr)
    async with httpx.AsyncClient(timeout=60) as sim:
        log_start = len((await sim.get(f"{ghl_url}/_sim/requests")).json())
        aloware_start = len((await sim.get(f"{aloware_url}/_sim/requests")).json())
        before = (await sim.get(f"{ghl_url}/_sim/state")).json()
        async with db.session() as session:
            rows = [event_row(p) for p in payloads]
            for start in range(0, len(rows), 1000):
                await session.execute(insert(WebhookEvent), rows[start : start + 1000])
        ids = [row["id"] for row in rows]
        async with db.engine.connect() as conn:  # as autovacuum leaves a long-lived table
            await conn.exec_driver_sql("ANALYZE webhook_events")
            await conn.commit()

        worker = Worker(settings, db, connectors=connectors)
        stop = asyncio.Event()
        started_wall, started = time.time(), time.perf_counter()
        task = asyncio.create_task(worker.run(stop))
        all_claimed_wall: float | None = None
        timed_out = False
        while True:
            await asyncio.sleep(0.1)
            counts = await queue_counts(db)
            if all_claimed_wall is None and counts.get("pending", 0) == 0:
                all_claimed_wall = time.time()
            if counts.get("pending", 0) + counts.get("processing", 0) == 0:
                break
            if time.perf_counter() - started > max_seconds:
                timed_out = True
                break
            if task.done():
                break
        elapsed = time.perf_counter() - started
        stop.set()
        await task
        ended_wall = time.time()

        requests = (await sim.get(f"{ghl_url}/_sim/requests")).json()[log_start:]
        aloware_calls = len((await sim.get(f"{aloware_url}/_sim/requests")).json()) - aloware_start
        after = (await sim.get(f"{ghl_url}/_sim/state")).json()

    api = [r for r in requests if r["path"] != "/oauth/token"]
    by_endpoint = Counter(endpoint_of(r["method"], r["path"]) for r in api)
    statuses = Counter(r["status"] for r in api)
    rate_limited = after["counters"]["rate_limited_responses"] - before["counters"]["rate_limited_responses"]
    per_location = {
        loc: after["rateLimits"].get(loc, {}).get("today", 0)
        - before["rateLimits"].get(loc, {}).get("today", 0)
        for loc in locations
    }
    async with db.session() as session:
        outcome_rows = await session.execute(
            select(WebhookEvent.status, func.count())
            .where(WebhookEvent.id.in_(ids))
            .group_by(WebhookEvent.status)
        )
        outcomes = {status: int(n) for status, n in outcome_rows.all()}
        retried = int(
            await session.scalar(
                select(func.count()).where(WebhookEvent.id.in_(ids), WebhookEvent.attempts > 1)
            )
            or 0
        )
        log_rows = await session.execute(
            select(SyncLog.status, func.count())
            .where(SyncLog.correlation_id.in_([str(i) for i in ids]))
            .group_by(SyncLog.status)
        )
        sync_log = {status: int(n) for status, n in log_rows.all()}
        skip_rows = await session.execute(
            select(SyncLog.message, func.count())
            .where(SyncLog.correlation_id.in_([str(i) for i in ids]), SyncLog.status == "skipped")
            .group_by(SyncLog.message)
            .order_by(func.count().desc())
            .limit(3)
        )
        skips = {(message or "")[:120]: int(n) for message, n in skip_rows.all()}

    processed = outcomes.get("done", 0) + outcomes.get("error", 0)
    calls = len(api)
    # Admission at the simulator happens after the injected latency; `at` is taken before it.
    arrivals = sorted(r["at"] + latency_s for r in api if r["status"] != 429)
    saturated: float | None = None
    saturated_seconds = 0.0
    end = all_claimed_wall or ended_wall
    windows = int((end - started_wall) // WINDOW_SECONDS)
    if windows >= 1:
        saturated_seconds = windows * WINDOW_SECONDS
        begin = end - saturated_seconds
        in_part = sum(1 for at in arrivals if begin <= at < end)
        saturated = round(in_part / (windows * CALLS_PER_WINDOW), 3)
    return {
        "events": len(payloads),
        "processed": processed,
        "seconds": round(elapsed, 2),
        "processed_per_s": round(processed / elapsed, 2) if elapsed else None,
        "ghl_calls": calls,
        "ghl_calls_per_event": round(calls / processed, 3) if processed else None,
        "calls_by_endpoint_per_event": {
            k: round(v / processed, 3) if processed else None for k, v in sorted(by_endpoint.items())
        },
        "calls_by_location": per_location,
        "budget_used": round(calls / (elapsed * (CALLS_PER_WINDOW / WINDOW_SECONDS) * len(locations)), 3),
        "budget_used_saturated": saturated,
        "saturated_seconds": saturated_seconds,
        "queue_empty_after_s": round(all_claimed_wall - started_wall, 2) if all_claimed_wall else None,
        "rate_limited_429": rate_limited,
        "ghl_error_statuses": {str(s): n for s, n in sorted(statuses.items()) if s >= 400},
        "aloware_calls": aloware_calls,
        "outcomes": outcomes,
        "retried_events": retried,
        "dead_letters": outcomes.get("error", 0),
        "sync_log": sync_log,
        "top_skip_reasons": skips,
        "timed_out": timed_out,
    }


# --- the run ------------------------------------------------------------------------------------


async def run(args: argparse.Namespace, ghl_url: str, aloware_url: str, aloware_token: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10) as client:
        faults = {"latency_ms": args.latency_ms}
        (await client.put(f"{ghl_url}/_sim/faults", json=faults)).raise_for_status()
    name = f"dfm_pipeline_{uuid.uuid4().hex[:8]}"
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    admin = await asyncpg.connect(ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    db = Database(url)
    connectors: Connectors | None = None
    try:
        await upgrade(url)
        with tempfile.TemporaryDirectory(prefix="dfm-pipeline-") as data_dir:
            settings = Settings(
                _env_file=None,
                database_url=url,
                log_level="warning",
                data_dir=data_dir,
                public_base_url="http://127.0.0.1:8000",
                ghl_base_url=ghl_url,
                ghl_location_id=DEFAULT_LOCATION_ID,
                ghl_api_key=DEFAULT_TOKEN,
                ghl_client_id=DEFAULT_CLIENT_ID if args.locations > 1 else None,
                ghl_client_secret=DEFAULT_CLIENT_SECRET if args.locations > 1 else None,
                token_encryption_key=Fernet.generate_key().decode() if args.locations > 1 else None,
                ghl_call_provider_id=None if args.no_call_log else "bench-call-provider",
                ghl_rate_limit_processes=1,
                aloware_base_url=f"{aloware_url}/api/v1",
                aloware_api_token=aloware_token,
                worker_concurrency=args.concurrency,
                poll_seconds=0.2,
            )
            connectors = Connectors.from_settings(settings, db)
            locations = await install_locations(ghl_url, connectors, settings, args.locations)
            await seed_people(ghl_url, db, args.events, args.contacts)
            common: dict[str, Any] = {
                "settings": settings,
                "db": db,
                "connectors": connectors,
                "ghl_url": ghl_url,
                "aloware_url": aloware_url,
                "locations": locations,
                "latency_s": args.latency_ms / 1000,
                "max_seconds": args.max_seconds,
            }
            calls_made = (
                args.events if args.call_mix == "disposed" else -(-args.events // len(CALL_EVENT_KINDS))
            )
            people = max(1, -(-calls_made // args.calls_per_person))
            contacts = await run_phase(
                "contact_updates", [contact_updated(i) for i in range(args.events)], **common
            )
            # Let GHL's window empty: the call phase's budget is its own, not what the contact
            # phase's last calls left of it (that made short call phases look 10 % under budget).
            await asyncio.sleep(WINDOW_SECONDS + 0.5)
            calls = await run_phase("call_events", call_events(args.events, people, args.call_mix), **common)
            await connectors.aclose()
            connectors = None
    finally:
        if connectors is not None:
            await connectors.aclose()
        await db.dispose()
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    phases = {"contact_updates": contacts, "call_events": calls}
    seconds = contacts["seconds"] + calls["seconds"]
    processed = contacts["processed"] + calls["processed"]
    return {
        "bench": "pipeline",
        "events": 2 * args.events,
        "locations": args.locations,
        "busy_locations": sum(1 for n in calls["calls_by_location"].values() if n),
        "latency_ms": args.latency_ms,
        "concurrency": args.concurrency,
        "contacts": args.contacts,
        "call_log": not args.no_call_log,
        "calls_per_person": args.calls_per_person,
        "call_mix": args.call_mix,
        "seconds": round(seconds, 2),
        "processed_per_s": round(processed / seconds, 2) if seconds else None,
        "ghl_calls_per_contact_update": contacts["ghl_calls_per_event"],
        "ghl_calls_per_call_event": calls["ghl_calls_per_event"],
        "budget_used_saturated": {k: v["budget_used_saturated"] for k, v in phases.items()},
        "rate_limited_429": contacts["rate_limited_429"] + calls["rate_limited_429"],
        "errors": sum(sum(int(n) for n in v["ghl_error_statuses"].values()) for v in phases.values()),
        "dead_letters": contacts["dead_letters"] + calls["dead_letters"],
        "phases": phases,
    }


def git_commit() -> str | None:
    """The checked-out commit of the code measured (the repository may move between runs)."""
    try:
        answer = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=os.path.dirname(os.path.abspath(__file__)),
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return answer.stdout.strip() or None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=200, help="Events per phase (one per person).")
    parser.add_argument("--locations", type=int, default=1, help="GHL locations set up (1 PIT + OAuth).")
    parser.add_argument("--latency-ms", type=float, default=40.0, help="Added by the GHL simulator.")
    parser.add_argument("--concurrency", type=int, default=8, help="WORKER_CONCURRENCY.")
    parser.add_argument("--contacts", choices=("mapped", "mapped-cold", "unmapped", "new"), default="mapped")
    parser.add_argument(
        "--calls-per-person",
        type=int,
        default=1,
        help="R: the call phase's N calls go to the first N/R people (R calls each, interleaved).",
    )
    parser.add_argument(
        "--call-mix",
        choices=("disposed", "call"),
        default="disposed",
        help="disposed: every call event is a `Call Disposed`; call: each call's Disposed, Recording, "
        "Transcription and Summarized events.",
    )
    parser.add_argument("--no-call-log", action="store_true", help="Leave GHL_CALL_PROVIDER_ID unset.")
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="Give up on a phase after this.")
    parser.add_argument(
        "--agent-lists",
        action="store_true",
        help="Instead: Aloware calls per GHL contact update with agents configured (bench/agent_lists.py; "
        "--events is the number of contacts).",
    )
    parser.add_argument(
        "--broadcast-burst",
        action="store_true",
        help="Instead: GHL calls per broadcast under a burst of --events events for one broadcast "
        "(bench/broadcast_burst.py).",
    )
    args = parser.parse_args()
    configure_logging("warning", "json")
    if args.agent_lists or args.broadcast_burst:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import agent_lists
        import broadcast_burst

        if args.agent_lists:
            agent_lists.main(["--contacts", str(args.events)])
        if args.broadcast_burst:
            broadcast_burst.main(["--events", str(args.events)])
        return
    aloware_token = secrets.token_hex(12)
    commit = git_commit()
    with (
        simulator("ghl", "--rate-limit-max", "100", "--rate-limit-interval", "10") as ghl_url,
        simulator("aloware", "--api-token", aloware_token) as aloware_url,
    ):
        result = asyncio.run(run(args, ghl_url, aloware_url, aloware_token))
    result["commit"] = commit
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
