"""What every simulator shares: fault injection, a request log, and the `/_sim` control routes.

A simulator is a FastAPI app with in-memory state that answers like the real system. On top of
its own routes, `build_simulator_app` adds:

- a middleware that records every request (method, path, query, headers, body, answer) in a
  `RequestLog`, so tests assert on what really crossed the wire, and that injects faults —
  latency, 5xx, 429 and timeouts at configured rates — before the real route runs;
- control routes under `/_sim/` (never faulted, never rate limited):
  `GET /_sim/state` (the simulator's state as JSON), `GET /_sim/requests` (the request log),
  `PUT /_sim/faults` (a `FaultPlan`), `POST /_sim/reset` (empty state, log and faults).

Faults are decided by a seeded random generator, so a scripted run with the same seed injects the
same faults at the same requests.

Simulators also call the service back, as the real systems do (delivery receipts, change
notifications): `WebhookSender` posts those webhooks, retries them the way a provider would, and
records every delivery, so a test can wait for them (`drain`, `pending`) and assert on them.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

#: How far each simulated system's clock is off ours, by system ("ghl", "aloware", "verity"): no
#: partner's clock is exactly ours, and the service must order events by their own times all the
#: same (R-C-3). Zero unless a benchmark sets it (`set_clock_skew`); every timestamp a simulator
#: writes comes from `system_now`.
_CLOCK_SKEW: dict[str, timedelta] = {}


def set_clock_skew(system: str, seconds: float) -> None:
    """Run `system`'s simulated clock `seconds` ahead of ours (behind when negative)."""
    _CLOCK_SKEW[system] = timedelta(seconds=seconds)


def system_now(system: str) -> datetime:
    """UTC now as `system`'s clock reads it."""
    return datetime.now(UTC) + _CLOCK_SKEW.get(system, timedelta(0))


CONTROL_PREFIX = "/_sim"
#: Webhook deliveries kept for inspection (oldest dropped first), so a long benchmark stays bounded.
MAX_DELIVERIES_KEPT = 10_000
#: Headers whose values the request log keeps masked (tests never need the secret itself).
_SECRET_HEADERS = frozenset({"authorization", "x-api-key"})


class FaultPlan(BaseModel):
    """Faults to inject into ordinary (non-control) requests. Rates are fractions in [0, 1]."""

    latency_ms: float = Field(0.0, ge=0, description="Added to every request before it is answered.")
    latency_jitter_ms: float = Field(
        0.0,
        ge=0,
        description="Up to this much more latency, drawn uniformly per request (a real API's spread).",
    )
    error_rate: float = Field(0.0, ge=0, le=1, description="Share of requests answered `error_status`.")
    error_status: int = Field(503, ge=500, le=599)
    rate_limit_rate: float = Field(0.0, ge=0, le=1, description="Share of requests answered 429.")
    retry_after_seconds: int = Field(1, ge=0, description="Retry-After of injected 429s.")
    timeout_rate: float = Field(0.0, ge=0, le=1, description="Share of requests that hang.")
    timeout_seconds: float = Field(
        30.0, ge=0, description="How long a 'timed out' request hangs before answering 504."
    )
    lost_response_rate: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of requests that are processed (state changes) but answered 504, as when "
        "a gateway times out after the backend did the work: the case effect ledgers exist for.",
    )
    seed: int | None = Field(None, description="Seed of the fault generator (reproducible runs).")


@dataclass
class CapturedRequest:
    """One request as the simulator received it, and the status it answered."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    status: int = 0
    fault: str | None = None
    at: float = field(default_factory=time.time)

    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None

    def as_dict(self) -> dict[str, Any]:
        try:
            body: Any = self.json()
        except orjson.JSONDecodeError:
            body = self.body.decode("utf-8", "replace")
        return {
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": self.headers,
            "body": body,
            "status": self.status,
            "fault": self.fault,
            "at": self.at,
        }


class RequestLog:
    """Every non-control request, in arrival order (bounded, oldest dropped first)."""

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self.items: list[CapturedRequest] = []

    def add(self, item: CapturedRequest) -> None:
        self.items.append(item)
        if len(self.items) > self.limit:
            del self.items[: len(self.items) - self.limit]

    def clear(self) -> None:
        self.items.clear()

    def matching(self, method: str | None = None, path_prefix: str = "") -> list[CapturedRequest]:
        return [
            r
            for r in self.items
            if (method is None or r.method == method.upper()) and r.path.startswith(path_prefix)
        ]


class FaultInjector:
    """Decides, per request, whether and how to fail it according to the current plan."""

    def __init__(self, plan: FaultPlan | None = None) -> None:
        self.set_plan(plan or FaultPlan())

    def set_plan(self, plan: FaultPlan) -> None:
        self.plan = plan
        self._rng = random.Random(plan.seed)  # fault schedules, not security

    async def apply(self) -> tuple[str | None, Response | None]:
        """Sleep the configured latency, then maybe return a faulty response (and its name)."""
        plan = self.plan
        latency_ms = plan.latency_ms + (
            self._rng.uniform(0, plan.latency_jitter_ms) if plan.latency_jitter_ms else 0
        )
        if latency_ms:
            await asyncio.sleep(latency_ms / 1000)
        draw = self._rng.random()
        if draw < plan.timeout_rate:
            await asyncio.sleep(plan.timeout_seconds)
            return "timeout", JSONResponse({"message": "simulated gateway timeout"}, status_code=504)
        draw -= plan.timeout_rate
        if draw < plan.error_rate:
            return "error", JSONResponse({"message": "simulated server error"}, status_code=plan.error_status)
        draw -= plan.error_rate
        if draw < plan.rate_limit_rate:
            return "rate_limit", JSONResponse(
                {"message": "Too many requests (simulated)"},
                status_code=429,
                headers={"Retry-After": str(plan.retry_after_seconds)},
            )
        return None, None

    def lose_this_response(self) -> bool:
        """Drawn after the route ran: whether its answer is replaced by a 504 (`lost_response_rate`)."""
        return self.plan.lost_response_rate > 0 and self._rng.random() < self.plan.lost_response_rate


def _masked_headers(request: Request) -> dict[str, str]:
    headers: dict[str, str] = {}
    for key, value in request.headers.items():
        if key.lower() in _SECRET_HEADERS:
            scheme, _, secret = value.partition(" ")
            value = f"{scheme} {secret[:4]}…" if secret else f"{value[:4]}…"
        headers[key.lower()] = value
    return headers


def build_simulator_app(
    title: str,
    *,
    state: Callable[[], dict[str, Any]],
    reset: Callable[[], None],
    faults: FaultInjector | None = None,
    log: RequestLog | None = None,
) -> FastAPI:
    """A FastAPI app with the request log, fault injection and `/_sim` routes wired in.

    The caller adds the system's own routes to the returned app. `state()` returns the JSON view of
    the simulator's state; `reset()` empties it (the log and the fault plan are reset here).
    """
    app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None)
    injector = faults or FaultInjector()
    request_log = log or RequestLog()
    app.state.faults = injector
    app.state.request_log = request_log

    @app.middleware("http")
    async def capture_and_fault(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        if request.url.path.startswith(CONTROL_PREFIX):
            return await call_next(request)
        body = await request.body()
        captured = CapturedRequest(
            method=request.method,
            path=request.url.path,
            query=dict(request.query_params),
            headers=_masked_headers(request),
            body=body,
        )
        request_log.add(captured)
        fault, faulty = await injector.apply()
        if faulty is not None:
            captured.status, captured.fault = faulty.status_code, fault
            return faulty
        response = await call_next(request)
        captured.status = response.status_code
        if injector.lose_this_response():
            captured.fault = "lost_response"
            return JSONResponse({"message": "simulated gateway timeout after processing"}, status_code=504)
        return response

    @app.get(f"{CONTROL_PREFIX}/state")
    async def sim_state() -> dict[str, Any]:
        return state()

    @app.get(f"{CONTROL_PREFIX}/requests")
    async def sim_requests() -> list[dict[str, Any]]:
        return [r.as_dict() for r in request_log.items]

    @app.put(f"{CONTROL_PREFIX}/faults")
    async def sim_faults(plan: FaultPlan) -> dict[str, Any]:
        injector.set_plan(plan)
        return plan.model_dump()

    @app.post(f"{CONTROL_PREFIX}/reset")
    async def sim_reset() -> dict[str, str]:
        reset()
        request_log.clear()
        injector.set_plan(FaultPlan())
        return {"status": "reset"}

    return app


# --- webhooks from the simulator to the service --------------------------------------------------


@dataclass
class WebhookDelivery:
    """One webhook a simulator sent, and how the receiver answered its last attempt."""

    url: str
    event: str
    payload: Any
    #: HTTP status of the last attempt; None while in flight or when no attempt got an answer.
    status: int | None = None
    attempts: int = 0
    error: str | None = None
    #: What identifies the delivery in its system (e.g. `messageId`), merged into `as_dict()`.
    details: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def as_dict(self) -> dict[str, Any]:
        return {
            "event": self.event,
            **self.details,
            "url": self.url,
            "status_code": self.status,
            "ok": self.ok,
            "attempts": self.attempts,
            "error": self.error,
            "at": self.at,
            "payload": self.payload,
        }


class _RetryableAnswer(Exception):
    """The receiver answered 429 or 5xx: a provider tries again."""


#: Builds the request headers (authentication or signature) from the exact body bytes sent.
HeaderBuilder = Callable[[bytes], Mapping[str, str]]


class WebhookSender:
    """Posts a simulator's webhooks as JSON and records each delivery.

    Like a real provider, it retries transport errors, 429 and 5xx a few times (exponential
    backoff, full jitter), so a service that is briefly down still gets the event. Deliveries
    started in the background (`start`) are tracked: `drain()` waits for them and `pending` lets a
    test in another thread poll. `clear()` forgets everything and cancels what is still running,
    so a reset never lets an old delivery land in the new state.
    """

    def __init__(
        self, *, attempts: int = 4, backoff_seconds: float = 0.05, timeout_seconds: float = 5.0
    ) -> None:
        self.attempts = attempts
        self.backoff_seconds = backoff_seconds
        self.timeout_seconds = timeout_seconds
        self.deliveries: list[WebhookDelivery] = []
        #: How many deliveries are kept (oldest dropped first); a long benchmark may keep more.
        self.deliveries_kept = MAX_DELIVERIES_KEPT
        #: Background work that failed unexpectedly (`Type: message`), so a test can see why.
        self.background_errors: list[str] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._generation = 0

    async def send(
        self,
        url: str,
        event: str,
        payload: Any,
        *,
        headers: HeaderBuilder | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> WebhookDelivery:
        """POST `payload` to `url` (retrying as described above) and return its delivery record."""
        body = orjson.dumps(payload)
        request_headers = {"content-type": "application/json", "user-agent": "df-middleware-simulator"}
        if headers is not None:
            request_headers.update(headers(body))
        delivery = WebhookDelivery(url=url, event=event, payload=payload, details=dict(details or {}))
        self.deliveries.append(delivery)
        if len(self.deliveries) > self.deliveries_kept:
            del self.deliveries[: len(self.deliveries) - self.deliveries_kept]
        retrying = AsyncRetrying(
            stop=stop_after_attempt(max(1, self.attempts)),
            wait=wait_random_exponential(multiplier=self.backoff_seconds, max=2.0),
            retry=retry_if_exception_type((httpx.TransportError, _RetryableAnswer)),
            reraise=True,
        )
        async with httpx.AsyncClient(timeout=self.timeout_seconds) as client:
            try:
                async for attempt in retrying:
                    with attempt:
                        await self._attempt(client, delivery, body, request_headers)
            except _RetryableAnswer:
                pass  # the last answer is recorded in `delivery.status`
            except httpx.TransportError:
                pass  # recorded in `delivery.error`
        return delivery

    @staticmethod
    async def _attempt(
        client: httpx.AsyncClient, delivery: WebhookDelivery, body: bytes, headers: Mapping[str, str]
    ) -> None:
        delivery.attempts += 1
        try:
            response = await client.post(delivery.url, content=body, headers=dict(headers))
        except httpx.TransportError as exc:
            delivery.status, delivery.error = None, f"{type(exc).__name__}: {exc}"
            raise
        delivery.status, delivery.error = response.status_code, None
        if response.status_code == 429 or response.status_code >= 500:
            raise _RetryableAnswer(response.status_code)

    def start(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run `work` (which sends webhooks) in the background of the running loop, tracked."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self.background_errors.append(f"{type(exc).__name__}: {exc}")

    @property
    def pending(self) -> int:
        """Background deliveries not finished yet."""
        return len(self._tasks)

    @property
    def generation(self) -> int:
        """Changes on every `clear()`: background work compares it to drop results of a reset."""
        return self._generation

    async def drain(self, max_wait_seconds: float = 10.0) -> bool:
        """Wait until no background delivery is running; False if still busy after
        `max_wait_seconds`. Tasks of this loop are awaited; those of another loop (a simulator
        served in a thread) are polled, so a test may call this from its own loop."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + max_wait_seconds
        while self._tasks:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            own = {task for task in set(self._tasks) if task.get_loop() is loop}
            if own:
                await asyncio.wait(own, timeout=remaining)
            else:
                await asyncio.sleep(min(0.01, remaining))
        return True

    def clear(self) -> None:
        """Forget all deliveries and cancel running background work (safe from any thread)."""
        self._generation += 1
        for task in list(self._tasks):
            task.get_loop().call_soon_threadsafe(task.cancel)
        self._tasks.clear()
        self.deliveries = []
        self.background_errors = []
