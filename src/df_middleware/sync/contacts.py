"""Contact sync between GHL and Aloware (SPEC §6.1: R-C-1…R-C-4, with R-IDEM-* and R-LOOP-1).

Both systems' contacts are read into one vocabulary, the `Profile`: first and last name, email,
timezone, country, state, city, lead source and phone, stripped, with the phone in E.164 and the
email lower-cased (R-ID-1), empty values left out. Everything that compares contacts compares
profiles:

- **Fingerprints (R-C-3).** `contact_mappings.last_synced_fingerprint` holds the fingerprint of the
  *source* profile of the last sync, whichever way it ran, or of the echo that followed it (the
  target's profile after our write). A webhook whose profile has that fingerprint brings nothing
  new, so it is skipped before any API call.
- **Echoes (R-LOOP-1).** After a write, the profile the target system now holds (read back from
  its answer) is remembered; the webhook that write causes carries that same profile (as far as
  that system's webhooks carry it: `echoes.UNCARRIED_FIELDS`) and is skipped as an echo, which
  consumes the fingerprint. The echo is then the system's latest word on the person: its time
  becomes the watermark and its profile the last synced fingerprint, so a second webhook for the
  same write is stale or unchanged, never a change to write back.
- **Order (R-IDEM-1, R-Q-4).** Each side's newest applied change is a watermark (`MappingView.
  is_stale`): an older change is skipped; one of the same time (Aloware's `updated_at` has
  one-second resolution) is ordered by receipt, as the queue processes a person's events.
- **Who wins (R-C-2).** `decide_ghl_changes` is the pure per-field decision for Aloware → GHL
  under CONTACT_SOURCE_OF_TRUTH. An empty value never clears a field in either direction: the Lead
  API ignores empty values, and "unknown" in one system is no reason to erase the other's data.

The phone is the person's key in Aloware (the Lead API is keyed by it and has no way to change a
contact's number), so a GHL phone change on a mapped contact is written only when Aloware already
has the new number on the mapped contact; otherwise it is flagged as a conflict and nothing is
written, because a Lead API call on the new number would silently create a second contact.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeAlias

from df_middleware.connectors.aloware import AlowareClient, AlowareContact, LeadFields
from df_middleware.connectors.ghl import GhlClient
from df_middleware.connectors.ghl_models import Contact, ContactUpdate
from df_middleware.connectors.http import write_not_made
from df_middleware.db.types import utcnow
from df_middleware.errors import RetryableError
from df_middleware.phones import normalize_email, normalize_phone
from df_middleware.sync.call_lists import SignalsTime, forget_memberships, sync_contact_lists
from df_middleware.sync.echoes import UNCARRIED_FIELDS, EchoGuard, provisional_entity
from df_middleware.sync.effects import fingerprint, skipped, success
from df_middleware.sync.identity import (
    ContactMappings,
    MappingView,
    PersonKeys,
    Side,
)
from df_middleware.sync.registry import (
    ClaimedEvent,
    HandlerContext,
    HandlerRegistry,
    HandlerResult,
)
from df_middleware.timestamps import believed_time, parse_iso8601

SourceOfTruth: TypeAlias = Literal["ghl", "aloware", "merge"]
#: A contact's profile in the shared vocabulary: canonical field name → non-empty value.
Profile: TypeAlias = dict[str, str]

GHL_TO_ALOWARE = "ghl_to_aloware"
ALOWARE_TO_GHL = "aloware_to_ghl"

#: Profile fields both systems hold, in the shared vocabulary (Aloware's own names).
PROFILE_FIELDS: tuple[str, ...] = (
    "first_name",
    "last_name",
    "email",
    "timezone",
    "country",
    "state",
    "city",
    "lead_source",
)
#: The fields of a profile: the profile fields plus the phone, which is the key, not a field
#: Aloware → GHL ever writes.
ALL_FIELDS: tuple[str, ...] = (*PROFILE_FIELDS, "phone")

#: Where each field is in a GHL contact or webhook: native webhooks and the API use camelCase,
#: workflow (dotted) webhooks may use snake_case.
GHL_KEYS: dict[str, tuple[str, ...]] = {
    "first_name": ("firstName", "first_name"),
    "last_name": ("lastName", "last_name"),
    "email": ("email",),
    "timezone": ("timezone",),
    "country": ("country",),
    "state": ("state",),
    "city": ("city",),
    "lead_source": ("source", "lead_source"),
    "phone": ("phone", "phone_number"),
}
#: Where each field is in an Aloware contact (webhook body or phone lookup).
ALOWARE_KEYS: dict[str, tuple[str, ...]] = {
    **{name: (name,) for name in PROFILE_FIELDS},
    "phone": ("phone_number",),
}
#: The GHL `ContactUpdate` / `ContactUpsert` attribute that receives each profile field.
GHL_WRITE_ATTRIBUTES: dict[str, str] = {
    "first_name": "first_name",
    "last_name": "last_name",
    "email": "email",
    "timezone": "timezone",
    "country": "country",
    "state": "state",
    "city": "city",
    "lead_source": "source",
}

#: GHL contact webhooks that carry the whole contact (GHL's native webhooks); workflow webhooks
#: carry what the workflow author chose.
FULL_CONTACT_EVENTS: frozenset[str] = frozenset({"ContactCreate", "ContactUpdate"})
#: Profile fields GHL's contact webhooks do not carry (contracts/ghl/webhooks/ContactUpdate.json).
NOT_IN_WEBHOOKS: tuple[str, ...] = tuple(sorted(UNCARRIED_FIELDS["ghl"]))

# Skip reasons (the sync_log message of a `skipped` row).
NO_PHONE = "no phone"
#: A tag event where no agent routing is configured (empty agent directory): nothing to do.
NO_AGENTS = "tags: no agents configured, so no power-dialer lists to keep (AGENTS_FILE)"
ECHO = "echo"
UNCHANGED = "unchanged"
STALE = "stale: a newer change of this contact was already synced"
NO_KEYS = "no phone or email"
NOT_MAPPED = "not mapped to an Aloware contact"
ALOWARE_OFF = "aloware not configured"
GHL_OFF = "ghl not configured"


# --- pure decisions -------------------------------------------------------------------------------


def _text(value: Any) -> str | None:
    """A field value as text, or None when empty (numbers are accepted: Aloware sends some)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        value = str(value)
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value or None


def _profile(source: Mapping[str, Any], keys: Mapping[str, tuple[str, ...]], region: str) -> Profile:
    profile: Profile = {}
    for name, candidates in keys.items():
        raw = next((source[key] for key in candidates if _text(source.get(key)) is not None), None)
        value: str | None
        if name == "phone":
            value = normalize_phone(raw, region)
        elif name == "email":
            value = normalize_email(raw)
        else:
            value = _text(raw)
        if value is not None:
            profile[name] = value
    return profile


def ghl_profile(contact: Mapping[str, Any], region: str = "US") -> Profile:
    """The profile of a GHL contact: a native webhook, a workflow webhook (fields possibly under
    `contact`) or an API contact dumped by alias. An invalid phone is left out (R-ID-1)."""
    nested = contact.get("contact")
    source = nested if isinstance(nested, Mapping) else contact
    return _profile(source, GHL_KEYS, region)


def aloware_profile(contact: Mapping[str, Any], region: str = "US") -> Profile:
    """The profile of an Aloware contact (a `Contact Created`/`Updated` body or a lookup answer)."""
    return _profile(contact, ALOWARE_KEYS, region)


def lead_fields(profile: Profile) -> LeadFields:
    """The Lead API fields that carry a profile to Aloware (R-C-1); the phone goes separately."""
    return LeadFields(**{name: profile[name] for name in PROFILE_FIELDS if name in profile})


def ghl_update(changes: Profile) -> ContactUpdate:
    """The `PUT /contacts/{id}` body writing these profile fields (tags never: R-C-5)."""
    return ContactUpdate(
        **{
            GHL_WRITE_ATTRIBUTES[name]: value
            for name, value in changes.items()
            if name in GHL_WRITE_ATTRIBUTES
        }
    )


def profile_fingerprint(profile: Profile) -> str:
    """What `last_synced_fingerprint` and the echo guard store for a profile (R-C-3, R-LOOP-1)."""
    return fingerprint(profile)


def decide_ghl_changes(
    mode: SourceOfTruth,
    aloware: Profile,
    ghl: Profile,
    *,
    aloware_changed_at: datetime | None,
    ghl_changed_at: datetime | None,
) -> Profile:
    """The GHL profile fields to write for an Aloware contact change (R-C-2); {} = nothing to do.

    Only fields Aloware has a value for and GHL holds differently are candidates (an empty Aloware
    value never clears GHL). Then:
    - `ghl`: GHL owns the profile, so Aloware only fills fields GHL has empty;
    - `aloware`: Aloware's values are written;
    - `merge`: a field GHL has empty is filled; otherwise the newer change wins, Aloware's
      `updated_at` against GHL's `dateUpdated` (the finest times both systems give). A tie, or an
      Aloware change of unknown time, keeps GHL's value; a GHL contact of unknown time loses.
    The phone is never written: it is the person's key, changed in GHL only (R-C-1).
    """
    changes: Profile = {}
    aloware_newer = aloware_changed_at is not None and (
        ghl_changed_at is None or aloware_changed_at > ghl_changed_at
    )
    for name in PROFILE_FIELDS:
        value = aloware.get(name)
        current = ghl.get(name)
        if value is None or value == current:
            continue
        if current is None or mode == "aloware" or (mode == "merge" and aloware_newer):
            changes[name] = value
    return changes


@dataclass(frozen=True)
class PhoneChange:
    """What to do when the GHL contact's phone differs from its mapped Aloware contact's."""

    write: bool
    conflict: str | None = None


def decide_phone_change(
    mapping: MappingView | None, new_phone: str, holder_of_new_phone: str | None
) -> PhoneChange:
    """R-C-1 phone changes. `holder_of_new_phone` is the id of the Aloware contact that has the
    new number (None when nobody has it, or when the lookup was not needed).

    No mapping, or the mapping's phone is the new phone: a plain upsert. Otherwise the Lead API,
    keyed by phone, can only reach the mapped contact if it already has the new number; with the
    number free it would create a second contact, and with another contact on it it would
    overwrite somebody else — both are conflicts, flagged and not written.
    """
    if mapping is None or mapping.deleted_at is not None or mapping.aloware_contact_id is None:
        return PhoneChange(write=True)
    if mapping.phone is None or mapping.phone == new_phone:
        return PhoneChange(write=True)
    mapped = mapping.aloware_contact_id
    if holder_of_new_phone == mapped:
        return PhoneChange(write=True)
    if holder_of_new_phone is None:
        return PhoneChange(
            write=False,
            conflict=(
                f"conflict: phone changed in GHL from {mapping.phone} to {new_phone}; Aloware's Lead API "
                f"cannot change the number of Aloware contact {mapped} and would create a second "
                "contact, so nothing was written: change the number in Aloware"
            ),
        )
    return PhoneChange(
        write=False,
        conflict=(
            f"conflict: phone changed in GHL from {mapping.phone} to {new_phone}, but Aloware contact "
            f"{holder_of_new_phone} already has {new_phone} (mapped contact is {mapped}); nothing was "
            "written: merge or correct the contacts in Aloware"
        ),
    )


def ghl_event_time(event: ClaimedEvent) -> datetime | None:
    """When a GHL contact change happened: the webhook's `timestamp` (or the contact's
    `dateUpdated` in workflow payloads); None when neither is there (then no staleness check)."""
    payload = event.payload
    nested = payload.get("contact")
    updated = nested.get("dateUpdated") if isinstance(nested, Mapping) else None
    return (
        parse_iso8601(payload.get("timestamp"))
        or parse_iso8601(payload.get("dateUpdated"))
        or parse_iso8601(updated)
    )


def signals_time(event: ClaimedEvent) -> SignalsTime | None:
    """When a GHL contact event's owner and tags were true, for ordering list placements: its
    time, believed up to `MAX_CLOCK_AHEAD` after its receipt (break14 finding 3b: GHL's clock a
    minute fast must not let a late resend win), else its receipt; None when the event has no
    time (then it is never stale)."""
    at = ghl_event_time(event)
    if at is None:
        return None
    if event.received_at is not None:
        at = believed_time(at, event.received_at)
    return SignalsTime(at=at, received_at=event.received_at)


def describe_changes(changes: Profile) -> str:
    return ", ".join(sorted(changes))


# --- handlers ---------------------------------------------------------------------------------


def aloware_connector(ctx: HandlerContext) -> AlowareClient | None:
    return ctx.connectors.aloware if ctx.connectors is not None else None


def ghl_connector(ctx: HandlerContext) -> GhlClient | None:
    """GHL_LOCATION_ID's client: Aloware is one account, synced with the configured location."""
    return ctx.connectors.ghl if ctx.connectors is not None else None


def aloware_body(event: ClaimedEvent) -> Mapping[str, Any]:
    body = event.payload.get("body")
    return body if isinstance(body, Mapping) else {}


async def handle_ghl_contact_upsert(ctx: HandlerContext, event: ClaimedEvent) -> HandlerResult:
    """GHL `ContactCreate` / `ContactUpdate` (and `contact.created|updated|changed`) → Aloware:
    the contact (R-C-1), then its agent and power-dialer lists (R-AG-1…R-AG-4), which need the
    Aloware contact the first step creates. The lists step runs whatever the first decided (an
    unchanged profile may still carry new tags or a new owner) and costs no Aloware call when the
    contact's lists stay as they are."""
    result = await sync_ghl_contact(ctx, event)
    lists = await sync_contact_lists(
        ctx,
        event.entity_id or "",
        contact=event.payload,
        whole=is_native(event),
        signals_time=signals_time(event),
    )
    if lists is not None:
        result.entries.append(lists)
    return result


async def sync_ghl_contact(ctx: HandlerContext, event: ClaimedEvent) -> HandlerResult:
    """GHL `ContactCreate` / `ContactUpdate` (and `contact.created|updated|changed`) → Aloware (R-C-1).

    Effects: at most one Lead API write (`POST /webhook/forms`, force_update), preceded by a
    lookup by phone when the contact is not mapped yet or its phone changed (whose is the
    number?) and followed by one to learn the Aloware id; the mapping is upserted with the
    profile's fingerprint and the profile Aloware now holds is remembered as a possible echo.
    Skipped (no API call) when the contact has no valid phone, when the webhook is the echo of
    our own GHL write, when the profile is the one last synced, and — flagged as a conflict,
    nothing written — when the number is another mapped person's or a phone change cannot
    reach the mapped Aloware contact.
    """
    ctx.direction = GHL_TO_ALOWARE
    aloware = aloware_connector(ctx)
    if aloware is None:
        return skipped(event, GHL_TO_ALOWARE, ALOWARE_OFF)
    region = ctx.settings.default_phone_region
    contact_id = event.entity_id or ""
    profile = ghl_profile(event.payload, region)
    mappings = ContactMappings(ctx.db)
    event_at = ghl_event_time(event)
    mapping = await mappings.by_ghl_id(contact_id)
    await _see_ghl_webhook(mappings, mapping, event, profile, event_at)
    phone = profile.get("phone")
    if phone is None:
        if (
            mapping is not None
            and mapping.deleted_at is None
            and is_native(event)
            and not mapping.is_stale("ghl", event_at, event.received_at)
        ):
            # GHL's whole contact, with no number: the change is applied (nothing to write), so
            # an older event still carrying a number (a replayed dead letter) is stale
            # (break14e finding 7). A stale one (older than a change already applied) decides
            # nothing: the number a later change gave the contact keeps its claim.
            # GHL is asked before the watermark moves: a retry after a failed read must ask again.
            claimed = mapping.phone if mapping.aloware_contact_id is None else None
            gone = claimed if claimed is not None and not await _still_on(ctx, contact_id, claimed) else None
            await mappings.mark_applied(contact_id, "ghl", event_at, received_at=event.received_at)
            if gone is not None:
                await mappings.release_claim(contact_id, gone)  # its number is gone too
        return skipped(event, GHL_TO_ALOWARE, NO_PHONE)
    digest = profile_fingerprint(profile)
    echoes = EchoGuard(ctx.db, ctx.settings.echo_ttl_seconds)
    provisional = provisional_entity(phone)  # our create's echo may beat the create's answer
    if await echoes.is_echo("ghl", contact_id, profile, by=str(event.id), provisional=provisional):
        await settle_echo(mappings, mapping, "ghl", event, event_at, digest)
        return skipped(event, GHL_TO_ALOWARE, ECHO)
    if mapping is not None and mapping.deleted_at is not None:
        # A late or replayed change of a contact GHL deleted since: R-C-4, it is not synced again.
        return skipped(event, GHL_TO_ALOWARE, f"GHL contact {contact_id} was deleted")
    if mapping is not None and mapping.is_stale("ghl", event_at, event.received_at):
        return skipped(event, GHL_TO_ALOWARE, STALE)
    if mapping is not None and mapping.deleted_at is None and mapping.fingerprint == digest:
        await mappings.mark_applied(contact_id, "ghl", event_at, received_at=event.received_at)
        return skipped(event, GHL_TO_ALOWARE, UNCHANGED)

    started = utcnow()
    if mapping is not None and mapping.deleted_at is None and mapping.aloware_contact_id is not None:
        # Read before the write (not after it): what the contact holds besides what we write is
        # what its echo will carry; a read after the write could include an Aloware user's change
        # made meanwhile, and remembering that would swallow it as our echo (race B, issue 14).
        before = await aloware.find_contact_by_phone(phone)
        holder: str | None = None
        if mapping.phone is not None and mapping.phone != phone:
            holder = before.id if before is not None else None
        decision = decide_phone_change(mapping, phone, holder)
        if not decision.write:
            return skipped(event, GHL_TO_ALOWARE, decision.conflict or "conflict")
        if before is not None and before.id != mapping.aloware_contact_id:
            # The number is on another Aloware contact now (an agent moved it there): writing would
            # overwrite that person's profile (break14e finding 6).
            return skipped(
                event,
                GHL_TO_ALOWARE,
                f"conflict: {phone} is on Aloware contact {before.id}, not on the mapped "
                f"{mapping.aloware_contact_id}; nothing was written",
            )
    else:
        # A first sync must not take over an Aloware contact that is another GHL contact's (GHL
        # may allow duplicates): the Lead API would overwrite that person's profile, and the
        # mapping's unique index would refuse the second owner on every retry.
        before = await aloware.find_contact_by_phone(phone)
        owner = await mappings.by_aloware_id(before.id) if before is not None else None
        if owner is not None and owner.deleted_at is None and owner.ghl_contact_id != contact_id:
            return skipped(
                event,
                GHL_TO_ALOWARE,
                f"conflict: Aloware contact {owner.aloware_contact_id} on {phone} is already mapped to "
                f"GHL contact {owner.ghl_contact_id}; nothing was written",
            )
        # Nor take over the number while another GHL contact's first write to it is running (or
        # failed): both would write the one Aloware contact and the mapping would move to the
        # later one silently (break14d finding 4). The serial case above flags it the same way.
        claim = await _live_claim(ctx, mappings, phone, other_than=contact_id)
        if claim is not None:
            return skipped(
                event,
                GHL_TO_ALOWARE,
                f"conflict: {phone} is claimed by GHL contact {claim.ghl_contact_id}, whose first sync "
                "to Aloware has not completed; nothing was written",
            )
        # A contact an earlier attempt of ours may have created (its lookup failed): found now,
        # its unconsumed provisional fingerprint goes (as on GHL's side, break14b finding 2).
        if before is not None:
            await echoes.forget_provisional("aloware", provisional, profile)

    if mapping is None or (mapping.aloware_contact_id is None and mapping.phone != phone):
        # Mapped (GHL id and phone) before the write: Aloware's webhook about it may reach another
        # worker before this one learns the Aloware id (our echo, taken early), and must find this
        # person by the mapping, not search GHL (whose index may not have the contact yet) and
        # create a second GHL contact (found by the soak with echoes, issue 14). Until a write
        # succeeds the row holds only that claim, so it follows the contact's number: an earlier
        # write that never succeeded must not leave the old number pointing at this contact
        # (break14c B1).
        await mappings.upsert(
            ghl_contact_id=contact_id, keys=PersonKeys(phone, profile.get("email")), direction=GHL_TO_ALOWARE
        )
    written = await _write_lead(aloware, echoes, phone, profile, before, region)
    await mappings.upsert(
        ghl_contact_id=contact_id,
        aloware_contact_id=written,
        keys=PersonKeys(phone, profile.get("email")),
        direction=GHL_TO_ALOWARE,
        fingerprint=digest,
    )
    await mappings.mark_applied(contact_id, "ghl", event_at, received_at=event.received_at)
    entry = success(
        event,
        GHL_TO_ALOWARE,
        f"upserted Aloware contact {written} through the Lead API",
        target_id=written,
    )
    entry.started_at = started
    return HandlerResult(entries=[entry])


async def _still_on(ctx: HandlerContext, contact_id: str, phone: str) -> bool:
    """Whether GHL shows the contact on `phone` now. A no-phone event is judged by its own time,
    and a copy of an applied one (same time, received later) counts as newer; but the number may
    have come back since in an event whose write failed (no watermark moved): GHL decides before a
    claim is released (break15 finding 5)."""
    ghl = ghl_connector(ctx)
    if ghl is None:
        return False
    current = await ghl.get_contact(contact_id)
    return current is not None and normalize_phone(current.phone, ctx.settings.default_phone_region) == phone


async def _live_claim(
    ctx: HandlerContext, mappings: ContactMappings, phone: str, *, other_than: str
) -> MappingView | None:
    """Another GHL contact's claim on the number that still holds: GHL is asked whether the
    claimer still exists with this number; a claim left by a first sync that never completed,
    whose contact was deleted since or given another number, is released rather than block the
    number's new owner for good (break14e findings 1 and 5)."""
    claim = await mappings.claim_on_phone(phone, other_than=other_than)
    ghl = ghl_connector(ctx)
    if claim is None or ghl is None:
        return claim
    claimer = await ghl.get_contact(claim.ghl_contact_id)
    if claimer is not None and normalize_phone(claimer.phone, ctx.settings.default_phone_region) == phone:
        return claim
    await mappings.release_claim(claim.ghl_contact_id, phone)
    return await mappings.claim_on_phone(phone, other_than=other_than)


async def _write_lead(
    aloware: AlowareClient,
    echoes: EchoGuard,
    phone: str,
    profile: Profile,
    before: AlowareContact | None,
    region: str,
) -> str:
    """One Lead API write of `profile` to the Aloware contact on `phone` (`before`: that contact
    as read just before, None when there is none and the write creates it); returns its id.

    The fingerprint of the echo is remembered before the write, so Aloware's webhook about it is
    ours even when another worker takes it before this one is done (break14b finding 5): for an
    existing contact, what it held overlaid with what we write (the Lead API writes the fields it
    is given and ignores empty ones); for a new one, under the provisional entity (the phone),
    settled to the id the lookup after the write finds. A write certainly not made forgets it."""
    entity = provisional_entity(phone) if before is None else before.id
    expected = profile if before is None else {**_aloware_contact_profile(before, region), **profile}
    await echoes.remember("aloware", entity, expected)
    try:
        await aloware.upsert_lead(phone, fields=lead_fields(profile))
    except Exception as exc:
        if write_not_made(exc):
            await echoes.forget("aloware", entity, expected)
        raise
    if before is not None:
        return before.id
    made = await aloware.find_contact_by_phone(phone)
    if made is None:
        raise RetryableError(f"aloware: no contact on {phone} right after the Lead API write")
    answered = _aloware_contact_profile(made, region)
    await echoes.settle_provisional("aloware", entity, made.id, answered, written=expected)
    return made.id


async def _see_ghl_webhook(
    mappings: ContactMappings,
    mapping: MappingView | None,
    event: ClaimedEvent,
    profile: Profile,
    event_at: datetime | None,
) -> None:
    """Record GHL's own word on the contact, first of all (even when nothing is written to
    Aloware): a native webhook carries the whole contact but its timezone; a workflow webhook may
    carry anything, so then the last-seen profile is forgotten rather than trusted.

    The sighting is dated by when the webhook reached us: its age is measured against our clock
    (GHL_PROFILE_TRUST), and so are the API answers that may replace it, so a GHL clock running
    ahead can neither keep it trusted longer nor make it outrank what GHL answers us later. GHL's
    own time stays its `changed_at`; a webhook about an older state than the sighting held (by
    GHL's clock on both sides: a late delivery) does not replace it.
    """
    known = mapping.ghl_seen if mapping is not None and mapping.deleted_at is None else None
    if (
        known is not None
        and known.changed_at is not None
        and event_at is not None
        and event_at < known.changed_at
    ):
        return
    full = event.event_type in FULL_CONTACT_EVENTS
    await mappings.see_ghl_profile(
        event.entity_id or "",
        profile if full else None,
        changed_at=event_at or event.received_at,
        seen_at=event.received_at,
        unseen=NOT_IN_WEBHOOKS,
    )


async def settle_echo(
    mappings: ContactMappings,
    mapping: MappingView | None,
    side: Side,
    event: ClaimedEvent,
    event_at: datetime | None,
    digest: str,
) -> None:
    """The echo of our write is `side`'s latest word on the person (R-LOOP-1 with R-C-3): its
    time becomes the watermark, so an older change delivered after it is stale, and its profile
    the last synced one, so a second webhook for the same write (GHL may send two, with the same
    fields) is unchanged rather than a change to write back. A stale echo changes nothing."""
    if mapping is None or mapping.deleted_at is not None:
        return
    if mapping.is_stale(side, event_at, event.received_at):
        return
    await mappings.set_fingerprint(mapping.ghl_contact_id, digest)
    await mappings.mark_applied(mapping.ghl_contact_id, side, event_at, received_at=event.received_at)


def _aloware_contact_profile(contact: AlowareContact, region: str) -> Profile:
    return aloware_profile(contact.model_dump(), region)


def ghl_contact_profile(contact: Contact, region: str) -> Profile:
    return ghl_profile(contact.model_dump(by_alias=True), region)


async def retire_deleted_ghl_contact(ctx: HandlerContext, ghl_contact_id: str) -> str | None:
    """What R-C-4 does once a GHL contact is gone: its mapped Aloware contact off every
    power-dialer list (nothing in Aloware is deleted), the mapping marked deleted (history kept)
    and the ledger's records of creating the contact retired. Returns what was done to Aloware
    (None when nothing: not mapped, already deleted, or Aloware not configured)."""
    mappings = ContactMappings(ctx.db)
    mapping = await mappings.by_ghl_id(ghl_contact_id)
    aloware = aloware_connector(ctx)
    done: str | None = None
    live = mapping is not None and mapping.deleted_at is None
    if live and mapping is not None and mapping.aloware_contact_id is not None and aloware is not None:
        target = mapping.aloware_contact_id
        known = await aloware.remove_from_all_lists(target)
        await forget_memberships(ctx.db, ghl_contact_id)
        done = (
            f"removed Aloware contact {target} from all power-dialer lists"
            if known
            else f"Aloware does not know contact {target} (so it is on no list)"
        )
    await mappings.mark_deleted(ghl_contact_id)
    return done


async def ghl_contact_gone(ctx: HandlerContext, ghl: GhlClient, ghl_contact_id: str) -> bool:
    """GHL refused a write on this contact: whether it is because the contact was deleted (GHL no
    longer knows it), in which case it is retired as R-C-4 says — its `ContactDelete` webhook may
    come later, or never — so that the person's events resolve a live contact again instead of
    being dead-lettered on the dead one."""
    if await ghl.get_contact(ghl_contact_id) is not None:
        return False
    await retire_deleted_ghl_contact(ctx, ghl_contact_id)
    return True


async def handle_ghl_contact_delete(ctx: HandlerContext, event: ClaimedEvent) -> HandlerResult:
    """GHL `ContactDelete` (and `contact.deleted`) → Aloware (R-C-4).

    Effects: the mapped Aloware contact is removed from every power-dialer list (nothing in
    Aloware is deleted) and the mapping is marked `deleted_at`, keeping its history. Skipped when
    the contact is not mapped to an Aloware contact, or the mapping is already marked (a replay).
    """
    ctx.direction = GHL_TO_ALOWARE
    contact_id = event.entity_id or ""
    mappings = ContactMappings(ctx.db)
    mapping = await mappings.by_ghl_id(contact_id)
    if mapping is None or mapping.aloware_contact_id is None:
        await mappings.mark_deleted(contact_id)  # also retires the ledger's record of creating it
        return skipped(event, GHL_TO_ALOWARE, NOT_MAPPED)
    if mapping.deleted_at is not None:
        return skipped(event, GHL_TO_ALOWARE, "already deleted")
    if aloware_connector(ctx) is None:
        return skipped(event, GHL_TO_ALOWARE, ALOWARE_OFF)
    started = utcnow()
    done = await retire_deleted_ghl_contact(ctx, contact_id)
    message = f"{done}; mapping marked deleted"
    entry = success(event, GHL_TO_ALOWARE, message, target_id=mapping.aloware_contact_id)
    entry.started_at = started
    return HandlerResult(entries=[entry])


async def handle_ghl_contact_tags(ctx: HandlerContext, event: ClaimedEvent) -> HandlerResult:
    """GHL `ContactTagUpdate` (and the tag workflow events) → the contact's agent and lists.

    Tags say which power-dialer lists a contact belongs on, and may name its agent (R-AG-1,
    R-AG-2); the profile fields R-C-1 syncs arrive with `ContactUpdate`. A native event carries
    every tag of the contact; a workflow event that does not is completed by reading the contact.
    """
    ctx.direction = GHL_TO_ALOWARE
    entry = await sync_contact_lists(
        ctx,
        event.entity_id or "",
        contact=event.payload,
        whole=is_native(event),
        signals_time=signals_time(event),
    )
    return HandlerResult(entries=[entry]) if entry is not None else skipped(event, GHL_TO_ALOWARE, NO_AGENTS)


def is_native(event: ClaimedEvent) -> bool:
    """A native GHL webhook (`ContactUpdate`, …) carries the whole contact; a workflow one
    (`contact.updated`, `tag.added`, …) carries what its workflow was set up to send."""
    return "." not in event.event_type


def register_handlers(registry: HandlerRegistry) -> None:
    """The GHL side of the contact flows of §6.1 (Aloware's side is `contacts_aloware`; GHL
    `ContactDndUpdate` belongs to opt-out, §6.4)."""
    registry.register(
        "ghl", "ContactCreate", "ContactUpdate", "contact.created", "contact.updated", "contact.changed"
    )(handle_ghl_contact_upsert)
    registry.register("ghl", "ContactDelete", "contact.deleted")(handle_ghl_contact_delete)
    registry.register(
        "ghl", "ContactTagUpdate", "tag.added", "tag.removed", "contact.tag.added", "contact.tag.removed"
    )(handle_ghl_contact_tags)
