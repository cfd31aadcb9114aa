"""Voice do-not-call from Aloware, told to GHL and the power dialer (R-OPT-6, R-OPT-2; issue 11).

Aloware's `Contact DNC Updated` becomes a *voice* consent change of source `aloware` (opted out
when `is_dnc` is true, opted in when false), timed by the contact's `updated_at` (else the
event's receipt) and decided by `consent.decisions` through `ConsentStore.apply`, the one way a
decision is written (`dnc_registry` and `optout_events`). An older change never overwrites a newer
decision: a late DNC after a newer lift is skipped with the decision's reason.

When the decision is in force, it is told:

1. to GHL: the person's contact (R-ID-2: mapping by Aloware id, then phone, then GHL by phone or
   email) gets `dndSettings.Call.status` `active` / `inactive`, remembered as our own write
   (R-LOOP-1) so the `ContactDndUpdate` it causes is an echo. A DNC never creates a GHL contact:
   when GHL has nobody, the step is skipped, saying so;
2. to Aloware's power dialer: on DNC active, the contact leaves every list (a set operation);
3. never to SMS consent: channels are independent (R-OPT-6), this module writes only `voice`.

The effects are set operations, so a retry or a replay of a decision already recorded (same
status, source and time) tells them again rather than losing them after a failed first run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from df_middleware.connectors.aloware import AlowareClient
from df_middleware.consent.decisions import OPTED_IN, OPTED_OUT, ConsentChange, decision_time
from df_middleware.db.types import utcnow
from df_middleware.sync.call_lists import back_on_the_dialer, forget_memberships
from df_middleware.sync.effects import skipped, success
from df_middleware.sync.identity import ContactMappings, PersonKeys, resolve_ghl_contact
from df_middleware.sync.optout import record_consent, set_ghl_dnd
from df_middleware.sync.registry import (
    ClaimedEvent,
    HandlerContext,
    HandlerRegistry,
    HandlerResult,
    SyncLogEntry,
)
from df_middleware.sync.sequences import out_of_sequence
from df_middleware.timestamps import parse_iso8601

INTERNAL = "internal"
ALOWARE_TO_GHL = "aloware_to_ghl"
REASON = "DNC"

NO_DNC_FLAG = "no is_dnc flag in the event"
NO_PHONE = "no valid phone: the DNC registry is keyed by E.164 number"
GHL_OFF = "ghl not configured: Call DND not set"
ALOWARE_OFF = "aloware not configured: power-dialer lists not changed"
NO_GHL_CONTACT = "GHL has no contact for this person: Call DND not set (a DNC creates no contact)"

_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


def _body(event: ClaimedEvent) -> Mapping[str, Any]:
    body = event.payload.get("body")
    return body if isinstance(body, Mapping) else {}


def is_dnc_of(value: object) -> bool | None:
    """Aloware's `is_dnc` as a flag (a JSON boolean, or 1/0 and "true"/"false" as some exports
    write it); None when the event does not say, which decides nothing."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    return None


def dnc_change_of(event: ClaimedEvent, phone: str, is_dnc: bool) -> ConsentChange:
    """The voice consent change a `Contact DNC Updated` makes (R-OPT-6): source `aloware`, reason
    DNC, timed by the contact's `updated_at` (the change's own time, R-OPT-2), else its receipt."""
    return ConsentChange(
        channel="voice",
        phone=phone,
        status=OPTED_OUT if is_dnc else OPTED_IN,
        source="aloware",
        event_at=decision_time(parse_iso8601(_body(event).get("updated_at")), event.received_at),
        received_at=event.received_at,
        reason=REASON,
    )


def _call_dnd_status(change: ConsentChange) -> str:
    return "active" if change.status == OPTED_OUT else "inactive"


async def tell_ghl_call_dnd(
    ctx: HandlerContext,
    event: ClaimedEvent,
    keys: PersonKeys,
    change: ConsentChange,
    *,
    aloware_contact_id: str | None = None,
    direction: str = ALOWARE_TO_GHL,
) -> SyncLogEntry:
    """R-OPT-6: the person's GHL contact (R-ID-2: by the Aloware contact's mapping when given,
    then phone, email) gets `dndSettings.Call.status` following the decision. The write is
    remembered as ours (R-LOOP-1). Nobody in GHL → skipped: a DNC creates no one."""
    ghl = ctx.connectors.ghl if ctx.connectors is not None else None
    if ghl is None:
        return skipped(event, direction, GHL_OFF).entries[0]
    started = utcnow()
    resolved = await resolve_ghl_contact(
        ContactMappings(ctx.db), ghl, keys, aloware_contact_id=aloware_contact_id
    )
    if resolved is None:
        return skipped(event, direction, NO_GHL_CONTACT).entries[0]
    status = _call_dnd_status(change)
    done = await set_ghl_dnd(ctx, ghl, resolved.ghl_contact_id, "Call", status)
    if done == "gone":
        return skipped(
            event, direction, f"GHL contact {resolved.ghl_contact_id} not found: Call DND not set"
        ).entries[0]
    said = "set" if done == "set" else "already"
    entry = success(
        event,
        direction,
        f"GHL contact Call DND {said} {status} (found by {resolved.via}; {change.reason})",
        target_id=resolved.ghl_contact_id,
    )
    entry.started_at = started
    return entry


async def remove_from_dialer(ctx: HandlerContext, event: ClaimedEvent) -> SyncLogEntry:
    """R-OPT-6: a number on DNC leaves every Aloware power-dialer list (nothing else in Aloware
    changes). Logged `internal`: Aloware's own event changes Aloware, no other system is told."""
    aloware: AlowareClient | None = ctx.connectors.aloware if ctx.connectors is not None else None
    if aloware is None:
        return skipped(event, INTERNAL, ALOWARE_OFF).entries[0]
    contact_id = event.entity_id or str(_body(event).get("id") or "")
    if not (contact_id.isascii() and contact_id.isdigit()):
        # Aloware's contact ids are numbers; anything else would be refused (422) and dead-letter
        # the event after the decision was recorded.
        return skipped(event, INTERNAL, "no Aloware contact id: power-dialer lists not changed").entries[0]
    started = utcnow()
    known = await aloware.remove_from_all_lists(contact_id)
    mapping = await ContactMappings(ctx.db).by_aloware_id(contact_id)
    if mapping is not None:
        await forget_memberships(ctx.db, mapping.ghl_contact_id)
    message = (
        f"removed Aloware contact {contact_id} from all power-dialer lists (DNC)"
        if known
        else f"Aloware does not know contact {contact_id} (so it is on no list)"
    )
    entry = success(event, INTERNAL, message, target_id=contact_id)
    entry.started_at = started
    return entry


@dataclass(frozen=True)
class DncDecision:
    """An Aloware voice decision recorded (or found recorded) and in force: what its effects need."""

    keys: PersonKeys
    phone: str
    change: ConsentChange
    decided: SyncLogEntry


async def decide_voice_dnc(ctx: HandlerContext, event: ClaimedEvent) -> DncDecision | HandlerResult:
    """The event's `is_dnc` recorded as the voice decision of source `aloware` (R-OPT-6, R-OPT-2):
    the decision in force, or what to log when it decides nothing (no flag, no phone, stale)."""
    body = _body(event)
    is_dnc = is_dnc_of(body.get("is_dnc"))
    if is_dnc is None:
        return skipped(event, INTERNAL, NO_DNC_FLAG)
    keys = PersonKeys.of(body.get("phone_number"), body.get("email"), ctx.settings.default_phone_region)
    if keys.phone is None:
        return skipped(event, INTERNAL, NO_PHONE)
    change = dnc_change_of(event, keys.phone, is_dnc)
    outcome, decided = await record_consent(ctx, event, change)
    # In force now, or already by an earlier run of this event (a retry after a failed effect, a
    # redelivery, a replay): its effects are told again (they are set operations).
    if not outcome.holds(change):
        return HandlerResult(entries=[decided])
    return DncDecision(keys, keys.phone, change, decided)


async def tell_voice_dnc(
    ctx: HandlerContext, event: ClaimedEvent, decision: DncDecision
) -> list[SyncLogEntry]:
    """The effects of a voice decision in force: GHL's Call DND; on DNC, out of the Aloware
    sequence and off every power-dialer list; on a lift, back on the lists the agent owes."""
    keys, change = decision.keys, decision.change
    told = await tell_ghl_call_dnd(ctx, event, keys, change, aloware_contact_id=event.entity_id)
    entries = [told]
    if change.status == OPTED_OUT:
        entries += await out_of_sequence(ctx, event, decision.phone)
        entries.append(await remove_from_dialer(ctx, event))
    else:
        back = await back_on_the_dialer(
            ctx, decision.phone, because="DNC lifted in Aloware", direction=INTERNAL
        )
        entries.extend([back] if back is not None else [])
    return entries


async def handle_contact_dnc_updated(ctx: HandlerContext, event: ClaimedEvent) -> HandlerResult:
    """Aloware `Contact DNC Updated` → `dnc_registry`, GHL Call DND, power-dialer lists (R-OPT-6).

    Effects, one sync_log row each: the voice decision (internal); the GHL contact's Call DND
    (aloware_to_ghl, skipped when GHL has nobody); on DNC active, the contact off every
    power-dialer list (internal). SMS consent is never touched. A stale change (older than the
    decision in force, R-OPT-2) or one its source may not make is one skipped row with the reason.
    """
    ctx.direction = ALOWARE_TO_GHL
    decision = await decide_voice_dnc(ctx, event)
    if isinstance(decision, HandlerResult):
        return decision
    return HandlerResult(entries=[decision.decided, *await tell_voice_dnc(ctx, event, decision)])


def register_handlers(registry: HandlerRegistry) -> None:
    """Voice DNC of §6.4 (Aloware's side; GHL's Call DND is `ghl_dnd`'s)."""
    registry.register("aloware", "Contact DNC Updated")(handle_contact_dnc_updated)
