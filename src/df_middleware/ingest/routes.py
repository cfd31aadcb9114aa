"""The five webhook endpoints (SPEC §3). Each is the same pipeline with its own auth and classifier:

size (413) → content type (415) → authenticate the raw bytes (401) → per-source rate limit
(429) → parse JSON (400) → source rules: replay window, event filter, classification (401/200
ignored/422) → store or find the duplicate (200; 503 when the database is unavailable).

Nothing is written before every check has passed, so a refused request leaves no trace but a
metric and a log line.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter

from df_middleware.config import Settings
from df_middleware.db.session import Database, is_unavailable
from df_middleware.db.types import utcnow
from df_middleware.ingest.auth import (
    AuthFailure,
    GhlVerifier,
    check_replay_window,
    verify_aloware,
    verify_broadcast,
    verify_texting,
)
from df_middleware.ingest.body_budget import BodyBudget, BodyRoom, BudgetExhausted
from df_middleware.ingest.openapi import webhook_operation, webhook_responses
from df_middleware.ingest.sources.aloware import aloware_event_name, canonical_aloware_name, classify_aloware
from df_middleware.ingest.sources.broadcast import classify_broadcast
from df_middleware.ingest.sources.common import MAX_KEY_BYTES, ClassifiedEvent, InvalidEvent
from df_middleware.ingest.sources.ghl import classify_ghl, classify_ghl_provider
from df_middleware.ingest.sources.texting import classify_texting
from df_middleware.ingest.store import EventStore
from df_middleware.observability import (
    INGEST_LATENCY,
    WEBHOOKS_ACCEPTED,
    WEBHOOKS_DUPLICATE,
    WEBHOOKS_IGNORED,
    WEBHOOKS_RECEIVED,
    WEBHOOKS_REJECTED,
    get_logger,
)
from df_middleware.request_guard import RequestTimeout, request_id_from, request_id_of

log = get_logger(__name__)

#: Seconds a sender is asked to wait when the database is unavailable.
DB_RETRY_AFTER_SECONDS = 5
#: Seconds a sender is asked to wait when the process holds as many webhook bytes as it may.
BUSY_RETRY_AFTER_SECONDS = 2


class Rejection(Exception):
    """A request refused with a 4xx/5xx and a JSON `{"error": ...}` body."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


class Ignored(Exception):
    """A well-formed, authentic event this deployment chose not to store (200 `ignored`)."""


Authenticate = Callable[[Mapping[str, str], bytes], bool]
Classify = Callable[[Mapping[str, Any]], ClassifiedEvent]


@dataclass(frozen=True)
class Source:
    """One webhook endpoint: its metric label, how it authenticates and how it classifies."""

    name: str
    authenticate: Authenticate
    classify: Classify


def _json_depth_exceeds(value: Any, limit: int) -> bool:
    """True when `value` nests deeper than `limit` (iterative: no recursion on hostile input)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for child in node.values())
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node)
    return False


def _replace_nul(value: Any) -> Any:
    """Replace U+0000, which PostgreSQL text and jsonb cannot hold, with U+FFFD in keys and strings."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_replace_nul(k): _replace_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_nul(v) for v in value]
    return value


def _is_json_content_type(value: str | None) -> bool:
    if not value:
        return True  # absent: try to parse; a content type that is not JSON is refused
    media = value.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class Ingest:
    """Shared state of the webhook endpoints of one server process."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.ghl = GhlVerifier(settings)
        self.store = EventStore(db)
        self.body_budget = BodyBudget(max(settings.ingest_max_bytes_in_flight, settings.max_webhook_bytes))
        self._limiter = FixedWindowRateLimiter(MemoryStorage())
        self._limit = (
            RateLimitItemPerSecond(settings.ingest_rate_limit_per_second)
            if settings.ingest_rate_limit_per_second > 0
            else None
        )
        region = settings.default_phone_region
        self.sources = {
            "ghl": Source("ghl", self.ghl.verify, self._classify_ghl),
            "ghl_provider": Source(
                "ghl_provider", self.ghl.verify, lambda p: self._with_replay_window(p, classify_ghl_provider)
            ),
            "aloware": Source("aloware", lambda h, _b: verify_aloware(settings, h), self._classify_aloware),
            "texting": Source(
                "texting", lambda h, b: verify_texting(settings, h, b), lambda p: classify_texting(p, region)
            ),
            "broadcast": Source(
                "broadcast",
                lambda h, b: verify_broadcast(settings, h, b),
                lambda p: classify_broadcast(p, region),
            ),
        }

    # --- source rules ------------------------------------------------------------------------
    def _with_replay_window(
        self, payload: Mapping[str, Any], classify: Callable[[Mapping[str, Any], str], ClassifiedEvent]
    ) -> ClassifiedEvent:
        try:
            check_replay_window(payload, self.settings.ghl_webhook_tolerance_seconds, utcnow())
        except AuthFailure as exc:
            raise Rejection(401, str(exc)) from exc
        return classify(payload, self.settings.default_phone_region)

    def _classify_ghl(self, payload: Mapping[str, Any]) -> ClassifiedEvent:
        return self._with_replay_window(payload, classify_ghl)

    def _classify_aloware(self, payload: Mapping[str, Any]) -> ClassifiedEvent:
        allowed = self.settings.allowed_aloware_events
        if allowed is not None:
            name = aloware_event_name(payload)
            known = canonical_aloware_name(name)
            if (known[0] if known else name).lower() not in allowed:
                raise Ignored()
        return classify_aloware(payload, self.settings.default_phone_region)

    # --- the pipeline ------------------------------------------------------------------------
    def _check_rate(self, source: str) -> None:
        if self._limit is None:
            return
        if not self._limiter.hit(self._limit, source):
            reset_at, _remaining = self._limiter.get_window_stats(self._limit, source)
            retry_after = max(1, int(reset_at - time.time() + 0.999))
            raise Rejection(429, f"ingest limit for {source} exceeded", {"Retry-After": str(retry_after)})

    def _check_declared_size(self, request: Request) -> None:
        """413 at once when the declared Content-Length is over the limit (400 when it is no number)."""
        limit = self.settings.max_webhook_bytes
        declared = request.headers.get("content-length")
        if declared is None:
            return
        text = declared.strip()
        if not (text.isascii() and text.isdigit()) or len(text) > 19:
            raise Rejection(400, "invalid Content-Length")
        if int(text) > limit:
            raise Rejection(413, f"body larger than {limit} bytes")

    async def _read_body(self, request: Request, room: BodyRoom) -> bytes:
        """The body, each piece kept only once the budget has room for it (see body_budget)."""
        limit = self.settings.max_webhook_bytes
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise Rejection(413, f"body larger than {limit} bytes", {"Connection": "close"})
                await room.take(len(chunk))
                chunks.append(chunk)
        except RequestTimeout as exc:
            raise Rejection(408, str(exc.detail), exc.headers) from exc
        except BudgetExhausted:
            raise Rejection(
                503,
                "too many large webhooks at once, retry later",
                {"Retry-After": str(BUSY_RETRY_AFTER_SECONDS), "Connection": "close"},
            ) from None
        return b"".join(chunks)

    def _parse(self, body: bytes) -> dict[str, Any]:
        # A parsed value costs up to ~60 bytes of memory per byte of JSON (`[{},{},…]`): bound the
        # number of values before parsing (an upper bound, counted at C speed), so the body budget
        # also bounds memory and the walk below stays short.
        values = body.count(b"{") + body.count(b"[") + body.count(b",")
        if values > self.settings.max_json_values:
            raise Rejection(413, f"JSON with more than {self.settings.max_json_values} values")
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise Rejection(400, "body is not valid JSON") from exc
        if not isinstance(payload, dict):
            raise Rejection(422, "body must be a JSON object")
        if _json_depth_exceeds(payload, self.settings.max_json_depth):
            raise Rejection(400, f"JSON nested deeper than {self.settings.max_json_depth} levels")
        if b"\\u0000" in body:
            # Keep the event (a lost lead is worse than a replaced control character).
            cleaned: dict[str, Any] = _replace_nul(payload)
            return cleaned
        return payload

    async def receive(self, request: Request, source_name: str) -> Response:
        source = self.sources[source_name]
        started = time.perf_counter()
        request_id = request_id_of(request.scope) or request_id_from(
            request.headers.get("x-request-id", "").encode("latin-1")
        )
        WEBHOOKS_RECEIVED.labels(source.name).inc()
        try:
            self._check_declared_size(request)
            if not _is_json_content_type(request.headers.get("content-type")):
                raise Rejection(415, "content type must be application/json")
            async with self.body_budget.holding(
                wait_seconds=self.settings.ingest_budget_wait_seconds
            ) as room:
                return await self._receive_body(request, room, source, request_id, started)
        except Rejection as rejection:
            return self._rejected(source, rejection, request_id)

    async def _receive_body(
        self, request: Request, room: BodyRoom, source: Source, request_id: str, started: float
    ) -> Response:
        """The pipeline after the body has room: read, authenticate, parse, classify, store."""
        try:
            body = await self._read_body(request, room)
            try:
                verified = source.authenticate(request.headers, body)
            except AuthFailure as exc:
                raise Rejection(401, str(exc)) from exc
            self._check_rate(source.name)
            payload = self._parse(body)
            del body  # the raw bytes are not needed while the row is stored (memory, bench/large_bodies.py)
            try:
                event = source.classify(payload)
            except InvalidEvent as exc:
                raise Rejection(422, str(exc)) from exc
            oversized = event.oversized_field()
            if oversized is not None:
                raise Rejection(422, f"{oversized} is longer than {MAX_KEY_BYTES} bytes")
            try:
                result = await self.store.store(event, payload, verified=verified, request_id=request_id)
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                log.warning("ingest.database_unavailable", source=source.name, error=type(exc).__name__)
                raise Rejection(
                    503, "database unavailable, retry later", {"Retry-After": str(DB_RETRY_AFTER_SECONDS)}
                ) from exc
        except Ignored:
            WEBHOOKS_IGNORED.labels(source.name).inc()
            return JSONResponse({"status": "ignored"}, headers={"X-Request-ID": request_id})
        except Rejection as rejection:
            return self._rejected(source, rejection, request_id)
        if result.duplicate:
            WEBHOOKS_DUPLICATE.labels(source.name).inc()
        else:
            WEBHOOKS_ACCEPTED.labels(source.name).inc()
        INGEST_LATENCY.labels(source.name).observe(time.perf_counter() - started)
        return JSONResponse(
            {"status": "duplicate" if result.duplicate else "accepted", "id": str(result.id)},
            headers={"X-Request-ID": request_id},
        )

    def _rejected(self, source: Source, rejection: Rejection, request_id: str) -> Response:
        WEBHOOKS_REJECTED.labels(source.name, str(rejection.status)).inc()
        log.info(
            "ingest.rejected",
            source=source.name,
            status=rejection.status,
            reason=rejection.message,
            request_id=request_id,
        )
        return JSONResponse(
            {"error": rejection.message},
            status_code=rejection.status,
            headers={**rejection.headers, "X-Request-ID": request_id},
        )


def webhook_router(ingest: Ingest) -> APIRouter:
    """The endpoints, thin: each hands the request to the shared pipeline with its source.

    The routes read their raw body themselves, so FastAPI cannot describe it: each carries its
    request body, security alternatives and responses from `ingest.openapi` instead.
    """
    router = APIRouter(prefix="/api/webhooks", tags=["webhooks"])
    responses = webhook_responses(ingest.settings)

    def endpoint(source_name: str) -> Callable[[Request], Any]:
        async def receive(request: Request) -> Response:
            return await ingest.receive(request, source_name)

        receive.__name__ = f"receive_{source_name}_webhook"
        return receive

    routes = [
        ("/ghl", "ghl", "GHL webhooks (Ed25519 x-ghl-signature, RSA x-wh-signature or workflow secret)"),
        ("/ghl/provider-delivery", "ghl_provider", "GHL conversation provider Delivery URL"),
        ("/aloware", "aloware", "Aloware webhooks (HTTP Basic or Bearer)"),
        ("/texting", "texting", "Verity texting webhooks (X-Texting-Signature HMAC)"),
        ("/broadcast", "broadcast", "Verity broadcast webhooks (X-Broadcast-Signature HMAC)"),
    ]
    for path, source_name, summary in routes:
        router.add_api_route(
            path,
            endpoint(source_name),
            methods=["POST"],
            summary=summary,
            responses=responses,
            openapi_extra=webhook_operation(source_name, ingest.settings),
        )
    return router
