"""`/api/admin/agents…` and `/api/admin/lists…` (SPEC §8.1, R-AG-2..5): the agent directory and
the dialer lists it drives. The same functions as `df-middleware agents …` and `lists …`.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, ValidationError

from df_middleware.admin.api.common import AdminRoute, connectors_of, db_of, settings_of
from df_middleware.admin.api.jobs import AdminJobs, JobAlreadyRunning
from df_middleware.agents.agents_file import AGENT_KEY_PATTERN, AgentsFileError, AgentSpec, list_name_clash
from df_middleware.agents.directory import all_agents, apply_agents_file, load_agents_file, upsert_agent
from df_middleware.sync.list_operations import lists_status, rebuild_lists

AgentKey = Annotated[str, Path(max_length=64, description="The agent's key (letters, digits, _)")]


class AgentIn(BaseModel):
    """An agent as `agent_directory` holds it (the columns of AGENTS_FILE)."""

    model_config = ConfigDict(extra="forbid")
    agent_key: str | None = None
    display_name: str | None = None
    ghl_owner_id: str | None = None
    ghl_owner_email: str | None = None
    ghl_assigned_agent_field_value: str | None = None
    required_tag: str | None = None
    aloware_user_id: str | None = None
    is_active: bool = True


class RebuildIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    agent_key: str | None = None


def _spec(body: AgentIn, agent_key: str | None = None) -> AgentSpec:
    """The body checked exactly as a line of AGENTS_FILE is (422 with the reason)."""
    values = body.model_dump(exclude_none=True)
    if agent_key is not None:
        given = values.get("agent_key")
        if given is not None and given.strip().upper() != agent_key.strip().upper():
            raise HTTPException(422, "agent_key in the body differs from the one in the path")
        values["agent_key"] = agent_key
    if "agent_key" not in values:
        raise HTTPException(422, "agent_key is required")
    try:
        return AgentSpec.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'agent'}: {e['msg']}" for e in exc.errors())
        raise HTTPException(422, problems) from None


def directory_router() -> APIRouter:
    router = APIRouter(route_class=AdminRoute)

    @router.get("/agents", summary="The agent directory, inactive agents included")
    async def agents(request: Request) -> list[dict[str, Any]]:
        return [asdict(agent) for agent in await all_agents(db_of(request))]

    @router.post("/agents", status_code=201, summary="Create an agent")
    async def create(request: Request, body: AgentIn) -> dict[str, Any]:
        """Missing GHL and Aloware user ids are filled by exact email (R-AG-5). 409 when the key
        exists (PUT updates). With AGENTS_FILE set, the file stays the directory at the next start."""
        spec = _spec(body)
        db = db_of(request)
        if any(agent.agent_key == spec.agent_key for agent in await all_agents(db)):
            raise HTTPException(409, f"agent {spec.agent_key} exists: PUT /api/admin/agents/{spec.agent_key}")
        return await _upsert(request, spec)

    @router.put("/agents/{agent_key}", summary="Create or update an agent")
    async def update(request: Request, agent_key: AgentKey, body: AgentIn) -> dict[str, Any]:
        """The agent becomes exactly what the body says (absent fields empty); to deactivate,
        send `is_active: false` (agents are never deleted: their contacts' state refers to them)."""
        if not AGENT_KEY_PATTERN.fullmatch(agent_key.strip()):
            raise HTTPException(422, "not an agent key: letters, digits and _ only, 1 to 64 of them")
        return await _upsert(request, _spec(body, agent_key))

    @router.post("/agents/seed", summary="Apply AGENTS_FILE now")
    async def seed(request: Request) -> dict[str, Any]:
        """What `agents seed` does: upsert by agent_key, agents not in the file inactive, missing
        ids filled by email. 409 when AGENTS_FILE is not set; 422 with the file and line when it is bad."""
        settings = settings_of(request)
        if settings.agents_file is None:
            raise HTTPException(409, "AGENTS_FILE is not set: there is no file to apply")
        try:
            specs = load_agents_file(settings.agents_file)
        except AgentsFileError as exc:
            raise HTTPException(422, str(exc)) from None
        keys = [spec.agent_key for spec in specs] + [settings.default_agent_key]
        clash = list_name_clash(keys, settings.list_keys)
        if clash is not None:
            raise HTTPException(422, f"agents file {settings.agents_file}: {clash}")
        report = await apply_agents_file(db_of(request), settings, specs)
        return report.as_dict()

    @router.get("/lists/status", summary="Each agent's lists: members, blocked contacts, blocked lists")
    async def status(request: Request) -> dict[str, Any]:
        return (await lists_status(settings_of(request), db_of(request))).as_dict()

    @router.post("/lists/rebuild", status_code=202, summary="Recompute every contact's lists (background)")
    async def rebuild(request: Request, body: RebuildIn | None = None) -> JSONResponse:
        """R-AG-3: every contact's desired lists recomputed from GHL and the differences applied,
        blocked memberships retried. Runs in the background (202); 409 while one runs. The outcome
        is logged (`admin.job_finished`); `GET /lists/status` shows the lists."""
        agent_key = body.agent_key.strip().upper() if body and body.agent_key else None
        if agent_key is not None and not AGENT_KEY_PATTERN.fullmatch(agent_key):
            raise HTTPException(422, "not an agent key")
        settings, db, connectors = settings_of(request), db_of(request), connectors_of(request)
        jobs: AdminJobs = request.app.state.admin_jobs
        try:
            jobs.start("lists-rebuild", lambda: rebuild_lists(settings, db, connectors, agent_key=agent_key))
        except JobAlreadyRunning:
            raise HTTPException(409, "a list rebuild is already running") from None
        return JSONResponse({"started": "lists-rebuild", "agent_key": agent_key}, status_code=202)

    return router


async def _upsert(request: Request, spec: AgentSpec) -> dict[str, Any]:
    db = db_of(request)
    try:
        report = await upsert_agent(db, settings_of(request), spec)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    agent = next(a for a in await all_agents(db) if a.agent_key == spec.agent_key)
    return {"agent": asdict(agent), "report": report.as_dict()}
