"""Every HTTP request's outer layer: its request id, its body deadline, a client that went away.

- **Request id.** A sender's `X-Request-ID` is kept when it is a short token of a safe charset
  (`REQUEST_ID_PATTERN`); anything else (too long, spaces, control or non-ASCII bytes) is replaced
  by a generated id, so an outsider can neither bloat our rows and logs nor inject text into them.
  The id is in `request.state.request_id`, bound to every log line of the request, and sent back
  in `X-Request-ID` on every response, errors included (the 500 handler adds it itself, because
  Starlette sends that response from outside the middleware stack).
- **Body deadline.** The whole body must arrive within `HTTP_BODY_TIMEOUT_SECONDS` of the request
  start; a body that stalls gets `408` and the connection is closed, instead of holding a slot.
- **Client gone.** A client that disconnects while we read its body is logged at info, without a
  traceback: there is nobody left to answer.
"""

from __future__ import annotations

import asyncio
import re
import uuid

import structlog
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from df_middleware.observability import get_logger

log = get_logger(__name__)

#: What a kept `X-Request-ID` may look like: ASCII letters, digits and `._:-`, at most 128.
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
REQUEST_ID_HEADER = b"x-request-id"


def request_id_from(raw: bytes | None) -> str:
    """The sender's id when it is safe to keep, else a new one."""
    if raw is not None and len(raw) <= 128:
        text = raw.decode("latin-1")
        if REQUEST_ID_PATTERN.fullmatch(text):
            return text
    return uuid.uuid4().hex


def request_id_of(scope: Scope) -> str | None:
    """The id `RequestGuard` gave this request (None outside it)."""
    state = scope.get("state")
    value = state.get("request_id") if isinstance(state, dict) else None
    return value if isinstance(value, str) else None


class RequestTimeout(HTTPException):
    """The body did not arrive in time: 408, and the connection is closed."""

    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"request body not received within {seconds:g} s", {"Connection": "close"})


class RequestGuard:
    """ASGI middleware; see the module docstring."""

    def __init__(self, app: ASGIApp, *, body_timeout_seconds: float) -> None:
        self.app = app
        self.body_timeout_seconds = body_timeout_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = next((value for name, value in scope["headers"] if name == REQUEST_ID_HEADER), None)
        request_id = request_id_from(raw)
        scope.setdefault("state", {})["request_id"] = request_id
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_seconds
        body_complete = False

        async def receive_in_time() -> Message:
            nonlocal body_complete
            if body_complete:
                return await receive()  # after the body: only a disconnect can come, no deadline
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise RequestTimeout(self.body_timeout_seconds) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_complete = True
            return message

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != REQUEST_ID_HEADER]
                headers.append((REQUEST_ID_HEADER, request_id.encode("ascii")))
                message = {**message, "headers": headers}
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive_in_time, send_with_id)
            except ClientDisconnect:
                log.info("http.client_disconnected", path=scope.get("path"))
