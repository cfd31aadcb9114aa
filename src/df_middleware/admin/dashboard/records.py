"""`/admin/sync-log` and `/admin/mappings` (SPEC §8.2): the audit trail, filtered and paged, and
the contact mappings searched by phone, email, GHL id or Aloware id — read with the admin API's
own functions (`admin/records.py`), masked (R-SEC-4)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from df_middleware.admin.dashboard.events import parse_time, text_filter
from df_middleware.admin.dashboard.render import page
from df_middleware.admin.dashboard.session import AdminSession, require_session
from df_middleware.admin.records import SYNC_LOG_STATUSES, list_sync_log, search_mappings
from df_middleware.config import Settings
from df_middleware.consent.manual import e164_or_refuse
from df_middleware.errors import InvalidPhoneNumber

SYNC_LOG_FILTERS = ("direction", "entity_type", "entity_id", "status", "correlation_id", "since", "until")
MAPPING_KEYS = ("phone", "email", "ghl_id", "aloware_id")


def phone_filter(settings: Settings, raw: str | None) -> str | None:
    """A searched number in E.164 (every formatting finds the same rows, R-ID-1); ValueError if
    it is not a phone."""
    value = text_filter(raw, "phone")
    if value is None:
        return None
    if len(value) > 64:
        raise ValueError("not a phone number: too long")
    try:
        return e164_or_refuse(value, settings.default_phone_region)
    except InvalidPhoneNumber as exc:
        raise ValueError(str(exc)) from None


def records_router() -> APIRouter:
    router = APIRouter()

    @router.get("/admin/sync-log", include_in_schema=False)
    async def sync_log_page(request: Request, session: AdminSession = Depends(require_session)) -> Response:
        query = request.query_params
        filters = {name: (query.get(name) or "").strip() for name in SYNC_LOG_FILTERS}
        items: list[dict[str, Any]] = []
        next_cursor = None
        error = None
        try:
            result = await list_sync_log(
                request.app.state.db,
                direction=text_filter(filters["direction"], "direction"),
                entity_type=text_filter(filters["entity_type"], "entity_type"),
                entity_id=text_filter(filters["entity_id"], "entity_id"),
                status=text_filter(filters["status"], "status"),
                correlation_id=text_filter(filters["correlation_id"], "correlation_id"),
                since=parse_time(filters["since"], "since"),
                until=parse_time(filters["until"], "until"),
                cursor=text_filter(query.get("cursor"), "cursor"),
            )
            items, next_cursor = result.items, result.next_cursor
        except ValueError as exc:
            error = str(exc)
        return page(
            request,
            "sync_log.html",
            session=session,
            status_code=422 if error else 200,
            error=error,
            filters=filters,
            statuses=SYNC_LOG_STATUSES,
            items=items,
            next_cursor=next_cursor,
            paged=bool(query.get("cursor")),
        )

    @router.get("/admin/mappings", include_in_schema=False)
    async def mappings_page(request: Request, session: AdminSession = Depends(require_session)) -> Response:
        query = request.query_params
        search = {name: (query.get(name) or "").strip() for name in MAPPING_KEYS}
        items: list[dict[str, Any]] = []
        error = None
        try:
            items = await search_mappings(
                request.app.state.db,
                phone=phone_filter(request.app.state.settings, search["phone"]),
                email=text_filter(search["email"], "email"),
                ghl_id=text_filter(search["ghl_id"], "ghl_id"),
                aloware_id=text_filter(search["aloware_id"], "aloware_id"),
            )
        except ValueError as exc:
            error = str(exc)
        return page(
            request,
            "mappings.html",
            session=session,
            status_code=422 if error else 200,
            error=error,
            search=search,
            items=items,
        )

    return router
