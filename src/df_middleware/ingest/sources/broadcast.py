"""Classification of Verity broadcast webhooks (SPEC §3.5)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from df_middleware.canonical import canonical_sha256
from df_middleware.ingest.sources.common import ClassifiedEvent, InvalidEvent, event_name, scalar_id


def classify_broadcast(payload: Mapping[str, Any], region: str = "US") -> ClassifiedEvent:
    broadcast_id = scalar_id(payload.get("broadcastId"), "broadcastId") or scalar_id(
        payload.get("broadcast_id"), "broadcast_id"
    )
    if broadcast_id is None:
        raise InvalidEvent("broadcast webhook has no broadcastId")
    event_type = event_name(payload, ("eventType", "event_type"))
    if event_type is None:
        raise InvalidEvent("broadcast webhook has no eventType")
    discriminator = (
        scalar_id(payload.get("eventId"), "eventId")
        or scalar_id(payload.get("timestamp"), "timestamp")
        or canonical_sha256(payload)
    )
    return ClassifiedEvent(
        kind="broadcast",
        source="broadcast",
        event_type=event_type,
        entity_type="broadcast",
        entity_id=broadcast_id,
        dedupe_key=f"broadcast:{broadcast_id}:{event_type}:{discriminator}",
        ordering_key=f"broadcast:broadcast:{broadcast_id}",
        columns={"broadcast_id": broadcast_id},
    )
