"""entity lookups: "what happened to this lead?" by its id alone, in the events list and the sync log

The operator's first question names one entity (a GHL contact id, an Aloware id). The seed's indexes
lead with `entity_type`, so a filter on `entity_id` alone cannot use them: on PostgreSQL a generic
plan then walks `received_at` backwards through a million events to find a handful (measured
362 to 514 ms median on 1 M events, 0.09 ms with this index). Texting and broadcast events already
have an index leading with their entity column.
- `webhook_events_entity_id_received_idx` (entity_id, received_at, id): the events list filtered by
  entity id, newest first, keyset-paged;
- `sync_log_entity_id_started_idx` (entity_id, started_at, id): the sync log filtered by entity id.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "webhook_events_entity_id_received_idx",
        "webhook_events",
        ["entity_id", "received_at", "id"],
        unique=False,
    )
    op.create_index(
        "sync_log_entity_id_started_idx", "sync_log", ["entity_id", "started_at", "id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("sync_log_entity_id_started_idx", table_name="sync_log")
    op.drop_index("webhook_events_entity_id_received_idx", table_name="webhook_events")
