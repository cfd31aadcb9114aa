"""Periodic jobs of the serve/worker process (R-RUN-2): the daily prune (R-DM-7), the GHL OAuth
token refresh-ahead (R-OA-3), the alert checks (§8.4) and the reconcile jobs (R-REC-1, R-REC-3).

Any number of processes may run a scheduler; only the leader runs jobs (R-RUN-4). On
PostgreSQL the leader is the process holding a session advisory lock on a dedicated
connection: if that process dies, its connection closes, the lock is freed and another
process takes over within LEADER_CHECK_SECONDS. On SQLite (one machine, one file) every
scheduler is its own leader.

Schedules live in memory: a new leader runs each job `first_delay` after its own start, then
every `interval`. Running a job twice around a leadership change is harmless — every job here
is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import asyncpg

from df_middleware.config import Settings
from df_middleware.connectors.suite import Connectors
from df_middleware.connectors.tokens import oauth_configured, refresh_expiring_tokens
from df_middleware.db.session import CONNECT_TIMEOUT_SECONDS, Database, asyncpg_dsn
from df_middleware.observability import get_logger
from df_middleware.queue.alerts import ALERT_FIRST_DELAY_SECONDS, ALERT_INTERVAL_SECONDS, Alerter
from df_middleware.queue.operations import prune
from df_middleware.sync.reconcile import RECONCILE_JOBS, ReconcileBusy, run_reconcile

log = get_logger(__name__)

#: pg advisory lock key of the scheduler leader: a stable number derived from a readable name.
LEADER_LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"df-middleware:scheduler-leader").digest()[:8], "big", signed=True
)
LEADER_CHECK_SECONDS = 15.0
PRUNE_INTERVAL_SECONDS = 24 * 3600.0
PRUNE_FIRST_DELAY_SECONDS = 60.0
#: GHL OAuth refresh-ahead (R-OA-3): every few minutes, tokens expiring within 30 min. The first
#: run comes soon after start, since tokens may have come close to expiry while we were down.
OAUTH_REFRESH_INTERVAL_SECONDS = 300.0
OAUTH_REFRESH_FIRST_DELAY_SECONDS = 15.0
#: A failed job is tried again this soon (or at its interval, if shorter).
FAILED_JOB_RETRY_SECONDS = 300.0


@dataclass(frozen=True)
class Job:
    """A periodic job: `run` is awaited every `interval` seconds, first `first_delay` after start."""

    name: str
    interval: float
    run: Callable[[], Coroutine[Any, Any, object]]
    first_delay: float = 0.0


def default_jobs(settings: Settings, db: Database, connectors: Connectors | None = None) -> list[Job]:
    async def prune_old_rows() -> object:
        return await prune(db, settings.retention_days, settings.prune_batch_size)

    jobs = [Job("prune", PRUNE_INTERVAL_SECONDS, prune_old_rows, first_delay=PRUNE_FIRST_DELAY_SECONDS)]

    # --- GHL OAuth refresh-ahead (R-OA-3), only where Marketplace OAuth is configured ---
    if oauth_configured(settings):

        async def refresh_oauth_tokens() -> object:
            return await refresh_expiring_tokens(settings, db)

        jobs.append(
            Job(
                "oauth-refresh",
                OAUTH_REFRESH_INTERVAL_SECONDS,
                refresh_oauth_tokens,
                first_delay=OAUTH_REFRESH_FIRST_DELAY_SECONDS,
            )
        )

    # --- operator alerts (SPEC §8.4), only where ALERT_WEBHOOK_URL is set ---
    if settings.alert_webhook_url is not None:
        alerter = Alerter(settings, db)
        jobs.append(
            Job("alerts", ALERT_INTERVAL_SECONDS, alerter.check, first_delay=ALERT_FIRST_DELAY_SECONDS)
        )
    jobs.extend(reconcile_jobs(settings, db, connectors))
    return jobs


def reconcile_jobs(settings: Settings, db: Database, connectors: Connectors | None = None) -> list[Job]:
    """The reconcile jobs (SPEC §7) every RECONCILE_INTERVAL, the first one interval after start,
    where the systems they need are configured: contacts and lists need GHL and Aloware, optouts
    GHL. A run uses the process's `connectors` when given, so that it shares the worker's GHL
    rate budget instead of spending a second one beside it (R-PERF-3: no 429s); otherwise it opens
    its own and closes them. A run already live elsewhere (the CLI, the admin API) is left to
    finish."""
    interval = settings.reconcile_interval_seconds
    credentials = settings.ghl_api_key is not None or oauth_configured(settings)
    ghl = settings.ghl_location_id is not None and credentials
    aloware = settings.aloware_api_token is not None
    if interval <= 0 or not ghl:
        return []

    def runner(job: str) -> Callable[[], Coroutine[Any, Any, object]]:
        async def run() -> object:
            clients = connectors if connectors is not None else Connectors.from_settings(settings, db)
            try:
                row = await run_reconcile(settings, db, clients, job)
            except ReconcileBusy as exc:
                return str(exc)
            finally:
                if clients is not connectors:
                    await clients.aclose()
            return {"status": row["status"], "totals": row["totals"]}

        return run

    needs_aloware = {"contacts", "lists"}
    return [
        Job(f"reconcile-{job}", interval, runner(job), first_delay=interval)
        for job in RECONCILE_JOBS
        if aloware or job not in needs_aloware
    ]


class Leadership:
    """Whether this process is the one that runs periodic jobs."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._connection: Any = None
        self._held = False

    async def hold(self) -> bool:
        """Acquire the leader lock if free, or confirm we still hold it. Never raises."""
        if not self.db.is_postgres:
            return True
        try:
            if self._connection is None or self._connection.is_closed():
                self._held = False
                self._connection = await asyncpg.connect(
                    asyncpg_dsn(self.db.database_url), timeout=CONNECT_TIMEOUT_SECONDS
                )
            if self._held:
                # The lock lives as long as the connection: a live connection means we lead.
                await self._connection.fetchval("SELECT 1")
            else:
                self._held = bool(
                    await self._connection.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK_KEY)
                )
                if self._held:
                    log.info("scheduler leadership acquired")
            return self._held
        except Exception as exc:
            log.warning("scheduler leadership check failed", error=str(exc))
            await self.release()
            return False

    async def release(self) -> None:
        """Drop the lock by closing its connection (the server frees session locks then)."""
        if self._connection is not None:
            self._connection.terminate()
        self._connection = None
        self._held = False


class Scheduler:
    """Runs `jobs` on their intervals while this process is the leader."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        jobs: list[Job] | None = None,
        *,
        leader_check_seconds: float = LEADER_CHECK_SECONDS,
        connectors: Connectors | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.jobs = jobs if jobs is not None else default_jobs(settings, db, connectors)
        self.leadership = Leadership(db)
        self.leader_check_seconds = leader_check_seconds
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._running = False

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run until `stop` is set or `stop()` is called."""
        self._running = True
        self._stopped.clear()
        watcher = asyncio.create_task(self._stop_when(stop)) if stop is not None else None
        loop = asyncio.get_running_loop()
        next_run = {job.name: loop.time() + job.first_delay for job in self.jobs}
        try:
            while not self._stopping.is_set():
                wait = self.leader_check_seconds
                if await self.leadership.hold():
                    for job in self.jobs:
                        if loop.time() >= next_run[job.name] and not self._stopping.is_set():
                            succeeded = await self._run_job(job)
                            delay = job.interval if succeeded else min(job.interval, FAILED_JOB_RETRY_SECONDS)
                            next_run[job.name] = loop.time() + delay
                    if next_run:
                        wait = min(wait, max(0.0, min(next_run.values()) - loop.time()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=wait)
        finally:
            if watcher is not None:
                watcher.cancel()
            await self.leadership.release()
            self._running = False
            self._stopped.set()

    async def stop(self) -> None:
        """Stop: a running job is cancelled (jobs work in short transactions, so nothing half-done
        is committed), and leadership is released for another process to take."""
        self._stopping.set()
        if self._running:
            await self._stopped.wait()

    async def _stop_when(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._stopping.set()

    async def _run_job(self, job: Job) -> bool:
        """Run one job to the end, or until shutdown. True when it succeeded."""
        work = asyncio.create_task(job.run(), name=f"job:{job.name}")
        shutdown = asyncio.create_task(self._stopping.wait())
        await asyncio.wait({work, shutdown}, return_when=asyncio.FIRST_COMPLETED)
        shutdown.cancel()
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
            log.info("job interrupted by shutdown", job=job.name)
            return False
        if work.exception() is not None:
            log.error("job failed", job=job.name, exc_info=work.exception())
            return False
        log.info("job finished", job=job.name, result=work.result())
        return True
