"""GHL's DND toggles as consent decisions: SMS DND (R-OPT-5) and Call DND (R-OPT-6), R-LOOP-1.

A GHL user (or a GHL workflow) switching a contact's DND on or off is GHL telling us about the
person's consent. GHL's `ContactDndUpdate` webhook (contracts/ghl/webhooks/ContactDndUpdate.json;
ingest knows no workflow spelling of it) carries the contact's whole `dndSettings`, and each of
its two channels we act on becomes a `ConsentChange` of source `ghl`, reason `DND`, timed by the
webhook's `timestamp` (else its receipt): `SMS.status` → SMS consent, `Call.status` → voice DNC;
`active` or `permanent` → opted out, `inactive` → opted in. `ConsentStore.apply` decides whether it
takes effect; `decisions.may_lift` is what keeps GHL's DND switched off from lifting a texting STOP
or an Aloware DNC (only a GHL-sourced opt-out is GHL's to lift).

When GHL's Call DND puts the number on voice DNC, the person's Aloware contact also leaves every
power-dialer list (R-OPT-6 "the same in the other direction"; R-AG-2); a GHL SMS DND does the same
when OPTOUT_REMOVES_FROM_DIALER is set (R-OPT-3). Channels stay independent: the SMS setting never
changes voice DNC, nor the reverse.

Which DND information counts: only `dndSettings.<channel>.status`. The top-level `dnd` flag is not
read: the contract's own example carries `dnd: true` with `SMS.status: inactive` (and the other
channels active), so it says nothing a channel's own setting does not. A channel missing from the
webhook says nothing about that channel. Email/WhatsApp/GMB/FB DND are not consent we keep.

Per channel, before anything else: our own DND write (`optout.tell_ghl_sms_dnd` after a texting
STOP/START, `dnc.tell_ghl_call_dnd` after an Aloware DNC) comes back as a `ContactDndUpdate` and is
recognised as an echo (one echo entity a channel, `echoes.dnd_entity`): the decision we already
recorded, never a new one. Then a channel re-stating the consent in force is no decision either
(`already_in_force`): every webhook re-states both channels when only one changed — unless the
decision in force is this very event's own (same status, source and time): an earlier run of the
event recorded it and then failed in a follow-up (the dialer lists, the sequences: an Aloware
fault). The retry must still do the follow-ups, or the contact stays off (or on) its lists forever
(found by the soak, issue 14); they are idempotent (lists are applied as differences).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from df_middleware.consent.decisions import OPTED_IN, OPTED_OUT, Channel, ConsentChange, Status, decision_time
from df_middleware.consent.store import ConsentStore, is_in_force
from df_middleware.phones import normalize_phone
from df_middleware.sync.call_lists import back_on_the_dialer
from df_middleware.sync.echoes import EchoGuard, dnd_entity
from df_middleware.sync.effects import skipped
from df_middleware.sync.optout import INTERNAL, off_the_dialer, record_consent
from df_middleware.sync.registry import (
    ClaimedEvent,
    HandlerContext,
    HandlerRegistry,
    HandlerResult,
    SyncLogEntry,
)
from df_middleware.sync.sequences import out_of_sequence
from df_middleware.timestamps import parse_iso8601

#: GHL's DND statuses and the consent each one states (`permanent` is an opt-out GHL itself will
#: not let a user lift; for us it is an opt-out like `active`).
DND_STATUS: Mapping[str, Status] = {
    "active": OPTED_OUT,
    "permanent": OPTED_OUT,
    "inactive": OPTED_IN,
}

GHL_TO_ALOWARE = "ghl_to_aloware"
ECHO = "echo of our own DND write"
NO_DND = "no SMS or Call DND in the webhook"
NO_PHONE = "no valid phone: consent is keyed by E.164 number"
DND_REASON = "DND"


@dataclass(frozen=True)
class DndChannelSpec:
    """One DND channel of GHL's `dndSettings` that is consent we keep."""

    setting: str  # the key in dndSettings: "SMS", "Call"
    consent: Channel  # the registry it decides: "sms", "voice"
    echo: str  # the echo entity's channel and fingerprint field: dnd_<echo>

    @property
    def label(self) -> str:
        return f"{self.setting} DND"


SMS = DndChannelSpec("SMS", "sms", "sms")
CALL = DndChannelSpec("Call", "voice", "call")
CHANNELS: tuple[DndChannelSpec, ...] = (SMS, CALL)


def dnd_status(payload: Mapping[str, object], channel: DndChannelSpec = SMS) -> str | None:
    """The webhook's DND status for one channel (`active`, `inactive`, `permanent`), lower-cased;
    None when the payload has no such setting or an unknown status."""
    settings = payload.get("dndSettings")
    setting = settings.get(channel.setting) if isinstance(settings, Mapping) else None
    status = setting.get("status") if isinstance(setting, Mapping) else None
    if not isinstance(status, str) or status.strip().lower() not in DND_STATUS:
        return None
    return status.strip().lower()


async def already_in_force(ctx: HandlerContext, change: ConsentChange) -> str | None:
    """Why the webhook's DND `change` is no change (the consent in force already says it), else
    None.

    Every `ContactDndUpdate` carries the contact's whole `dndSettings`, so it re-states one
    channel's DND when the other changed: a GHL user toggling Call DND, or the echo of our own
    write on the other channel. A re-stated DND is not a GHL decision: recording it would turn a
    texting STOP (or an Aloware DNC) into a GHL-sourced opt-out that a GHL toggle could then lift
    (R-OPT-5), and add a history row nobody made. No decision in force means opted in (nobody
    opted the number out), so an `inactive` DND lifts nothing.

    Not so when the decision in force is `change` itself (`is_in_force`: same status, source and
    time): an earlier run of this event recorded it and then failed in a follow-up (R-AG-2: the
    dialer lists). That is no re-statement: None, so the retry goes on and does the follow-ups.
    """
    channel: Channel = change.channel
    current = await ConsentStore(ctx.db).state(channel, change.phone)
    if is_in_force(current, change):
        return None
    in_force = current.status if current is not None else OPTED_IN
    if in_force != change.status:
        return None
    by = f"by {current.source}" if current is not None else "(no opt-out recorded)"
    return f"consent unchanged: {'SMS' if channel == 'sms' else 'voice'} already {in_force} {by}"


async def _decide_channel(
    ctx: HandlerContext, event: ClaimedEvent, channel: DndChannelSpec, status: str
) -> list[SyncLogEntry]:
    """One channel of the webhook: echo, no phone, already in force → one skipped row; else the
    decision's row, and the dialer lists after an opt-out in force (voice always, SMS with
    OPTOUT_REMOVES_FROM_DIALER). A retry of an event whose decision an earlier run recorded
    (`outcome.holds`) does the follow-ups again: that run may have failed in them."""
    contact_id = event.entity_id or ""
    echoes = EchoGuard(ctx.db, ctx.settings.echo_ttl_seconds)
    if await echoes.is_echo(
        "ghl", dnd_entity(contact_id, channel.echo), {f"dnd_{channel.echo}": status}, by=str(event.id)
    ):
        return skipped(event, INTERNAL, f"{channel.label}: {ECHO}").entries
    phone = normalize_phone(event.payload.get("phone"), ctx.settings.default_phone_region)
    if phone is None:
        return skipped(event, INTERNAL, f"{channel.label}: {NO_PHONE}").entries
    stated = DND_STATUS[status]
    change = ConsentChange(
        channel=channel.consent,
        phone=phone,
        status=stated,
        source="ghl",
        event_at=decision_time(parse_iso8601(event.payload.get("timestamp")), event.received_at),
        received_at=event.received_at,
        reason=DND_REASON,
    )
    unchanged = await already_in_force(ctx, change)
    if unchanged is not None:
        return skipped(event, INTERNAL, f"{channel.label}: {unchanged}").entries
    outcome, entry = await record_consent(ctx, event, change)
    entries = [entry]
    if outcome.holds(change) and stated == OPTED_OUT:
        entries += await out_of_sequence(ctx, event, phone, ghl_contact_id=contact_id or None)
    leaves_dialer = channel is CALL or ctx.settings.optout_removes_from_dialer
    if outcome.holds(change) and stated == OPTED_OUT and leaves_dialer:
        entries.append(
            await off_the_dialer(
                ctx,
                event,
                phone,
                because=f"GHL {channel.label}",
                direction=GHL_TO_ALOWARE,
                ghl_contact_id=contact_id or None,
            )
        )
    if outcome.holds(change) and stated == OPTED_IN and leaves_dialer:
        back = await back_on_the_dialer(
            ctx,
            phone,
            because=f"GHL {channel.label} lifted",
            direction=GHL_TO_ALOWARE,
            ghl_contact_id=contact_id or None,
        )
        entries.extend([back] if back is not None else [])
    return entries


async def handle_ghl_dnd_update(ctx: HandlerContext, event: ClaimedEvent) -> HandlerResult:
    """GHL `ContactDndUpdate` → an SMS and/or a voice consent change of source `ghl` (R-OPT-5,
    R-OPT-6).

    Per channel present in the webhook, one sync_log row: skipped and why (the echo of our own
    DND write, R-LOOP-1, checked first since checking consumes its fingerprint; no valid phone;
    a DND the consent in force already states), or the decision applied with `ConsentStore`
    (`internal`), saying whether it took effect or why not (a texting STOP or an Aloware DNC is
    not GHL's to lift; an older toggle does not undo a newer one). A voice opt-out in force adds
    a row for the Aloware dialer lists. No SMS or Call setting at all: one skipped row.
    """
    ctx.direction = INTERNAL
    entries: list[SyncLogEntry] = []
    for channel in CHANNELS:
        status = dnd_status(event.payload, channel)
        if status is not None:
            entries.extend(await _decide_channel(ctx, event, channel, status))
    if not entries:
        return skipped(event, INTERNAL, NO_DND)
    return HandlerResult(entries=entries)


def register_handlers(registry: HandlerRegistry) -> None:
    """GHL's DND webhook: SMS DND (R-OPT-5) and Call DND (R-OPT-6)."""
    registry.register("ghl", "ContactDndUpdate")(handle_ghl_dnd_update)
