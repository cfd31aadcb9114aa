"""What classifying a webhook produces, shared by the per-source classifiers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from df_middleware.phones import normalize_phone


class InvalidEvent(ValueError):
    """The JSON lacks what its source requires (answered 422)."""


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


def scalar_id(value: Any) -> str | None:
    """Ids may arrive as numbers or strings; they are always stored as strings."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | str):
        text = str(value).strip()
        return text or None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return None


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
        value = scalar_id(dig(payload, path))
        if value is not None:
            return value
    return None


def event_name(payload: Mapping[str, Any], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = payload.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def first_phone(payload: Mapping[str, Any], paths: tuple[str, ...], region: str) -> str | None:
    """The first valid phone (E.164) among `paths`: the person an event is about."""
    for path in paths:
        phone = normalize_phone(dig(payload, path), region)
        if phone:
            return phone
    return None
