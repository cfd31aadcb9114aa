"""dashboard lists: indexes that keep every list and count of the dashboard and admin API fast with 1 M events

Measured with bench/dashboard.py on 1 M seeded events (docs/benchmarks.md, "Dashboard with 1 M
events"); each index serves one query that otherwise read most of a big table:
- `<event table>_status_received_idx` (status, received_at, id): the events list filtered by
  status, newest first (dead letters: ~3,000 rows walked per page without it), and the overview's
  count of queued statuses for the texting and broadcast tables (index-only);
- `webhook_events_status_source_idx` (status, source): the overview's queue depth by source and
  status reads only the queued statuses' entries (index-only), not the whole table;
- `<event table>_event_type_idx` (lower(event_type), received_at, id): the event_type filter,
  which compares without case; without it a type a table never holds walks the whole table;
- `optout_registry_last_event_idx`, `dnc_registry_last_event_idx` (last_event_at, id): the
  opt-out list's order; `contact_mappings_updated_at_idx` (updated_at, id): the mappings list's.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EVENT_TABLES = ("webhook_events", "texting_webhook_events", "broadcast_webhook_events")


def upgrade() -> None:
    for table in EVENT_TABLES:
        op.create_index(f"{table}_status_received_idx", table, ["status", "received_at", "id"], unique=False)
        op.create_index(
            f"{table}_event_type_idx",
            table,
            [sa.text("lower(event_type)"), "received_at", "id"],
            unique=False,
        )
    op.create_index("webhook_events_status_source_idx", "webhook_events", ["status", "source"], unique=False)
    op.create_index(
        "optout_registry_last_event_idx", "optout_registry", ["last_event_at", "id"], unique=False
    )
    op.create_index("dnc_registry_last_event_idx", "dnc_registry", ["last_event_at", "id"], unique=False)
    op.create_index("contact_mappings_updated_at_idx", "contact_mappings", ["updated_at", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("contact_mappings_updated_at_idx", table_name="contact_mappings")
    op.drop_index("dnc_registry_last_event_idx", table_name="dnc_registry")
    op.drop_index("optout_registry_last_event_idx", table_name="optout_registry")
    op.drop_index("webhook_events_status_source_idx", table_name="webhook_events")
    for table in reversed(EVENT_TABLES):
        op.drop_index(f"{table}_event_type_idx", table_name=table)
        op.drop_index(f"{table}_status_received_idx", table_name=table)
