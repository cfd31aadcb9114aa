"""The operator's dashboard at `/admin` (SPEC §8.2): server-rendered pages over the same service
functions as the CLI and the admin API, behind the admin secret.

By flow: `session` (cookie, CSRF, login rate limit), `access` (login, logout), `render`
(templates, security headers, flash messages), `overview` (the facts and the SVG chart),
and one module per page group: `events`, `records` (sync log, mappings), `optouts`, `agents`.
"""

from __future__ import annotations

from fastapi import APIRouter


def dashboard_router() -> APIRouter:
    """Every dashboard route; the app includes it once (its login limiter lives in it)."""
    from df_middleware.admin.dashboard.access import access_router
    from df_middleware.admin.dashboard.agents import agents_router
    from df_middleware.admin.dashboard.events import events_router
    from df_middleware.admin.dashboard.optouts import optouts_router
    from df_middleware.admin.dashboard.overview import overview_router
    from df_middleware.admin.dashboard.records import records_router

    router = APIRouter()
    for part in (
        access_router(),
        overview_router(),
        events_router(),
        records_router(),
        optouts_router(),
        agents_router(),
    ):
        router.include_router(part)
    return router
