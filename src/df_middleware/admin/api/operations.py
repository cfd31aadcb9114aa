"""`/api/admin` reads (SPEC §8.1): the sync log, the contact mappings and the live connections
check. Each calls the function its CLI twin or the dashboard calls (`admin/records.py`,
`connectors/checkup.py`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request

from df_middleware.admin.api.common import (
    AdminRoute,
    CursorQuery,
    IdQuery,
    LimitQuery,
    Printable,
    RevealQuery,
    TimeQuery,
    aware,
    connectors_of,
    db_of,
    phone_or_422,
    service_errors,
    settings_of,
)
from df_middleware.admin.records import list_sync_log, search_mappings
from df_middleware.connectors.checkup import check_connections


def operations_router() -> APIRouter:
    router = APIRouter(route_class=AdminRoute)

    @router.get("/sync-log", summary="The audit trail, newest first")
    async def sync_log(
        request: Request,
        direction: IdQuery = None,
        entity_type: IdQuery = None,
        entity_id: IdQuery = None,
        status: Literal["success", "error", "skipped"] | None = None,
        event_id: Annotated[
            str | None, Query(max_length=64, description="Rows of one event"), Printable
        ] = None,
        since: TimeQuery = None,
        until: TimeQuery = None,
        cursor: CursorQuery = None,
        limit: LimitQuery = 50,
        reveal: RevealQuery = False,
    ) -> dict[str, Any]:
        """One row per effect, skip or final error of every processing run (R-Q-7). Messages are
        masked unless `?reveal=true`."""
        with service_errors():
            page = await list_sync_log(
                db_of(request),
                direction=direction,
                entity_type=entity_type,
                entity_id=entity_id,
                status=status,
                correlation_id=event_id,
                since=aware(since, "since"),
                until=aware(until, "until"),
                cursor=cursor,
                limit=limit,
                reveal=reveal,
            )
        return page.as_dict()

    @router.get("/mappings", summary="Search GHL ↔ Aloware contact mappings")
    async def mappings(
        request: Request,
        phone: Annotated[str | None, Query(max_length=64)] = None,
        email: Annotated[str | None, Query(max_length=320), Printable] = None,
        ghl_id: IdQuery = None,
        aloware_id: IdQuery = None,
        limit: LimitQuery = 50,
        reveal: RevealQuery = False,
    ) -> dict[str, Any]:
        """Mappings matching every key given (a phone in any format), most recently updated
        first; with no key, the most recently updated. Phones and emails masked unless revealed."""
        number = phone_or_422(settings_of(request), phone) if phone else None
        with service_errors():
            items = await search_mappings(
                db_of(request),
                phone=number,
                email=email,
                ghl_id=ghl_id,
                aloware_id=aloware_id,
                limit=limit,
                reveal=reveal,
            )
        return {"items": items}

    @router.get("/connections", summary="Live check of the database and every external system")
    async def connections(request: Request) -> dict[str, Any]:
        """Configured / reachable / authenticated per system (and per OAuth installation). A
        check reads only: it never sends a message or writes anything remote."""
        reports = await check_connections(settings_of(request), db_of(request), connectors_of(request))
        return {
            "ok": all(r.ok or not r.configured for r in reports),
            "systems": [r.as_dict() for r in reports],
        }

    return router
