"""An agent's text the service gave up on, shown `failed` in GHL however long GHL is down
(R-TXT-5, R-TXT-3; break14 finding 5).

When an agent's `ProviderOutboundMessage` runs out of retries (usually Verity refused every
attempt, so the text certainly did not leave; sometimes a held send could not tell GHL, or the
last attempt died mid-send), the worker dead-letters it and, in the same transaction, queues the
follow-up `given_up_follow_up` builds: a `webhook_events` row, source `service`, type
`agent_text.given_up`, on its own ordering key (`ghl:message:<id>`). Its handler sets the GHL
message `failed`. It is an ordinary event: when GHL is down at that moment too (the outage that
made Verity unreachable is often the network's, not one partner's), it is retried like any other
and, should GHL stay down through every retry, dead-lettered where the operator sees it. Before,
GHL was told once, best effort, right after the dead letter: a GHL failure or a kill between the
two left the agent's message `pending` forever.

What it tells is decided when it runs (`handle_agent_text_given_up`): nothing for a text that went
out after all, a refusal told again, `send_unconfirmed` for a send Verity may have, `not_sent`
otherwise. Setting `failed` is a PUT of a final status, so a repeat changes nothing. It has its own
ordering key, so that waiting out a GHL outage holds none of the person's later events.
"""

from __future__ import annotations

from collections.abc import Sequence

from df_middleware.connectors.ghl_models import ProviderError
from df_middleware.connectors.http import RemoteNotFound
from df_middleware.db.models import WebhookEvent
from df_middleware.sync.agent_sends import (
    PROVIDER_ERROR_TYPE,
    REFUSAL_ERRORS,
    SEND_UNCONFIRMED_ERROR,
    ghl_for,
)
from df_middleware.sync.effects import EffectLedger, skipped, success
from df_middleware.sync.message_mappings import SEND_EFFECT_PREFIX, MessageMappings
from df_middleware.sync.registry import ClaimedEvent, HandlerContext, HandlerResult

#: The source of events the service queues for itself, and this one's type.
SERVICE_SOURCE = "service"
AGENT_TEXT_GIVEN_UP = "agent_text.given_up"
GHL_TO_TEXTING = "ghl_to_texting"
NOT_SENT_ERROR = ProviderError(
    code="not_sent",
    type=PROVIDER_ERROR_TYPE,
    message="The SMS could not be sent; DF-Middleware gave up after repeated failures",
)
#: The last error is kept for the record, bounded (it is ours, never the message text).
ERROR_CHARS = 500


def given_up_follow_up(send: ClaimedEvent, error: str) -> Sequence[WebhookEvent]:
    """The event queued with a dead-lettered agent send (retries ran out) that tells GHL it failed;
    none when the send names no GHL message (nothing to tell)."""
    message_id = send.payload.get("messageId")
    ghl_message_id = message_id.strip() if isinstance(message_id, str) else ""
    ghl_message_id = ghl_message_id or (send.entity_id or "")
    if not ghl_message_id:
        return ()
    location_id = send.payload.get("locationId")
    return (
        WebhookEvent.queued_internally(
            source=SERVICE_SOURCE,
            event_type=AGENT_TEXT_GIVEN_UP,
            entity_type="message",
            entity_id=ghl_message_id,
            # Its own key: a GHL-only status write waiting out a GHL outage must not hold the
            # person's later events (the agent's next text needs Verity only; break14b finding 6).
            ordering_key=f"ghl:message:{ghl_message_id}",
            # One per dead letter: a send replayed and given up again is told again.
            dedupe_prefix=f"{SERVICE_SOURCE}:{AGENT_TEXT_GIVEN_UP}:{send.id}",
            payload={
                "messageId": ghl_message_id,
                "locationId": location_id if isinstance(location_id, str) else None,
                "send_event_id": str(send.id),
                "error": error[:ERROR_CHARS],
            },
        ),
    )


async def handle_agent_text_given_up(ctx: HandlerContext, event: ClaimedEvent) -> HandlerResult:
    """Tell GHL how the given-up agent text ended, from what is recorded when this runs:

    - sent after all (a mapping with a texting id: a replay went out, or Verity's receipt
      confirmed a held send): nothing to tell;
    - refused (a mapping `failed` with its refusal's code: opted out, invalid number, no text)
      whose `failed` GHL never received (down through every retry): that refusal, told again
      (break14b finding 4); refused before codes were kept: nothing to tell;
    - maybe sent (the send's intent is in the ledger with no outcome: Verity may have it): `failed`
      with `send_unconfirmed`, never "could not be sent" (break14b findings 1 and 8);
    - else (Verity refused every attempt: certainly not sent): `failed` with `not_sent`.

    A GHL failure raises: retried."""
    ctx.direction = GHL_TO_TEXTING
    ghl_message_id = event.entity_id or ""
    ghl = ghl_for(ctx, event.payload.get("locationId"))
    if ghl is None:
        return skipped(event, ctx.direction, "GHL not configured: message status not set")
    existing = await MessageMappings(ctx.db).by_ghl_id(ghl_message_id)
    if existing is not None and existing.texting_message_id is not None:
        return skipped(
            event, ctx.direction, f"sent after all, as texting message {existing.texting_message_id}"
        )
    if existing is not None and existing.status == "failed":
        refusal = REFUSAL_ERRORS.get(existing.error_code or "")
        if refusal is None:
            return skipped(event, ctx.direction, "already failed with its own reason")
        error, why = refusal, f"refused ({refusal.code})"
    elif await EffectLedger.intent_of(ctx.db, f"{SEND_EFFECT_PREFIX}{ghl_message_id}"):
        error, why = SEND_UNCONFIRMED_ERROR, "Verity may have sent it (its send got no answer)"
    else:
        error, why = NOT_SENT_ERROR, "given up after repeated failures: not sent"
    try:
        await ghl.update_message_status(ghl_message_id, "failed", error=error)
    except RemoteNotFound:
        return skipped(event, ctx.direction, f"GHL no longer knows message {ghl_message_id}")
    return HandlerResult(
        entries=[
            success(
                event,
                ctx.direction,
                f"GHL message set failed ({error.code}): {why}",
                target_id=ghl_message_id,
            )
        ]
    )
