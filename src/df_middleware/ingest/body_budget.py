"""A bound on the webhook body bytes one server process holds at once.

Without it, a hundred senders posting 1 MiB bodies together make the process read and parse all
of them at once (626 MB RSS was measured). With it, a request takes room for each piece of its
body as the piece arrives, before keeping it; while the budget is spent, the rest of the body
stays unread in the socket (TCP flow control holds it at the sender) and the request waits its
turn, up to a limit, after which it gets 503 with Retry-After and gives its room back.

Room is taken for bytes received, not for the `Content-Length` a request declares: a client that
declares a megabyte and sends nothing holds nothing (declaring was enough to lock every sender out
while the room was reserved up front). The room lasts until the request is answered, since the
parsed payload lives until then.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class BudgetExhausted(Exception):
    """No room for this body within the wait allowed."""


class BodyBudget:
    """Bytes in flight, shared by the requests of one event loop.

    Giving room back is synchronous (no await in a `finally`), so a cancelled request can never
    keep its bytes."""

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
    async def holding(self, *, wait_seconds: float) -> AsyncIterator[BodyRoom]:
        """Room for one request's body, grown piece by piece (`BodyRoom.take`) and all given back
        when the block ends."""
        room = BodyRoom(self, wait_seconds)
        try:
            yield room
        finally:
            self._give_back(room.held)

    async def _take(self, size: int, deadline: float) -> None:
        while self._in_use + size > self.capacity:
            released = self._released
            try:
                async with asyncio.timeout_at(deadline):
                    await released.wait()
            except TimeoutError:
                raise BudgetExhausted() from None
        self._in_use += size

    def _give_back(self, size: int) -> None:
        if size:
            self._in_use -= size
            self._released.set()  # wake every waiter; each checks again for its own size
            self._released = asyncio.Event()


class BodyRoom:
    """The room one request holds in a BodyBudget."""

    def __init__(self, budget: BodyBudget, wait_seconds: float) -> None:
        self._budget = budget
        self._wait_seconds = wait_seconds
        self.held = 0

    async def take(self, size: int) -> None:
        """Room for `size` more bytes; BudgetExhausted when there is none within the wait (counted
        from this call, so a request that keeps receiving keeps its chance)."""
        size = max(0, min(size, self._budget.capacity - self.held))
        if size == 0:
            return
        deadline = asyncio.get_running_loop().time() + self._wait_seconds
        await self._budget._take(size, deadline)
        self.held += size
