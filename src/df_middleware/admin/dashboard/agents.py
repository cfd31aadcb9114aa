"""`/admin/agents` (SPEC §8.2): the agent directory, every agent's dialer lists with members and
blocked contacts, the lists Aloware does not have (blocked), and a rebuild button.

The rebuild is `sync/list_operations.rebuild_lists`, what `df-middleware lists rebuild` runs. It
takes minutes on a large book, so the button starts it in the background of this process (one at
a time) and the page says it is running; its outcome is logged like the CLI's. It is idempotent:
contacts whose lists are right cost no Aloware call.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from df_middleware.admin.dashboard.render import page, redirect_with_flash
from df_middleware.admin.dashboard.session import AdminSession, checked_form, require_session
from df_middleware.agents.directory import active_agents, all_agents
from df_middleware.config import Settings
from df_middleware.connectors.suite import Connectors
from df_middleware.db.session import Database
from df_middleware.observability import get_logger, mask_email
from df_middleware.sync.list_operations import lists_status, rebuild_lists

log = get_logger(__name__)


def agents_router() -> APIRouter:
    router = APIRouter()
    rebuilding: dict[str, asyncio.Task[None]] = {}

    def running() -> bool:
        task = rebuilding.get("lists")
        return task is not None and not task.done()

    async def rebuild(settings: Settings, db: Database, shared: Connectors | None) -> None:
        connectors = shared or Connectors.from_settings(settings, db)
        try:
            report = await rebuild_lists(settings, db, connectors)
            log.info("dashboard.lists_rebuilt", **report.as_dict())
        except Exception as exc:
            log.exception("dashboard.lists_rebuild_failed", error=type(exc).__name__)
        finally:
            if shared is None:
                await connectors.aclose()

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
        return page(
            request,
            "agents.html",
            session=session,
            agents=agents,
            lists=status.lines,
            blocked_lists=status.blocked_lists,
            rebuilding=running(),
            aloware_configured=bool(settings.aloware_api_token),
        )

    @router.post("/admin/lists/rebuild", include_in_schema=False)
    async def rebuild_button(request: Request, session: AdminSession = Depends(require_session)) -> Response:
        await checked_form(request, session)
        settings: Settings = request.app.state.settings
        db: Database = request.app.state.db
        if not settings.aloware_api_token:
            return redirect_with_flash(
                request,
                "/admin/agents",
                "Aloware is not configured (ALOWARE_API_TOKEN): no lists to rebuild.",
                "error",
            )
        if not await active_agents(db):
            return redirect_with_flash(
                request,
                "/admin/agents",
                "No active agents in the directory: run `agents seed` first.",
                "error",
            )
        if running():
            return redirect_with_flash(
                request, "/admin/agents", "A list rebuild is already running.", "error"
            )
        shared = getattr(request.app.state, "connectors", None)
        rebuilding["lists"] = asyncio.create_task(
            rebuild(settings, db, shared), name="dashboard:lists-rebuild"
        )
        return redirect_with_flash(
            request, "/admin/agents", "List rebuild started: the lists below update as it goes (reload)."
        )

    return router
