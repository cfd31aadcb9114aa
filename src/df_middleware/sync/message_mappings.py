"""`message_mappings`: one row per text across the systems (R-TXT-1…R-TXT-5).

The texting flows (`texting.py`: texts in, receipts) and the agents' sends (`agent_sends.py`) find
a message by its texting id or its GHL id here, and move its status forward only (a replayed
`sent` after `delivered` changes nothing). The Verity send ledger (`SEND_EFFECT_PREFIX` effects)
is read here too: it records a send the moment Verity answers, before the mapping is written, so
it still tells our own send from a text sent outside GHL after a crash in between.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from df_middleware.db.models import MessageMapping, SyncEffect, WebhookEvent
from df_middleware.db.session import Database
from df_middleware.db.types import utcnow
from df_middleware.errors import RetryableError

#: Effect key prefix of Verity sends (R-TXT-5); the rest is the GHL message id.
SEND_EFFECT_PREFIX = "verity:send:"
#: Message lifecycle ranks: a status never moves backwards (a replayed `sent` after `delivered`).
_STATUS_RANK: dict[str, int] = {"pending": 0, "received": 1, "sent": 1, "delivered": 2, "failed": 2}


def status_advances(current: str | None, new: str) -> bool:
    """Whether moving a mapping from `current` to `new` is progress (same or older: no-op)."""
    if current is None:
        return True
    return _STATUS_RANK.get(new, 0) > _STATUS_RANK.get(current, 0)


@dataclass(frozen=True)
class MessageView:
    """A message_mappings row as handlers see it (detached from any session)."""

    texting_message_id: str | None
    ghl_message_id: str | None
    conversation_id: str | None
    ghl_contact_id: str | None
    status: str | None
    #: Why an agent's text was refused (`opted_out`, `invalid_phone`, `empty_message`), recorded
    #: with the refusal so a retry can tell GHL again when telling it failed (migration 0011).
    error_code: str | None = None

    @classmethod
    def of(cls, row: MessageMapping) -> MessageView:
        return cls(
            texting_message_id=row.texting_message_id,
            ghl_message_id=row.ghl_message_id,
            conversation_id=row.conversation_id,
            ghl_contact_id=row.ghl_contact_id,
            status=row.status,
            error_code=row.error_code,
        )


class MappingRace(RetryableError):
    """Two writers recorded the same message at once; the retry finds the row the other wrote."""


class MessageMappings:
    """Reads and upserts of `message_mappings` (one row per message across the systems)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def by_texting_id(self, texting_message_id: str) -> MessageView | None:
        async with self.db.session() as session:
            row = await session.scalar(
                select(MessageMapping).where(MessageMapping.texting_message_id == texting_message_id)
            )
            return MessageView.of(row) if row is not None else None

    async def by_ghl_id(self, ghl_message_id: str) -> MessageView | None:
        async with self.db.session() as session:
            row = await session.scalar(
                select(MessageMapping).where(MessageMapping.ghl_message_id == ghl_message_id)
            )
            return MessageView.of(row) if row is not None else None

    async def record(
        self,
        *,
        texting_message_id: str | None,
        ghl_message_id: str | None,
        direction: str,
        status: str,
        conversation_id: str | None = None,
        ghl_contact_id: str | None = None,
        from_number: str | None = None,
        to_number: str | None = None,
        force_status: bool = False,
        error_code: str | None = None,
    ) -> None:
        """Create or complete the message's row, found by texting id then GHL id; known values
        are never replaced by None, and the status only moves forward (unless `force_status`: a
        fresh send after an earlier refusal starts the message's life again). `error_code`: why an
        agent's text was refused, set only when given (a retry tells GHL again from it)."""
        try:
            async with self.db.session() as session:
                row: MessageMapping | None = None
                if texting_message_id is not None:
                    row = await session.scalar(
                        select(MessageMapping).where(MessageMapping.texting_message_id == texting_message_id)
                    )
                if row is None and ghl_message_id is not None:
                    row = await session.scalar(
                        select(MessageMapping).where(MessageMapping.ghl_message_id == ghl_message_id)
                    )
                if row is None:
                    row = MessageMapping(direction=direction)
                    session.add(row)
                values = {
                    "texting_message_id": texting_message_id,
                    "ghl_message_id": ghl_message_id,
                    "conversation_id": conversation_id,
                    "ghl_contact_id": ghl_contact_id,
                    "from_number": from_number,
                    "to_number": to_number,
                    "error_code": error_code,
                }
                for name, value in values.items():
                    if value is not None:
                        setattr(row, name, value)
                if force_status or status_advances(row.status, status):
                    row.status = status
                    row.status_updated_at = utcnow()
                await session.flush()
        except IntegrityError as exc:
            raise MappingRace(
                f"message mapping for texting {texting_message_id} / GHL {ghl_message_id} "
                "was written concurrently; retrying"
            ) from exc

    async def set_status(self, texting_message_id: str, status: str) -> None:
        async with self.db.session() as session:
            row = await session.scalar(
                select(MessageMapping).where(MessageMapping.texting_message_id == texting_message_id)
            )
            if row is not None and status_advances(row.status, status):
                row.status = status
                row.status_updated_at = utcnow()


async def own_send_of(db: Database, texting_message_id: str) -> str | None:
    """The GHL message id whose Verity send produced this texting id, from the effect ledger.

    The send is recorded the moment Verity answers, before the mapping is written; a crash in
    between leaves only this, and it still tells an echo from a message texted outside GHL.
    """
    async with db.session() as session:
        key: str | None = await session.scalar(
            select(SyncEffect.effect_key).where(
                SyncEffect.target_system == "verity",
                SyncEffect.target_id == texting_message_id,
                SyncEffect.effect_key.like(f"{SEND_EFFECT_PREFIX}%"),
            )
        )
    return key.removeprefix(SEND_EFFECT_PREFIX) if key is not None else None


async def event_of_send(session: AsyncSession, ghl_message_id: str) -> uuid.UUID | None:
    """The provider delivery event whose send of this GHL message is recorded, if any."""
    event_id = await session.scalar(
        select(SyncEffect.event_id).where(SyncEffect.effect_key == f"{SEND_EFFECT_PREFIX}{ghl_message_id}")
    )
    if event_id is None:
        return None
    try:
        return uuid.UUID(str(event_id))
    except ValueError:
        return None


async def location_of_send(db: Database, ghl_message_id: str) -> str | None:
    """The GHL location an agent's message came from (its provider delivery's `locationId`), so
    receipts of OAuth-installed locations update the right sub-account; None: GHL_LOCATION_ID."""
    async with db.session() as session:
        key = await event_of_send(session, ghl_message_id)
        if key is None:
            return None
        payload = await session.scalar(select(WebhookEvent.payload_json).where(WebhookEvent.id == key))
    location = payload.get("locationId") if isinstance(payload, Mapping) else None
    return location if isinstance(location, str) and location else None
