"""The batch reconcile jobs (SPEC §7): one entry point for the CLI, the scheduler and the admin API.

`run_reconcile(settings, db, connectors, job)` runs `contacts` (R-REC-1), `lists` or `optouts`
(R-REC-3) to its end and returns its `reconcile_runs` row (R-REC-2). What each job does is in its
own module (`reconcile_contacts`, `reconcile_lists`, `reconcile_optouts`); the run rows, their
lease and the progress protocol in `reconcile_runs`.

`api_calls` counts the requests the run itself made to GHL and Aloware (every attempt, retries
included), through the HTTP client's per-task tally (`connectors.http.CALL_TALLY`): exact even
when a worker shares the process and its connectors.

Status: `success` when the job finished and nothing failed; `error` with the message when the
job could not run (a system not configured), stopped (a remote unavailable past the client's
retries, the database, a cancellation) or finished with contacts that failed.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from df_middleware.config import Settings
from df_middleware.connectors.http import CALL_TALLY
from df_middleware.connectors.suite import Connectors
from df_middleware.db.session import Database
from df_middleware.observability import get_logger
from df_middleware.sync.reconcile_contacts import reconcile_contacts, repair_contact
from df_middleware.sync.reconcile_lists import reconcile_lists
from df_middleware.sync.reconcile_optouts import reconcile_optouts
from df_middleware.sync.reconcile_runs import (
    ERROR,
    RECONCILE_JOBS,
    SUCCESS,
    ReconcileBusy,
    ReconcileNotConfigured,
    ReconcileProgress,
    Totals,
    finish_run,
    heartbeat,
    latest_runs,
    list_reconcile_runs,
    start_run,
)

__all__ = [
    "RECONCILE_JOBS",
    "ReconcileBusy",
    "ReconcileNotConfigured",
    "ReconcileProgress",
    "latest_runs",
    "list_reconcile_runs",
    "repair_contact",
    "run_reconcile",
]

log = get_logger(__name__)


async def run_reconcile(
    settings: Settings,
    db: Database,
    connectors: Connectors,
    job: str,
    *,
    full: bool = False,
    progress: ReconcileProgress | None = None,
) -> dict[str, Any]:
    """Run one reconcile job to its end; returns its `reconcile_runs` row
    (`{"id", "job_name", "status", "started_at", "finished_at", "totals", "error_message"}`).

    Raises ValueError for an unknown job and `ReconcileBusy` when the job is running elsewhere;
    every other failure ends the row `error` (never left `running`) and is returned, not raised —
    except a cancellation, which is recorded and then re-raised."""
    if job not in RECONCILE_JOBS:
        raise ValueError(f"unknown reconcile job {job!r}: one of {', '.join(RECONCILE_JOBS)}")
    run_id = await start_run(db, job)
    tally: Counter[str] = Counter()
    totals = Totals(calls=tally)
    token = CALL_TALLY.set(tally)
    status, message = ERROR, "the run stopped before it finished"
    log.info("reconcile started", job=job, run_id=str(run_id), full=full)
    try:
        async with heartbeat(db, run_id, totals):
            if job == "contacts":
                failed = await reconcile_contacts(
                    settings, db, connectors, run_id, totals, full=full, progress=progress
                )
            elif job == "lists":
                failed = await reconcile_lists(settings, db, connectors, run_id, totals, progress=progress)
            else:
                failed = await reconcile_optouts(settings, db, connectors, run_id, totals, progress=progress)
        status, message = (ERROR, failed) if failed else (SUCCESS, "")
    except asyncio.CancelledError:
        message = "cancelled (shutdown) before the run finished"
        raise
    except ReconcileNotConfigured as exc:
        message = str(exc)
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"
        log.warning("reconcile failed", job=job, run_id=str(run_id), error=message)
    finally:
        CALL_TALLY.reset(token)
        row = await asyncio.shield(finish_run(db, run_id, status, totals, message or None))
        log.info("reconcile finished", job=job, run_id=str(run_id), status=status, **totals.as_dict())
    return row
