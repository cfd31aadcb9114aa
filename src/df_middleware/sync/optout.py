"""SMS consent from what people text, told to GHL (R-OPT-1…R-OPT-3; issue 11, first flows).

A person's inbound text (`message.received`) whose whole body is a consent keyword, and Verity's
own `optout.stop` / `optout.help` events (which count the same, R-OPT-1), become a consent change
of source `texting`, timed by the text's own timestamp. The texting handler calls
`consent_change_of` and `record_consent` *before* it records the text in GHL: the decision is a
local write that cannot wait on GHL, and from the moment it is committed every send to that
number is refused (`consent.store.sms_allowed`, asked at send time; one person's events share the
`phone:` ordering key, so an agent's send queued after the STOP runs after it). The text itself is
still recorded in the GHL conversation (R-OPT-3), and then the GHL contact's
`dndSettings.SMS.status` is set (`active` for an opt-out, `inactive` for an opt-in) by
`tell_ghl_sms_dnd`, so the next agent who opens the contact sees it.

The decision rules (who may lift what, which event is newer) are `consent.decisions`'; this module
only turns events into changes and tells GHL.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Literal

from sqlalchemy import select

from df_middleware.connectors.ghl import GhlClient
from df_middleware.connectors.ghl_models import ContactUpdate, DndChannel
from df_middleware.connectors.http import RemoteNotFound
from df_middleware.consent.decisions import OPTED_IN, OPTED_OUT, ConsentChange, decision_time
from df_middleware.consent.keywords import KeywordMatch, classify_keyword
from df_middleware.consent.sending import send_sms
from df_middleware.consent.store import ConsentOutcome, ConsentStore
from df_middleware.db.models import SyncEffect
from df_middleware.db.types import utcnow
from df_middleware.errors import OptedOut
from df_middleware.sync.call_lists import forget_memberships
from df_middleware.sync.echoes import EchoGuard, dnd_entity
from df_middleware.sync.effects import EffectLedger, EffectMaybeDone, skipped, success
from df_middleware.sync.identity import ContactMappings
from df_middleware.sync.registry import ClaimedEvent, HandlerContext, SyncLogEntry
from df_middleware.texting_payload import TextingEvent
from df_middleware.timestamps import parse_iso8601

INTERNAL = "internal"
TEXTING_TO_GHL = "texting_to_ghl"
GHL_TO_TEXTING = "ghl_to_texting"
TEXTING_TO_ALOWARE = "texting_to_aloware"
#: Effect keys of HELP replies: `verity:help-reply:<E.164>:<event id>`.
HELP_REPLY_PREFIX = "verity:help-reply:"
#: A number gets at most one HELP reply in this window (R-OPT-3).
HELP_REPLY_WINDOW = timedelta(hours=24)
#: Verity's own consent events: they count as the keyword whatever the body says (R-OPT-1).
VERITY_CONSENT_EVENTS: dict[str, KeywordMatch] = {
    "optout.stop": KeywordMatch("stop", "STOP"),
    "optout.help": KeywordMatch("help", "HELP"),
}


def keyword_of(event_type: str, body: str | None) -> KeywordMatch | None:
    """The consent keyword an inbound texting event carries: Verity's `optout.*` events by their
    type, a `message.received` by its whole body (R-OPT-1), else None."""
    verity = VERITY_CONSENT_EVENTS.get(event_type.lower())
    if verity is not None:
        return verity
    if event_type.lower() == "message.received":
        return classify_keyword(body)
    return None


def consent_change_of(
    event: ClaimedEvent, texting: TextingEvent, match: KeywordMatch | None
) -> ConsentChange | None:
    """The SMS consent change an inbound text makes, given its keyword (`keyword_of`): STOP
    family → opted out, START family → opted in (source `texting`, timed by the text's own
    timestamp, else its receipt); None for an ordinary message, a HELP request, or a sender
    whose number is not valid."""
    if match is None or match.kind == "help" or texting.from_number is None:
        return None
    return ConsentChange(
        channel="sms",
        phone=texting.from_number,
        status=OPTED_OUT if match.kind == "stop" else OPTED_IN,
        source="texting",
        event_at=decision_time(parse_iso8601(texting.timestamp), event.received_at),
        received_at=event.received_at,
        reason=match.kind.upper(),
        keyword=match.keyword,
        message_id=texting.message_id,
    )


#: How a decision reads in sync_log, by channel and status; and the entity type of its row.
_SAID: dict[tuple[str, str], str] = {
    ("sms", OPTED_OUT): "opted out of SMS",
    ("sms", OPTED_IN): "opted in to SMS",
    ("voice", OPTED_OUT): "on voice DNC",
    ("voice", OPTED_IN): "off voice DNC",
}
_ENTITY_TYPES = {"sms": "optout", "voice": "dnc"}


async def record_consent(
    ctx: HandlerContext, event: ClaimedEvent, change: ConsentChange
) -> tuple[ConsentOutcome, SyncLogEntry]:
    """Apply the change to its channel's registry (R-OPT-2) and say what happened, in one
    sync_log row."""
    outcome = await ConsentStore(ctx.db).apply(change)
    if outcome.decision.applies:
        entry = success(
            event,
            INTERNAL,
            f"{change.phone} {_SAID[(change.channel, change.status)]} "
            f"({change.keyword or change.reason}, source {change.source})",
            entity_type=_ENTITY_TYPES[change.channel],
            entity_id=change.phone,
        )
    else:
        why = f"{change.channel} consent unchanged: {outcome.decision.why}"
        entry = skipped(event, INTERNAL, why).entries[0]
    return outcome, entry


DndWrite = Literal["set", "already", "gone"]


async def set_ghl_dnd(
    ctx: HandlerContext,
    ghl: GhlClient,
    ghl_contact_id: str,
    channel: Literal["SMS", "Call"],
    status: str,
    *,
    shown: Mapping[str, Any] | None = None,
) -> DndWrite:
    """Set one DND channel of a GHL contact to `status`, remembered as our own write (R-LOOP-1).

    Read first: when GHL already shows `status` (a second opt-out of an opted-out number, an
    operator re-stating a decision), nothing is written. GHL sends no `ContactDndUpdate` for a
    write that changes nothing, so the fingerprint of such a write would never be consumed and,
    for ECHO_TTL_SECONDS, would hide a GHL user's own change to that value as "our echo".
    `shown`: the contact's `dndSettings` as GHL answered a moment ago (the upsert that created it),
    instead of reading them again.
    Returns what happened: `set`, `already` (GHL showed it), `gone` (GHL no longer knows the id).
    """
    if shown is None:
        current = await ghl.get_contact(ghl_contact_id)
        if current is None:
            return "gone"
        shown = current.dnd_settings or {}
    setting = shown.get(channel)
    now = setting.get("status") if isinstance(setting, Mapping) else None
    if isinstance(now, str) and now.lower() == status:
        return "already"
    try:
        await ghl.update_contact(
            ghl_contact_id, ContactUpdate(dnd_settings={channel: DndChannel(status=status)})
        )
    except RemoteNotFound:
        return "gone"
    echo = channel.lower()
    await EchoGuard(ctx.db, ctx.settings.echo_ttl_seconds).remember(
        "ghl", dnd_entity(ghl_contact_id, echo), {f"dnd_{echo}": status}
    )
    return "set"


async def tell_ghl_sms_dnd(
    ctx: HandlerContext,
    event: ClaimedEvent,
    ghl: GhlClient,
    ghl_contact_id: str,
    change: ConsentChange,
    *,
    direction: str = TEXTING_TO_GHL,
    shown: Mapping[str, Any] | None = None,
) -> SyncLogEntry:
    """R-OPT-3: the contact's SMS DND in GHL follows the decision (`active` for an opt-out,
    `inactive` for an opt-in), written as ours (`set_ghl_dnd`; `shown`: its DND settings as GHL
    just answered), so the `ContactDndUpdate` it causes is recognised as our echo, not a
    GHL-sourced decision."""
    status = "active" if change.status == OPTED_OUT else "inactive"
    done = await set_ghl_dnd(ctx, ghl, ghl_contact_id, "SMS", status, shown=shown)
    why = change.keyword or change.reason
    if done == "gone":
        return skipped(
            event, direction, f"GHL contact {ghl_contact_id} not found: SMS DND not set ({why})"
        ).entries[0]
    said = f"GHL contact SMS DND set {status}" if done == "set" else f"GHL contact SMS DND already {status}"
    return success(
        event,
        direction,
        f"{said} ({why})",
        target_id=ghl_contact_id,
        entity_type="contact",
        entity_id=ghl_contact_id,
    )


async def _replied_recently(ctx: HandlerContext, phone: str) -> bool:
    """Whether a HELP reply to this number was sent (or may have been) within the window."""
    async with ctx.db.session() as session:
        found = await session.scalar(
            select(SyncEffect.id)
            .where(
                SyncEffect.effect_key.startswith(f"{HELP_REPLY_PREFIX}{phone}:", autoescape=True),
                SyncEffect.created_at >= utcnow() - HELP_REPLY_WINDOW,
            )
            .limit(1)
        )
    return found is not None


async def reply_to_help(ctx: HandlerContext, event: ClaimedEvent, phone: str) -> SyncLogEntry:
    """R-OPT-3: a HELP or INFO text gets HELP_REPLY_TEXT through Verity, at most once per 24 h per
    number, never to an opted-out number (`send_sms` asks consent at the send). The reply is an
    effect keyed by the number and the event: an interrupted reply is never repeated."""
    text = ctx.settings.help_reply_text
    verity = ctx.connectors.verity if ctx.connectors is not None else None
    if not text:
        return skipped(event, GHL_TO_TEXTING, "HELP: no reply configured (HELP_REPLY_TEXT unset)").entries[0]
    if verity is None:
        return skipped(event, GHL_TO_TEXTING, "HELP: Verity not configured, no reply").entries[0]
    if await _replied_recently(ctx, phone):
        return skipped(event, GHL_TO_TEXTING, "HELP: already answered within 24 h").entries[0]

    async def send() -> str:
        return (await send_sms(ctx.db, verity, phone, text)).message_id

    try:
        outcome = await EffectLedger(ctx.db, event).perform(
            f"{HELP_REPLY_PREFIX}{phone}:{event.id}", "verity", send
        )
    except OptedOut:
        return skipped(
            event, GHL_TO_TEXTING, "HELP: the number opted out of SMS, no reply (R-OPT-4)"
        ).entries[0]
    except EffectMaybeDone:
        return skipped(
            event, GHL_TO_TEXTING, "HELP: a reply may have been sent by an interrupted run; not repeated"
        ).entries[0]
    return success(event, GHL_TO_TEXTING, "HELP reply sent through Verity", target_id=outcome.target_id)


async def off_the_dialer(
    ctx: HandlerContext,
    event: ClaimedEvent,
    phone: str,
    *,
    because: str = "opted out of SMS",
    direction: str = TEXTING_TO_ALOWARE,
    ghl_contact_id: str | None = None,
) -> SyncLogEntry:
    """The person's Aloware contact leaves every power-dialer list: after an SMS opt-out with
    OPTOUT_REMOVES_FROM_DIALER (R-OPT-3), after GHL Call DND (R-OPT-6, `because` says which). The
    contact is found by the mapping (the GHL contact's, when known, else the number's), else by
    phone at Aloware; a set operation, so a retry repeats it harmlessly."""
    aloware = ctx.connectors.aloware if ctx.connectors is not None else None
    if aloware is None:
        return skipped(event, direction, "dialer lists: Aloware not configured").entries[0]
    mappings = ContactMappings(ctx.db)
    mapping = await mappings.by_ghl_id(ghl_contact_id) if ghl_contact_id else None
    if mapping is None or mapping.aloware_contact_id is None:
        mapping = await mappings.by_phone(phone)
    aloware_id = mapping.aloware_contact_id if mapping is not None and mapping.deleted_at is None else None
    if aloware_id is None:
        found = await aloware.find_contact_by_phone(phone)
        aloware_id = found.id if found is not None else None
    if aloware_id is None:
        return skipped(event, direction, "dialer lists: no Aloware contact on this number").entries[0]
    await aloware.remove_from_all_lists(aloware_id)
    owner = ghl_contact_id or (mapping.ghl_contact_id if mapping is not None else None)
    if owner:
        await forget_memberships(ctx.db, owner)
    return success(
        event,
        direction,
        f"{because}: Aloware contact {aloware_id} removed from all power-dialer lists",
        target_id=aloware_id,
        entity_type="contact",
        entity_id=aloware_id,
    )
