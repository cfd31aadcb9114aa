"""The one way this service speaks HTTP to GHL, Aloware and Verity.

`ServiceClient` wraps one `httpx.AsyncClient` per external system and gives every call the same
treatment:

- **timeouts** (connect and total) from settings;
- **rate limiting** through an optional limiter (GHL's per-location budget), consulted before
  every attempt and told about every answer;
- **bounded retries with jitter** (tenacity) for calls that are safe to repeat — GET, PUT, DELETE,
  and POSTs the connector marks idempotent (searches, upserts). A network error, a timeout, a
  5xx, 408/409/425 or a 429 is retried a few times in-call; a `Retry-After` longer than the in-call
  wait cap is not slept here but handed to the worker as `retry_after`;
- **classification** of what remains into `RemoteUnavailable` (a `RetryableError`: the event is
  retried later) or `RemoteRejected` (a `PermanentError`: retrying cannot help), with the status,
  the endpoint and the remote's error message (masked);
- **metrics** by system and endpoint template (calls by outcome, latency, errors, 429s);
- **no secrets in logs**: URLs are logged with token query parameters masked (Aloware's
  `api_token` travels in the query string), bodies are never logged.

An `endpoint` label is always the route template (`GET /contacts/{id}`), so neither ids nor phone
numbers become metric labels.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote

import httpx
import orjson
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from df_middleware.config import Settings
from df_middleware.connectors.ratelimit import LimitedCall, retry_after_seconds
from df_middleware.errors import NotAttempted, PermanentError, RetryableError
from df_middleware.observability import (
    EXTERNAL_CALLS,
    EXTERNAL_ERRORS,
    EXTERNAL_LATENCY,
    EXTERNAL_RATE_LIMITED,
    get_logger,
    mask_text,
)

log = get_logger(__name__)

#: Calls made by the current task (and the tasks it starts), by system, while a tally is set:
#: a batch job (a reconcile run) counts its own calls even when a worker shares the process.
CALL_TALLY: ContextVar[Counter[str] | None] = ContextVar("df_call_tally", default=None)

#: Longest a single in-call retry sleeps; a longer Retry-After goes back to the worker instead.
MAX_IN_CALL_WAIT_SECONDS = 5.0
#: Statuses that say "try again": the request did not take effect or cannot yet (409: a conflict
#: with a concurrent change, which a later attempt re-decides; R-Q-3).
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
#: Longest remote error text kept in an exception message (it ends up in sync_log).
_MAX_ERROR_TEXT = 300


def _refused_before_processing(exc: RemoteError) -> bool:
    """Whether this attempt's answer proves the remote did nothing: a refusal (4xx, an expired
    token), a 429 or 503 (GHL and Verity refuse those before any processing), or a connection
    that was never made. A timeout after the request left, a 500/502/504 or a connection broken
    mid-way may have taken effect."""
    if isinstance(exc, RemoteUnauthorized | RemoteRejected):
        return True
    if isinstance(exc, RemoteUnavailable):
        if exc.status_code in (429, 503):
            return True
        return exc.status_code is None and isinstance(
            exc.__cause__, httpx.ConnectError | httpx.ConnectTimeout
        )
    return False


def write_not_made(exc: BaseException) -> bool:
    """Whether a failed remote write certainly changed nothing, so repeating it is safe
    (R-IDEM-2): no attempt of the call may have taken effect. Anything else — including a
    cancellation or a failure that is not the connector's — leaves the write *maybe done*."""
    if isinstance(exc, NotAttempted):  # refused before any request was made
        return True
    if not isinstance(exc, RemoteError) or exc.earlier_attempt_maybe_made:
        return False
    return _refused_before_processing(exc)


class RemoteError(Exception):
    """Mixin data of a failed external call (both error classes carry it)."""

    system: str
    endpoint: str
    status_code: int | None
    #: Set by `ServiceClient.request`: an earlier in-call attempt of the same call failed in a
    #: way that may have taken effect (see `write_not_made`).
    earlier_attempt_maybe_made: bool = False
    body: Any

    def _init_remote(self, system: str, endpoint: str, status_code: int | None, body: Any) -> None:
        self.system = system
        self.endpoint = endpoint
        self.status_code = status_code
        self.body = body


class RemoteUnavailable(RetryableError, RemoteError):
    """The call did not succeed but may later: network error, timeout, 5xx, 408, 409, 425, 429."""

    def __init__(
        self,
        message: str,
        *,
        system: str,
        endpoint: str,
        status_code: int | None = None,
        body: Any = None,
        retry_after: float | None = None,
    ) -> None:
        RetryableError.__init__(self, message, retry_after=retry_after)
        self._init_remote(system, endpoint, status_code, body)


class RemoteRejected(PermanentError, RemoteError):
    """The remote refused the request (4xx): sending it again unchanged cannot succeed."""

    def __init__(self, message: str, *, system: str, endpoint: str, status_code: int, body: Any) -> None:
        PermanentError.__init__(self, message)
        self._init_remote(system, endpoint, status_code, body)


class RemoteNotFound(RemoteRejected):
    """404: connectors turn this into `None` where absence is an answer (lookups)."""


class RemoteUnauthorized(RetryableError, RemoteError):
    """401: our credentials were refused.

    Retryable on purpose: a rotated key or an expired installation is fixed by an operator, and
    the events waiting on it should then go through rather than be dead-lettered at once. The GHL
    connector refreshes an OAuth token once before this reaches the worker.
    """

    def __init__(self, message: str, *, system: str, endpoint: str, body: Any) -> None:
        RetryableError.__init__(self, message, retry_after=60.0)
        self._init_remote(system, endpoint, 401, body)


class RateLimiter(Protocol):
    async def acquire(self, key: str) -> LimitedCall: ...

    def finished(self, call: LimitedCall) -> None: ...

    def observe(self, call: LimitedCall, status_code: int, headers: Mapping[str, str]) -> None: ...


@dataclass(frozen=True)
class ClientSettings:
    """Timeouts and retry budget of one system's client."""

    timeout_seconds: float = 15.0
    connect_timeout_seconds: float = 5.0
    max_retries: int = 2
    retry_wait_base_seconds: float = 0.2
    max_connections: int = 20

    @classmethod
    def from_settings(cls, settings: Settings) -> ClientSettings:
        """Timeouts and in-call retry budget of outbound calls, from the service settings."""
        return cls(
            timeout_seconds=settings.http_timeout_seconds,
            connect_timeout_seconds=settings.http_connect_timeout_seconds,
            max_retries=settings.http_max_retries,
        )


class _MaskSecretsInHttpxLog(logging.Filter):
    """httpx logs every request at INFO as `HTTP Request: GET <full URL> ...`; Aloware's URLs carry
    `api_token=…` and `phone_number=…`. This filter masks token parameters and phones in those
    records (URL-decoded first: `%2B1919…` would not look like a phone to the masker)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            record.args = tuple(_masked_url(a) if isinstance(a, httpx.URL | str) else a for a in args)
        if isinstance(record.msg, str):
            record.msg = mask_text(record.msg)
        return True


_HTTPX_LOG_MASK = _MaskSecretsInHttpxLog()


def _masked_url(url: object) -> str:
    return mask_text(unquote(str(url)))


def remote_error_text(body: Any, fallback: str) -> str:
    """The remote's own error message, masked and shortened, for exceptions and sync_log."""
    text: str | None = None
    if isinstance(body, Mapping):
        for key in ("message", "error", "msg", "error_description"):
            value = body.get(key)
            if isinstance(value, str | list) and value:
                text = ", ".join(map(str, value)) if isinstance(value, list) else value
                break
            if isinstance(value, Mapping) and isinstance(value.get("message"), str):
                text = value["message"]
                break
    elif isinstance(body, str) and body.strip():
        text = body.strip()
    return mask_text((text or fallback)[:_MAX_ERROR_TEXT])


def _worth_waiting_for(error: BaseException) -> bool:
    """Retry in-call only short waits: a long Retry-After would hold a worker slot idle, so it
    goes back to the event's own retry schedule instead."""
    if not isinstance(error, RemoteUnavailable):
        return False
    return error.retry_after is None or error.retry_after <= MAX_IN_CALL_WAIT_SECONDS


def _decode(response: httpx.Response) -> Any:
    if not response.content:
        return None
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return response.text


def _outcome(status: int) -> str:
    if status == 429:
        return "429"
    return f"{status // 100}xx"


class ServiceClient:
    """HTTP client of one external system (see the module docstring for what every call gets)."""

    def __init__(
        self,
        system: str,
        base_url: str,
        *,
        settings: ClientSettings | None = None,
        limiter: RateLimiter | None = None,
        default_headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.system = system
        self.settings = settings or ClientSettings()
        logging.getLogger("httpx").addFilter(_HTTPX_LOG_MASK)  # one shared instance: added once
        self.limiter = limiter
        s = self.settings
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            timeout=httpx.Timeout(s.timeout_seconds, connect=s.connect_timeout_seconds),
            limits=httpx.Limits(
                max_connections=s.max_connections, max_keepalive_connections=s.max_connections
            ),
            headers={"Accept": "application/json", **(default_headers or {})},
            transport=transport,
        )

    @property
    def base_url(self) -> str:
        return str(self._client.base_url)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        endpoint: str,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        data: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
        rate_key: str | None = None,
    ) -> Any:
        """Make the call; return the decoded JSON body of a 2xx (None when empty).

        Raises `RemoteUnavailable`, `RemoteUnauthorized`, `RemoteNotFound` or `RemoteRejected`.
        `idempotent` defaults to the method's nature; pass True for POSTs that are safe to repeat.
        """
        method = method.upper()
        repeatable = idempotent if idempotent is not None else method in IDEMPOTENT_METHODS
        attempts = 1 + (self.settings.max_retries if repeatable else 0)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(attempts),
            wait=self._wait,
            retry=retry_if_exception(_worth_waiting_for),
            reraise=True,
        )
        maybe_made = False  # an earlier attempt of this call may have taken effect
        async for attempt in retrying:
            with attempt:
                try:
                    return await self._send_once(
                        method,
                        path,
                        endpoint=endpoint,
                        params=params,
                        json=json,
                        data=data,
                        headers=headers,
                        rate_key=rate_key,
                    )
                except RemoteError as exc:
                    exc.earlier_attempt_maybe_made = maybe_made
                    maybe_made = maybe_made or not _refused_before_processing(exc)
                    raise
        raise AssertionError("unreachable: tenacity reraises the last error")  # pragma: no cover

    def _wait(self, state: RetryCallState) -> float:
        """Full jitter, raised to the remote's Retry-After when it asked for longer."""
        jitter = wait_random_exponential(multiplier=self.settings.retry_wait_base_seconds, max=2.0)(state)
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        retry_after = getattr(error, "retry_after", None)
        return max(jitter, retry_after or 0.0)

    async def _send_once(
        self,
        method: str,
        path: str,
        *,
        endpoint: str,
        params: Mapping[str, Any] | None,
        json: Any,
        data: Mapping[str, Any] | None,
        headers: Mapping[str, str] | None,
        rate_key: str | None,
    ) -> Any:
        label = (self.system, endpoint)
        limiter = self.limiter
        call: LimitedCall | None = None
        if limiter is not None and rate_key is not None:
            call = await limiter.acquire(rate_key)  # from here its end must be reported
        started = time.perf_counter()
        try:
            response = await self._client.request(
                method, path, params=params, json=json, data=data, headers=headers
            )
        except httpx.TimeoutException as exc:
            self._count(label, "network", started)
            raise RemoteUnavailable(
                f"{self.system} {endpoint}: timed out ({type(exc).__name__})",
                system=self.system,
                endpoint=endpoint,
            ) from exc
        except httpx.TransportError as exc:
            self._count(label, "network", started)
            raise RemoteUnavailable(
                f"{self.system} {endpoint}: {type(exc).__name__}: {mask_text(str(exc))[:200]}",
                system=self.system,
                endpoint=endpoint,
            ) from exc
        finally:
            # Answered, failed or cancelled: GHL counted it by now if it ever got there.
            if limiter is not None and call is not None:
                limiter.finished(call)
        status = response.status_code
        self._count(label, _outcome(status), started)
        if limiter is not None and call is not None:
            limiter.observe(call, status, response.headers)
        log.debug(
            "external_call",
            system=self.system,
            endpoint=endpoint,
            url=_masked_url(response.request.url),
            status=status,
        )
        if 200 <= status < 300:
            return _decode(response)
        return self._raise_for(response, endpoint)

    def _count(self, label: tuple[str, str], outcome: str, started: float) -> None:
        EXTERNAL_CALLS.labels(*label, outcome).inc()
        tally = CALL_TALLY.get()
        if tally is not None:
            tally[self.system] += 1
        EXTERNAL_LATENCY.labels(*label).observe(time.perf_counter() - started)
        if outcome != "2xx":
            EXTERNAL_ERRORS.labels(*label).inc()
        if outcome == "429":
            EXTERNAL_RATE_LIMITED.labels(*label).inc()

    def _raise_for(self, response: httpx.Response, endpoint: str) -> Any:
        status = response.status_code
        body = _decode(response)
        reason = remote_error_text(body, response.reason_phrase or f"HTTP {status}")
        message = f"{self.system} {endpoint}: HTTP {status}: {reason}"
        # A 404 is routine for look-ups ("is this phone known?"): not worth a warning.
        level = log.info if status == 404 else log.warning
        level("external_call_failed", system=self.system, endpoint=endpoint, status=status)
        if status in RETRYABLE_STATUSES or status >= 500:
            raise RemoteUnavailable(
                message,
                system=self.system,
                endpoint=endpoint,
                status_code=status,
                body=body,
                retry_after=retry_after_seconds(response.headers),
            )
        if status == 401:
            raise RemoteUnauthorized(message, system=self.system, endpoint=endpoint, body=body)
        if status == 404:
            raise RemoteNotFound(
                message, system=self.system, endpoint=endpoint, status_code=status, body=body
            )
        raise RemoteRejected(message, system=self.system, endpoint=endpoint, status_code=status, body=body)
