"""Keeping within GHL's burst limit: 100 requests per 10 s per app per location.

`SlidingWindowLimiter` is shared by every coroutine of a process. Per key (a location id) it keeps
the calls of the last window and lets a call start only while fewer than the budget may be counted
by GHL right now — a sliding log, which is never looser than GHL's own window whatever shape that
window has. GHL counts a request when it *arrives*, which is some time after the limiter let it go
(event loop, connection set-up, network: on a loaded host that can be longer than any fixed margin)
and before its answer comes back. So a call counts against the budget from when it was let go
until one window after its answer (or its failure) was read: in flight it counts, whatever it is
waiting for. The caller reports that end (`finished`, and `observe` with the answer's headers).
It then adapts to what GHL says:

- `X-RateLimit-Max` / `X-RateLimit-Interval-Milliseconds` replace the configured figures when
  they differ (GHL's answer is the truth for this app and location);
- `X-RateLimit-Remaining: 0` while this process still thinks it has budget means somebody else
  (another process, a backfill script) is spending it: calls pause for one window;
- a 429 pauses the key for `Retry-After` (or one window when absent). A call waits out a pause of
  up to MAX_PAUSE_IN_CALL_SECONDS; a longer one raises `LocationPaused` (retryable, with
  `retry_after`), so the event is retried later instead of holding a worker slot for an hour.

Several processes divide the budget explicitly: each takes `max / processes`
(`GHL_RATE_LIMIT_PROCESSES`), and the headers above catch what the division misses. Why not a
shared counter in the database: it would cost a write per GHL call on the hot path and still not
see other users of the same app; see docs/operations.md.

Counting a call until a window after its answer costs a round trip per window over counting it
from its start (1 % of the budget at 100 ms on GHL's 10 s window), and removes the arrival margin
earlier versions added to the window (0.25 s, too little when the host is loaded: docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

from df_middleware.errors import RetryableError
from df_middleware.observability import RATE_LIMITER_WAIT, get_logger

log = get_logger(__name__)

#: Seconds added to the window. None are needed: a call counts until a window after its answer,
#: which is later than GHL's arrival clock counted it.
ARRIVAL_MARGIN_SECONDS = 0.0
#: Longest pause (after a 429 or a drained budget) a call sits out in-call; a longer one is handed
#: back to the worker as the event's retry time instead of holding a worker slot.
MAX_PAUSE_IN_CALL_SECONDS = 15.0
#: Retry-After values beyond this are not believed (a broken header must not park a location).
MAX_RETRY_AFTER_SECONDS = 24 * 3600.0


class LocationPaused(RetryableError):
    """The location's GHL budget is paused for longer than a call should wait."""


@dataclass(eq=False)
class LimitedCall:
    """One call's place in its key's budget, from `acquire` until a window after it ended."""

    key: str
    #: When the limiter let the call go (the limiter's clock).
    started: float
    #: Seconds the call waited for its place.
    waited: float
    #: When its answer (or its failure) came back; None while it is in flight.
    ended: float | None = None

    def may_count_at(self, at: float, window: float) -> bool:
        """Whether GHL may count this call in its window ending at `at`: GHL counted it at its
        arrival, which lies between `started` and `ended`."""
        return self.started <= at and (self.ended is None or self.ended > at - window)


@dataclass
class _KeyWindow:
    calls: deque[LimitedCall] = field(default_factory=deque)
    paused_until: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: Set when a call of this key ends, for a waiter whose budget is held by calls in flight.
    call_ended: asyncio.Event = field(default_factory=asyncio.Event)


class SlidingWindowLimiter:
    """At most `budget` calls per key that GHL may count in any window of `interval` (+ margin)
    seconds: a call counts from when it is let go until a window after its answer."""

    def __init__(
        self,
        max_calls: int,
        interval_seconds: float,
        *,
        processes: int = 1,
        system: str = "ghl",
        margin_seconds: float = ARRIVAL_MARGIN_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if max_calls < 1 or interval_seconds <= 0 or processes < 1:
            raise ValueError("rate limit needs max_calls ≥ 1, interval > 0 and processes ≥ 1")
        self.max_calls = max_calls
        self.interval = interval_seconds
        self.processes = processes
        self.system = system
        self.margin = margin_seconds
        self._clock = clock
        self._sleep = sleep
        self._windows: dict[str, _KeyWindow] = {}

    @property
    def budget(self) -> int:
        """Calls this process may start per window for one key."""
        return max(1, self.max_calls // self.processes)

    @property
    def window(self) -> float:
        return self.interval + self.margin

    def _window_for(self, key: str) -> _KeyWindow:
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = _KeyWindow()
        return window

    def _trim(self, window: _KeyWindow, now: float) -> None:
        # Ended calls are kept for two windows, not one: `observe` counts them as of when a request
        # was *sent*, which with a slow round trip is well before the answer came back. Calls in
        # flight are kept whatever their age.
        horizon = now - 2 * self.window
        window.calls = deque(c for c in window.calls if c.ended is None or c.ended > horizon)

    def _ours_counted(self, window: _KeyWindow, call: LimitedCall) -> int:
        """Our own calls GHL may have counted in the window its answer to `call` describes (as of
        the call's arrival, somewhere between its start and its end): those not ended by GHL's
        interval before `call` started, and those started since, which may have overtaken it on
        the way. Only when even these fall short of the budget is somebody else spending."""
        answered_at = call.ended if call.ended is not None else self._clock()
        return sum(
            1
            for c in window.calls
            if c.started <= answered_at and (c.ended is None or c.ended > call.started - self.interval)
        )

    async def acquire(self, key: str) -> LimitedCall:
        """Wait until a call for `key` may start, and record it. The caller must report its end
        (`finished`, or `observe` with the answer) or it holds its place in the budget for good.

        Waiters queue on a per-key FIFO lock, so the budget is handed out in arrival order and a
        burst of coroutines cannot starve one another.
        """
        window = self._window_for(key)
        started = self._clock()
        async with window.lock:
            while True:
                now = self._clock()
                self._trim(window, now)
                if now < window.paused_until:
                    pause = window.paused_until - now
                    if pause > MAX_PAUSE_IN_CALL_SECONDS:
                        raise LocationPaused(
                            f"GHL rate limit: location {key} paused for {pause:.0f} s", retry_after=pause
                        )
                    await self._sleep(pause)
                    continue
                current = [c for c in window.calls if c.may_count_at(now, self.window)]
                if len(current) < self.budget:
                    call = LimitedCall(key=key, started=now, waited=now - started)
                    window.calls.append(call)
                    RATE_LIMITER_WAIT.labels(self.system).observe(call.waited)
                    return call
                leaving = [c.ended + self.window for c in current if c.ended is not None]
                if leaving:
                    await self._sleep(min(leaving) - now)
                else:
                    # Every counted call is in flight: none leaves the window before a window
                    # after its answer, and that is not known until the answer comes.
                    window.call_ended.clear()
                    await window.call_ended.wait()

    def finished(self, call: LimitedCall) -> None:
        """`call` ended (answered, failed or abandoned): it counts for one window from now. Only
        the first report counts."""
        if call.ended is None:
            call.ended = self._clock()
            self._window_for(call.key).call_ended.set()

    def observe(self, call: LimitedCall, status_code: int, headers: Mapping[str, str]) -> None:
        """`call` was answered: adapt to GHL's answer (its own limit figures, a drained budget, a
        429). GHL's `X-RateLimit-Remaining` describes the window as of the request's arrival, so
        our own count is taken as of then too (`_ours_counted`)."""
        self.finished(call)
        key = call.key
        window = self._window_for(key)
        now = self._clock()
        limit = _int_header(headers, "x-ratelimit-max")
        interval_ms = _int_header(headers, "x-ratelimit-interval-milliseconds")
        if limit and limit != self.max_calls:
            log.info("ghl_rate_limit_learned", max_calls=limit, previous=self.max_calls)
            self.max_calls = limit
        if interval_ms and interval_ms / 1000 != self.interval:
            self.interval = interval_ms / 1000
        remaining = _int_header(headers, "x-ratelimit-remaining")
        self._trim(window, now)
        if status_code == 429:
            retry_after = retry_after_seconds(headers)
            pause = retry_after if retry_after is not None else self.window
            window.paused_until = max(window.paused_until, now + pause)
            log.warning("ghl_rate_limited", key=key, pause_seconds=round(pause, 3))
        elif remaining is not None and remaining <= 0 and self._ours_counted(window, call) < self.budget:
            window.paused_until = max(window.paused_until, now + self.window)
            log.info("ghl_budget_spent_elsewhere", key=key, pause_seconds=round(self.window, 3))


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """`Retry-After` as seconds (delta-seconds form; an HTTP date is read too)."""
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if seconds != seconds:  # NaN
            return None
        return min(max(0.0, seconds), MAX_RETRY_AFTER_SECONDS)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return min(max(0.0, when.timestamp() - time.time()), MAX_RETRY_AFTER_SECONDS)
