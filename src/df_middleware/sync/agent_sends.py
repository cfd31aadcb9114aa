"""An agent's SMS from GHL, sent once through Verity (R-TXT-5, R-OPT-4, R-IDEM-2).

When an agent texts from GHL, GHL records the message `pending` and posts
`ProviderOutboundMessage` to our conversation provider. `handle_provider_outbound` normalises the
phone, refuses a number whose SMS consent in force is opted out (asked at the send, through
`consent.sending.send_sms`: the GHL message is set `failed`, code `opted_out`, nothing leaves), a
text with no body or an invalid number; else sends once through Verity (effect
`verity:send:<GHL message id>`) and records the mapping (GHL id ↔ texting id, `pending`) at once,
so the receipts (`texting.py`) find it. A refusal is final: a replay never sends a text the agent
saw fail.

A refusal is recorded (mapping `failed`, with its error code) before GHL is told, so that it is
final whatever GHL answers. Telling GHL can then fail (a GHL outage): the event is retried, finds
the refusal recorded, and must still tell GHL, or the agent's message stays `pending` in GHL
forever (found by the soak, issue 14). So a retry (or a replay) that finds a refusal with its
error code sets the GHL message `failed` again with the same error (`REFUSAL_ERRORS`: an
idempotent PUT) and still sends nothing. A refusal recorded before the code was kept
(migration 0011) has no code to tell: it is skipped as before.

A send whose outcome is unknown (no answer: killed mid-send, a timeout after the request left) is
never repeated: the GHL message is set `failed` (`send_unconfirmed`) and the event dead-lettered;
Verity's own `message.sent` for the same number and text, arriving later, shows it went out and
resolves the dead letter (`unconfirmed_send_for`, `confirm_late`). A send whose retries run out
(Verity refusing every attempt) queues, with its dead letter, the event that sets its GHL
message `failed` (`agent_send_given_up.py`), so the agent never believes a text went out that
did not.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import ColumnElement, literal, or_, select

from df_middleware.connectors.ghl import GhlClient
from df_middleware.connectors.ghl_models import ProviderError
from df_middleware.connectors.http import RemoteNotFound, RemoteRejected, write_not_made
from df_middleware.connectors.verity import VerityClient
from df_middleware.consent.sending import send_sms
from df_middleware.consent.store import sms_allowed
from df_middleware.db.models import SyncEffect, WebhookEvent
from df_middleware.db.session import Database
from df_middleware.errors import OptedOut, PermanentError, RetryableError, SyncError
from df_middleware.phones import normalize_phone
from df_middleware.sync.effects import EffectLedger, EffectMaybeDone, record_effect, skipped, success
from df_middleware.sync.message_mappings import SEND_EFFECT_PREFIX, MessageMappings, event_of_send
from df_middleware.sync.registry import ClaimedEvent, EventResolution, HandlerContext, HandlerResult
from df_middleware.texting_payload import TextingEvent

GHL_TO_TEXTING = "ghl_to_texting"
PROVIDER_EVENT = "ProviderOutboundMessage"
#: GHL's ErrorDto example and the only type our provider reports: the failure is on our side of
#: the provider integration (carrier, consent, configuration), not GHL's.
PROVIDER_ERROR_TYPE = "saas"
REFUSED_BEFORE = "refused before (GHL message failed): a refused text is never sent later"
#: What the error message of a dead-lettered send Verity never confirmed says (`_send`).
UNCONFIRMED_ERROR = "Verity send not confirmed"
#: How long after it a `message.sent` with the same number and text is taken for that send.
UNCONFIRMED_WINDOW = timedelta(hours=24)
#: How far Verity's clock may be behind ours when comparing its send time with our request's.
CLOCK_SKEW = timedelta(minutes=5)
OPTED_OUT_ERROR = ProviderError(
    code="opted_out", type=PROVIDER_ERROR_TYPE, message="Recipient has opted out of SMS"
)
INVALID_PHONE_ERROR = ProviderError(
    code="invalid_phone", type=PROVIDER_ERROR_TYPE, message="Recipient phone number is not valid"
)
EMPTY_MESSAGE_ERROR = ProviderError(
    code="empty_message", type=PROVIDER_ERROR_TYPE, message="Message has no text"
)
SEND_UNCONFIRMED_ERROR = ProviderError(
    code="send_unconfirmed",
    type=PROVIDER_ERROR_TYPE,
    message="The texting system did not confirm the send; it may or may not have gone out",
)
#: The refusals of an agent's text, by the error code recorded with the refused mapping: a retry
#: tells GHL the same error again from the code alone.
REFUSAL_ERRORS: dict[str, ProviderError] = {
    error.code: error for error in (OPTED_OUT_ERROR, INVALID_PHONE_ERROR, EMPTY_MESSAGE_ERROR)
}

SendFailure = Literal["not_sent", "unknown"]


def ghl_for(ctx: HandlerContext, location_id: object = None) -> GhlClient | None:
    """The GHL client of a location (an OAuth-installed sub-account), else GHL_LOCATION_ID's."""
    if ctx.connectors is None:
        return None
    if isinstance(location_id, str) and location_id:
        return ctx.connectors.ghl_for(location_id)
    return ctx.connectors.ghl


def classify_send_failure(exc: Exception) -> SendFailure:
    """Whether a failed Verity send certainly did not go out (safe to retry) or may have.

    Refusals before any processing (429, 503, 401, a 4xx) and failures to connect did not send
    (`write_not_made`). A timeout after the request left, a 500/502/504, or a broken connection
    may have sent it, and a retry could text the person twice, so those are not retried.
    """
    return "not_sent" if write_not_made(exc) else "unknown"


def _text(value: Any) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


async def handle_provider_outbound(ctx: HandlerContext, event: ClaimedEvent) -> HandlerResult:
    """GHL `ProviderOutboundMessage` (R-TXT-5, R-OPT-4): an agent's SMS, sent once through Verity.

    Effects: one Verity send (keyed `verity:send:<GHL message id>`) and its message mapping, or,
    when the message cannot be sent (opted out, invalid number, no text, no Verity), the GHL
    message set `failed` with the reason and nothing sent.
    """
    ctx.direction = GHL_TO_TEXTING
    payload = event.payload
    ghl_message_id = _text(payload.get("messageId")) or event.entity_id
    if not ghl_message_id:
        return skipped(event, ctx.direction, "provider delivery without a messageId")
    kind = _text(payload.get("type"))
    if kind is not None and kind.upper() != "SMS":
        return skipped(event, ctx.direction, f"not an SMS (type {kind}): our provider sends SMS only")
    ghl = ghl_for(ctx, payload.get("locationId"))
    messages = MessageMappings(ctx.db)
    existing = await messages.by_ghl_id(ghl_message_id)
    if existing is not None and existing.texting_message_id is not None:
        return skipped(event, ctx.direction, f"already sent as texting message {existing.texting_message_id}")
    if existing is not None and existing.status == "failed":
        # Refused before (opted out, invalid number, no text): a refusal is final. A replay after
        # the person texted START must not send an old text the agent saw fail; the agent writes
        # again if they still want to (R-OPT-4, R-IDEM-1). But the refusal is recorded before GHL
        # is told, and telling GHL may have failed (the reason this event is being retried): with
        # the refusal's code recorded, GHL is told again (the same PUT, idempotent), never the text
        # sent. Without a code (refused before migration 0011) there is nothing to tell: skipped.
        error = REFUSAL_ERRORS.get(existing.error_code or "")
        if error is None:
            return skipped(event, ctx.direction, REFUSED_BEFORE)
        shown = await _tell_refusal(ghl, ghl_message_id, error)
        return skipped(event, ctx.direction, f"{REFUSED_BEFORE}; {shown}")
    phone = normalize_phone(payload.get("phone"), ctx.settings.default_phone_region)
    contact_id = _text(payload.get("contactId"))
    conversation_id = _text(payload.get("conversationId"))
    body = outbound_body(payload)

    async def refuse(error: ProviderError, reason: str) -> HandlerResult:
        # The refusal is recorded first: it is final whatever GHL answers (a replay after the
        # person texted START must not send this text), then shown to the agent.
        await messages.record(
            texting_message_id=None,
            ghl_message_id=ghl_message_id,
            direction="outbound",
            status="failed",
            conversation_id=conversation_id,
            ghl_contact_id=contact_id,
            to_number=phone,
            error_code=error.code,
        )
        shown = await _tell_refusal(ghl, ghl_message_id, error)
        return skipped(event, ctx.direction, f"not sent: {reason}; {shown}")

    if phone is None:
        return await refuse(INVALID_PHONE_ERROR, "invalid phone number")
    if not await sms_allowed(ctx.db, phone):  # at send time, every send (R-OPT-4)
        return await refuse(OPTED_OUT_ERROR, "recipient opted out of SMS (R-OPT-4)")
    if not body:
        return await refuse(EMPTY_MESSAGE_ERROR, "empty message")
    verity = ctx.connectors.verity if ctx.connectors is not None else None
    if verity is None:
        if ghl is not None:
            await ghl.update_message_status(
                ghl_message_id,
                "failed",
                error=ProviderError(
                    code="not_configured",
                    type=PROVIDER_ERROR_TYPE,
                    message="SMS sending is not configured in DF-Middleware",
                ),
            )
        raise PermanentError(
            "Verity is not configured (VERITY_BASE_URL and VERITY_API_KEY): the agent's SMS was not "
            "sent and its GHL message set failed; configure Verity and replay to send it"
        )
    ledger = EffectLedger(ctx.db, event)
    try:
        outcome = await ledger.perform(
            f"{SEND_EFFECT_PREFIX}{ghl_message_id}",
            "verity",
            lambda: _send(ctx.db, verity, ghl, phone, body, ghl_message_id),
        )
    except OptedOut:
        # Opted out after the check above (an operator's action meanwhile): consent is asked
        # again at the very send (R-OPT-4), and nothing left.
        return await refuse(OPTED_OUT_ERROR, "recipient opted out of SMS (R-OPT-4)")
    except EffectMaybeDone as exc:
        # An earlier run asked Verity to send and got no answer (interrupted, killed, or its
        # answer lost) before the outcome was recorded: the text may be out. Never sent again;
        # held for the operator (telling GHL again if an earlier run could not).
        raise await _hold_unconfirmed(
            ghl, ghl_message_id, "an earlier run got no answer from Verity"
        ) from exc
    except RetryableError as exc:
        if classify_send_failure(exc) == "not_sent":
            raise  # certainly not sent (the ledger dropped the intent): retried
        # Maybe sent. The intent stays in the ledger, so whatever happens next (GHL down while we
        # tell it, a kill) no run sends this text again (R-IDEM-2, break14 finding 1: telling GHL
        # used to happen inside the send, and GHL's own 503 was taken for Verity's "not sent").
        raise await _hold_unconfirmed(ghl, ghl_message_id, str(exc)) from exc
    texting_message_id = outcome.target_id
    await messages.record(
        texting_message_id=texting_message_id,
        ghl_message_id=ghl_message_id,
        direction="outbound",
        status="pending",
        conversation_id=conversation_id,
        ghl_contact_id=contact_id,
        to_number=phone,
        force_status=not outcome.already_done,
    )
    message = "SMS sent through Verity" if not outcome.already_done else "SMS already sent (recorded effect)"
    entry = success(event, ctx.direction, message, target_id=texting_message_id)
    return HandlerResult(entries=[entry], effects=list(ledger.performed))


async def _tell_refusal(ghl: GhlClient | None, ghl_message_id: str, error: ProviderError) -> str:
    """Set the refused agent's GHL message `failed` with the refusal's error (a PUT: told again on
    a retry, same result); what the agent was shown, for the sync_log. A GHL failure raises (the
    event is retried, and the retry tells again); a message GHL no longer knows is no failure."""
    if ghl is None:
        return "GHL not configured: message status not set"
    try:
        await ghl.update_message_status(ghl_message_id, "failed", error=error)
    except RemoteNotFound:
        return f"GHL no longer knows message {ghl_message_id}"
    return f"GHL message set failed ({error.code})"


async def _send(
    db: Database, verity: VerityClient, ghl: GhlClient | None, phone: str, body: str, ghl_message_id: str
) -> str:
    """One Verity send, the ledger's write: nothing else happens inside it, so the ledger judges
    Verity's failure and no other system's. A refusal (4xx) sets the GHL message failed with
    Verity's reason and dead-letters; any other failure is raised to the handler, which retries one
    that certainly did not send and holds one that may have (never sent again automatically: the
    GHL message is set failed and the event dead-lettered, so an operator checks Verity first)."""
    try:
        sent = await send_sms(db, verity, phone, body, correlation_id=ghl_message_id)
    except RemoteRejected as exc:
        if ghl is not None:
            await ghl.update_message_status(
                ghl_message_id,
                "failed",
                error=ProviderError(
                    code=f"verity_{exc.status_code}",
                    type=PROVIDER_ERROR_TYPE,
                    message=f"The texting system refused the message: {_refusal_text(exc)}",
                ),
            )
        raise
    return sent.message_id


async def _hold_unconfirmed(ghl: GhlClient | None, ghl_message_id: str, why: str) -> SyncError:
    """A send that may have gone out and cannot be looked up at Verity (R-IDEM-2): the GHL message
    is set failed (`send_unconfirmed`) and the error to dead-letter the event with is returned.
    Verity's `message.sent` for the same number and text resolves it (`confirm_late`); an
    operator who checked Verity and found nothing replays it with `--resend-unconfirmed`.

    When GHL cannot be told (down), the error returned is retryable, to tell GHL on the retry
    (never to send again: the ledger keeps the send's intent), and still names the send
    unconfirmed: if the retries run out on GHL's outage, the dead letter is one Verity's
    `message.sent` resolves, and its follow-up tells GHL `send_unconfirmed`, not `not_sent`
    (break14b finding 8)."""
    held = PermanentError(
        f"{UNCONFIRMED_ERROR} ({why}); it may have been sent: if Verity's message.sent for the "
        f"same number and text arrives within 24 h this event is resolved by it; otherwise check "
        f"Verity for correlation id {ghl_message_id}, and if it was not sent replay with "
        f"--resend-unconfirmed"
    )
    if ghl is not None:
        try:
            await ghl.update_message_status(ghl_message_id, "failed", error=SEND_UNCONFIRMED_ERROR)
        except RemoteNotFound:
            pass  # GHL no longer knows the message: nobody to tell
        except RetryableError as exc:
            return RetryableError(f"{held}. GHL not told yet: {exc}", retry_after=exc.retry_after)
    return held


def maybe_sent_dead_letter() -> ColumnElement[bool]:
    """SQL: a dead-lettered agent send (`WebhookEvent`) that may have gone out: its error says
    Verity never confirmed it, or its send's intent is still in the ledger with no outcome (the
    worker died on its last attempt, after Verity took the text: break14b finding 1)."""
    intent = (
        select(SyncEffect.id)
        .where(
            SyncEffect.effect_key == literal(SEND_EFFECT_PREFIX) + WebhookEvent.entity_id,
            SyncEffect.state == "started",
        )
        .exists()
    )
    return or_(WebhookEvent.error_message.contains(UNCONFIRMED_ERROR), intent)


def outbound_body(payload: Mapping[str, Any]) -> str:
    """The SMS text Verity is asked to send for a provider delivery: the message, then one line per
    attachment URL (Verity's send API takes text only)."""
    text = _text(payload.get("message")) or ""
    attachments = [a for a in payload.get("attachments") or [] if isinstance(a, str) and a.strip()]
    return "\n".join([text, *attachments]).strip()


@dataclass(frozen=True)
class UnconfirmedSend:
    """An agent's SMS whose Verity send got no answer, dead-lettered (see `_send`)."""

    event_id: uuid.UUID
    ghl_message_id: str
    location_id: str | None


async def unconfirmed_send_for(
    db: Database, to_number: str | None, body: str | None, region: str, *, sent_at: datetime
) -> UnconfirmedSend | None:
    """The dead-lettered agent SMS whose send Verity never confirmed, to this number with exactly
    this text, asked of Verity in the `UNCONFIRMED_WINDOW` before the text went out (`sent_at`,
    Verity's time, allowing `CLOCK_SKEW`), the oldest first; or None.

    Verity's receipts do not echo our `correlationId`, so a send whose answer was lost can only be
    recognised by what was sent: the recipient, the whole text, and a send that came after the
    request. A `message.sent` that matches is that send going out after all.
    """
    if to_number is None or not body:
        return None
    async with db.session() as session:
        rows = await session.execute(
            select(WebhookEvent.id, WebhookEvent.payload_json, WebhookEvent.entity_id)
            .where(
                WebhookEvent.event_type == PROVIDER_EVENT,
                WebhookEvent.status == "error",
                maybe_sent_dead_letter(),
                WebhookEvent.received_at >= sent_at - UNCONFIRMED_WINDOW,
                WebhookEvent.received_at <= sent_at + CLOCK_SKEW,
            )
            .order_by(WebhookEvent.received_at)
        )
        for event_id, payload, entity_id in rows.all():
            if normalize_phone(payload.get("phone"), region) != to_number:
                continue
            if outbound_body(payload) != body.strip():
                continue
            ghl_message_id = _text(payload.get("messageId")) or entity_id
            if ghl_message_id:
                return UnconfirmedSend(event_id, ghl_message_id, _text(payload.get("locationId")))
    return None


async def unconfirmed_dead_letter_of(db: Database, ghl_message_id: str) -> uuid.UUID | None:
    """The event of this GHL message's send when it is still dead-lettered as unconfirmed although
    the send is recorded: a late confirmation recorded the send, then its own outcome (which
    resolves the dead letter) was never committed. None otherwise (the usual case)."""
    async with db.session() as session:
        key = await event_of_send(session, ghl_message_id)
        if key is None:
            return None
        found: uuid.UUID | None = await session.scalar(
            select(WebhookEvent.id).where(
                WebhookEvent.id == key,
                WebhookEvent.status == "error",
                maybe_sent_dead_letter(),
            )
        )
    return found


def late_confirmation(dead_letter: uuid.UUID, texting_message_id: str | None) -> EventResolution:
    """The dead-lettered send resolved by Verity's receipt, as its sync_log row will name it."""
    actor = f"df-middleware: Verity confirmed the send as texting message {texting_message_id}"
    return EventResolution(dead_letter, actor=actor)


async def confirm_late(
    ctx: HandlerContext, event: ClaimedEvent, texting: TextingEvent, unconfirmed: UnconfirmedSend
) -> HandlerResult:
    """Verity sent the agent's SMS after all: put the GHL message back to `pending` (its receipts
    follow, R-TXT-3), record the send as the dead-lettered event's effect, map the message and
    resolve the dead letter, with a sync_log row saying how.

    In that order: a failure on GHL leaves nothing recorded and the receipt is retried whole; once
    the effect is recorded, a replay of the dead letter can never send again. The dead letter is
    resolved last, by the worker, in the transaction that records this receipt's outcome
    (`HandlerResult.resolves`: the queue alone writes event rows). If that transaction never
    commits (the process dies), the receipt is retried, finds its texting id mapped (or the send
    recorded) and takes `handle_message_sent`'s echo branch, which finds the dead letter still
    open (`unconfirmed_dead_letter_of`) and resolves it then."""
    assert texting.message_id is not None
    ghl = ghl_for(ctx, unconfirmed.location_id)
    if ghl is not None:
        # A GHL message deleted since is no reason to fail: the mapping still records the send.
        with contextlib.suppress(RemoteNotFound):
            await ghl.update_message_status(unconfirmed.ghl_message_id, "pending")
    key = f"{SEND_EFFECT_PREFIX}{unconfirmed.ghl_message_id}"
    await record_effect(ctx.db, key, "verity", texting.message_id, event_id=str(unconfirmed.event_id))
    await MessageMappings(ctx.db).record(
        texting_message_id=texting.message_id,
        ghl_message_id=unconfirmed.ghl_message_id,
        direction="outbound",
        status="sent",
        from_number=texting.from_number,
        to_number=texting.to_number,
        force_status=True,
    )
    return HandlerResult(
        entries=[
            success(
                event,
                ctx.direction,
                f"sent: the unconfirmed send of GHL message {unconfirmed.ghl_message_id} went out "
                f"(same number and text); mapped, GHL message back to pending, dead letter "
                f"{unconfirmed.event_id} resolved",
                target_id=unconfirmed.ghl_message_id,
            )
        ],
        resolves=[late_confirmation(unconfirmed.event_id, texting.message_id)],
    )


def _refusal_text(exc: RemoteRejected) -> str:
    """Verity's `{"error": …}` text when it gave one (never our request, which holds the body)."""
    if isinstance(exc.body, Mapping) and isinstance(exc.body.get("error"), str):
        return str(exc.body["error"])[:200]
    return f"HTTP {exc.status_code}"
