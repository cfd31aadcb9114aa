"""Echoes of our own writes (R-LOOP-1): the webhook a write of ours causes is not a change.

After writing fields to an entity, `EchoGuard.remember` stores their fingerprint for
ECHO_TTL_SECONDS; the webhook that write causes comes back with the same fields, and
`EchoGuard.is_echo` recognises it, so GHL ⇄ Aloware never ping-pong. Three rules keep a
fingerprint from hiding a genuine change:

- **Only what the echo can carry.** A system's webhooks may leave fields out (GHL's contact
  webhooks never carry the timezone): those fields are dropped from what is remembered and from
  what is compared (`UNCARRIED_FIELDS`), inside the guard, so no caller can forget it.
- **One write, one echo.** The echo that matches a fingerprint consumes it: the same fields
  reported again later are a change (a GHL user renaming a contact back to the name we wrote).
- **A genuine change ends the rest.** A webhook that matches none of the entity's fingerprints
  means the entity has moved on from what we wrote: its remaining fingerprints are cleared, and
  so are the unconsumed provisional ones of its phone (below).

A write that *creates* an entity has no id to remember its fingerprint under until it is
answered, and the system may post the webhook about it sooner: another worker can take that
webhook while ours still waits for the answer (the soak with GHL's echoes showed it, issue 14). So
a create remembers its fingerprint first under a provisional entity named by what the webhook will
carry (`provisional_entity`: the phone), `is_echo` also looks there, and `settle_provisional` moves
the fingerprint to the new id once the answer comes, unless the early echo consumed it already.

A second webhook for one write (GHL sometimes sends two) is then no echo; the handlers' second
line catches it: the echo is recorded as the change last applied (its time the watermark, its
profile the last synced fingerprint, R-C-3), so the second one is stale or unchanged.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from df_middleware.db.models import EchoGuard as EchoGuardRow
from df_middleware.db.session import Database
from df_middleware.db.types import utcnow
from df_middleware.sync.effects import fingerprint

#: Fields a system's webhooks never carry, by system (contracts/ghl/webhooks/ContactUpdate.json
#: has no timezone): a fingerprint holding them could never match the echo.
UNCARRIED_FIELDS: Mapping[str, frozenset[str]] = {"ghl": frozenset({"timezone"})}


def dnd_entity(contact_id: str, channel: str) -> str:
    """The echo guard's entity for one DND channel of a contact (`sms` or `call`): apart from its
    profile, so that a profile webhook that matches nothing (and clears the profile's
    fingerprints) leaves the fingerprint of our DND write for the `ContactDndUpdate` it causes
    (R-LOOP-1, R-OPT-5); and one entity a channel, because every `ContactDndUpdate` re-states both
    channels: the SMS check of the webhook our Call write causes must not clear the Call write's
    fingerprint (R-OPT-6)."""
    return f"{contact_id}#dnd-{channel}"


def provisional_entity(phone: str) -> str:
    """The echo guard's entity for a contact we are creating, before the system has answered
    with its id: its phone (E.164), which the create's webhook carries."""
    return f"new:{phone}"


def echo_fingerprint(system: str, fields: Mapping[str, Any]) -> str:
    """The fingerprint of `fields` as `system`'s webhooks can report them."""
    uncarried = UNCARRIED_FIELDS.get(system, frozenset())
    return fingerprint({name: value for name, value in fields.items() if name not in uncarried})


class EchoGuard:
    """Fingerprints of our own recent writes (R-LOOP-1)."""

    def __init__(self, db: Database, ttl_seconds: int) -> None:
        self.db = db
        self.ttl = timedelta(seconds=ttl_seconds)

    async def remember(self, system: str, entity_id: str, fields: Mapping[str, Any]) -> str:
        """We just wrote `fields` to `system`'s entity: its webhook about them is an echo."""
        digest = echo_fingerprint(system, fields)
        now = utcnow()
        async with self.db.session() as session:
            await session.execute(delete(EchoGuardRow).where(EchoGuardRow.expires_at < now))
            session.add(
                EchoGuardRow(
                    system=system, entity_id=entity_id, fingerprint=digest, expires_at=now + self.ttl
                )
            )
        return digest

    async def is_echo(
        self,
        system: str,
        entity_id: str,
        fields: Mapping[str, Any],
        *,
        by: str | None = None,
        provisional: str | None = None,
    ) -> bool:
        """Whether `system` reporting these fields for the entity is the echo of our own write.

        An echo consumes its fingerprint (one write, one echo): it is marked consumed by the event
        `by` and kept until it expires, so that event run again (its outcome lost to a crash)
        still sees its echo and no other event does (break14 finding 6). Anything else is a
        genuine change and clears the entity's fingerprints for `system`. `provisional`: the
        entity a create of ours remembered its fingerprint under before it knew the id
        (`provisional_entity`), looked at too: the echo may come before the create's answer.
        """
        entity = (EchoGuardRow.system == system, EchoGuardRow.entity_id == entity_id)
        candidates = [entity_id] if provisional is None else [entity_id, provisional]
        mine: ColumnElement[bool] = EchoGuardRow.consumed_by.is_(None)
        if by is not None:
            mine = or_(mine, EchoGuardRow.consumed_by == by)
        async with self.db.session() as session:
            found = await session.scalar(
                select(EchoGuardRow)
                .where(
                    EchoGuardRow.system == system,
                    EchoGuardRow.entity_id.in_(candidates),
                    EchoGuardRow.fingerprint == echo_fingerprint(system, fields),
                    EchoGuardRow.expires_at >= utcnow(),
                    mine,
                )
                .order_by(EchoGuardRow.consumed_by.is_(None), EchoGuardRow.expires_at)
                .limit(1)
            )
            if found is not None and by is not None and found.consumed_by == by:
                return True  # this event's own echo, seen before its outcome was recorded
            if found is not None:
                consumed = await session.execute(
                    update(EchoGuardRow)
                    .where(EchoGuardRow.id == found.id, EchoGuardRow.consumed_by.is_(None))
                    .values(consumed_by=by or "?")
                )
                if getattr(consumed, "rowcount", 0) == 1:
                    return True
            await session.execute(delete(EchoGuardRow).where(*entity))
            if provisional is not None:
                # A create's provisional fingerprint is of the same person (the phone): left
                # behind by a create whose lookup or answer is still to come, it must not
                # swallow this person's later change back to what we wrote (break14d finding 3).
                await session.execute(
                    delete(EchoGuardRow).where(
                        EchoGuardRow.system == system,
                        EchoGuardRow.entity_id == provisional,
                        EchoGuardRow.consumed_by.is_(None),
                    )
                )
        return False

    async def settle_provisional(
        self,
        system: str,
        provisional: str,
        entity_id: str,
        fields: Mapping[str, Any],
        *,
        written: Mapping[str, Any] | None = None,
    ) -> None:
        """Our create of `entity_id`, remembered under `provisional` as `written` (default:
        `fields`) before the write, was answered with `fields`. Unless its echo came first and
        consumed the provisional fingerprint, that fingerprint moves to the entity's id (as the
        system answered it) for the echo still to come. Only this create's own row is touched:
        another create on the same phone in flight, or an earlier one's consumed row, are left
        as they are (break14b findings 3 and 7). One write, one echo either way."""
        async with self.db.session() as session:
            own = await self._own_provisional(session, system, provisional, written or fields)
            if own is None:
                return  # our echo came first and consumed it (or it expired)
            await session.execute(delete(EchoGuardRow).where(EchoGuardRow.id == own))
            session.add(
                EchoGuardRow(
                    system=system,
                    entity_id=entity_id,
                    fingerprint=echo_fingerprint(system, fields),
                    expires_at=utcnow() + self.ttl,
                )
            )

    async def forget(self, system: str, entity_id: str, fields: Mapping[str, Any]) -> None:
        """Our write of `fields` to the entity, remembered before it, will have no echo (certainly
        not made, or found afterwards): one unconsumed fingerprint of ours goes, and only ours."""
        async with self.db.session() as session:
            own = await self._own_provisional(session, system, entity_id, fields)
            if own is not None:
                await session.execute(delete(EchoGuardRow).where(EchoGuardRow.id == own))

    async def forget_provisional(self, system: str, provisional: str, written: Mapping[str, Any]) -> None:
        """Our create remembered under `provisional` was not made (refused before it left), or
        was made without an answer telling us so (found afterwards): its unconsumed provisional
        fingerprint goes, rather than wait ECHO_TTL to swallow a genuine change restating the same
        fields (break14b finding 2). A late echo of a create found afterwards is then taken for a
        change: harmless, the profile it carries is the one we wrote."""
        await self.forget(system, provisional, written)

    async def _own_provisional(
        self, session: AsyncSession, system: str, provisional: str, written: Mapping[str, Any]
    ) -> uuid.UUID | None:
        """The id of one unconsumed, live provisional row of ours (its fingerprint is `written`'s)."""
        found: uuid.UUID | None = await session.scalar(
            select(EchoGuardRow.id)
            .where(
                EchoGuardRow.system == system,
                EchoGuardRow.entity_id == provisional,
                EchoGuardRow.fingerprint == echo_fingerprint(system, written),
                EchoGuardRow.consumed_by.is_(None),
                EchoGuardRow.expires_at >= utcnow(),
            )
            .order_by(EchoGuardRow.expires_at)
            .limit(1)
        )
        return found
