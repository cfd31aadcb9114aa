"""An operator's consent decision, told to GHL and the dialer (R-OPT-3, R-OPT-5, R-OPT-6).

`df-middleware optout add/remove` records a `manual` decision and queues a `consent.decided` event
in the same transaction (`queue/operator_events.py`). This handler tells the other systems what
the decision says, exactly as a person's keyword or Aloware's DNC would be told, so the agents
see it where they work:

- SMS opted out: the person's GHL contact gets `dndSettings.SMS` `active` — created when GHL has
  nobody on the number (R-OPT-3: the next agent who imports it must see it) — and, with
  OPTOUT_REMOVES_FROM_DIALER, the Aloware contact leaves every power-dialer list;
- SMS opted in: the contact's SMS DND `inactive` (no contact is created to say "may text");
- voice on DNC: GHL `dndSettings.Call` `active` and off every power-dialer list; lifted:
  `inactive`. SMS and voice never touch each other.

Only the decision still in force is told: when a newer one was recorded before this event ran
(the person texted START after an operator's opt-out, a second operator action), it is skipped,
and the newer decision's own flow tells it. Every write is a set operation or an effect of the
ledger, so a retry after GHL failed tells it again harmlessly; our DND writes are remembered as
echoes (R-LOOP-1), so GHL's `ContactDndUpdate` about them records nothing.
"""

from __future__ import annotations

from collections.abc import Mapping

from df_middleware.consent.decisions import CHANNELS, OPTED_IN, OPTED_OUT, Channel, ConsentChange, Status
from df_middleware.consent.store import ConsentStore, is_in_force
from df_middleware.phones import normalize_phone
from df_middleware.sync.call_lists import back_on_the_dialer
from df_middleware.sync.dnc import tell_ghl_call_dnd
from df_middleware.sync.effects import EffectLedger, skipped
from df_middleware.sync.identity import ContactMappings, PersonKeys, resolve_ghl_contact
from df_middleware.sync.optout import INTERNAL, off_the_dialer, tell_ghl_sms_dnd
from df_middleware.sync.registry import (
    ClaimedEvent,
    HandlerContext,
    HandlerRegistry,
    HandlerResult,
    SyncLogEntry,
)
from df_middleware.sync.sequences import out_of_sequence
from df_middleware.sync.texting import person_in_ghl
from df_middleware.timestamps import parse_iso8601

#: The source and type `queue/operator_events.py` queues an operator's decision under.
OPERATOR_SOURCE = "operator"
CONSENT_DECIDED = "consent.decided"
#: The `source` of a GHL contact created to carry an operator's SMS opt-out.
CONTACT_SOURCE = "Opt-out (DF-Middleware)"

MALFORMED = "not an operator consent decision (phone, channel, status, decided_at)"
GHL_OFF = "GHL not configured: DND not set"


def change_of(payload: Mapping[str, object], region: str) -> ConsentChange | None:
    """The operator's decision the event carries, or None when the payload is not one."""
    phone = normalize_phone(payload.get("phone"), region)
    channel = payload.get("channel")
    status = payload.get("status")
    decided_at = parse_iso8601(payload.get("decided_at"))
    if phone is None or channel not in CHANNELS or status not in (OPTED_OUT, OPTED_IN) or decided_at is None:
        return None
    reason, actor = payload.get("reason"), payload.get("actor")
    return ConsentChange(
        channel=_channel(channel),
        phone=phone,
        status=_status(status),
        source="manual",
        event_at=decided_at,
        reason=reason if isinstance(reason, str) else None,
        actor=actor if isinstance(actor, str) else None,
    )


def _channel(value: object) -> Channel:
    return "voice" if value == "voice" else "sms"


def _status(value: object) -> Status:
    return OPTED_OUT if value == OPTED_OUT else OPTED_IN


async def _tell_sms(
    ctx: HandlerContext, event: ClaimedEvent, change: ConsentChange, ledger: EffectLedger
) -> list[SyncLogEntry]:
    ghl = ctx.connectors.ghl if ctx.connectors is not None else None
    if ghl is None:
        return skipped(event, INTERNAL, GHL_OFF).entries
    entries: list[SyncLogEntry] = []
    if change.status == OPTED_OUT:
        person = await person_in_ghl(
            ctx,
            event,
            ghl,
            ledger,
            change.phone,
            f"ghl:contact:operator:{event.id}",
            entries,
            source=CONTACT_SOURCE,
        )
        contact_id: str | None = person.ghl_contact_id
        shown = person.created_dnd
    else:
        resolved = await resolve_ghl_contact(ContactMappings(ctx.db), ghl, PersonKeys(change.phone, None))
        contact_id = resolved.ghl_contact_id if resolved is not None else None
        shown = None
    if contact_id is None:
        entries += skipped(event, INTERNAL, "GHL has no contact on this number: no SMS DND to lift").entries
        return entries
    entries.append(
        await tell_ghl_sms_dnd(ctx, event, ghl, contact_id, change, direction=INTERNAL, shown=shown)
    )
    if change.status == OPTED_OUT and ctx.settings.optout_removes_from_dialer:
        entries.append(
            await off_the_dialer(
                ctx,
                event,
                change.phone,
                because="opted out of SMS by an operator",
                direction=INTERNAL,
                ghl_contact_id=contact_id,
            )
        )
    if change.status == OPTED_IN and ctx.settings.optout_removes_from_dialer:
        back = await back_on_the_dialer(
            ctx,
            change.phone,
            because="SMS opt-out lifted by an operator",
            direction=INTERNAL,
            ghl_contact_id=contact_id,
        )
        entries.extend([back] if back is not None else [])
    return entries


async def _tell_voice(ctx: HandlerContext, event: ClaimedEvent, change: ConsentChange) -> list[SyncLogEntry]:
    entries = [
        await tell_ghl_call_dnd(ctx, event, PersonKeys(change.phone, None), change, direction=INTERNAL)
    ]
    if change.status == OPTED_OUT:
        entries.append(
            await off_the_dialer(
                ctx, event, change.phone, because="on voice DNC by an operator", direction=INTERNAL
            )
        )
    else:
        back = await back_on_the_dialer(
            ctx, change.phone, because="DNC lifted by an operator", direction=INTERNAL
        )
        entries.extend([back] if back is not None else [])
    return entries


async def handle_consent_decided(ctx: HandlerContext, event: ClaimedEvent) -> HandlerResult:
    """`operator` / `consent.decided` → GHL DND and the dialer follow an operator's decision.

    Effects (see the module docstring): SMS DND or Call DND on the GHL contact (for an SMS
    opt-out, the contact created when unknown), the power-dialer lists after an opt-out. A decision
    no longer in force, or a malformed event, is one skipped row saying why.
    """
    ctx.direction = INTERNAL
    change = change_of(event.payload, ctx.settings.default_phone_region)
    if change is None:
        return skipped(event, INTERNAL, MALFORMED)
    state = await ConsentStore(ctx.db).state(change.channel, change.phone)
    if not is_in_force(state, change):
        newer = f"{state.status} by {state.source}" if state is not None else "none"
        return skipped(event, INTERNAL, f"a newer {change.channel} decision is in force ({newer}): not told")
    ledger = EffectLedger(ctx.db, event)
    if change.channel == "sms":
        entries = await _tell_sms(ctx, event, change, ledger)
    else:
        entries = await _tell_voice(ctx, event, change)
    if change.status == OPTED_OUT:
        entries += await out_of_sequence(ctx, event, change.phone)
    return HandlerResult(entries=entries, effects=list(ledger.performed))


def register_handlers(registry: HandlerRegistry) -> None:
    """An operator's consent decisions (queued by `df-middleware optout`)."""
    registry.register(OPERATOR_SOURCE, CONSENT_DECIDED)(handle_consent_decided)
