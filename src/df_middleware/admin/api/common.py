"""What every admin API route shares: the operator's identity, times and phones parsed from the
query, the service errors turned into the right status, and the connectors of this process.

Errors: a filter or body the service refuses (ValueError) is 422, an unknown event 404, an action
the event's state does not allow 409, a number that is not a phone 422. Nothing is half-applied:
the service functions check before they write (see `queue/operations.py`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Coroutine, Iterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import HTTPException, Query, Request, Response
from fastapi.routing import APIRoute
from pydantic import AfterValidator
from starlette.types import Message

from df_middleware.admin.auth import require_admin
from df_middleware.config import Settings
from df_middleware.connectors.suite import Connectors
from df_middleware.consent.manual import e164_or_refuse
from df_middleware.db.session import Database
from df_middleware.errors import InvalidPhoneNumber
from df_middleware.queue.operations import EventNotFound, EventStateError

#: Who the audit trail names for an action taken through the API.
API_ACTOR = "admin-api"
#: Bounds of what the query may carry (ids, types, cursors are short; R-SEC-3).
MAX_ID_CHARS = 200
MAX_CURSOR_CHARS = 400
#: The largest admin request body: an agent, a reason, a filter set are far smaller (R-SEC-3).
MAX_ADMIN_BODY_BYTES = 65_536

#: Control characters no id, filter or reason holds (tab, newline and carriage return aside).
_CONTROL = frozenset(chr(c) for c in range(32) if chr(c) not in "\t\n\r") | {"\x7f"}


def no_control_characters(value: str | None) -> str | None:
    """Refuse text with a control character (422). Why: PostgreSQL cannot store or even compare a
    NUL in text, so a `\\x00` in a filter or a reason reached the database as a 500 (R-SEC-3)."""
    if value is not None and not _CONTROL.isdisjoint(value):
        raise ValueError("contains a control character")
    return value


#: Free text from a query or a body: no control character (see `no_control_characters`).
Printable = AfterValidator(no_control_characters)
IdQuery = Annotated[str | None, Query(max_length=MAX_ID_CHARS), Printable]
CursorQuery = Annotated[
    str | None, Query(max_length=MAX_CURSOR_CHARS, description="`next_cursor` of the previous page")
]
LimitQuery = Annotated[int, Query(ge=1, le=200, description="Page size (at most 200)")]
TimeQuery = Annotated[datetime | None, Query(description="ISO-8601 with a time zone")]
RevealQuery = Annotated[bool, Query(description="Show phones, emails and message bodies unmasked")]


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def db_of(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


def connectors_of(request: Request) -> Connectors:
    """The connectors this process opened at start (shared with its worker: one rate budget)."""
    connectors: Connectors | None = getattr(request.app.state, "connectors", None)
    if connectors is None:
        raise HTTPException(503, "the service is starting or stopping; retry")
    return connectors


def aware(value: datetime | None, name: str) -> datetime | None:
    """A time from the query, refused without a time zone (a naive time means nothing here)."""
    if value is not None and value.tzinfo is None:
        raise HTTPException(422, f"{name}: give a time zone, e.g. 2026-11-25T10:00:00Z")
    if value is not None:
        try:  # 0001-01-01T00:00+14:00 parses, but is before the first moment UTC can hold
            value.astimezone(UTC)
        except OverflowError:
            raise HTTPException(422, f"{name}: out of range") from None
    return value


def phone_or_422(settings: Settings, raw: str) -> str:
    """The number in E.164, in whatever format it was given (R-ID-1), or 422."""
    if len(raw) > 64:
        raise HTTPException(422, "not a phone number: too long")
    try:
        return e164_or_refuse(raw, settings.default_phone_region)
    except InvalidPhoneNumber as exc:
        raise HTTPException(422, str(exc)) from None


@contextlib.contextmanager
def service_errors() -> Iterator[None]:
    """The service's refusals as HTTP answers (see the module docstring)."""
    try:
        yield
    except EventNotFound as exc:
        raise HTTPException(404, str(exc) or "no such event") from None
    except EventStateError as exc:
        raise HTTPException(409, str(exc)) from None
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None


class AdminRoute(APIRoute):
    """An admin route: the secret, then the body's size, checked on the headers before a byte of
    the body is read. Why: FastAPI reads and parses a route's JSON body before it runs its
    dependencies, so `require_admin` alone let anyone make the service take in and parse a body
    of any size (and answer its JSON errors) before the 401 (R-SEC-1, R-SEC-3)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            await require_admin(request)
            declared = request.headers.get("content-length")
            if declared is not None and not declared.isdigit():
                raise HTTPException(400, "Content-Length is not a number")
            if declared is not None and int(declared) > MAX_ADMIN_BODY_BYTES:
                raise HTTPException(413, f"body larger than {MAX_ADMIN_BODY_BYTES} bytes")
            receive, taken = request.receive, 0

            async def bounded() -> Message:  # a chunked body declares no length
                nonlocal taken
                message = await receive()
                taken += len(message.get("body", b""))
                if taken > MAX_ADMIN_BODY_BYTES:
                    raise HTTPException(413, f"body larger than {MAX_ADMIN_BODY_BYTES} bytes")
                return message

            request._receive = bounded  # Starlette reads the body through it
            return await handler(request)

        return guarded
