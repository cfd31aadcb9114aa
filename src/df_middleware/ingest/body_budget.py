"""A bound on the webhook body bytes one server process holds at once.

Without it, a hundred senders posting 1 MiB bodies together make the process read and parse all
of them at once (626 MB RSS was measured). With it, a request first reserves its body's size
(its `Content-Length`, or the largest body allowed when it sends none) and only then reads it;
while the budget is spent, the body stays unread in the socket (TCP flow control holds it at the
sender) and the request waits its turn, up to a limit, after which it gets 503 with Retry-After.
The reservation lasts until the request is answered, since the parsed payload lives until then.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class BudgetExhausted(Exception):
    """No room for this body within the wait allowed."""


class BodyBudget:
    """Bytes in flight, shared by the requests of one event loop.

    Releasing is synchronous (no await in the `finally`), so a cancelled request can never keep
    its bytes reserved."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self._in_use = 0
        self._released = asyncio.Event()

    @property
    def in_use(self) -> int:
        return self._in_use

    @contextlib.asynccontextmanager
    async def reserve(self, size: int, *, wait_seconds: float) -> AsyncIterator[None]:
        """Hold `size` bytes (at most the capacity) for the duration of the block; BudgetExhausted
        when there is no room within `wait_seconds`."""
        size = max(0, min(size, self.capacity))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        while self._in_use + size > self.capacity:
            released = self._released
            try:
                async with asyncio.timeout_at(deadline):
                    await released.wait()
            except TimeoutError:
                raise BudgetExhausted() from None
        self._in_use += size
        try:
            yield
        finally:
            self._in_use -= size
            self._released.set()  # wake every waiter; each checks again for its own size
            self._released = asyncio.Event()
