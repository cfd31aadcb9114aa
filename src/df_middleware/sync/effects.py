"""What makes processing safe to repeat: the effect ledger, fingerprints and audit rows.

- **Effects (R-IDEM-2).** A non-idempotent remote write (create a note, add a message, send an
  SMS, create a contact) is made through `EffectLedger.perform(key, …)`, in three steps, each its
  own small committed transaction: the *intent* (`state = started`) before the request leaves,
  the request, the *outcome* (`done`, with the id the write made) the moment it answers. So the
  ledger alone tells, whatever ended an earlier run — an exception, a lost answer, a cancellation
  at shutdown, a killed process:
  no row → never attempted, write; `done` → made, skip and reuse its id; `started` → *maybe
  done*: look for it remotely (a note's `[df:<key>]` marker, a message's `altId`, a contact by
  phone) and record what is found, else write; a write that cannot be looked up (a Verity send)
  is never repeated: `EffectMaybeDone`, held for the operator (the texting flow resolves it when
  Verity's receipt shows the send). A failure that certainly changed nothing (a refusal, a 429,
  no connection: `write_not_made`) drops the intent, so its retry writes at once.
  Recording at once (not only with the event's final outcome) keeps a handler that makes three
  writes and fails on the third from repeating the first two; the worker records the handler's
  effects again with the outcome, a no-op for keys already done.
- **Fingerprints (R-C-3).** `fingerprint(fields)` is the canonical hash the echo guard
  (`sync/echoes.py`, R-LOOP-1) and `contact_mappings.last_synced_fingerprint` use.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from df_middleware.canonical import canonical_sha256
from df_middleware.connectors.http import write_not_made
from df_middleware.db.models import SyncEffect
from df_middleware.db.session import Database
from df_middleware.db.types import utcnow
from df_middleware.errors import PermanentError, RetryableError
from df_middleware.observability import get_logger
from df_middleware.sync.registry import ClaimedEvent, EffectRecord, HandlerResult, SyncLogEntry

log = get_logger(__name__)


def fingerprint(fields: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of `fields` with empty values dropped (None and "" mean the
    same thing to every system we sync, so they must not make two profiles differ)."""
    return canonical_sha256({k: v for k, v in fields.items() if v not in (None, "", [], {})})


#: `sync_effects.state`: an intent, committed before the request leaves (its outcome unknown).
STARTED = "started"
#: The write's outcome is recorded (`target_id` is what it made).
DONE = "done"
#: A record retired because what it made is gone (a deleted GHL contact): history only.
SUPERSEDED = "superseded"
#: Effect keys whose write creates a GHL contact (their target is the contact's id).
CONTACT_EFFECT_PREFIX = "ghl:contact"


@dataclass(frozen=True)
class EffectOutcome:
    key: str
    target_id: str | None
    already_done: bool


class EffectMaybeDone(PermanentError):
    """An earlier run started this write and was interrupted before its outcome was recorded, and
    the write cannot be looked up remotely: it is *maybe done* (R-IDEM-2) and never repeated
    blindly. The event is dead-lettered with this message for an operator to check."""

    def __init__(self, key: str, target_system: str) -> None:
        super().__init__(
            f"{target_system} write {key} may already have been made: an earlier run was interrupted "
            "after sending it, before its outcome was recorded; not repeated"
        )
        self.key = key


async def record_effect(
    db: Database, key: str, target_system: str, target_id: str | None, *, event_id: str
) -> None:
    """Record in `sync_effects` that the write `key` happened, made for event `event_id`: an
    intent becomes `done` with its target id; a key already done is left as it is."""
    async with db.session() as session:
        row = await session.scalar(select(SyncEffect).where(SyncEffect.effect_key == key))
        if row is None:
            session.add(
                SyncEffect(
                    effect_key=key,
                    event_id=event_id,
                    target_system=target_system,
                    target_id=target_id,
                    state=DONE,
                )
            )
        elif row.state == STARTED:
            row.state, row.target_id, row.event_id = DONE, target_id, event_id


async def retire_contact_effects(session: AsyncSession, ghl_contact_id: str) -> int:
    """The GHL contact was deleted (R-C-4): the records of creating it are retired — kept as
    history under a suffixed key, state `superseded` — so a later create for the same person
    makes a live contact instead of answering with the dead id from the ledger."""
    result = await session.execute(
        update(SyncEffect)
        .where(
            SyncEffect.target_system == "ghl",
            SyncEffect.target_id == ghl_contact_id,
            SyncEffect.effect_key.startswith(CONTACT_EFFECT_PREFIX, autoescape=True),
            SyncEffect.state == DONE,
        )
        .values(
            effect_key=SyncEffect.effect_key + f"#superseded:{utcnow().isoformat()}",
            state=SUPERSEDED,
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)


@dataclass
class EffectLedger:
    """The effects of one event's processing (see the module docstring)."""

    db: Database
    event: ClaimedEvent
    performed: list[EffectRecord] = field(default_factory=list)

    @staticmethod
    async def intent_of(db: Database, key: str) -> bool:
        """Whether the effect `key` is an intent with no outcome (`started`): a write that may
        have been made, whatever event holds it."""
        async with db.session() as session:
            state = await session.scalar(select(SyncEffect.state).where(SyncEffect.effect_key == key))
        return state == "started"

    async def lookup(self, key: str) -> SyncEffect | None:
        async with self.db.session() as session:
            found: SyncEffect | None = await session.scalar(
                select(SyncEffect).where(SyncEffect.effect_key == key)
            )
            return found

    async def record(self, key: str, target_system: str, target_id: str | None) -> None:
        """Record a write that happened (an intent becomes `done`; a done key is left as is)."""
        await record_effect(self.db, key, target_system, target_id, event_id=str(self.event.id))
        self.performed.append(EffectRecord(effect_key=key, target_system=target_system, target_id=target_id))

    async def settle_found(self, key: str, target_system: str, target_id: str) -> None:
        """What the write `key` would have made was found by another path (a contact found by a
        search before its create was retried): an intent left by an interrupted create is
        recorded `done` with it, so the ledger never keeps a stale "maybe done". A no-op (one
        indexed read) when there is no intent."""
        existing = await self.lookup(key)
        if existing is not None and existing.state == STARTED:
            await self.record(key, target_system, target_id)

    async def _intend(self, key: str, target_system: str) -> None:
        """Commit the intent before the request leaves: whatever ends this run from here on — an
        exception, a cancellation at shutdown, a killed process — the next run knows the write
        may have been made."""
        try:
            async with self.db.session() as session:
                session.add(
                    SyncEffect(
                        effect_key=key,
                        event_id=str(self.event.id),
                        target_system=target_system,
                        target_id=None,
                        state=STARTED,
                    )
                )
        except IntegrityError as exc:
            raise RetryableError(f"effect {key} is being written by another run; retrying") from exc

    async def _abandon(self, key: str) -> None:
        """The write certainly did not happen: drop the intent so that a retry simply writes."""
        try:
            async with self.db.session() as session:
                await session.execute(
                    delete(SyncEffect).where(SyncEffect.effect_key == key, SyncEffect.state == STARTED)
                )
        except Exception as exc:  # the intent stays: the next run looks before writing (safe)
            log.warning("could not drop an effect intent", effect_key=key, error=type(exc).__name__)

    async def perform(
        self,
        key: str,
        target_system: str,
        write: Callable[[], Awaitable[str | None]],
        *,
        find_existing: Callable[[], Awaitable[str | None]] | None = None,
    ) -> EffectOutcome:
        """Make `write` once per `key`, ever; returns the target id (from the ledger when done).

        The intent is committed before `write` runs and becomes `done` with its result. An intent
        found with no outcome is a write an earlier run may have made (R-IDEM-2, whatever ended
        that run): `find_existing` looks for it remotely (a note's marker, a message's altId, a
        contact by phone) and a write found is recorded, not repeated; a write that cannot be
        looked up (no `find_existing`) raises `EffectMaybeDone` instead of being repeated. When
        `write` fails in a way that certainly changed nothing (`write_not_made`), the intent is
        dropped and a retry writes without looking.
        """
        existing = await self.lookup(key)
        if existing is not None and existing.state == DONE:
            return EffectOutcome(key, existing.target_id, already_done=True)
        if existing is not None and existing.state == STARTED:
            if find_existing is None:
                raise EffectMaybeDone(key, target_system)
            found = await find_existing()
            if found is not None:
                await self.record(key, target_system, found)
                return EffectOutcome(key, found, already_done=True)
        else:
            await self._intend(key, target_system)
        try:
            target_id = await write()
        except Exception as exc:
            if write_not_made(exc):
                await self._abandon(key)
            raise
        await self.record(key, target_system, target_id)
        return EffectOutcome(key, target_id, already_done=False)


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
