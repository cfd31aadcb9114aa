"""GHL opportunity and pipeline events → the contact's power-dialer lists (SPEC §6.5, R-AG-2).

A deal's stage places its contact on a list (`new lead` NEW_LEADS, `follow up` FOLLOW_UP, `hot`
HOT) or on none (`won`, `lost`, `closed`, `dead`, or a won/lost/abandoned status): see
`agent_routing.stage_placement`. Both shapes GHL sends are read:

- native webhooks (`OpportunityStageUpdate`, `OpportunityStatusUpdate`, `OpportunityCreate`,
  `OpportunityUpdate`, `OpportunityAssignedToUpdate`, …) carry the deal's `status` and its
  `pipelineStageId` but not the stage's name: a status closes or reopens the deal, and a stage
  is placed by name only when the event names it (`pipelineStageName` / `stageName`);
- workflow webhooks (`pipeline.stageChanged`, `opportunity.statusChanged`) carry the stage by
  name (GHL's own key is `pipleline_stage`, spelled so; `pipeline_stage` and `stage` are read too).

Neither carries the contact's tags, so the lists step reads the contact from GHL
(`call_lists.sync_contact_lists`). Stage changes are ordered by the event's time: an older one
delivered late does not move the contact back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from df_middleware.sync.call_lists import GHL_TO_ALOWARE, StageChange, sync_contact_lists
from df_middleware.sync.effects import skipped
from df_middleware.sync.registry import ClaimedEvent, HandlerContext, HandlerRegistry, HandlerResult
from df_middleware.timestamps import parse_iso8601

STAGE_NAME_KEYS = (
    "pipelineStageName",
    "stageName",
    "pipleline_stage",
    "pipeline_stage",
    "stage_name",
    "stage",
)
STATUS_KEYS = ("status", "opportunityStatus", "opportunity_status")
CONTACT_ID_KEYS = ("contactId", "contact_id")
NO_CONTACT = "opportunity names no contact"
NO_AGENTS = "no agents configured, so no power-dialer lists to keep (AGENTS_FILE)"
#: Opportunity events that do not move a contact: event type (lower case) → the skip reason.
NOT_MOVING = {
    "opportunitydelete": "an opportunity's deletion does not move its contact's lists",
    "opportunitymonetaryvalueupdate": "a deal's value does not move its contact's lists",
}


def _text(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _first(payloads: tuple[Mapping[str, Any], ...], keys: tuple[str, ...]) -> str | None:
    for payload in payloads:
        for key in keys:
            found = _text(payload.get(key))
            if found:
                return found
    return None


def opportunity_contact(payload: Mapping[str, Any]) -> tuple[str | None, StageChange]:
    """The contact an opportunity event is about, and what it says of the deal's stage."""
    nested = payload.get("opportunity")
    opportunity: Mapping[str, Any] = nested if isinstance(nested, Mapping) else {}
    contact = payload.get("contact")
    contact_map: Mapping[str, Any] = contact if isinstance(contact, Mapping) else {}
    contact_id = _first((payload, opportunity), CONTACT_ID_KEYS) or _text(contact_map.get("id"))
    stage = StageChange(
        stage_name=_first((payload, opportunity), STAGE_NAME_KEYS),
        status=_first((payload, opportunity), STATUS_KEYS),
        at=parse_iso8601(payload.get("timestamp")) or parse_iso8601(opportunity.get("dateUpdated")),
    )
    return contact_id, stage


async def handle_opportunity(ctx: HandlerContext, event: ClaimedEvent) -> HandlerResult:
    """An opportunity's stage or status changed (or it was created): its contact's lists follow
    (R-AG-2); the contact's agent is resolved again on the way (R-AG-1)."""
    ctx.direction = GHL_TO_ALOWARE
    contact_id, stage = opportunity_contact(event.payload)
    if contact_id is None:
        return skipped(event, GHL_TO_ALOWARE, NO_CONTACT)
    entry = await sync_contact_lists(ctx, contact_id, stage=stage)
    if entry is None:
        return skipped(event, GHL_TO_ALOWARE, NO_AGENTS)
    return HandlerResult(entries=[entry])


async def handle_not_moving(ctx: HandlerContext, event: ClaimedEvent) -> HandlerResult:
    """Opportunity events that say nothing about where the contact belongs: visibly skipped."""
    ctx.direction = GHL_TO_ALOWARE
    return skipped(event, GHL_TO_ALOWARE, NOT_MOVING[event.event_type.lower()])


def register_handlers(registry: HandlerRegistry) -> None:
    """Opportunity events of both GHL shapes (§6.5)."""
    registry.register(
        "ghl",
        "OpportunityCreate",
        "OpportunityUpdate",
        "OpportunityStageUpdate",
        "OpportunityStatusUpdate",
        "OpportunityAssignedToUpdate",
        "opportunity.statusChanged",
        "pipeline.stageChanged",
    )(handle_opportunity)
    registry.register("ghl", "OpportunityDelete", "OpportunityMonetaryValueUpdate")(handle_not_moving)
