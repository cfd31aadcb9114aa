"""The `reconcile_runs` rows of the batch reconcile jobs (SPEC §7, R-REC-2): start, heartbeat,
finish, and the runs an interrupted process left behind.

A run is `running` from its first moment, then `success` or `error` with its totals
`{scanned, drifted, repaired, created, skipped, errors, api_calls}`. A row must never stay
`running` after its process is gone, whatever ended it (an exception, a cancellation, kill -9):

- an exception or a cancellation finishes the row `error` with the message (`finish_run` runs in
  a `finally`, shielded from the cancellation, the way a worker records an event's outcome);
- a killed process cannot write anything, so while a run lives it keeps a *lease*: its row's
  totals carry `owner` (host:pid) and `heartbeat_at`, refreshed every `HEARTBEAT_SECONDS` by a
  task of its own. The next run of the job finds the row: its owner's process gone (same host),
  or its heartbeat older than `LEASE_SECONDS` (any host), and marks it `error: interrupted`.
  A row whose owner is alive and beating means the job is running elsewhere: `ReconcileBusy`.

The owner and heartbeat live only while the row is `running`; a finished row holds exactly the
seven totals.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import select, text, update

from df_middleware.db.models import ReconcileRun
from df_middleware.db.session import Database
from df_middleware.db.types import utcnow
from df_middleware.observability import get_logger
from df_middleware.timestamps import parse_iso8601

log = get_logger(__name__)

#: The jobs of SPEC §7, in the order an operator reads them.
RECONCILE_JOBS: tuple[str, ...] = ("contacts", "lists", "optouts")
RUNNING, SUCCESS, ERROR = "running", "success", "error"
#: How often a live run refreshes its lease, and how long a silent one is believed alive.
HEARTBEAT_SECONDS = 15.0
LEASE_SECONDS = 300.0
#: What an interrupted run's row says.
INTERRUPTED = "interrupted: the process running it stopped before the run finished"
#: Longest error text kept on a run row.
MAX_ERROR_TEXT = 1000
#: R-REC-2's totals, in the order a run row shows them.
TOTALS = ("scanned", "drifted", "repaired", "created", "skipped", "errors", "api_calls")
#: The systems whose calls `api_calls` counts.
COUNTED_SYSTEMS = ("ghl", "aloware")


class ReconcileProgress(Protocol):
    """What a job reports while it runs, so the CLI can draw a bar (rich) or log lines (R-REC-4).

    `start(total)` once the amount of work is known (None: unknown), `advance(n)` as items are
    done, `note(text)` for a line worth showing (a page done, a phase started)."""

    def start(self, total: int | None) -> None: ...

    def advance(self, n: int) -> None: ...

    def note(self, text: str) -> None: ...


class ReconcileBusy(RuntimeError):
    """Another run of the same job is live (its process alive and beating): two runs of one job
    would page the same contacts and fight over one cursor. The admin API answers 409."""

    def __init__(self, job: str, run: dict[str, Any]) -> None:
        super().__init__(f"reconcile {job} is already running (run {run['id']}, started {run['started_at']})")
        self.job = job
        self.run = run


class ReconcileNotConfigured(RuntimeError):
    """The systems a job needs are not configured: the run ends `error` saying which settings."""


@dataclass
class Totals:
    """R-REC-2's totals of one run."""

    scanned: int = 0
    drifted: int = 0
    repaired: int = 0
    created: int = 0
    skipped: int = 0
    errors: int = 0
    api_calls: int = 0
    #: The run's calls so far, by system (`connectors.http.CALL_TALLY`): a running row shows them.
    calls: Counter[str] | None = field(default=None, repr=False, compare=False)

    def count_calls(self) -> None:
        """`api_calls` from the tally: the calls to GHL and Aloware made so far."""
        if self.calls is not None:
            self.api_calls = sum(self.calls[system] for system in COUNTED_SYSTEMS)

    def as_dict(self) -> dict[str, int]:
        self.count_calls()
        return {name: getattr(self, name) for name in TOTALS}


def run_row(row: ReconcileRun) -> dict[str, Any]:
    """A run as the CLI (`--json`), the admin API and the dashboard show it; ISO timestamps."""
    return {
        "id": str(row.id),
        "job_name": row.job_name,
        "status": row.status,
        "started_at": row.started_at.isoformat() if row.started_at else None,
        "finished_at": row.finished_at.isoformat() if row.finished_at else None,
        "totals": row.totals,
        "error_message": row.error_message,
    }


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _process_gone(owner: Any) -> bool:
    """Whether `owner` (host:pid) names a process of this host that no longer exists."""
    if not isinstance(owner, str) or ":" not in owner:
        return False
    host, _, pid_text = owner.rpartition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False  # this process: a run of ours that is still in flight
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _lease_expired(row: ReconcileRun, now: datetime) -> bool:
    totals = row.totals or {}
    beat = parse_iso8601(totals.get("heartbeat_at")) if isinstance(totals, dict) else None
    last = beat or row.started_at
    return last is None or now - last > timedelta(seconds=LEASE_SECONDS)


def run_is_live(run: dict[str, Any], now: datetime | None = None) -> bool:
    """Whether a run (as `run_row` shows it) is live, the test `start_run` applies: `running`, its
    owner not a process of this host that is gone, and its heartbeat within the lease. A row a
    killed process left is not live (the next start retires it), so it must not block a start."""
    if run.get("status") != RUNNING:
        return False
    given = run.get("totals")
    totals: dict[str, Any] = given if isinstance(given, dict) else {}
    if _process_gone(totals.get("owner")):
        return False
    last = parse_iso8601(totals.get("heartbeat_at")) or parse_iso8601(run.get("started_at"))
    return last is not None and (now or utcnow()) - last <= timedelta(seconds=LEASE_SECONDS)


def _job_lock_key(job: str) -> int:
    return int.from_bytes(
        hashlib.sha256(f"df-middleware:reconcile:{job}".encode()).digest()[:8], "big", signed=True
    )


async def start_run(db: Database, job: str) -> uuid.UUID:
    """Insert the job's `running` row, first retiring the rows interrupted runs left behind.

    Check and insert are one transaction, serialised per job (an advisory lock on PostgreSQL; on
    SQLite one writer at a time), so two starts cannot both find the job idle."""
    now = utcnow()
    async with db.session() as session:
        if db.is_postgres:
            await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _job_lock_key(job)})
        running = list(
            await session.scalars(
                select(ReconcileRun).where(ReconcileRun.job_name == job, ReconcileRun.status == RUNNING)
            )
        )
        for row in running:
            owner = (row.totals or {}).get("owner") if isinstance(row.totals, dict) else None
            if _process_gone(owner) or _lease_expired(row, now):
                totals = {k: v for k, v in (row.totals or {}).items() if k in TOTALS}
                row.status, row.finished_at, row.error_message = ERROR, now, INTERRUPTED
                row.totals = {**Totals().as_dict(), **totals}
                log.warning("reconcile run interrupted earlier", job=job, run_id=str(row.id))
            else:
                raise ReconcileBusy(job, run_row(row))
        run = ReconcileRun(
            id=uuid.uuid4(),
            job_name=job,
            started_at=now,
            status=RUNNING,
            totals={**Totals().as_dict(), "owner": _owner(), "heartbeat_at": now.isoformat()},
        )
        session.add(run)
    return run.id


async def beat(db: Database, run_id: uuid.UUID, totals: Totals) -> None:
    """Refresh the lease and show the totals so far (a running row's progress)."""
    async with db.session() as session:
        await session.execute(
            update(ReconcileRun)
            .where(ReconcileRun.id == run_id, ReconcileRun.status == RUNNING)
            .values(totals={**totals.as_dict(), "owner": _owner(), "heartbeat_at": utcnow().isoformat()})
        )


async def finish_run(
    db: Database, run_id: uuid.UUID, status: str, totals: Totals, error_message: str | None = None
) -> dict[str, Any]:
    """Close the run with its outcome; returns the row as `run_row` shows it."""
    async with db.session() as session:
        row = await session.get(ReconcileRun, run_id)
        if row is None:  # pragma: no cover - the row was inserted by this run
            raise LookupError(f"reconcile run {run_id} not found")
        row.status = status
        row.finished_at = utcnow()
        row.totals = totals.as_dict()
        row.error_message = error_message[:MAX_ERROR_TEXT] if error_message else None
        await session.flush()
        return run_row(row)


@contextlib.asynccontextmanager
async def heartbeat(db: Database, run_id: uuid.UUID, totals: Totals) -> AsyncIterator[None]:
    """Keep the run's lease fresh while the body runs."""

    async def beating() -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                await beat(db, run_id, totals)
            except Exception as exc:  # a missed beat is not worth failing the run for
                log.warning("reconcile heartbeat failed", run_id=str(run_id), error=type(exc).__name__)

    task = asyncio.create_task(beating(), name=f"reconcile-heartbeat:{run_id}")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def list_reconcile_runs(
    db: Database, *, job: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """Runs newest first (all jobs, or one); `limit` is clamped to 1…500."""
    if job is not None and job not in RECONCILE_JOBS:
        raise ValueError(f"unknown reconcile job {job!r}: one of {', '.join(RECONCILE_JOBS)}")
    query = select(ReconcileRun).order_by(ReconcileRun.started_at.desc(), ReconcileRun.id.desc())
    if job is not None:
        query = query.where(ReconcileRun.job_name == job)
    async with db.session() as session:
        rows = await session.scalars(query.limit(max(1, min(limit, 500))))
        return [run_row(row) for row in rows]


async def latest_runs(db: Database) -> dict[str, dict[str, Any]]:
    """The newest run of each job that has run (the dashboard overview's "last reconcile")."""
    latest: dict[str, dict[str, Any]] = {}
    async with db.session() as session:
        for job in RECONCILE_JOBS:
            row = await session.scalar(
                select(ReconcileRun)
                .where(ReconcileRun.job_name == job)
                .order_by(ReconcileRun.started_at.desc(), ReconcileRun.id.desc())
                .limit(1)
            )
            if row is not None:
                latest[job] = run_row(row)
    return latest
