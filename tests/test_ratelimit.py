"""The GHL rate limiter on a virtual clock: exact budgets, FIFO hand-out, adaptation to headers.

A virtual clock makes these tests exact and instant: `sleep` advances time instead of waiting.
The end-to-end behaviour against the GHL simulator (no 429 under load) is in test_connector_ghl.py.
"""

from __future__ import annotations

import asyncio

import pytest

from df_middleware.connectors.ratelimit import SlidingWindowLimiter, retry_after_seconds


class VirtualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 0.0)
        await asyncio.sleep(0)


def _limiter(
    clock: VirtualClock, max_calls: int = 10, interval: float = 10.0, **kw: object
) -> SlidingWindowLimiter:
    return SlidingWindowLimiter(
        max_calls,
        interval,
        clock=clock,
        sleep=clock.sleep,
        margin_seconds=0.0,
        **kw,  # type: ignore[arg-type]
    )


async def test_budget_per_window_is_never_exceeded() -> None:
    """R-PERF-3: no window of `interval` ever holds more than the budget of call starts."""
    clock = VirtualClock()
    limiter = _limiter(clock, max_calls=10, interval=10.0)
    starts: list[float] = []

    async def call() -> None:
        limiter.finished(await limiter.acquire("loc"))  # answered at once
        starts.append(clock.now)

    await asyncio.gather(*(call() for _ in range(35)))
    assert len(starts) == 35
    for i, start in enumerate(starts):
        in_window = [s for s in starts[i:] if s < start + 10.0]
        assert len(in_window) <= 10
    # And it uses the budget: 35 calls take three full windows, not more.
    assert starts[-1] - starts[0] == pytest.approx(30.0)


async def test_keys_have_separate_budgets() -> None:
    """GHL's limit is per location: one location's burst does not delay another's."""
    clock = VirtualClock()
    limiter = _limiter(clock, max_calls=2)
    for _ in range(2):
        await limiter.acquire("a")
    assert (await limiter.acquire("b")).waited == 0.0


async def test_processes_divide_the_budget() -> None:
    """GHL_RATE_LIMIT_PROCESSES: each process takes an equal share."""
    clock = VirtualClock()
    limiter = _limiter(clock, max_calls=100, processes=4)
    assert limiter.budget == 25


async def test_429_pauses_the_key_for_retry_after() -> None:
    clock = VirtualClock()
    limiter = _limiter(clock)
    limiter.observe(await limiter.acquire("loc"), 429, {"retry-after": "7"})
    assert (await limiter.acquire("loc")).waited == pytest.approx(7.0)


async def test_budget_spent_elsewhere_pauses_one_window() -> None:
    """X-RateLimit-Remaining 0 while our own log has room: another client spends the budget."""
    clock = VirtualClock()
    limiter = _limiter(clock, max_calls=10, interval=10.0)
    call = await limiter.acquire("loc")
    limiter.observe(call, 200, {"x-ratelimit-remaining": "0", "x-ratelimit-max": "10"})
    assert (await limiter.acquire("loc")).waited == pytest.approx(10.0)


async def test_learns_limit_and_interval_from_headers() -> None:
    clock = VirtualClock()
    limiter = _limiter(clock, max_calls=100, interval=10.0)
    call = await limiter.acquire("loc")
    limiter.observe(call, 200, {"x-ratelimit-max": "50", "x-ratelimit-interval-milliseconds": "5000"})
    assert limiter.budget == 50
    assert limiter.interval == 5.0


def test_retry_after_forms() -> None:
    assert retry_after_seconds({"retry-after": "3"}) == 3.0
    assert retry_after_seconds({}) is None
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0


async def test_a_long_pause_is_handed_back_instead_of_slept() -> None:
    """A 429 with a long Retry-After must not park a worker slot: the call raises a retryable
    error carrying the wait, which becomes the event's next attempt time."""
    from df_middleware.connectors.ratelimit import LocationPaused

    clock = VirtualClock()
    limiter = _limiter(clock)
    limiter.observe(await limiter.acquire("loc"), 429, {"retry-after": "3600"})
    with pytest.raises(LocationPaused) as paused:
        await limiter.acquire("loc")
    assert paused.value.retry_after == pytest.approx(3600.0)
    assert clock.now == 1000.0  # nothing was slept


def test_absurd_retry_after_values_are_bounded() -> None:
    assert retry_after_seconds({"retry-after": "inf"}) == 24 * 3600.0
    assert retry_after_seconds({"retry-after": "nan"}) is None
    assert retry_after_seconds({"retry-after": "-5"}) == 0.0


async def test_a_slow_answer_is_not_mistaken_for_budget_spent_elsewhere() -> None:
    """GHL's `Remaining: 0` describes the window when the request *arrived*. With a slow round
    trip our own calls of that window may have aged out of the window by the time the answer is
    read; counted as of the send, they still explain the zero, so the location is not paused."""
    clock = VirtualClock()
    limiter = _limiter(clock, max_calls=10, interval=10.0)
    for _ in range(9):
        limiter.finished(await limiter.acquire("loc"))  # at t=1000, answered at once
    clock.now = 1009.9
    tenth = await limiter.acquire("loc")  # the tenth call of the window
    clock.now = 1010.4  # its answer arrives 0.5 s later: the first nine have left our window
    limiter.observe(tenth, 200, {"x-ratelimit-remaining": "0"})
    waited = (await limiter.acquire("loc")).waited
    assert waited == pytest.approx(0.0)  # no pause: the budget was spent by us, and has freed up


async def test_our_calls_that_overtook_this_one_explain_a_zero_remaining() -> None:
    """R-PERF-3: calls we started *after* this one may reach GHL before it (another endpoint, a
    shorter path) and be counted in the window its `Remaining` describes; with those, our own
    calls explain the zero, so the location is not paused for a window."""
    clock = VirtualClock()
    limiter = _limiter(clock, max_calls=10, interval=10.0)
    for _ in range(8):
        limiter.finished(await limiter.acquire("loc"))  # at t=1000, answered at once
    clock.now = 1001.0
    ninth = await limiter.acquire("loc")  # this call; its answer is slow
    clock.now = 1001.02
    tenth = await limiter.acquire("loc")  # the tenth, which reaches GHL first
    clock.now = 1001.03
    limiter.finished(tenth)
    clock.now = 1001.05
    limiter.observe(ninth, 200, {"x-ratelimit-remaining": "0"})
    clock.now = 1011.0  # the window of the first eight has passed, the last two still count
    assert (await limiter.acquire("loc")).waited == pytest.approx(0.0)


async def test_a_zero_remaining_our_calls_cannot_explain_still_pauses() -> None:
    """R-PERF-3: budget spent by another client (GHL says 0 left while we made 3 calls in the
    window) still pauses the location for a window, so we do not run into 429s."""
    clock = VirtualClock()
    limiter = _limiter(clock, max_calls=10, interval=10.0)
    calls = [await limiter.acquire("loc") for _ in range(3)]
    clock.now += 0.1
    limiter.observe(calls[-1], 200, {"x-ratelimit-remaining": "0"})
    assert (await limiter.acquire("loc")).waited == pytest.approx(10.0, abs=0.2)


async def test_a_call_counts_until_a_window_after_its_answer() -> None:
    """R-PERF-3: GHL counts a request when it arrives, which may be long after the limiter let it
    go (a loaded host, a slow connection) and is at the latest when its answer comes back. So a
    call in flight holds its place, and once answered holds it for a window more: a call that
    waits for it starts a window after that answer, not a window after the slow call started."""
    clock = VirtualClock()
    limiter = _limiter(clock, max_calls=2, interval=10.0)
    fast = await limiter.acquire("loc")
    limiter.finished(fast)  # at t=1000
    slow = await limiter.acquire("loc")  # at t=1000, still in flight at t=1012
    clock.now = 1012.0
    third = await limiter.acquire("loc")  # the fast call has left the window: room for one
    assert third.waited == 0.0
    fourth = asyncio.create_task(limiter.acquire("loc"))
    await asyncio.sleep(0)
    assert not fourth.done()  # both places are held by calls in flight
    clock.now = 1013.0
    limiter.finished(slow)  # it may have reached GHL just now
    clock.now = 1015.0
    limiter.finished(third)
    assert (await fourth).started == pytest.approx(1023.0)  # a window after the slow answer
