"""The three event tables seen as one queue: where each keeps its source and entity.

`webhook_events` stores GHL and Aloware webhooks with explicit `source`/`entity_*` columns;
`texting_webhook_events` has no source column (it is always 'texting'); broadcast rows are
always about one broadcast. The worker, the admin operations and the stats read them all through
this one description instead of repeating the differences.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import ColumnElement, Table, literal

from df_middleware.db.models import EVENT_MODELS
from df_middleware.sync.registry import EventKind


@dataclass(frozen=True)
class EventTable:
    kind: EventKind
    table: Table

    @property
    def name(self) -> str:
        return self.table.name

    @property
    def source_column(self) -> ColumnElement[str]:
        """SQL expression of the event's source ('ghl'/'aloware', 'texting' or 'broadcast')."""
        if self.kind == "webhook":
            return self.table.c.source
        return literal(self.kind)

    @property
    def entity_id_column(self) -> ColumnElement[Any]:
        """Column holding the entity id (the broadcast id for broadcasts)."""
        return self.table.c.broadcast_id if self.kind == "broadcast" else self.table.c.entity_id

    def source(self, row: Mapping[Any, Any]) -> str:
        return str(row["source"]) if self.kind == "webhook" else self.kind

    def entity_type(self, row: Mapping[Any, Any]) -> str:
        return "broadcast" if self.kind == "broadcast" else str(row["entity_type"])

    def entity_id(self, row: Mapping[Any, Any]) -> str | None:
        value = row["broadcast_id"] if self.kind == "broadcast" else row["entity_id"]
        return None if value is None else str(value)

    def identity_columns(self) -> list[ColumnElement[Any]]:
        """The table-specific columns `source`/`entity_type`/`entity_id` are read from."""
        if self.kind == "webhook":
            return [self.table.c.source, self.table.c.entity_type, self.table.c.entity_id]
        if self.kind == "texting":
            return [self.table.c.entity_type, self.table.c.entity_id]
        return [self.table.c.broadcast_id]


#: In claim order. The worker rotates the starting table each round so none starves.
EVENT_TABLES: tuple[EventTable, ...] = tuple(
    EventTable(kind=cast(EventKind, kind), table=cast(Table, model.__table__))
    for kind, model in EVENT_MODELS.items()
)
EVENT_TABLES_BY_KIND: dict[str, EventTable] = {t.kind: t for t in EVENT_TABLES}
EVENT_TABLES_BY_NAME: dict[str, EventTable] = {t.name: t for t in EVENT_TABLES}
