"""GHL's SMS DND toggles as consent decisions (R-OPT-5, R-LOOP-1; issue 11).

A GHL user (or a GHL workflow) switching a contact's SMS DND on or off is GHL telling us about the
person's SMS consent. GHL's `ContactDndUpdate` webhook (contracts/ghl/webhooks/
ContactDndUpdate.json; ingest knows no workflow spelling of it) becomes a `ConsentChange` of
source `ghl`: `dndSettings.SMS.status` `active` or `permanent` → opted out, `inactive` → opted in,
timed by the webhook's `timestamp` (else its receipt), reason `DND`. `ConsentStore.apply` decides
whether it takes effect; `decisions.may_lift` is what keeps a GHL DND switched off from lifting a
texting STOP (only a GHL-sourced opt-out is GHL's to lift).

Which DND information counts: only `dndSettings.SMS.status`. The top-level `dnd` flag is not SMS
information: the contract's own example carries `dnd: true` with `SMS.status: inactive` (and the
other channels active), so reading it as an SMS opt-out would contradict the per-channel setting
in the same payload. A webhook without an SMS setting says nothing about SMS and is skipped.

Call DND (`dndSettings.Call`) is voice consent (R-OPT-6, the DNC flow), not handled here: this
module never reads it, and a Call DND change never touches SMS consent.

Our own DND write (`optout.tell_ghl_sms_dnd`, after a texting STOP/START) comes back as a
`ContactDndUpdate` too. It is remembered as an echo (`{"dnd_sms": status}`) and recognised here
first, before anything else: it is the decision we already recorded, never a new one (R-LOOP-1).
"""

from __future__ import annotations

from collections.abc import Mapping

from df_middleware.consent.decisions import OPTED_IN, OPTED_OUT, ConsentChange, Status
from df_middleware.consent.store import ConsentStore
from df_middleware.phones import normalize_phone
from df_middleware.sync.echoes import EchoGuard, dnd_entity
from df_middleware.sync.effects import skipped
from df_middleware.sync.optout import INTERNAL, record_consent
from df_middleware.sync.registry import ClaimedEvent, HandlerContext, HandlerRegistry, HandlerResult
from df_middleware.timestamps import parse_iso8601

#: GHL's SMS DND statuses and the consent each one states (`permanent` is an opt-out GHL itself
#: will not let a user lift; for us it is an opt-out like `active`).
SMS_DND_STATUS: Mapping[str, Status] = {
    "active": OPTED_OUT,
    "permanent": OPTED_OUT,
    "inactive": OPTED_IN,
}

ECHO = "echo"
NO_SMS_DND = "no SMS DND in the webhook"
NO_PHONE = "no phone"
DND_REASON = "DND"


def sms_dnd_status(payload: Mapping[str, object]) -> str | None:
    """The webhook's SMS DND status (`active`, `inactive`, `permanent`), lower-cased; None when
    the payload has no SMS setting or an unknown status (see the module docstring for why the
    top-level `dnd` flag is not read)."""
    settings = payload.get("dndSettings")
    sms = settings.get("SMS") if isinstance(settings, Mapping) else None
    status = sms.get("status") if isinstance(sms, Mapping) else None
    if not isinstance(status, str) or status.strip().lower() not in SMS_DND_STATUS:
        return None
    return status.strip().lower()


async def already_in_force(ctx: HandlerContext, phone: str, stated: Status) -> str | None:
    """Why the webhook's SMS DND is no change (the SMS consent in force already says it), else
    None.

    Every `ContactDndUpdate` carries the contact's whole `dndSettings`, so it re-states the SMS
    DND when something else changed: a GHL user toggling Call DND, or the echo of our own Call
    DND write (sync/dnc.py), which the SMS echo check cannot recognise. A re-stated SMS DND is not
    a GHL decision: recording it would turn a texting STOP into a GHL-sourced opt-out (that a GHL
    toggle could then lift, R-OPT-5) and add a history row nobody made. No decision in force
    means opted in (nobody opted the number out), so an `inactive` SMS DND lifts nothing.
    """
    current = await ConsentStore(ctx.db).state("sms", phone)
    in_force = current.status if current is not None else OPTED_IN
    if in_force != stated:
        return None
    by = f"by {current.source}" if current is not None else "(no opt-out recorded)"
    return f"consent unchanged: SMS already {in_force} {by}"


async def handle_ghl_dnd_update(ctx: HandlerContext, event: ClaimedEvent) -> HandlerResult:
    """GHL `ContactDndUpdate` → an SMS consent change of source `ghl` (R-OPT-5).

    Skipped (one sync_log row saying why, nothing recorded): no SMS DND in the payload; the echo
    of our own DND write (R-LOOP-1, checked first: it is the decision already recorded, and
    checking consumes its fingerprint); no valid phone; an SMS DND the consent in force already
    states (`already_in_force`: the webhook re-states SMS when Call DND changed). Otherwise the
    change is applied with `ConsentStore` and one `internal` row says whether it took effect, or
    why not (a texting STOP is not GHL's to lift; an older toggle does not undo a newer one).
    """
    ctx.direction = INTERNAL
    status = sms_dnd_status(event.payload)
    if status is None:
        return skipped(event, INTERNAL, NO_SMS_DND)
    contact_id = event.entity_id or ""
    echoes = EchoGuard(ctx.db, ctx.settings.echo_ttl_seconds)
    if await echoes.is_echo("ghl", dnd_entity(contact_id), {"dnd_sms": status}):
        return skipped(event, INTERNAL, ECHO)
    phone = normalize_phone(event.payload.get("phone"), ctx.settings.default_phone_region)
    if phone is None:
        return skipped(event, INTERNAL, NO_PHONE)
    stated = SMS_DND_STATUS[status]
    unchanged = await already_in_force(ctx, phone, stated)
    if unchanged is not None:
        return skipped(event, INTERNAL, unchanged)
    change = ConsentChange(
        channel="sms",
        phone=phone,
        status=stated,
        source="ghl",
        event_at=parse_iso8601(event.payload.get("timestamp")) or event.received_at,
        reason=DND_REASON,
    )
    _, entry = await record_consent(ctx, event, change)
    return HandlerResult(entries=[entry])


def register_handlers(registry: HandlerRegistry) -> None:
    """GHL's DND webhook; Call DND inside it is the voice flow's (R-OPT-6), not read here."""
    registry.register("ghl", "ContactDndUpdate")(handle_ghl_dnd_update)
