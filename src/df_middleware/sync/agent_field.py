"""The GHL custom field that names a contact's agent (R-AG-1): its definition id, found by name.

Native webhooks and the API carry custom fields as `[{id, value}]`; the definition whose `fieldKey`
(without `contact.`) or `name` is GHL_ASSIGNED_AGENT_FIELD_KEY (compared as `agent_routing.name_key`)
is found through `GET /locations/{id}/customFields` once per process, and read again — at most every
FIELD_REFRESH_SECONDS — when a contact's fields do not include it (a field re-created in GHL gets a
new id). Workflow webhooks carry the field by name, which needs no definition.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from df_middleware.connectors.ghl import GhlClient
from df_middleware.connectors.ghl_models import CustomFieldDefinition
from df_middleware.sync.agent_routing import ContactSignals, name_key

#: A cached custom-field definition list is re-read at most this often when a contact's value for
#: the agent field cannot be found in it.
FIELD_REFRESH_SECONDS = 60.0


class AgentField:
    """The agent custom field's definition id (R-AG-1), found by name once per process and
    re-read, at most every FIELD_REFRESH_SECONDS, when a contact's custom fields do not include
    it."""

    _ids: dict[tuple[str, str], str | None] = {}
    _read_at: dict[tuple[str, str], float] = {}

    @classmethod
    async def value(cls, ghl: GhlClient, setting: str, signals: ContactSignals) -> str | None:
        wanted = name_key(setting)
        named = signals.named_fields.get(wanted)
        if named is not None or not signals.field_ids:
            return named  # a workflow webhook's own word, by name, at the time of the event
        key = (ghl.location_id, wanted)
        # No lock: two events reading the definitions at once cost one extra read, nothing else.
        if key not in cls._ids:
            await cls._read(ghl, key, refresh=False)
        field_id = cls._ids.get(key)
        if (field_id is None or field_id not in signals.field_ids) and cls._stale(key):
            await cls._read(ghl, key, refresh=True)
            field_id = cls._ids.get(key)
        if field_id is not None and field_id in signals.field_ids:
            return signals.field_ids[field_id]
        return named

    @classmethod
    def _stale(cls, key: tuple[str, str]) -> bool:
        return time.monotonic() - cls._read_at.get(key, 0.0) >= FIELD_REFRESH_SECONDS

    @classmethod
    async def _read(cls, ghl: GhlClient, key: tuple[str, str], *, refresh: bool) -> None:
        definitions = await ghl.custom_fields(refresh=refresh)
        cls._ids[key] = find_field_id(definitions, key[1])
        cls._read_at[key] = time.monotonic()

    @classmethod
    def forget(cls) -> None:
        """Tests: start from an empty cache."""
        cls._ids.clear()
        cls._read_at.clear()


def find_field_id(definitions: Sequence[CustomFieldDefinition], wanted: str) -> str | None:
    """R-AG-1: the definition whose `fieldKey` (without `contact.`) or `name` is `wanted`, both
    compared as `name_key`s; a `fieldKey` match wins over a `name` match."""
    by_key = [d for d in definitions if d.field_key and name_key(d.field_key) == wanted]
    by_name = [d for d in definitions if d.name and name_key(d.name) == wanted]
    for found in (by_key, by_name):
        if found:
            return found[0].id
    return None
