"""`/admin/events` and `/admin/events/{id}` (SPEC §8.2): filter, page, open, and the operator's
actions — replay, mark done, quarantine, unquarantine — as small POST forms with the CSRF token.

The rules are `queue/operations.py`'s, shared with `df-middleware events …` and the admin API;
this module only parses the form, calls them, and says what happened. Quarantine refuses an event
a worker holds (`while_processing=False`), as the admin API does.

Masking (R-SEC-4): the list masks entity ids (a phone for texting events) and error messages;
the detail page masks the payload and phone-bearing columns (`mask_event_detail`) and the sync
log's texts, unless the operator opens it with `?reveal=true`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from df_middleware.admin.dashboard.render import page, redirect_with_flash, safe_back
from df_middleware.admin.dashboard.session import AdminSession, checked_form, require_session
from df_middleware.db.models import EVENT_STATUSES
from df_middleware.observability import mask_event_detail, mask_text
from df_middleware.queue.event_tables import EVENT_TABLES_BY_KIND
from df_middleware.queue.operations import (
    EventNotFound,
    EventOperationError,
    get_event,
    list_events,
    mark_done,
    quarantine_event,
    replay_event,
    unquarantine_event,
)

#: Who the audit trail names for an action taken in the dashboard.
DASHBOARD_ACTOR = "dashboard"
EVENT_FILTERS = ("kind", "source", "status", "event_type", "entity_id", "since", "until")
MAX_FILTER_CHARS = 200
PAGE_SIZE = 50


def parse_time(raw: str | None, name: str) -> datetime | None:
    """A time from a filter form: ISO-8601; without a zone it is UTC (the page says so)."""
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{name}: not a time, e.g. 2026-11-25T10:00 (UTC)") from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        # A time at the edge of the calendar with an offset (0001-01-01T00:00+14:00) has no UTC
        # instant: the database layer would raise OverflowError, a 500 (break13b finding 1).
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{name}: out of range (years 1 to 9999 in UTC)") from None


def text_filter(raw: str | None, name: str) -> str | None:
    """A filter's text, None when blank; ValueError when too long or holding a NUL (PostgreSQL
    can neither store nor compare one: a 500 there, break13b finding 2)."""
    value = (raw or "").strip()
    if "\x00" in value:
        raise ValueError(f"{name} contains a NUL character")
    if len(value) > MAX_FILTER_CHARS:
        raise ValueError(f"{name} is longer than {MAX_FILTER_CHARS} characters")
    return value or None


def _masked(item: dict[str, Any]) -> dict[str, Any]:
    shown = dict(item)
    for key in ("entity_id", "error_message"):
        if isinstance(shown.get(key), str):
            shown[key] = mask_text(shown[key])
    return shown


def _masked_detail(detail: dict[str, Any]) -> dict[str, Any]:
    shown = mask_event_detail(detail)
    shown["entity_id"] = mask_text(shown["entity_id"]) if shown.get("entity_id") else shown.get("entity_id")
    shown["error_message"] = mask_text(shown["error_message"]) if shown.get("error_message") else None
    shown["sync_log"] = [
        {
            k: mask_text(v) if isinstance(v, str) and k not in ("id", "status", "direction") else v
            for k, v in row.items()
        }
        for row in detail["sync_log"]
    ]
    shown["effects"] = [
        {**effect, "target_id": mask_text(effect["target_id"]) if effect.get("target_id") else None}
        for effect in detail["effects"]
    ]
    return shown


def _current_path(request: Request) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


def events_router() -> APIRouter:
    router = APIRouter()

    @router.get("/admin/events", include_in_schema=False)
    async def events_page(request: Request, session: AdminSession = Depends(require_session)) -> Response:
        query = request.query_params
        filters = {name: (query.get(name) or "").strip() for name in EVENT_FILTERS}
        items: list[dict[str, Any]] = []
        next_cursor = None
        error = None
        try:
            kind = text_filter(filters["kind"], "kind")
            status = text_filter(filters["status"], "status")
            if kind is not None and kind not in EVENT_TABLES_BY_KIND:
                raise ValueError(f"kind must be one of {', '.join(EVENT_TABLES_BY_KIND)}")
            if status is not None and status not in EVENT_STATUSES:
                raise ValueError(f"status must be one of {', '.join(EVENT_STATUSES)}")
            result = await list_events(
                request.app.state.db,
                kind=kind,
                source=text_filter(filters["source"], "source"),
                status=status,
                event_type=text_filter(filters["event_type"], "event_type"),
                entity_id=text_filter(filters["entity_id"], "entity_id"),
                since=parse_time(filters["since"], "since"),
                until=parse_time(filters["until"], "until"),
                cursor=text_filter(query.get("cursor"), "cursor"),
                limit=PAGE_SIZE,
            )
            items = [_masked(item) for item in result.items]
            next_cursor = result.next_cursor
        except ValueError as exc:
            error = str(exc)
        return page(
            request,
            "events.html",
            session=session,
            status_code=422 if error else 200,
            error=error,
            filters=filters,
            kinds=list(EVENT_TABLES_BY_KIND),
            statuses=list(EVENT_STATUSES),
            items=items,
            next_cursor=next_cursor,
            paged=bool(query.get("cursor")),
            here=_current_path(request),
        )

    @router.get("/admin/events/{event_id}", include_in_schema=False)
    async def event_page(
        request: Request, event_id: str, session: AdminSession = Depends(require_session)
    ) -> Response:
        reveal = request.query_params.get("reveal", "").lower() in ("1", "true", "yes")
        detail = await get_event(request.app.state.db, event_id[:64])
        if detail is None:
            return page(
                request, "not_found.html", session=session, status_code=404, what=f"event {event_id[:64]}"
            )
        shown = detail if reveal else _masked_detail(detail)
        return page(
            request,
            "event.html",
            session=session,
            event=shown,
            reveal=reveal,
            here=_current_path(request),
        )

    @router.post("/admin/events/{event_id}/{action}", include_in_schema=False)
    async def event_action(
        request: Request, event_id: str, action: str, session: AdminSession = Depends(require_session)
    ) -> Response:
        fields = await checked_form(request, session)
        back = safe_back(fields.get("back"), f"/admin/events/{event_id[:64]}")
        db = request.app.state.db
        try:
            if action == "replay":
                await replay_event(db, event_id, actor=DASHBOARD_ACTOR)
                said = f"Event {event_id} replayed: pending, due now."
            elif action == "mark-done":
                await mark_done(db, event_id, DASHBOARD_ACTOR)
                said = f"Event {event_id} marked done."
            elif action == "quarantine":
                reason = (fields.get("reason") or "").strip()[:500] or "quarantined from the dashboard"
                await quarantine_event(db, event_id, reason, DASHBOARD_ACTOR, while_processing=False)
                said = f"Event {event_id} quarantined."
            elif action == "unquarantine":
                await unquarantine_event(db, event_id, DASHBOARD_ACTOR)
                said = f"Event {event_id} unquarantined: pending, due now."
            else:
                return page(
                    request, "not_found.html", session=session, status_code=404, what=f"action {action[:40]}"
                )
        except EventNotFound as exc:
            return redirect_with_flash(request, "/admin/events", str(exc), "error")
        except EventOperationError as exc:
            return redirect_with_flash(request, back, f"Not done: {exc}", "error")
        return redirect_with_flash(request, back, said)

    return router
