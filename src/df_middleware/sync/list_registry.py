"""`call_list_registry`: each agent's Aloware power-dialer lists, found by name (R-AG-3).

Lists are `DF_<AGENT>_<LIST>`. A list id is taken from the registry; a list not there is looked for
by name in Aloware (one `GET /call-lists` answers for the whole directory, and for
REMOTE_LISTS_SECONDS per process), created when ALOWARE_CREATE_LISTS is set, else reported missing
(the membership is then `blocked`). Aloware's lists are read afresh right before a create, so a create
whose answer was lost is found, not made twice.

Creating is serialized per list name (break14 finding 4: two events placing two contacts on a list
that did not exist yet both found none and both created it, and Aloware ended with two lists of one
name): within a process by an asyncio lock, across processes on PostgreSQL by a transaction-level
advisory lock held from the fresh read to the recorded id. The second creator then finds the first
one's list in the registry. (SQLite deployments run one worker process.)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Sequence

from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from df_middleware.connectors.aloware import AlowareClient
from df_middleware.db.models import CallListRegistry
from df_middleware.db.session import Database
from df_middleware.db.types import utcnow
from df_middleware.sync.agent_routing import list_name

#: How long one read of Aloware's lists (`GET /call-lists`) answers "is there a list named …?".
REMOTE_LISTS_SECONDS = 30.0


class CallListRegistryStore:
    """`call_list_registry`: each (agent, list key)'s Aloware list id, found by name (R-AG-3)."""

    _shared: dict[int, tuple[float, dict[str, str]]] = {}

    @classmethod
    def forget(cls) -> None:
        """Tests: forget what Aloware's lists were."""
        cls._shared.clear()

    def __init__(
        self,
        db: Database,
        aloware: AlowareClient,
        *,
        create: bool,
        list_keys: Sequence[str] = (),
        agent_keys: Sequence[str] = (),
    ) -> None:
        self.db = db
        self.aloware = aloware
        self.create = create
        self.list_keys = tuple(list_keys)
        self.agent_keys = tuple(agent_keys)
        self._remote: dict[str, str] | None = None

    async def cached(self, agent_key: str, list_key: str) -> str | None:
        async with self.db.session() as session:
            row = await session.scalar(
                select(CallListRegistry).where(
                    CallListRegistry.agent_key == agent_key, CallListRegistry.list_key == list_key
                )
            )
            return row.aloware_list_id if row is not None else None

    async def list_id(self, agent_key: str, list_key: str, *, look_again: bool = False) -> str | None:
        """The Aloware list id, from the cache, else found by name (one `GET /call-lists` per
        store, however many lists are missing), else created when allowed; None when missing."""
        cached = await self.cached(agent_key, list_key)
        if cached is not None and not look_again:
            return cached
        name = list_name(agent_key, list_key)
        remote = await self._remote_lists()
        found = remote.get(name)
        if found is None and self.create:
            async with self._creating(name):
                # Another creator may have made and recorded it while this one waited.
                found = await self.cached(agent_key, list_key)
                if found is None:
                    # Read afresh before creating: a create whose answer was lost made the list,
                    # and the cached read from before it would make a second one of the same name.
                    remote = await self._remote_lists(fresh=True)
                    found = remote.get(name)
                if found is None:
                    created = await self.aloware.create_call_list(
                        name, f"DF-Middleware: {agent_key} {list_key}"
                    )
                    found = str(created.id)
                    remote[name] = found
                await self._record(agent_key, list_key, name, found)
            return found
        await self._record(agent_key, list_key, name, found)
        return found

    #: (event loop, list name) → its creators' lock (a lock belongs to one loop; few names).
    _local_locks: dict[tuple[int, str], asyncio.Lock] = {}

    @contextlib.asynccontextmanager
    async def _creating(self, name: str) -> AsyncIterator[None]:
        """Only one creator of the list `name` at a time (see the module docstring)."""
        lock = self._local_locks.setdefault((id(asyncio.get_running_loop()), name), asyncio.Lock())
        async with lock:
            if not self.db.is_postgres:
                yield
                return
            key = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)
            async with self.db.session() as session:
                await session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
                yield

    async def _remote_lists(self, *, fresh: bool = False) -> dict[str, str]:
        """Aloware's lists by name, read at most once per REMOTE_LISTS_SECONDS per process (a
        rebuild of many contacts whose list is missing asks once, and a list created by hand in
        Aloware is seen soon after). Every list of a known agent found on the way is cached in
        the registry too, so one read serves the whole directory's lists."""
        if self._remote is None or fresh:
            key = id(self.aloware)
            read_at, names = self._shared.get(key, (0.0, {}))
            if fresh or time.monotonic() - read_at >= REMOTE_LISTS_SECONDS:
                lists = await self.aloware.list_call_lists()
                names = {item.name: str(item.id) for item in lists if item.name}
                self._shared[key] = (time.monotonic(), names)
            self._remote = names
            for agent_key in self.agent_keys:
                for list_key in self.list_keys:
                    found = self._remote.get(list_name(agent_key, list_key))
                    if found is not None and await self.cached(agent_key, list_key) != found:
                        await self._record(agent_key, list_key, list_name(agent_key, list_key), found)
        return self._remote

    async def _record(self, agent_key: str, list_key: str, name: str, list_id: str | None) -> None:
        for attempt in range(2):
            try:
                async with self.db.session() as session:
                    row = await session.scalar(
                        select(CallListRegistry).where(CallListRegistry.aloware_list_name == name)
                    )
                    if row is None:
                        row = CallListRegistry(agent_key=agent_key, list_key=list_key, aloware_list_name=name)
                        session.add(row)
                    row.aloware_list_id = list_id
                    row.updated_at = utcnow()
                return
            except IntegrityError:
                if attempt:
                    raise
