"""`/admin/agents` (SPEC §8.2): the agent directory, every agent's dialer lists with members and
blocked contacts, the lists Aloware does not have (blocked), and a rebuild button.

The rebuild is `sync/list_operations.rebuild_lists`, what `df-middleware lists rebuild` and
`POST /api/admin/lists/rebuild` run. It takes minutes on a large book, so the button starts it
as the admin API does: in the background of this process, under the same job name
("lists-rebuild", one at a time whichever surface started it), with this process's connectors.
Its outcome is logged (`admin.job_finished`); the page shows that it is running. It is
idempotent: contacts whose lists are right cost no Aloware call.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from df_middleware.admin.api.jobs import AdminJobs, JobAlreadyRunning
from df_middleware.admin.dashboard.render import page, redirect_with_flash
from df_middleware.admin.dashboard.session import AdminSession, checked_form, require_session
from df_middleware.agents.directory import active_agents, all_agents
from df_middleware.config import Settings
from df_middleware.connectors.suite import Connectors
from df_middleware.db.session import Database
from df_middleware.observability import mask_email
from df_middleware.sync.list_operations import lists_status, rebuild_lists

#: The admin API's name for the job, so the two surfaces never run two rebuilds at once.
REBUILD_JOB = "lists-rebuild"


def _jobs(request: Request) -> AdminJobs | None:
    jobs: AdminJobs | None = getattr(request.app.state, "admin_jobs", None)
    return jobs


def agents_router() -> APIRouter:
    router = APIRouter()

    @router.get("/admin/agents", include_in_schema=False)
    async def agents_page(request: Request, session: AdminSession = Depends(require_session)) -> Response:
        settings: Settings = request.app.state.settings
        db: Database = request.app.state.db
        agents: list[dict[str, Any]] = []
        for agent in await all_agents(db):
            agents.append(
                {
                    "agent_key": agent.agent_key,
                    "display_name": agent.display_name,
                    "ghl_owner_id": agent.ghl_owner_id,
                    "ghl_owner_email": mask_email(agent.ghl_owner_email) if agent.ghl_owner_email else None,
                    "aloware_user_id": agent.aloware_user_id,
                    "required_tag": agent.required_tag,
                    "is_active": agent.is_active,
                }
            )
        status = await lists_status(settings, db)
        jobs = _jobs(request)
        return page(
            request,
            "agents.html",
            session=session,
            agents=agents,
            lists=status.lines,
            blocked_lists=status.blocked_lists,
            rebuilding=jobs is not None and jobs.running(REBUILD_JOB),
            aloware_configured=bool(settings.aloware_api_token),
        )

    @router.post("/admin/lists/rebuild", include_in_schema=False)
    async def rebuild_button(request: Request, session: AdminSession = Depends(require_session)) -> Response:
        await checked_form(request, session)
        settings: Settings = request.app.state.settings
        db: Database = request.app.state.db
        connectors: Connectors | None = getattr(request.app.state, "connectors", None)
        jobs = _jobs(request)
        if not settings.aloware_api_token:
            said = "Aloware is not configured (ALOWARE_API_TOKEN): there are no lists to rebuild."
            return redirect_with_flash(request, "/admin/agents", said, "error")
        if not await active_agents(db):
            said = "No active agents in the directory: run `df-middleware agents seed` first."
            return redirect_with_flash(request, "/admin/agents", said, "error")
        if connectors is None or jobs is None:
            said = "The service is starting or stopping: try again in a moment."
            return redirect_with_flash(request, "/admin/agents", said, "error")
        try:
            jobs.start(REBUILD_JOB, lambda: rebuild_lists(settings, db, connectors))
        except JobAlreadyRunning:
            return redirect_with_flash(
                request, "/admin/agents", "A list rebuild is already running.", "error"
            )
        said = "List rebuild started: reload to see the lists change; its outcome is in the service log."
        return redirect_with_flash(request, "/admin/agents", said)

    return router
