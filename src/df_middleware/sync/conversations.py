"""Each GHL contact's conversation, found once and then remembered (R-PERF-3).

A call log entry or a text needs the id of the contact's GHL conversation, and GHL has no way to
write into "the contact's conversation" without it: finding it costs a search, and a create when
there is none. The id does not change for the life of the conversation, so it is kept in
`ghl_conversations` after the first lookup (or after any write whose answer names it) and a
contact's later calls and texts cost no lookup at all.

A conversation deleted in GHL makes a cached id wrong. Whatever uses a remembered id therefore
goes through `in_conversation`: when GHL refuses the id (`RemoteRejected` / `RemoteNotFound`), the
entry is replaced by a fresh search-or-create and the call is repeated once on the new id.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from df_middleware.connectors.ghl import GhlClient
from df_middleware.connectors.http import RemoteNotFound, RemoteRejected
from df_middleware.db.models import GhlConversation, MessageMapping
from df_middleware.db.session import Database
from df_middleware.db.types import utcnow

T = TypeVar("T")


class ConversationCache:
    """Reads and writes of `ghl_conversations`; database sessions never span a GHL call."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def known(self, ghl_contact_id: str) -> str | None:
        """The contact's conversation as remembered, or as last recorded for one of its texts
        (rows written before this cache existed); None when we never learned it."""
        async with self.db.session() as session:
            row = await session.get(GhlConversation, ghl_contact_id)
            if row is not None:
                return row.conversation_id
            recorded: str | None = await session.scalar(
                select(MessageMapping.conversation_id)
                .where(
                    MessageMapping.ghl_contact_id == ghl_contact_id,
                    MessageMapping.conversation_id.is_not(None),
                )
                .order_by(MessageMapping.created_at.desc())
                .limit(1)
            )
            return recorded

    async def remember(self, ghl_contact_id: str, conversation_id: str, location_id: str | None) -> None:
        """Store (or correct) the contact's conversation id."""
        try:
            async with self.db.session() as session:
                row = await session.get(GhlConversation, ghl_contact_id)
                if row is None:
                    session.add(
                        GhlConversation(
                            ghl_contact_id=ghl_contact_id,
                            conversation_id=conversation_id,
                            location_id=location_id,
                        )
                    )
                elif row.conversation_id != conversation_id:
                    row.conversation_id = conversation_id
                    row.location_id = location_id
                    row.updated_at = utcnow()
        except IntegrityError:
            # Another worker stored the same contact's conversation at the same moment; both
            # found it with GHL's own search, so theirs is as good as ours.
            return

    async def forget(self, ghl_contact_id: str) -> None:
        async with self.db.session() as session:
            gone = delete(GhlConversation).where(GhlConversation.ghl_contact_id == ghl_contact_id)
            await session.execute(gone)

    async def conversation_for(self, ghl: GhlClient, ghl_contact_id: str) -> str:
        """The contact's conversation id: remembered, else found or created in GHL (and then
        remembered)."""
        known = await self.known(ghl_contact_id)
        if known is not None:
            return known
        found = (await ghl.ensure_conversation(ghl_contact_id)).id
        await self.remember(ghl_contact_id, found, ghl.location_id)
        return found

    async def refresh(self, ghl: GhlClient, ghl_contact_id: str, refused: str) -> str | None:
        """GHL refused a write on `refused`: look the conversation up again. Returns the new id,
        or None when GHL still says `refused` (then the refusal was about something else)."""
        await self.forget(ghl_contact_id)
        fresh = (await ghl.ensure_conversation(ghl_contact_id)).id
        await self.remember(ghl_contact_id, fresh, ghl.location_id)
        return None if fresh == refused else fresh

    async def in_conversation(
        self,
        ghl: GhlClient,
        ghl_contact_id: str,
        use: Callable[[str], Awaitable[T]],
        *,
        conversation_id: str | None = None,
    ) -> tuple[T, str]:
        """`use(id)` on the contact's conversation (`conversation_id`, else the remembered or
        found one); when GHL refuses that id, once more on a freshly looked-up one. Returns the
        result and the id it was obtained on."""
        current = conversation_id or await self.conversation_for(ghl, ghl_contact_id)
        try:
            return await use(current), current
        except (RemoteRejected, RemoteNotFound):
            # A remembered conversation GHL no longer has (deleted): look it up again, once.
            fresh = await self.refresh(ghl, ghl_contact_id, current)
            if fresh is None:
                raise
            return await use(fresh), fresh
