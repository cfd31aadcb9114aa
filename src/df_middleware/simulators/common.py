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
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

CONTROL_PREFIX = "/_sim"
#: Headers whose values the request log keeps masked (tests never need the secret itself).
_SECRET_HEADERS = frozenset({"authorization", "x-api-key"})


class FaultPlan(BaseModel):
    """Faults to inject into ordinary (non-control) requests. Rates are fractions in [0, 1]."""

    latency_ms: float = Field(0.0, ge=0, description="Added to every request before it is answered.")
    error_rate: float = Field(0.0, ge=0, le=1, description="Share of requests answered `error_status`.")
    error_status: int = Field(503, ge=500, le=599)
    rate_limit_rate: float = Field(0.0, ge=0, le=1, description="Share of requests answered 429.")
    retry_after_seconds: int = Field(1, ge=0, description="Retry-After of injected 429s.")
    timeout_rate: float = Field(0.0, ge=0, le=1, description="Share of requests that hang.")
    timeout_seconds: float = Field(
        30.0, ge=0, description="How long a 'timed out' request hangs before answering 504."
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
        if plan.latency_ms:
            await asyncio.sleep(plan.latency_ms / 1000)
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
