"""Long operator jobs started from the admin API (a reconcile, a list rebuild) run in the
background of the process that received the request, one per name at a time.

Why in the background: they take minutes, and an HTTP request held that long dies at the first
proxy timeout while the job goes on unseen. The request answers 202 at once; the job's progress
and outcome are where the CLI's are (a `reconcile_runs` row, the log). A second start of the same
job in this process while one runs is refused (409); across processes the job itself guards
(a reconcile keeps one running row per job). At shutdown the jobs are cancelled: a reconcile
resumes from its cursor, a rebuild is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from df_middleware.observability import get_logger

log = get_logger(__name__)


class JobAlreadyRunning(Exception):
    pass


class AdminJobs:
    def __init__(self) -> None:
        self._running: dict[str, asyncio.Task[Any]] = {}

    def running(self, name: str) -> bool:
        task = self._running.get(name)
        return task is not None and not task.done()

    def start(self, name: str, job: Callable[[], Awaitable[Any]]) -> None:
        """Run `job` in the background under `name`; JobAlreadyRunning when one runs already."""
        if self.running(name):
            raise JobAlreadyRunning(name)

        async def run() -> None:
            try:
                outcome = await job()
            except asyncio.CancelledError:
                log.warning("admin.job_cancelled", job=name)
                raise
            except Exception as exc:
                log.exception("admin.job_failed", job=name, error=type(exc).__name__)
                return
            shown = outcome.as_dict() if hasattr(outcome, "as_dict") else outcome
            log.info("admin.job_finished", job=name, outcome=shown)

        self._running[name] = asyncio.create_task(run(), name=f"admin-job:{name}")

    async def stop(self) -> None:
        tasks = [task for task in self._running.values() if not task.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._running.clear()
