"""An operator's consent decision, recorded and queued to be told (R-OPT-2, R-OPT-3, R-OPT-6).

`df-middleware optout add/remove` (and the admin API, later) decide through `decide_and_tell`: the
`manual` decision is recorded in its registry and history exactly as `consent.manual` records it,
and in the *same transaction* an event is queued — `webhook_events`, source `operator`, type
`consent.decided`, ordering key `phone:<E.164>` — that the worker hands to
`sync.operator_consent`, which tells GHL (SMS or Call DND) and the dialer. Recorded and queued
together or neither: a crash in between cannot leave GHL showing a consent the registry no longer
holds. Sharing the person's ordering key puts the telling in line with their texts and agent
sends, and through the queue it gets the worker's retries, dead letters and `events` commands
like any other event.
"""

from __future__ import annotations

from df_middleware.consent.decisions import Channel, ConsentChange, Status
from df_middleware.consent.manual import decide_manually
from df_middleware.consent.store import ConsentOutcome
from df_middleware.db.models import WebhookEvent
from df_middleware.db.session import Database
from df_middleware.sync.operator_consent import CONSENT_DECIDED, OPERATOR_SOURCE


def consent_decided_event(change: ConsentChange) -> WebhookEvent:
    """The queued event that tells other systems about an operator's decision (`change`)."""
    return WebhookEvent.queued_internally(
        source=OPERATOR_SOURCE,
        event_type=CONSENT_DECIDED,
        entity_type="phone",
        entity_id=change.phone,
        ordering_key=f"phone:{change.phone}",
        dedupe_prefix=f"{OPERATOR_SOURCE}:{CONSENT_DECIDED}:{change.channel}:{change.phone}",
        payload={
            "phone": change.phone,
            "channel": change.channel,
            "status": change.status,
            "reason": change.reason,
            "actor": change.actor,
            "decided_at": change.event_at.isoformat(),
        },
    )


async def decide_and_tell(
    db: Database, phone: str, status: Status, *, channel: Channel, reason: str, actor: str
) -> ConsentOutcome:
    """Record an operator's decision about an E.164 number and, when it takes effect, queue the
    event that tells GHL and the dialer (one transaction)."""
    return await decide_manually(
        db,
        phone,
        status,
        channel=channel,
        reason=reason,
        actor=actor,
        also=lambda change: [consent_decided_event(change)],
    )
