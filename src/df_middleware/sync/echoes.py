"""Echoes of our own writes (R-LOOP-1): the webhook a write of ours causes is not a change.

After writing fields to an entity, `EchoGuard.remember` stores their fingerprint for
ECHO_TTL_SECONDS; the webhook that write causes comes back with the same fields, and
`EchoGuard.is_echo` recognises it, so GHL ⇄ Aloware never ping-pong.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select

from df_middleware.db.models import EchoGuard as EchoGuardRow
from df_middleware.db.session import Database
from df_middleware.db.types import utcnow
from df_middleware.sync.effects import fingerprint


class EchoGuard:
    """Fingerprints of our own recent writes (R-LOOP-1)."""

    def __init__(self, db: Database, ttl_seconds: int) -> None:
        self.db = db
        self.ttl = timedelta(seconds=ttl_seconds)

    async def remember(self, system: str, entity_id: str, fields: Mapping[str, Any]) -> str:
        """We just wrote `fields` to `system`'s entity: its webhook about them is an echo."""
        digest = fingerprint(fields)
        now = utcnow()
        async with self.db.session() as session:
            await session.execute(delete(EchoGuardRow).where(EchoGuardRow.expires_at < now))
            session.add(
                EchoGuardRow(
                    system=system, entity_id=entity_id, fingerprint=digest, expires_at=now + self.ttl
                )
            )
        return digest

    async def is_echo(self, system: str, entity_id: str, fields: Mapping[str, Any]) -> bool:
        """Whether `system` reporting these fields for the entity is the echo of our own write."""
        async with self.db.session() as session:
            found = await session.scalar(
                select(EchoGuardRow.id).where(
                    EchoGuardRow.system == system,
                    EchoGuardRow.entity_id == entity_id,
                    EchoGuardRow.fingerprint == fingerprint(fields),
                    EchoGuardRow.expires_at >= utcnow(),
                )
            )
        return found is not None
