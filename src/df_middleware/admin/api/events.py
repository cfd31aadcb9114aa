"""`/api/admin/events…` (SPEC §8.1): the stored webhooks, newest first, and the operator's actions
on them. The rules live in `queue/operations.py`, shared with `df-middleware events …`.

Why the list masks too: an event's entity id is a phone number for texting events, and an error
message may quote a payload; PII is shown only when the operator asks (`?reveal=true`, R-SEC-4).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from df_middleware.admin.api.common import (
    API_ACTOR,
    MAX_ID_CHARS,
    AdminRoute,
    CursorQuery,
    IdQuery,
    LimitQuery,
    Printable,
    RevealQuery,
    TimeQuery,
    aware,
    db_of,
    service_errors,
)
from df_middleware.observability import mask_event_detail, mask_text
from df_middleware.queue.operations import (
    EventNotFound,
    bulk_replay,
    get_event,
    list_events,
    mark_done,
    quarantine_event,
    replay_event,
    unquarantine_event,
)

Kind = Literal["webhook", "texting", "broadcast"]
Status = Literal["pending", "processing", "done", "error", "quarantined"]
EventId = Annotated[str, Path(max_length=64, description="The event's id (a UUID)")]


class EventSummary(BaseModel):
    id: str
    kind: str
    source: str | None
    event_type: str | None
    entity_type: str | None
    entity_id: str | None
    status: str
    attempts: int
    received_at: str | None
    processed_at: str | None
    error_message: str | None


class EventPageOut(BaseModel):
    items: list[EventSummary]
    next_cursor: str | None


class QuarantineIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Annotated[str, Printable] = Field("quarantined from the admin API", min_length=1, max_length=500)


class ReplayIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    resend_unconfirmed: bool = Field(
        False,
        description="You checked the remote system: the event's writes of unknown outcome were not "
        "made, so the replay makes them again (R-IDEM-2). Leave false otherwise.",
    )


class BulkReplayIn(BaseModel):
    """The list's filters; at least one is required (a bulk replay of everything is never meant)."""

    model_config = ConfigDict(extra="forbid")
    kind: Kind | None = None
    source: Annotated[str | None, Printable] = Field(None, max_length=MAX_ID_CHARS)
    status: Literal["pending", "done", "error"] | None = None
    event_type: Annotated[str | None, Printable] = Field(None, max_length=MAX_ID_CHARS)
    entity_id: Annotated[str | None, Printable] = Field(None, max_length=MAX_ID_CHARS)
    since: datetime | None = None
    until: datetime | None = None


class CountOut(BaseModel):
    count: int


def _masked_summary(item: dict[str, Any], reveal: bool) -> dict[str, Any]:
    if reveal:
        return item
    shown = dict(item)
    for key in ("entity_id", "error_message"):
        if isinstance(shown.get(key), str):
            shown[key] = mask_text(shown[key])
    return shown


def events_router() -> APIRouter:
    router = APIRouter(route_class=AdminRoute)

    @router.get("/events", response_model=EventPageOut, summary="Stored events, newest first")
    async def events(
        request: Request,
        kind: Kind | None = None,
        source: IdQuery = None,
        status: Status | None = None,
        event_type: IdQuery = None,
        entity_id: IdQuery = None,
        since: TimeQuery = None,
        until: TimeQuery = None,
        cursor: CursorQuery = None,
        limit: LimitQuery = 50,
        reveal: RevealQuery = False,
    ) -> dict[str, Any]:
        """Events of the three tables (or one `kind`), newest first. Pass `next_cursor` back as
        `?cursor=` for the next page: rows stored meanwhile are never skipped nor repeated."""
        with service_errors():
            page = await list_events(
                db_of(request),
                kind=kind,
                source=source,
                status=status,
                event_type=event_type,
                entity_id=entity_id,
                since=aware(since, "since"),
                until=aware(until, "until"),
                cursor=cursor,
                limit=limit,
            )
        return {"items": [_masked_summary(i, reveal) for i in page.items], "next_cursor": page.next_cursor}

    @router.post("/events/replay", response_model=CountOut, summary="Replay every event matching filters")
    async def replay_many(request: Request, body: BulkReplayIn) -> dict[str, int]:
        """Back to `pending`, due now, attempts reset, for every event the filters match
        (`status` defaults to `error`: the dead letters). Recorded effects are kept (R-IDEM-1)."""
        given = body.model_dump(exclude_none=True)
        if not given:
            raise HTTPException(
                422, "give at least one filter: kind, source, status, event_type, entity_id, since, until"
            )
        with service_errors():
            since = aware(body.since, "since")
            until = aware(body.until, "until")
            count = await bulk_replay(
                db_of(request),
                kind=body.kind,
                source=body.source,
                status=body.status or "error",
                event_type=body.event_type,
                entity_id=body.entity_id,
                since=since,
                until=until,
                actor=API_ACTOR,
            )
        return {"count": count}

    @router.get("/events/{event_id}", summary="One event: payload, sync log, effects, quarantine")
    async def event(request: Request, event_id: EventId, reveal: RevealQuery = False) -> dict[str, Any]:
        """Everything about one event. Phones, emails and message bodies are masked unless
        `?reveal=true` (R-SEC-4)."""
        found = await get_event(db_of(request), event_id)
        if found is None:
            raise HTTPException(404, str(EventNotFound(event_id)))
        return found if reveal else mask_event_detail(found)

    @router.post("/events/{event_id}/replay", response_model=EventSummary, summary="Process an event again")
    async def replay(request: Request, event_id: EventId, body: ReplayIn | None = None) -> dict[str, Any]:
        """`pending`, due now, attempts reset (409 while it is processing or quarantined)."""
        with service_errors():
            summary = await replay_event(
                db_of(request),
                event_id,
                actor=API_ACTOR,
                resend_unconfirmed=body.resend_unconfirmed if body else False,
            )
        return summary

    @router.post(
        "/events/{event_id}/mark-done", response_model=EventSummary, summary="Resolve without processing"
    )
    async def done(request: Request, event_id: EventId) -> dict[str, Any]:
        """`done` with a sync_log row naming the operator (409 while it is processing)."""
        with service_errors():
            return await mark_done(db_of(request), event_id, API_ACTOR)

    @router.post("/events/{event_id}/quarantine", response_model=EventSummary, summary="Set an event aside")
    async def quarantine(
        request: Request, event_id: EventId, body: QuarantineIn | None = None
    ) -> dict[str, Any]:
        """Never claimed until un-quarantined (R-Q-5). An event a worker is processing cannot be
        quarantined here: 409 (its worker owns it; wait for its outcome)."""
        reason = body.reason if body else QuarantineIn().reason
        with service_errors():
            return await quarantine_event(db_of(request), event_id, reason, API_ACTOR, while_processing=False)

    @router.post("/events/{event_id}/unquarantine", response_model=EventSummary, summary="Back to the queue")
    async def unquarantine(request: Request, event_id: EventId) -> dict[str, Any]:
        """`pending`, due now, attempts reset, quarantine record dropped (409 unless quarantined)."""
        with service_errors():
            return await unquarantine_event(db_of(request), event_id, API_ACTOR)

    return router
