"""Classification of Aloware webhooks (SPEC §3.3): `{"event": "<name>", "body": {...}}`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from df_middleware.canonical import canonical_sha256
from df_middleware.ingest.sources.common import (
    ClassifiedEvent,
    InvalidEvent,
    bounded_id,
    first_phone,
    scalar_id,
)

#: Exact Aloware event names (matched case-insensitively) → entity type.
ALOWARE_EVENTS: dict[str, tuple[str, str]] = {
    name.lower(): (name, entity)
    for name, entity in [
        ("Contact Created", "contact"),
        ("Contact Updated", "contact"),
        ("Contact Disposed", "contact"),
        ("Contact DNC Updated", "contact"),
        ("Call Disposed", "call"),
        ("Communication Initiated", "call"),
        ("Communication Disposed", "call"),
        ("Call Summarized", "summary"),
        ("Recording Saved", "recording"),
        ("Transcription Saved", "transcription"),
        ("Voicemail Saved", "voicemail"),
        ("Appointment Saved", "appointment"),
    ]
}
#: The `OutboundPhoneCall-<Status>` / `InboundPhoneCall-<Status>` families, matched whole.
_CALL_FAMILY = re.compile(r"^(outbound|inbound)phonecall-([a-z]+(?:-[a-z]+)*)$", re.IGNORECASE)
#: Entities that belong to a call: without a phone, they are ordered behind their call.
_CALL_CHILDREN = frozenset({"summary", "recording", "transcription", "voicemail"})


def canonical_aloware_name(name: str) -> tuple[str, str] | None:
    """(canonical name, entity type) for a known event name, else None."""
    known = ALOWARE_EVENTS.get(name.lower())
    if known:
        return known
    match = _CALL_FAMILY.match(name)
    if match:
        direction = match.group(1).capitalize()
        status = "-".join(part.capitalize() for part in match.group(2).split("-"))
        return f"{direction}PhoneCall-{status}", "call"
    return None


def aloware_event_name(payload: Mapping[str, Any]) -> str:
    name = payload.get("event")
    if not isinstance(name, str) or not name.strip():
        raise InvalidEvent("Aloware webhook has no event name")
    return bounded_id(name.strip(), "event")


def classify_aloware(payload: Mapping[str, Any], region: str = "US") -> ClassifiedEvent:
    name = aloware_event_name(payload)
    body = payload.get("body")
    if not isinstance(body, Mapping):
        raise InvalidEvent("Aloware webhook has no body object")
    known = canonical_aloware_name(name)
    event_type, entity_type = known if known else (name, "unknown")
    call_id = scalar_id(body.get("call_id"), "body.call_id") or scalar_id(
        body.get("communication_id"), "body.communication_id"
    )
    entity_id = scalar_id(body.get("id"), "body.id")
    if entity_id is None and entity_type in _CALL_CHILDREN:
        entity_id = call_id
    if entity_id is None and entity_type in {"contact", "call"}:
        raise InvalidEvent(f"Aloware {event_type} webhook has no body.id")
    phone = first_phone(body, ("phone_number", "contact.phone_number"), region)
    if entity_type == "contact":
        # By the contact, not its phone: a `Contact Updated` may bring a new number, and the
        # contact's changes before and after it must still run one at a time, in order (R-Q-4).
        ordering_key = f"aloware:contact:{entity_id}"
    elif phone:
        ordering_key = f"phone:{phone}"
    elif entity_type in _CALL_CHILDREN and call_id:
        ordering_key = f"aloware:call:{call_id}"
    else:
        ordering_key = f"aloware:{entity_type}:{entity_id or '-'}"
    return ClassifiedEvent(
        kind="webhook",
        source="aloware",
        event_type=event_type,
        entity_type=entity_type,
        entity_id=entity_id or "",
        dedupe_key=f"aloware:{event_type}:{canonical_sha256(body)}",
        ordering_key=ordering_key,
        columns={"source": "aloware"},
    )
