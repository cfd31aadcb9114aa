"""What classifying a webhook produces, shared by the per-source classifiers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from df_middleware.canonical import MAX_EXACT_FLOAT_ID
from df_middleware.phones import normalize_phone


class InvalidEvent(ValueError):
    """The JSON lacks what its source requires, or holds what it cannot (answered 422)."""


#: Longest identifier or event name a webhook may carry (characters). Real ids are far shorter
#: (GHL's are 20, Aloware's numbers, Verity's UUIDs); a longer one is refused with 422 rather than
#: stored, because ids go into indexed columns and keys, which must stay bounded (R-SEC-3).
MAX_ID_LENGTH = 256
#: Largest key or indexed column a classified event may produce, in UTF-8 bytes: PostgreSQL's
#: b-tree entries hold at most 2704 bytes. Only reachable with ids of multi-byte characters.
MAX_KEY_BYTES = 2400


def bounded_id(text: str, field: str) -> str:
    """`text`, or InvalidEvent naming `field` when it is longer than MAX_ID_LENGTH."""
    if len(text) > MAX_ID_LENGTH:
        raise InvalidEvent(f"{field} is longer than {MAX_ID_LENGTH} characters")
    return text


@dataclass(frozen=True)
class ClassifiedEvent:
    """Everything ingest stores besides the payload itself (R-IN-4, R-IN-5, R-Q-4)."""

    kind: str  # the table: 'webhook' | 'texting' | 'broadcast'
    source: str  # 'ghl' | 'aloware' | 'texting' | 'broadcast'
    event_type: str
    entity_type: str
    entity_id: str | None
    dedupe_key: str
    ordering_key: str
    columns: dict[str, Any] = field(default_factory=dict)  # table-specific columns

    def oversized_field(self) -> str | None:
        """The name of the first key or text column over MAX_KEY_BYTES, or None: the last guard
        before the insert, so that no input can reach the database's index size limit."""
        values: dict[str, Any] = {
            "event_type": self.event_type,
            "entity_type": self.entity_type,
            "entity_id": self.entity_id,
            "dedupe_key": self.dedupe_key,
            "ordering_key": self.ordering_key,
            **self.columns,
        }
        for name, value in values.items():
            if isinstance(value, str) and len(value.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
                return name
        return None


def scalar_id(value: Any, field: str) -> str | None:
    """Ids may arrive as numbers or strings; they are always stored as strings, at most
    MAX_ID_LENGTH characters (InvalidEvent naming `field` beyond)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
    elif isinstance(value, int):
        text = str(value)  # orjson reads integers beyond 64 bits as floats, so this is short
    elif isinstance(value, float) and value.is_integer():
        if abs(value) > MAX_EXACT_FLOAT_ID:
            # A number JSON carried beyond what a float holds exactly (orjson reads integers
            # beyond 64 bits as floats): two different ids would become one key (R-IDEM-2).
            raise InvalidEvent(f"{field} is a number too large to be an exact id; send it as a string")
        text = str(int(value))
    else:
        return None
    return bounded_id(text, field) if text else None


def dig(payload: Mapping[str, Any], path: str) -> Any:
    """`dig(p, "contact.id")` → p["contact"]["id"], or None when any step is missing."""
    current: Any = payload
    for part in path.split("."):
        if not isinstance(current, Mapping):
            return None
        current = current.get(part)
    return current


def first_id(payload: Mapping[str, Any], paths: tuple[str, ...]) -> str | None:
    for path in paths:
        value = scalar_id(dig(payload, path), path)
        if value is not None:
            return value
    return None


def event_name(payload: Mapping[str, Any], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = payload.get(key)
        if isinstance(value, str) and value.strip():
            return bounded_id(value.strip(), key)
    return None


def first_phone(payload: Mapping[str, Any], paths: tuple[str, ...], region: str) -> str | None:
    """The first valid phone (E.164) among `paths`: the person an event is about."""
    for path in paths:
        phone = normalize_phone(dig(payload, path), region)
        if phone:
            return phone
    return None
