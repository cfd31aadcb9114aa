"""What makes processing safe to repeat: the effect ledger, echo fingerprints and audit rows.

- **Effects (R-IDEM-2).** A non-idempotent remote write (create a note, add a message, send an
  SMS, create a contact) is made through `EffectLedger.perform(key, …)`: when `sync_effects`
  already holds the key the write is skipped and its recorded target id returned; otherwise the
  write is made and the key recorded *at once*, in its own small transaction. Recording at once
  (rather than only with the event's final outcome) is what keeps a handler that makes three
  writes and fails on the third from repeating the first two when it is retried; the worker
  records the handler's effects again with the outcome, which is a no-op for keys already there.
  A write whose answer was lost (timeout after GHL did the work) leaves no key: callers that can
  find the write remotely (a note's `[df:<key>]` marker, a message's `altId`) look before
  repeating it (R-CALL-4).
- **Echoes (R-LOOP-1).** After writing fields to an entity, `EchoGuard.remember` stores their
  fingerprint for ECHO_TTL_SECONDS; the webhook that write causes comes back with the same fields,
  and `EchoGuard.is_echo` recognises it, so GHL ⇄ Aloware never ping-pong.
- **Fingerprints (R-C-3).** `fingerprint(fields)` is the canonical hash both use, and what
  `contact_mappings.last_synced_fingerprint` stores.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select

from df_middleware.canonical import canonical_sha256
from df_middleware.db.models import EchoGuard as EchoGuardRow
from df_middleware.db.models import SyncEffect, SyncLog
from df_middleware.db.session import Database
from df_middleware.db.types import utcnow
from df_middleware.sync.registry import ClaimedEvent, EffectRecord, HandlerResult, SyncLogEntry


def fingerprint(fields: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of `fields` with empty values dropped (None and "" mean the
    same thing to every system we sync, so they must not make two profiles differ)."""
    return canonical_sha256({k: v for k, v in fields.items() if v not in (None, "", [], {})})


@dataclass(frozen=True)
class EffectOutcome:
    key: str
    target_id: str | None
    already_done: bool


async def record_effect(
    db: Database, key: str, target_system: str, target_id: str | None, *, event_id: str
) -> None:
    """Record in `sync_effects` that the write `key` happened, made for event `event_id`; an
    existing key is left as it is."""
    async with db.session() as session:
        exists = await session.scalar(select(SyncEffect.id).where(SyncEffect.effect_key == key))
        if exists is None:
            session.add(
                SyncEffect(
                    effect_key=key, event_id=event_id, target_system=target_system, target_id=target_id
                )
            )


@dataclass
class EffectLedger:
    """The effects of one event's processing (see the module docstring)."""

    db: Database
    event: ClaimedEvent
    performed: list[EffectRecord] = field(default_factory=list)
    _ran_before: bool | None = None

    async def ran_before(self) -> bool:
        """Whether an earlier run of this event may have made writes we did not record: a retry
        (attempts > 1, which includes a crash: the lease expired and the event was re-claimed) or a
        replay of an event that had already ended (it has sync_log rows). On a first run nothing
        can exist remotely yet, so remote look-ups are skipped and cost no API call."""
        if self._ran_before is None:
            if self.event.attempts > 1:
                self._ran_before = True
            else:
                async with self.db.session() as session:
                    earlier = await session.scalar(
                        select(SyncLog.id).where(SyncLog.correlation_id == str(self.event.id)).limit(1)
                    )
                self._ran_before = earlier is not None
        return self._ran_before

    async def lookup(self, key: str) -> SyncEffect | None:
        async with self.db.session() as session:
            found: SyncEffect | None = await session.scalar(
                select(SyncEffect).where(SyncEffect.effect_key == key)
            )
            return found

    async def record(self, key: str, target_system: str, target_id: str | None) -> None:
        """Record a write that happened (idempotent: an existing key is left as it is)."""
        await record_effect(self.db, key, target_system, target_id, event_id=str(self.event.id))
        self.performed.append(EffectRecord(effect_key=key, target_system=target_system, target_id=target_id))

    async def perform(
        self,
        key: str,
        target_system: str,
        write: Callable[[], Awaitable[str | None]],
        *,
        find_existing: Callable[[], Awaitable[str | None]] | None = None,
    ) -> EffectOutcome:
        """Make `write` once per `key`, ever; returns the target id (from the ledger when done).

        `find_existing`, when given, looks for the write in the remote system before making it
        (a note's marker, a message's altId) whenever an earlier run may have made it
        (`ran_before`): a write whose answer was lost is then recorded, not repeated.
        """
        existing = await self.lookup(key)
        if existing is not None:
            return EffectOutcome(key, existing.target_id, already_done=True)
        if find_existing is not None and await self.ran_before():
            found = await find_existing()
            if found is not None:
                await self.record(key, target_system, found)
                return EffectOutcome(key, found, already_done=True)
        target_id = await write()
        await self.record(key, target_system, target_id)
        return EffectOutcome(key, target_id, already_done=False)


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


def success(
    event: ClaimedEvent,
    direction: str,
    message: str,
    *,
    target_id: str | None = None,
    entity_type: str | None = None,
    entity_id: str | None = None,
) -> SyncLogEntry:
    """One `success` sync_log row for an effect of this event (R-Q-7: one row per effect)."""
    entity = entity_id or event.entity_id or str(event.id)
    return SyncLogEntry(
        direction=direction,
        entity_type=entity_type or event.entity_type,
        entity_id=entity,
        source_id=event.entity_id or str(event.id),
        status="success",
        message=message,
        target_id=target_id,
    )


def skipped(event: ClaimedEvent, direction: str, reason: str) -> HandlerResult:
    """The event needs nothing done: one `skipped` row naming why."""
    return HandlerResult.skipped(event, reason, direction=direction)
