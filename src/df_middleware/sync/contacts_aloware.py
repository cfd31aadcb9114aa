"""Aloware → GHL contact sync (SPEC §6.1: R-C-2, R-ID-2, with R-IDEM-2, R-LOOP-1 and R-AG-2).

Aloware's `Contact Created` / `Contact Updated` find the person's GHL contact (R-ID-2: mapping,
then phone, then email) and write only what CONTACT_SOURCE_OF_TRUTH gives Aloware, or create the
contact once through the effect ledger when GHL has nobody. The shared vocabulary — profiles,
fingerprints, echoes, watermarks — is `sync/contacts.py`'s, whose docstring explains it.

A GHL contact the service makes for a dialer contact is owed the consents in force for its number
(as DND) and its agent's power-dialer lists (R-AG-2): `sync/made_contacts`, run on every attempt of
the event that made it.

A contact first heard of already on do-not-call (`is_dnc` in its `Contact Created`, or in the first
event of it that reaches us) is a voice decision like `Contact DNC Updated` (R-OPT-6): recorded
before the contact is placed anywhere, so it joins no list, and told to GHL (Call DND) once its GHL
contact exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from df_middleware.connectors.ghl import GhlClient
from df_middleware.connectors.ghl_models import Contact, ContactUpsert
from df_middleware.connectors.http import RemoteNotFound, write_not_made
from df_middleware.consent.decisions import Channel
from df_middleware.db.types import utcnow
from df_middleware.errors import RetryableError
from df_middleware.sync.contacts import (
    ALOWARE_TO_GHL,
    ECHO,
    GHL_OFF,
    GHL_WRITE_ATTRIBUTES,
    NO_KEYS,
    STALE,
    UNCHANGED,
    Profile,
    aloware_body,
    aloware_profile,
    decide_ghl_changes,
    describe_changes,
    ghl_connector,
    ghl_contact_profile,
    ghl_profile,
    ghl_update,
    profile_fingerprint,
    settle_echo,
)
from df_middleware.sync.dnc import DncDecision, decide_voice_dnc, is_dnc_of, tell_voice_dnc
from df_middleware.sync.echoes import EchoGuard, provisional_entity
from df_middleware.sync.effects import EffectLedger, skipped, success
from df_middleware.sync.identity import (
    ContactMappings,
    GhlSighting,
    MappingView,
    PersonKeys,
    resolve_ghl_contact,
)
from df_middleware.sync.made_contacts import (
    contact_it_made,
    create_key,
    place_on_lists,
    tell_consents_in_force,
)
from df_middleware.sync.registry import (
    ClaimedEvent,
    HandlerContext,
    HandlerRegistry,
    HandlerResult,
)
from df_middleware.sync.sequences import apply_sequence
from df_middleware.timestamps import parse_iso8601


async def handle_aloware_contact(ctx: HandlerContext, event: ClaimedEvent) -> HandlerResult:
    """Aloware `Contact Created` / `Contact Updated`: the contact → GHL (R-C-2); a GHL contact
    this event made gets what it is owed (`sync/made_contacts`: consents in force as DND, its
    lists, R-AG-2); then the contact's sequence by its list status (R-AG-6, when
    ENABLE_ALOWARE_SEQUENCES). A contact first seen on do-not-call is decided first (R-OPT-6).

    The list status is not part of the synced profile, so the sequence step runs when the contact
    step found nothing to write too (unchanged, echo) — but never for a stale event, whose status
    is older than the one applied, nor for a contact whose GHL side was deleted."""
    dnc = await _dnc_at_first_sight(ctx, event)
    result = await sync_aloware_contact(ctx, event)
    if dnc is not None:
        result.entries.insert(0, dnc.decided)
        result.entries.extend(await tell_voice_dnc(ctx, event, dnc))
    made = await contact_it_made(ctx, event)
    if made is not None:
        phone = aloware_profile(aloware_body(event), ctx.settings.default_phone_region).get("phone")
        told: frozenset[Channel] = frozenset({"voice"}) if dnc is not None else frozenset()
        result.entries.extend(await tell_consents_in_force(ctx, event, made, phone, told=told))
        placed = await place_on_lists(ctx, made)
        if placed is not None:
            result.entries.append(placed)
    if not ctx.settings.enable_aloware_sequences:
        return result
    mapping = await ContactMappings(ctx.db).by_aloware_id(event.entity_id or "")
    event_at = parse_iso8601(aloware_body(event).get("updated_at"))
    # A retry of the event that set the watermark is "stale" to itself, yet its sequence step may
    # be what failed (break14 finding 2): only another, newer event's watermark makes it stale.
    own = mapping is not None and mapping.applied_by("aloware", event_at, event.received_at)
    if own or not any(e.message == STALE for e in result.entries):
        live = mapping is not None and mapping.deleted_at is None
        result.entries.extend(
            await apply_sequence(ctx, event, mapping.ghl_contact_id if live and mapping else None)
        )
    return result


async def _dnc_at_first_sight(ctx: HandlerContext, event: ClaimedEvent) -> DncDecision | None:
    """A contact we first hear of already on do-not-call (`is_dnc` true in its `Contact Created`,
    or in the first event of it that reaches us, its creation lost or sent before the webhook
    was set up: break14d finding 1): the voice decision, recorded before the contact is synced so
    that no list step places it (break14c A4), dated by the contact's `updated_at` like any DNC
    change (an older one never overrides a newer lift, R-OPT-2). A mapped contact's later
    `Contact Updated` repeats a state whose changes Aloware reports by `Contact DNC Updated`, and
    an absent DNC decides nothing."""
    if is_dnc_of(aloware_body(event).get("is_dnc")) is not True:
        return None
    if event.event_type != "Contact Created":
        mapping = await ContactMappings(ctx.db).by_aloware_id(event.entity_id or "")
        if mapping is not None:
            return None
    decision = await decide_voice_dnc(ctx, event)
    return decision if isinstance(decision, DncDecision) else None


async def sync_aloware_contact(ctx: HandlerContext, event: ClaimedEvent) -> HandlerResult:
    """Aloware `Contact Created` / `Contact Updated` → GHL, by CONTACT_SOURCE_OF_TRUTH (R-C-2).

    Effects: the person's GHL contact is found (R-ID-2) or created through `POST /contacts/upsert`
    (a keyed effect, `ghl:contact-for-aloware:<id>`); otherwise at most one `PUT /contacts/{id}`
    with the fields `decide_ghl_changes` picks. The mapping is upserted with the Aloware profile's
    fingerprint and the GHL profile after the write is remembered as a possible echo. Skipped (no
    API call) for echoes of our Lead API writes, profiles last synced, contacts with neither
    phone nor email, and contacts whose GHL side was deleted (R-C-4: deletion in GHL stands).
    """
    ctx.direction = ALOWARE_TO_GHL
    ghl = ghl_connector(ctx)
    if ghl is None:
        return skipped(event, ALOWARE_TO_GHL, GHL_OFF)
    region = ctx.settings.default_phone_region
    body = aloware_body(event)
    aloware_id = event.entity_id or ""
    profile = aloware_profile(body, region)
    mappings = ContactMappings(ctx.db)
    mapping = await mappings.by_aloware_id(aloware_id)
    digest = profile_fingerprint(profile)
    event_at = parse_iso8601(body.get("updated_at"))
    echoes = EchoGuard(ctx.db, ctx.settings.echo_ttl_seconds)
    phone = profile.get("phone")
    provisional = provisional_entity(phone) if phone else None  # our Lead API create's echo, early
    if await echoes.is_echo("aloware", aloware_id, profile, by=str(event.id), provisional=provisional):
        await settle_echo(mappings, mapping, "aloware", event, event_at, digest)
        return skipped(event, ALOWARE_TO_GHL, ECHO)
    keys = PersonKeys(profile.get("phone"), profile.get("email"))
    if keys.empty:
        return skipped(event, ALOWARE_TO_GHL, NO_KEYS)
    if mapping is not None and mapping.deleted_at is not None:
        return skipped(event, ALOWARE_TO_GHL, f"GHL contact {mapping.ghl_contact_id} was deleted")
    if mapping is not None and mapping.is_stale("aloware", event_at, event.received_at):
        return skipped(event, ALOWARE_TO_GHL, STALE)
    if mapping is not None and mapping.fingerprint == digest:
        await mappings.mark_applied(
            mapping.ghl_contact_id, "aloware", event_at, received_at=event.received_at
        )
        return skipped(event, ALOWARE_TO_GHL, UNCHANGED)

    started = utcnow()
    known = await _last_seen_ghl_profile(ctx, mappings, mapping, profile)
    if mapping is not None and known is not None:
        # The mapped contact as last seen: decided without a GET (R-PERF-3).
        target = GhlTarget(mapping.ghl_contact_id, "mapping", known.profile, known.changed_at)
    else:
        found = await _find_ghl_target(ctx, event, ghl, mappings, keys)
        if found is None:
            return await _create_ghl_contact(ctx, event, ghl, profile, digest, started)
        if isinstance(found, HandlerResult):
            return found
        target = found
        phone = profile.get("phone")
        if phone:
            # Found by a search, maybe the contact an earlier run of ours created without an
            # answer: its provisional echo fingerprint, if left, goes (break14b finding 2).
            written = ghl_profile(_ghl_create_body(ghl, profile).model_dump(by_alias=True), region)
            await echoes.forget_provisional("ghl", provisional_entity(phone), written)
    ghl_contact_id = target.ghl_contact_id
    changes = decide_ghl_changes(
        ctx.settings.contact_source_of_truth,
        profile,
        target.profile,
        aloware_changed_at=event_at or event.received_at,
        ghl_changed_at=target.changed_at,
    )
    latest_profile, latest_changed_at = target.profile, target.changed_at
    if changes:
        try:
            updated = await ghl.update_contact(ghl_contact_id, ghl_update(changes))
        except RemoteNotFound:
            await mappings.see_ghl_profile(ghl_contact_id, None)
            return skipped(event, ALOWARE_TO_GHL, f"GHL contact {ghl_contact_id} not found")
        latest_profile = ghl_contact_profile(updated, region)
        latest_changed_at = parse_iso8601(updated.date_updated)
        await echoes.remember("ghl", ghl_contact_id, latest_profile)
    await mappings.upsert(
        ghl_contact_id=ghl_contact_id,
        aloware_contact_id=aloware_id,
        keys=keys,
        direction=ALOWARE_TO_GHL,
        fingerprint=digest,
    )
    if changes or known is None:  # GHL just answered with the contact: remember it
        await mappings.see_ghl_profile(
            ghl_contact_id, latest_profile, changed_at=latest_changed_at, seen_at=started
        )
    await mappings.mark_applied(ghl_contact_id, "aloware", event_at, received_at=event.received_at)
    if not changes:
        return skipped(
            event,
            ALOWARE_TO_GHL,
            f"GHL contact {ghl_contact_id} already up to date (source of truth: "
            f"{ctx.settings.contact_source_of_truth})",
        )
    entry = success(
        event,
        ALOWARE_TO_GHL,
        f"updated GHL contact {ghl_contact_id} (found by {target.via}): {describe_changes(changes)}",
        target_id=ghl_contact_id,
    )
    entry.started_at = started
    return HandlerResult(entries=[entry])


async def _last_seen_ghl_profile(
    ctx: HandlerContext, mappings: ContactMappings, mapping: MappingView | None, incoming: Profile
) -> GhlSighting | None:
    """The GHL profile last seen, when it can decide this change without reading the contact:
    trusted (`ContactMappings.trusted_ghl_profile`), showing every field the change carries, and
    not in `merge` mode, which compares change times and needs GHL's own `dateUpdated` (a
    webhook gives only when it reached us)."""
    if mapping is None or ctx.settings.contact_source_of_truth == "merge":
        return None
    known = await mappings.trusted_ghl_profile(mapping)
    return known if known is not None and known.decides(incoming) else None


@dataclass(frozen=True)
class GhlTarget:
    """The GHL contact an Aloware change goes to, its profile, and when GHL says that profile
    last changed (what R-C-2's `merge` compares)."""

    ghl_contact_id: str
    via: str
    profile: Profile
    changed_at: datetime | None


async def _find_ghl_target(
    ctx: HandlerContext, event: ClaimedEvent, ghl: GhlClient, mappings: ContactMappings, keys: PersonKeys
) -> GhlTarget | HandlerResult | None:
    """Resolve the Aloware contact's GHL contact (R-ID-2) and read it: the target, a skip (the
    contact is another person's, or gone), or None when GHL has nobody with these keys."""
    aloware_id = event.entity_id or ""
    resolved = await resolve_ghl_contact(mappings, ghl, keys, aloware_contact_id=aloware_id)
    if resolved is None:
        return None
    owner = await mappings.by_ghl_id(resolved.ghl_contact_id)
    if owner is not None and owner.deleted_at is None and owner.aloware_contact_id not in (None, aloware_id):
        # Found by phone or email, but that GHL contact is another Aloware contact's (a phone
        # change in GHL, or two Aloware contacts sharing an email): never remap it silently.
        return skipped(
            event,
            ALOWARE_TO_GHL,
            f"conflict: GHL contact {resolved.ghl_contact_id} (found by {resolved.via}) is mapped to "
            f"Aloware contact {owner.aloware_contact_id}, not {aloware_id}; nothing was written",
        )
    if resolved.via != "mapping":  # found in GHL: maybe by an interrupted create of ours
        await EffectLedger(ctx.db, event).settle_found(create_key(aloware_id), "ghl", resolved.ghl_contact_id)
    current = resolved.contact or await ghl.get_contact(resolved.ghl_contact_id)
    if current is None:
        return skipped(event, ALOWARE_TO_GHL, f"GHL contact {resolved.ghl_contact_id} not found")
    region = ctx.settings.default_phone_region
    return GhlTarget(
        current.id, resolved.via, ghl_contact_profile(current, region), parse_iso8601(current.date_updated)
    )


def _ghl_create_body(ghl: GhlClient, profile: Profile) -> ContactUpsert:
    """The `POST /contacts/upsert` body that creates the Aloware profile's person in GHL."""
    fields = {GHL_WRITE_ATTRIBUTES[n]: v for n, v in profile.items() if n in GHL_WRITE_ATTRIBUTES}
    return ContactUpsert(location_id=ghl.location_id, phone=profile.get("phone"), **fields)


async def _create_ghl_contact(
    ctx: HandlerContext,
    event: ClaimedEvent,
    ghl: GhlClient,
    profile: Profile,
    digest: str,
    started: datetime,
) -> HandlerResult:
    """GHL has nobody with the Aloware contact's keys: create it once (R-IDEM-2) and map it."""
    aloware_id = event.entity_id or ""
    region = ctx.settings.default_phone_region
    created: list[Contact] = []
    upsert = _ghl_create_body(ghl, profile)
    echoes = EchoGuard(ctx.db, ctx.settings.echo_ttl_seconds)
    phone = profile.get("phone")
    provisional = provisional_entity(phone) if phone else None

    written = ghl_profile(upsert.model_dump(by_alias=True), region)

    async def create() -> str | None:
        if provisional is not None:
            # Before the write: GHL's ContactCreate may reach another worker before the answer.
            await echoes.remember("ghl", provisional, written)
        try:
            answer = await ghl.upsert_contact(upsert)
        except Exception as exc:
            if provisional is not None and write_not_made(exc):
                await echoes.forget_provisional("ghl", provisional, written)
            raise
        created.append(answer.contact)
        return answer.contact.id

    async def find_existing() -> str | None:
        found = await ghl.find_contact(phone=profile.get("phone"), email=profile.get("email"))
        return found.id if found is not None else None

    ledger = EffectLedger(ctx.db, event)
    outcome = await ledger.perform(create_key(aloware_id), "ghl", create, find_existing=find_existing)
    if outcome.target_id is None:
        raise RetryableError(f"ghl: contact upsert for Aloware contact {aloware_id} returned no id")
    if created:
        answered = ghl_contact_profile(created[0], region)
        if provisional is not None:
            await echoes.settle_provisional("ghl", provisional, outcome.target_id, answered, written=written)
        else:
            await echoes.remember("ghl", outcome.target_id, answered)
    elif provisional is not None:  # made earlier, or found after a lost answer: no echo to expect
        await echoes.forget_provisional("ghl", provisional, written)
    await ContactMappings(ctx.db).upsert(
        ghl_contact_id=outcome.target_id,
        aloware_contact_id=aloware_id,
        keys=PersonKeys(profile.get("phone"), profile.get("email")),
        direction=ALOWARE_TO_GHL,
        fingerprint=digest,
    )
    mappings = ContactMappings(ctx.db)
    if created:
        contact = created[0]
        await mappings.see_ghl_profile(
            outcome.target_id,
            ghl_contact_profile(contact, region),
            changed_at=parse_iso8601(contact.date_updated),
            seen_at=started,
        )
    await mappings.mark_applied(
        outcome.target_id,
        "aloware",
        parse_iso8601(aloware_body(event).get("updated_at")),
        received_at=event.received_at,
    )
    entry = success(
        event,
        ALOWARE_TO_GHL,
        f"created GHL contact {outcome.target_id} for Aloware contact {aloware_id}",
        target_id=outcome.target_id,
    )
    entry.started_at = started
    return HandlerResult(entries=[entry], effects=list(ledger.performed))


def register_handlers(registry: HandlerRegistry) -> None:
    """Aloware's side of the contact flows of §6.1."""
    registry.register("aloware", "Contact Created", "Contact Updated")(handle_aloware_contact)
