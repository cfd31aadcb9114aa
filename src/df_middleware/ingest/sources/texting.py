"""Classification of Verity texting webhooks (SPEC §3.4)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from df_middleware.canonical import canonical_sha256
from df_middleware.ingest.sources.common import ClassifiedEvent, InvalidEvent, bounded_id
from df_middleware.texting_payload import STATUS_EVENT_TYPES, TEXTING_EVENT_TYPES, normalize_texting_payload


def _entity_type(event_type: str) -> str:
    if event_type not in TEXTING_EVENT_TYPES:
        return "unknown"
    if event_type.startswith("optout."):
        return "optout"
    if event_type == "conversation.created":
        return "conversation"
    return "message"


def classify_texting(payload: Mapping[str, Any], region: str = "US") -> ClassifiedEvent:
    event = normalize_texting_payload(payload, region)
    if event.event_type is None:
        raise InvalidEvent("texting webhook has no eventType")
    event_type = bounded_id(event.event_type, "eventType")
    for value, name in ((event.message_id, "messageId"), (event.conversation_id, "conversationId")):
        if value is not None:
            bounded_id(value, name)
    if event.status is not None:
        bounded_id(event.status, "status")
    if event.message_id:
        dedupe_key = f"texting:{event_type}:{event.message_id}"
        if event_type in STATUS_EVENT_TYPES:
            dedupe_key += f":{event.status or event_type.split('.', 1)[1]}"
    else:
        dedupe_key = f"texting:{event_type}:{canonical_sha256(payload)}"
    entity_type = _entity_type(event_type)
    entity_id = event.conversation_id if entity_type == "conversation" else event.message_id
    if event.person_number:
        ordering_key = f"phone:{event.person_number}"
    elif event.message_id:
        ordering_key = f"texting:message:{event.message_id}"
    elif event.conversation_id:
        ordering_key = f"texting:conversation:{event.conversation_id}"
    else:
        ordering_key = dedupe_key
    return ClassifiedEvent(
        kind="texting",
        source="texting",
        event_type=event_type,
        entity_type=entity_type,
        entity_id=entity_id,
        dedupe_key=dedupe_key,
        ordering_key=ordering_key,
        columns={
            "entity_type": entity_type,
            "entity_id": entity_id,
            "conversation_id": event.conversation_id,
            "from_number": event.from_number,
            "to_number": event.to_number,
        },
    )
