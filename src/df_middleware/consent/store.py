"""The consent registries and their history (R-OPT-2, R-DM-2): read, decide, record.

`ConsentStore.apply(change)` is the one way a consent decision is written. In one transaction it
reads the number's row in force (locked: `SELECT … FOR UPDATE` on PostgreSQL, SQLite's write lock
on SQLite), asks `decisions.decide` whether the change takes effect, and if so upserts the
registry row (`optout_registry` for SMS, `dnc_registry` for voice) and appends one row to
`optout_events`, the history that explains every decision. Numbers are E.164 (R-ID-1): a change
carries the normalised number, so every formatting of one number is one row.

`sms_allowed` is what every outbound SMS asks first (R-OPT-4): the middleware never texts a number
whose SMS status is `opted_out`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from df_middleware.consent.decisions import (
    OPTED_OUT,
    Channel,
    ConsentChange,
    ConsentState,
    Decision,
    decide,
)
from df_middleware.db.models import DncRegistry, OptoutEvent, OptoutRegistry
from df_middleware.db.session import Database
from df_middleware.db.types import utcnow
from df_middleware.errors import RetryableError

#: The registry of each channel.
REGISTRIES: dict[Channel, type[OptoutRegistry | DncRegistry]] = {
    "sms": OptoutRegistry,
    "voice": DncRegistry,
}


@dataclass(frozen=True)
class ConsentOutcome:
    """What `apply` did: the decision, and the state in force afterwards."""

    decision: Decision
    previous: ConsentState | None
    state: ConsentState | None

    def holds(self, change: ConsentChange) -> bool:
        """Whether the decision in force is this change's: applied now, or by an earlier run of the
        same event (a retry after GHL failed must still tell GHL)."""
        return is_in_force(self.state, change)


def is_in_force(state: ConsentState | None, change: ConsentChange) -> bool:
    """Whether `state` (a registry row) is the decision `change` made: same status, source and
    time. A newer decision since then means `change` is no longer what to tell anyone."""
    return (
        state is not None
        and state.status == change.status
        and state.source == change.source
        and state.last_event_at == change.event_at
    )


@dataclass(frozen=True)
class HistoryEntry:
    """One row of `optout_events`, as the CLI and the admin API show it."""

    channel: str
    status: str
    source: str
    reason: str | None
    keyword: str | None
    message_id: str | None
    event_at: datetime
    actor: str | None
    recorded_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "status": self.status,
            "source": self.source,
            "reason": self.reason,
            "keyword": self.keyword,
            "message_id": self.message_id,
            "event_at": self.event_at.isoformat(),
            "actor": self.actor,
            "recorded_at": self.recorded_at.isoformat(),
        }


def _state(row: OptoutRegistry | DncRegistry | None) -> ConsentState | None:
    if row is None:
        return None
    return ConsentState(
        status=row.status,  # type: ignore[arg-type]
        source=row.source,  # type: ignore[arg-type]
        reason=row.reason,
        last_event_at=row.last_event_at,
        recorded_at=row.updated_at,
    )


class ConsentConflict(RetryableError):
    """Two decisions about a new number were recorded at once; the retry decides against the row
    the other one wrote."""


class ConsentStore:
    """Reads and decisions of the consent registries."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def state(self, channel: Channel, phone: str) -> ConsentState | None:
        registry = REGISTRIES[channel]
        async with self.db.session() as session:
            row: OptoutRegistry | DncRegistry | None = await session.scalar(
                select(registry).where(registry.phone_number == phone)
            )
            return _state(row)

    async def apply(
        self, change: ConsentChange, *, also: Callable[[ConsentChange], Sequence[object]] | None = None
    ) -> ConsentOutcome:
        """Decide `change` against the number's state in force and record it when it takes effect
        (registry upsert and one history row, one transaction). `also` gives rows to write in that
        same transaction when it does (an operator's decision queues the event that tells GHL and
        the dialer: recorded and queued together, or neither)."""
        registry = REGISTRIES[change.channel]
        try:
            async with self.db.session() as session:
                query = select(registry).where(registry.phone_number == change.phone)
                if self.db.is_postgres:
                    query = query.with_for_update()
                row: OptoutRegistry | DncRegistry | None = await session.scalar(query)
                previous = _state(row)
                decision = decide(change, previous)
                if not decision.applies:
                    return ConsentOutcome(decision, previous, previous)
                if row is None:
                    row = registry(phone_number=change.phone)
                    session.add(row)
                row.status = change.status
                row.source = change.source
                row.reason = change.reason
                row.last_event_at = change.event_at
                row.updated_at = utcnow()  # when the decision was recorded (`decide`'s by_receipt)
                session.add(
                    OptoutEvent(
                        phone_number=change.phone,
                        channel=change.channel,
                        status=change.status,
                        source=change.source,
                        reason=change.reason,
                        keyword=change.keyword,
                        message_id=change.message_id,
                        event_at=change.event_at,
                        actor=change.actor,
                    )
                )
                if also is not None:
                    session.add_all(also(change))
                await session.flush()
                return ConsentOutcome(decision, previous, _state(row))
        except IntegrityError as exc:
            raise ConsentConflict(
                f"consent of {change.channel} {change.phone} was written concurrently; retrying"
            ) from exc

    async def history(self, phone: str, *, limit: int = 50) -> list[HistoryEntry]:
        """The number's decisions on both channels, newest first."""
        async with self.db.session() as session:
            rows = await session.scalars(
                select(OptoutEvent)
                .where(OptoutEvent.phone_number == phone)
                .order_by(OptoutEvent.event_at.desc(), OptoutEvent.created_at.desc())
                .limit(limit)
            )
            return [
                HistoryEntry(
                    channel=row.channel,
                    status=row.status,
                    source=row.source,
                    reason=row.reason,
                    keyword=row.keyword,
                    message_id=row.message_id,
                    event_at=row.event_at,
                    actor=row.actor,
                    recorded_at=row.created_at,
                )
                for row in rows
            ]


async def sms_allowed(db: Database, phone: str) -> bool:
    """R-OPT-4: whether the middleware may text this E.164 number now (its SMS status is not
    `opted_out`). Asked at send time, by every send path."""
    state = await ConsentStore(db).state("sms", phone)
    return state is None or state.status != OPTED_OUT


async def dialer_block(db: Database, phone: str | None, *, sms_opt_out_counts: bool) -> str | None:
    """R-AG-2, R-OPT-3, R-OPT-6: why this number may not be on any power-dialer list, or None.

    Voice do-not-call always keeps a person off the dialer; an SMS opt-out does when
    OPTOUT_REMOVES_FROM_DIALER is set (`sms_opt_out_counts`). A contact without a phone has no
    consent state: nothing blocks it here (it cannot be dialled either way)."""
    if not phone:
        return None
    store = ConsentStore(db)
    voice = await store.state("voice", phone)
    if voice is not None and voice.status == OPTED_OUT:
        return "on the do-not-call list"
    if sms_opt_out_counts:
        sms = await store.state("sms", phone)
        if sms is not None and sms.status == OPTED_OUT:
            return "opted out of SMS"
    return None
