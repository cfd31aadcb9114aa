"""The normalised shape of a Verity texting webhook (SPEC §3.4).

Verity's payloads carry their fields at the root, under `message`, or under `data`, and not
always with the same names (`eventType`/`type`, `messageId`/`message.id`, `body`/`text`,
`timestamp`/`createdAt`). Ingest and the texting handlers both read them through
`normalize_texting_payload`, so there is one answer to "what does this webhook say".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from df_middleware.phones import normalize_phone

TEXTING_EVENT_TYPES = frozenset(
    {
        "message.received",
        "message.sent",
        "message.delivered",
        "message.failed",
        "optout.stop",
        "optout.help",
        "conversation.created",
    }
)
#: Events that report the state of a message we (or Verity) sent; their dedupe key carries the status.
STATUS_EVENT_TYPES = frozenset({"message.sent", "message.delivered", "message.failed"})
_INBOUND_TYPES = frozenset({"message.received", "optout.stop", "optout.help"})

_ALIASES: dict[str, tuple[str, ...]] = {
    "event_type": ("eventType", "event_type", "type", "event"),
    "message_id": ("messageId", "message_id"),
    "conversation_id": ("conversationId", "conversation_id", "chatId", "chat_id"),
    "direction": ("direction",),
    "from_raw": ("from", "fromNumber", "from_number"),
    "to_raw": ("to", "toNumber", "to_number"),
    "body": ("body", "text", "content"),
    "timestamp": ("timestamp", "createdAt", "created_at", "sentAt", "occurredAt"),
    "status": ("status",),
    "error_code": ("errorCode", "error_code"),
    "error_message": ("errorMessage", "error_message"),
}


@dataclass(frozen=True)
class TextingEvent:
    """What a texting webhook says, with phones in E.164 (None when absent or invalid)."""

    event_type: str | None
    message_id: str | None
    conversation_id: str | None
    direction: str | None
    from_number: str | None
    to_number: str | None
    from_raw: str | None
    to_raw: str | None
    body: str | None
    timestamp: str | None
    status: str | None
    error_code: str | None
    error_message: str | None

    @property
    def person_number(self) -> str | None:
        """The other party's number: the sender of inbound messages, the recipient of outbound ones."""
        return self.from_number if self.direction == "inbound" else self.to_number


def _containers(payload: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    found: list[Mapping[str, Any]] = [payload]
    for key in ("message", "data"):
        nested = payload.get(key)
        if isinstance(nested, Mapping):
            found.append(nested)
            inner = nested.get("message")
            if isinstance(inner, Mapping):
                found.append(inner)
    return found


def scalar_text(value: Any) -> str | None:
    """A JSON scalar as stripped text (numbers included, booleans not), None when empty or not one."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str | int | float):
        text = str(value).strip()
        return text or None
    return None


def _first(containers: list[Mapping[str, Any]], names: tuple[str, ...]) -> str | None:
    for container in containers:
        for name in names:
            value = scalar_text(container.get(name))
            if value is not None:
                return value
    return None


def derive_direction(event_type: str | None, given: str | None) -> str | None:
    """Direction as given when it is one we know, else from the event type; never from numbers."""
    if given and given.lower() in {"inbound", "outbound"}:
        return given.lower()
    if event_type in _INBOUND_TYPES:
        return "inbound"
    if event_type in STATUS_EVENT_TYPES:
        return "outbound"
    return None


def normalize_texting_payload(payload: Mapping[str, Any], region: str = "US") -> TextingEvent:
    containers = _containers(payload)
    values = {field: _first(containers, names) for field, names in _ALIASES.items()}
    # Nested shapes name the message id plainly `id` inside the message/data object.
    if values["message_id"] is None:
        values["message_id"] = _first(containers[1:], ("id",))
    # A root `message` that is a string is the text itself.
    if values["body"] is None and isinstance(payload.get("message"), str):
        values["body"] = payload["message"]
    event_type = values["event_type"].lower() if values["event_type"] else None
    direction = derive_direction(event_type, values["direction"])
    return TextingEvent(
        event_type=event_type,
        message_id=values["message_id"],
        conversation_id=values["conversation_id"],
        direction=direction,
        from_number=normalize_phone(values["from_raw"], region),
        to_number=normalize_phone(values["to_raw"], region),
        from_raw=values["from_raw"],
        to_raw=values["to_raw"],
        body=values["body"],
        timestamp=values["timestamp"],
        status=values["status"].lower() if values["status"] else None,
        error_code=values["error_code"],
        error_message=values["error_message"],
    )
