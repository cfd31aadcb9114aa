"""Who is this person in each system: phones, emails, contact mappings (R-ID-1…R-ID-3).

- Keys are E.164 phones (`phonenumbers`, DEFAULT_PHONE_REGION) and trimmed, lower-cased emails;
  an invalid phone is never a key (`phones.py`).
- A GHL contact is resolved in this order (R-ID-2): the mapping by the other system's id → the
  mapping by E.164 phone → GHL itself by exact phone → by exact email (`GhlClient.find_contact`
  accepts a search hit only when its phone or email really equals the key).
- `ContactMappings.upsert` writes one row per person: found by GHL id, then Aloware id, then a
  texting-only row with the same phone (null Aloware id), which is completed in place (R-ID-3).
  Two events about one new phone are serialised by their ordering key; should two writers still
  race, the unique indexes refuse the second and the event is retried (it then finds the row).

Database sessions here are short and never held across a remote call (on SQLite a GHL token
refresh needs the write lock).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import and_, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from df_middleware.connectors.ghl import GhlClient
from df_middleware.connectors.ghl_models import Contact
from df_middleware.db.models import ContactMapping, WebhookEvent
from df_middleware.db.session import Database
from df_middleware.db.types import utcnow
from df_middleware.errors import PermanentError, RetryableError
from df_middleware.phones import normalize_email, normalize_phone
from df_middleware.sync.effects import retire_contact_effects

#: Queue statuses of an event whose change may not be applied yet.
UNAPPLIED_STATUSES = ("pending", "processing", "quarantined")
#: How long a GHL profile last seen may stand in for reading the contact.
GHL_PROFILE_TRUST = timedelta(hours=24)

#: Which system a contact change came from.
Side = Literal["ghl", "aloware"]
#: A stream of changes ordered by a watermark: each system's contact changes, and Aloware's
#: `Contact Disposed` (R-CALL-3).
Stream = Literal["ghl", "aloware", "disposition"]
#: The watermark columns of each stream: the event time of the newest change applied, and when
#: that change reached us.
WATERMARK_COLUMNS: dict[Stream, tuple[str, str]] = {
    "ghl": ("ghl_event_at", "ghl_event_received_at"),
    "aloware": ("aloware_event_at", "aloware_event_received_at"),
    "disposition": ("disposition_event_at", "disposition_received_at"),
}


def is_covered(
    event_at: datetime,
    received_at: datetime | None,
    applied_at: datetime | None,
    applied_received_at: datetime | None,
) -> bool:
    """Whether a change of `event_at`, received at `received_at`, is no newer than the watermark
    (`applied_at`, `applied_received_at`): older, or of the same time and received no later.

    Event times can tie (Aloware's `updated_at` has one-second resolution); two changes of one
    person are processed in receipt order (R-Q-4), so receipt breaks the tie, and the change
    applied itself (a replay) stays covered. A watermark with no receipt time (written before
    receipt times were kept) covers only older changes.
    """
    if applied_at is None:
        return False
    if event_at != applied_at:
        return event_at < applied_at
    return applied_received_at is not None and received_at is not None and received_at <= applied_received_at


@dataclass(frozen=True)
class PersonKeys:
    """A person's match keys, normalised (None when absent or invalid)."""

    phone: str | None
    email: str | None

    @classmethod
    def of(cls, phone: object, email: object, region: str = "US") -> PersonKeys:
        return cls(normalize_phone(phone, region), normalize_email(email))

    @property
    def empty(self) -> bool:
        return self.phone is None and self.email is None


@dataclass(frozen=True)
class GhlSighting:
    """A GHL contact's profile as we last saw it (`contact_mappings.ghl_profile`): its fields,
    when GHL says it last changed (`dateUpdated`, or the webhook's time), and which fields the
    sighting could not show (`unknown`: GHL's contact webhooks carry no timezone), so that a
    missing value there is "not known", never "empty"."""

    profile: dict[str, str]
    changed_at: datetime | None
    unknown: tuple[str, ...] = ()

    @classmethod
    def load(cls, stored: Mapping[str, Any] | None) -> GhlSighting | None:
        if not stored or not isinstance(stored.get("profile"), Mapping):
            return None
        changed = stored.get("changed_at")
        unknown = stored.get("unknown")
        return cls(
            {str(k): str(v) for k, v in stored["profile"].items()},
            datetime.fromisoformat(changed) if isinstance(changed, str) else None,
            tuple(str(name) for name in unknown) if isinstance(unknown, list) else (),
        )

    def dump(self) -> dict[str, Any]:
        changed = self.changed_at.isoformat() if self.changed_at is not None else None
        return {"profile": dict(self.profile), "changed_at": changed, "unknown": list(self.unknown)}

    def decides(self, incoming: Mapping[str, str]) -> bool:
        """Whether this sighting holds every GHL value a decision about `incoming` depends on:
        none of the fields it could not show has an incoming value."""
        return not any(name in incoming for name in self.unknown)


@dataclass(frozen=True)
class MappingView:
    """A contact_mappings row as handlers see it (detached from any session)."""

    id: str
    ghl_contact_id: str
    aloware_contact_id: str | None
    phone: str | None
    email: str | None
    fingerprint: str | None
    deleted_at: datetime | None
    ghl_event_at: datetime | None = None
    aloware_event_at: datetime | None = None
    ghl_seen: GhlSighting | None = None
    ghl_seen_at: datetime | None = None
    ghl_event_received_at: datetime | None = None
    aloware_event_received_at: datetime | None = None
    disposition_event_at: datetime | None = None
    disposition_received_at: datetime | None = None

    @classmethod
    def of(cls, row: ContactMapping) -> MappingView:
        return cls(
            id=str(row.id),
            ghl_contact_id=row.ghl_contact_id,
            aloware_contact_id=row.aloware_contact_id,
            phone=row.phone_number,
            email=row.email,
            fingerprint=row.last_synced_fingerprint,
            deleted_at=row.deleted_at,
            ghl_event_at=row.ghl_event_at,
            aloware_event_at=row.aloware_event_at,
            ghl_seen=GhlSighting.load(row.ghl_profile),
            ghl_seen_at=row.ghl_profile_at,
            ghl_event_received_at=row.ghl_event_received_at,
            aloware_event_received_at=row.aloware_event_received_at,
            disposition_event_at=row.disposition_event_at,
            disposition_received_at=row.disposition_received_at,
        )

    def applied_by(self, stream: Stream, event_at: datetime | None, received_at: datetime | None) -> bool:
        """Whether the `stream` watermark is this very event's (same time, same receipt): a retry
        of the event that applied it, which is "stale" to itself but must finish its own work."""
        at, received = WATERMARK_COLUMNS[stream]
        return (
            event_at is not None
            and received_at is not None
            and getattr(self, at) == event_at
            and getattr(self, received) == received_at
        )

    def is_stale(self, stream: Stream, event_at: datetime | None, received_at: datetime | None) -> bool:
        """Whether a `stream` event of `event_at`, received at `received_at`, is no newer than the
        last one applied (a replay or a late retry of an old change: applying it would write old
        data back). `is_covered` says how ties are ordered; an event of unknown time is never
        stale."""
        at, received = WATERMARK_COLUMNS[stream]
        return event_at is not None and is_covered(
            event_at, received_at, getattr(self, at), getattr(self, received)
        )


class MappingConflict(RetryableError):
    """Two writers raced on one person's mapping; the retry finds the row the other wrote."""


class ContactDeleted(PermanentError):
    """A flow asked to map a GHL contact that was deleted (R-C-4): it is never written again."""

    def __init__(self, ghl_contact_id: str) -> None:
        super().__init__(f"GHL contact {ghl_contact_id} was deleted; it is not written to again")
        self.ghl_contact_id = ghl_contact_id


class ContactMappings:
    """Reads and upserts of `contact_mappings`."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def by_ghl_id(self, ghl_contact_id: str) -> MappingView | None:
        return await self._one(ContactMapping.ghl_contact_id == ghl_contact_id)

    async def by_aloware_id(self, aloware_contact_id: str) -> MappingView | None:
        return await self._one(ContactMapping.aloware_contact_id == str(aloware_contact_id))

    async def by_phone(self, phone: str) -> MappingView | None:
        return await self._one(ContactMapping.phone_number == phone)

    async def by_email(self, email: str) -> MappingView | None:
        return await self._one(ContactMapping.email == email)

    async def claim_on_phone(self, phone: str, *, other_than: str) -> MappingView | None:
        """Another live GHL contact's claim on the number: a row with its phone and no Aloware id
        yet (written before its first Lead API write, which is running or failed)."""
        return await self._one(
            and_(
                ContactMapping.phone_number == phone,
                ContactMapping.aloware_contact_id.is_(None),
                ContactMapping.deleted_at.is_(None),
                ContactMapping.ghl_contact_id != other_than,
            )
        )

    async def _one(self, condition: object) -> MappingView | None:
        async with self.db.session() as session:
            row = await session.scalar(
                select(ContactMapping)
                .where(condition)  # type: ignore[arg-type]
                .order_by(ContactMapping.deleted_at.is_not(None), ContactMapping.updated_at.desc())
                .limit(1)
            )
            return MappingView.of(row) if row is not None else None

    async def upsert(
        self,
        *,
        ghl_contact_id: str,
        aloware_contact_id: str | None = None,
        keys: PersonKeys | None = None,
        direction: str,
        fingerprint: str | None = None,
    ) -> MappingView:
        """Create or complete the person's live mapping (R-ID-3); returns it as stored.

        Identity columns only ever gain values: a known Aloware id is never replaced by None, and
        a phone or email is updated only to a valid new value. Only live rows are candidates: a
        deleted GHL contact's row is history (R-C-4) and keeps its ids, and the person's new GHL
        contact gets a row of its own (the unique indexes hold for live rows only). A deleted GHL
        contact is never mapped again: asking for it raises `ContactDeleted`.
        """
        keys = keys or PersonKeys(None, None)
        aloware = str(aloware_contact_id) if aloware_contact_id is not None else None
        live = ContactMapping.deleted_at.is_(None)
        try:
            async with self.db.session() as session:
                conditions = [ContactMapping.ghl_contact_id == ghl_contact_id]
                if aloware is not None:
                    conditions.append(ContactMapping.aloware_contact_id == aloware)
                rows = list(await session.scalars(select(ContactMapping).where(live, or_(*conditions))))
                row = next((r for r in rows if r.ghl_contact_id == ghl_contact_id), None)
                row = row or next(
                    (r for r in rows if aloware is not None and r.aloware_contact_id == aloware), None
                )
                if row is None and keys.phone is not None:
                    row = await session.scalar(
                        select(ContactMapping)
                        .where(
                            live,
                            ContactMapping.phone_number == keys.phone,
                            ContactMapping.aloware_contact_id.is_(None),
                        )
                        .limit(1)
                    )
                if row is None:
                    # Only a deleted row counts: a live one written meanwhile by another
                    # flow makes the insert below fail its unique index (a retried conflict).
                    deleted = await session.scalar(
                        select(ContactMapping.id)
                        .where(
                            ContactMapping.ghl_contact_id == ghl_contact_id,
                            ContactMapping.deleted_at.is_not(None),
                        )
                        .limit(1)
                    )
                    if deleted is not None:
                        raise ContactDeleted(ghl_contact_id)
                    row = ContactMapping(ghl_contact_id=ghl_contact_id, sync_direction=direction)
                    session.add(row)
                if row.ghl_contact_id != ghl_contact_id:
                    # The person's row moves to another GHL contact: what we saw of the old one
                    # says nothing about the new one.
                    row.ghl_profile, row.ghl_profile_at = None, None
                row.ghl_contact_id = ghl_contact_id
                if aloware is not None:
                    row.aloware_contact_id = aloware
                if keys.phone is not None:
                    row.phone_number = keys.phone
                if keys.email is not None:
                    row.email = keys.email
                if fingerprint is not None:
                    row.last_synced_fingerprint = fingerprint
                row.sync_direction = direction
                row.last_synced_at = utcnow()
                await session.flush()
                return MappingView.of(row)
        except IntegrityError as exc:
            raise MappingConflict(
                f"contact mapping for GHL {ghl_contact_id} changed concurrently; retrying"
            ) from exc

    async def _live_row(self, session: AsyncSession, ghl_contact_id: str) -> ContactMapping | None:
        row: ContactMapping | None = await session.scalar(
            select(ContactMapping).where(
                ContactMapping.ghl_contact_id == ghl_contact_id, ContactMapping.deleted_at.is_(None)
            )
        )
        return row

    async def set_fingerprint(self, ghl_contact_id: str, fingerprint: str) -> None:
        """What we last wrote for this person (R-C-3)."""
        async with self.db.session() as session:
            row = await self._live_row(session, ghl_contact_id)
            if row is not None:
                row.last_synced_fingerprint = fingerprint
                row.last_synced_at = utcnow()

    async def mark_applied(
        self, ghl_contact_id: str, side: Side, event_at: datetime | None, *, received_at: datetime | None
    ) -> None:
        """Remember that `side`'s contact change of `event_at`, received at `received_at`, is
        applied (the watermark only moves forward; a tie is ordered by receipt)."""
        await self._advance(ghl_contact_id, side, event_at, received_at)

    async def mark_disposition_applied(
        self, ghl_contact_id: str, event_at: datetime | None, *, received_at: datetime | None
    ) -> None:
        """Remember that Aloware's `Contact Disposed` of `event_at` is applied (R-CALL-3): an
        older disposition delivered later must not replace it."""
        await self._advance(ghl_contact_id, "disposition", event_at, received_at)

    async def _advance(
        self, ghl_contact_id: str, stream: Stream, event_at: datetime | None, received_at: datetime | None
    ) -> None:
        if event_at is None:
            return
        at, received = WATERMARK_COLUMNS[stream]
        async with self.db.session() as session:
            row = await self._live_row(session, ghl_contact_id)
            if row is None or is_covered(event_at, received_at, getattr(row, at), getattr(row, received)):
                return
            setattr(row, at, event_at)
            setattr(row, received, received_at)

    async def see_ghl_profile(
        self,
        ghl_contact_id: str,
        profile: Mapping[str, str] | None,
        *,
        changed_at: datetime | None = None,
        seen_at: datetime | None = None,
        unseen: Collection[str] = (),
    ) -> None:
        """Record the GHL contact's profile as of `seen_at` (a webhook's time, or now for what
        GHL's API just answered), with GHL's `changed_at`; or forget it (`profile` None: GHL
        changed the contact in a way we could not read). An older sighting never replaces a
        newer one. `unseen` names fields the sighting cannot show (GHL's contact webhooks carry
        no timezone): they are recorded as unknown, whatever an earlier sighting said (the
        change the webhook reports may be that very field)."""
        seen_at = seen_at or utcnow()
        async with self.db.session() as session:
            row = await self._live_row(session, ghl_contact_id)
            if row is None or (row.ghl_profile_at is not None and seen_at < row.ghl_profile_at):
                return
            sighting: GhlSighting | None = None
            if profile is not None:
                fields = {name: value for name, value in profile.items() if name not in unseen}
                sighting = GhlSighting(fields, changed_at, tuple(unseen))
            row.ghl_profile = sighting.dump() if sighting is not None else None
            row.ghl_profile_at = seen_at

    async def trusted_ghl_profile(
        self, mapping: MappingView, *, now: datetime | None = None
    ) -> GhlSighting | None:
        """The mapped GHL contact's last-seen profile, when it can stand in for a `GET` (R-PERF-3):
        it is known, seen within `GHL_PROFILE_TRUST` (a webhook GHL never delivered cannot leave
        it wrong for longer), and no GHL event about the contact is still waiting in the queue or
        set aside in quarantine (either would mean GHL changed the contact after we saw it)."""
        if mapping.ghl_seen is None or mapping.deleted_at is not None or mapping.ghl_seen_at is None:
            return None
        if mapping.ghl_seen_at < (now or utcnow()) - GHL_PROFILE_TRUST:
            return None
        async with self.db.session() as session:
            waiting = await session.scalar(
                select(WebhookEvent.id)
                .where(
                    WebhookEvent.entity_type == "contact",
                    WebhookEvent.entity_id == mapping.ghl_contact_id,
                    WebhookEvent.source == "ghl",
                    WebhookEvent.status.in_(UNAPPLIED_STATUSES),
                )
                .limit(1)
            )
        return None if waiting is not None else mapping.ghl_seen

    async def release_claim(self, ghl_contact_id: str, phone: str) -> None:
        """The GHL contact's phone-only claim on `phone` no longer holds (GHL says the contact is
        gone or has another number now): the number is left to whoever has it in GHL. Only a
        claim is released, never a mapping that reached Aloware."""
        async with self.db.session() as session:
            row = await self._live_row(session, ghl_contact_id)
            if row is not None and row.aloware_contact_id is None and row.phone_number == phone:
                row.phone_number = None

    async def mark_deleted(self, ghl_contact_id: str) -> MappingView | None:
        """R-C-4: the GHL contact was deleted. The mapping is kept, marked, as history; and the
        ledger's record of creating that contact is retired (`retire_contact_effects`), so the
        person's next activity finds or creates a live contact instead of reusing the dead id."""
        async with self.db.session() as session:
            row = await self._live_row(session, ghl_contact_id)
            row = row or await session.scalar(
                select(ContactMapping).where(ContactMapping.ghl_contact_id == ghl_contact_id).limit(1)
            )
            await retire_contact_effects(session, ghl_contact_id)
            if row is None:
                return None
            if row.deleted_at is None:
                row.deleted_at = utcnow()
            row.ghl_profile, row.ghl_profile_at = None, None
            return MappingView.of(row)


@dataclass(frozen=True)
class ResolvedContact:
    """A GHL contact found for a person, and how it was found (for sync_log messages)."""

    ghl_contact_id: str
    via: str  # 'mapping' | 'phone' | 'email'
    contact: Contact | None = None


async def resolve_ghl_contact(
    mappings: ContactMappings,
    ghl: GhlClient,
    keys: PersonKeys,
    *,
    aloware_contact_id: str | None = None,
) -> ResolvedContact | None:
    """The person's GHL contact by R-ID-2's order, or None when GHL has nobody with these keys."""
    if aloware_contact_id is not None:
        mapped = await mappings.by_aloware_id(aloware_contact_id)
        if mapped is not None and mapped.deleted_at is None:
            return ResolvedContact(mapped.ghl_contact_id, "mapping")
    if keys.phone is not None:
        mapped = await mappings.by_phone(keys.phone)
        if mapped is not None and mapped.deleted_at is None:
            return ResolvedContact(mapped.ghl_contact_id, "mapping")
    if keys.empty:
        return None
    # One search for both keys; GhlClient.find_contact prefers the phone match.
    found = await ghl.find_contact(phone=keys.phone, email=keys.email)
    if found is None:
        return None
    by_phone = keys.phone is not None and normalize_phone(found.phone, ghl.phone_region) == keys.phone
    return ResolvedContact(found.id, "phone" if by_phone else "email", found)
