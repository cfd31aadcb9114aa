"""`/api/admin/reconcile…` and `/api/admin/mappings/repair` (SPEC §7, §8.1): start a reconcile
job, read the runs, repair one contact now. The same functions as `df-middleware reconcile …`
(`sync/reconcile.py`).

A job runs in the background of this process (`jobs.py`): 202 at once, then its `reconcile_runs`
row tells the progress (its totals are refreshed while it runs) and the outcome. A job that is
already running — here, or live in another process (its owner alive, its row beating within the
lease: `reconcile_runs.run_is_live`) — is 409; a row a killed process left does not block a start.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from df_middleware.admin.api.common import (
    MAX_ID_CHARS,
    AdminRoute,
    LimitQuery,
    connectors_of,
    db_of,
    settings_of,
)
from df_middleware.admin.api.jobs import AdminJobs, JobAlreadyRunning
from df_middleware.sync.reconcile import (
    ReconcileNotConfigured,
    list_reconcile_runs,
    repair_contact,
    run_reconcile,
)
from df_middleware.sync.reconcile_runs import run_is_live

Job = Literal["contacts", "lists", "optouts"]


class ReconcileIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    full: bool = Field(False, description="contacts: ignore the cursor and page through every contact")


class RepairIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ghl_contact_id: str = Field(min_length=1, max_length=MAX_ID_CHARS, pattern=r"^[A-Za-z0-9_-]+$")


def reconcile_router() -> APIRouter:
    router = APIRouter(route_class=AdminRoute)

    @router.post("/reconcile/{job}", status_code=202, summary="Start a reconcile job (in the background)")
    async def reconcile(
        request: Request, job: Annotated[Job, Path()], body: ReconcileIn | None = None
    ) -> JSONResponse:
        """Runs the job as `df-middleware reconcile <job>` does: 202 at once, then follow it in
        `GET /api/admin/reconcile/runs?job=<job>`. 409 while the job runs (here or elsewhere)."""
        full = body.full if body else False
        settings, db, connectors = settings_of(request), db_of(request), connectors_of(request)
        latest = await list_reconcile_runs(db, job=job, limit=1)
        if latest and run_is_live(latest[0]):
            raise HTTPException(409, f"reconcile {job} is already running (run {latest[0]['id']})")
        jobs: AdminJobs = request.app.state.admin_jobs
        try:
            jobs.start(f"reconcile-{job}", lambda: run_reconcile(settings, db, connectors, job, full=full))
        except JobAlreadyRunning:
            raise HTTPException(409, f"reconcile {job} is already running in this process") from None
        return JSONResponse(
            {"started": job, "full": full, "runs": f"/api/admin/reconcile/runs?job={job}"}, status_code=202
        )

    @router.get("/reconcile/runs", summary="Reconcile runs, newest first, with their totals")
    async def runs(request: Request, job: Job | None = None, limit: LimitQuery = 50) -> dict[str, Any]:
        """R-REC-2: each run's status and totals `{scanned, drifted, repaired, created, skipped,
        errors, api_calls}`; a running row's totals are the progress so far."""
        return {"items": await list_reconcile_runs(db_of(request), job=job, limit=limit)}

    @router.post("/mappings/repair", summary="Re-sync one GHL contact to Aloware now")
    async def repair(request: Request, body: RepairIn) -> dict[str, Any]:
        """Reads the contact from GHL afresh and runs it through the contact sync even when it
        looks in step: the Aloware contact and the mapping are made right. 404 when GHL has no
        such contact; 409 when GHL or Aloware is not configured."""
        try:
            return await repair_contact(
                settings_of(request),
                db_of(request),
                connectors_of(request),
                ghl_contact_id=body.ghl_contact_id,
            )
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from None
        except ReconcileNotConfigured as exc:
            raise HTTPException(409, str(exc)) from None

    return router
