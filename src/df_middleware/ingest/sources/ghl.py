"""Classification of GHL webhooks (SPEC §3.1, §3.2).

Event names come from `type`, then `event`, then `eventType`, and are matched exactly (case
insensitive) against the table below: GHL's native PascalCase names and the dotted names GHL
workflows are configured to send. An unknown name is still stored (entity `unknown`) so that
nothing GHL sends is lost; the worker records it as an unsupported event.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from df_middleware.canonical import canonical_sha256
from df_middleware.ingest.sources.common import (
    ClassifiedEvent,
    InvalidEvent,
    event_name,
    first_id,
    first_phone,
    scalar_id,
)

NAME_KEYS = ("type", "event", "eventType")


@dataclass(frozen=True)
class EventSpec:
    name: str  # canonical spelling
    entity_type: str
    id_paths: tuple[str, ...]
    id_required: bool = False


def _specs(entity: str, paths: tuple[str, ...], *names: str, required: bool = False) -> list[EventSpec]:
    return [EventSpec(n, entity, paths, required) for n in names]


_NATIVE_CONTACT = ("id", "contactId")
_WORKFLOW_CONTACT = ("contactId", "contact_id", "contact.id", "id")
_WORKFLOW_OPPORTUNITY = ("opportunityId", "opportunity_id", "opportunity.id", "id")

GHL_EVENTS: dict[str, EventSpec] = {
    spec.name.lower(): spec
    for spec in [
        *_specs(
            "contact",
            _NATIVE_CONTACT,
            "ContactCreate",
            "ContactUpdate",
            "ContactDelete",
            "ContactTagUpdate",
            "ContactDndUpdate",
            required=True,
        ),
        *_specs(
            "contact",
            _WORKFLOW_CONTACT,
            "contact.created",
            "contact.updated",
            "contact.changed",
            "contact.deleted",
            "tag.added",
            "tag.removed",
            "contact.tag.added",
            "contact.tag.removed",
            required=True,
        ),
        *_specs("message", ("messageId", "emailMessageId"), "InboundMessage", "OutboundMessage"),
        *_specs(
            "opportunity",
            ("id",),
            "OpportunityCreate",
            "OpportunityDelete",
            "OpportunityUpdate",
            "OpportunityStageUpdate",
            "OpportunityStatusUpdate",
            "OpportunityAssignedToUpdate",
            "OpportunityMonetaryValueUpdate",
        ),
        *_specs("opportunity", _WORKFLOW_OPPORTUNITY, "opportunity.statusChanged", "pipeline.stageChanged"),
        *_specs("app", ("locationId", "companyId"), "AppInstall", "INSTALL", "AppUninstall", "UNINSTALL"),
        *_specs("note", ("id",), "NoteCreate", "NoteUpdate", "NoteDelete"),
        *_specs("task", ("id",), "TaskCreate", "TaskComplete", "TaskDelete"),
        *_specs(
            "appointment",
            ("appointment.id", "id"),
            "AppointmentCreate",
            "AppointmentUpdate",
            "AppointmentDelete",
        ),
    ]
}

PROVIDER_EVENT_TYPE = "ProviderOutboundMessage"


def _ordering_key(payload: Mapping[str, Any], entity_type: str, entity_id: str, region: str) -> str:
    """The queue's ordering key (R-Q-4).

    A contact event is keyed by its contact, `ghl:contact:<id>`, whatever phone it carries: the
    phone is what a contact event may change, and keyed by it a contact's changes before and after
    a new number would sit under two keys and could run at once, an older change finishing last
    (its staleness check passed before the newer one was applied). Other events: `phone:<E.164>`
    when the payload names the person's phone; else the person's GHL contact id when it names one
    (messages, notes, tasks… of one contact stay in order, and with its contact events); else the
    entity.
    """
    if entity_type == "contact":
        return f"ghl:contact:{entity_id}"
    phone = first_phone(payload, ("phone", "contact.phone"), region)
    if phone:
        return f"phone:{phone}"
    contact_id = scalar_id(payload.get("contactId"), "contactId")
    if contact_id:
        return f"ghl:contact:{contact_id}"
    return f"ghl:{entity_type}:{entity_id}"


def classify_ghl(payload: Mapping[str, Any], region: str = "US") -> ClassifiedEvent:
    name = event_name(payload, NAME_KEYS)
    if name is None:
        raise InvalidEvent("GHL webhook has no event type (type, event or eventType)")
    spec = GHL_EVENTS.get(name.lower())
    if spec is None:
        entity_type, event_type = "unknown", name
        entity_id = first_id(payload, ("id", "contactId")) or ""
    else:
        entity_type, event_type = spec.entity_type, spec.name
        entity_id = first_id(payload, spec.id_paths) or ""
        if spec.id_required and not entity_id:
            raise InvalidEvent(f"GHL {spec.name} webhook has no {spec.entity_type} id")
    webhook_id = scalar_id(payload.get("webhookId"), "webhookId")
    if webhook_id:
        dedupe_key = f"ghl:{webhook_id}"
    else:
        dedupe_key = f"ghl:{event_type}:{entity_id}:{canonical_sha256(payload)}"
    return ClassifiedEvent(
        kind="webhook",
        source="ghl",
        event_type=event_type,
        entity_type=entity_type,
        entity_id=entity_id,
        dedupe_key=dedupe_key,
        ordering_key=_ordering_key(payload, entity_type, entity_id or "-", region),
        columns={"source": "ghl"},
    )


def classify_ghl_provider(payload: Mapping[str, Any], region: str = "US") -> ClassifiedEvent:
    """An agent's SMS from GHL, posted to our conversation provider's Delivery URL (§3.2)."""
    message_id = scalar_id(payload.get("messageId"), "messageId")
    if message_id is None:
        raise InvalidEvent("provider delivery has no messageId")
    return ClassifiedEvent(
        kind="webhook",
        source="ghl",
        event_type=PROVIDER_EVENT_TYPE,
        entity_type="message",
        entity_id=message_id,
        dedupe_key=f"ghl-provider:{message_id}",
        ordering_key=_ordering_key(payload, "message", message_id, region),
        columns={"source": "ghl"},
    )
