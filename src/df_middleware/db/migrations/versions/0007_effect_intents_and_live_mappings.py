"""effect intents, same-second ordering, disposition watermark, live-only mapping uniqueness

- `sync_effects.state`: `started` is an intent, committed before a non-idempotent remote write
  leaves; `done` is the write's recorded outcome (every row written before this revision).
- `contact_mappings.*_received_at`: when the newest applied change reached us, which orders two
  changes with the same (one-second) event time; and the watermark of Aloware dispositions.
- The unique indexes on the mapping's GHL and Aloware ids hold for live rows only: a deleted GHL
  contact's row is history, and the person's next contact gets a row of its own.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from df_middleware.db.types import UTCDateTime

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LIVE = sa.text("deleted_at IS NULL")


def upgrade() -> None:
    with op.batch_alter_table("sync_effects", schema=None) as batch_op:
        batch_op.add_column(sa.Column("state", sa.Text(), nullable=False, server_default="done"))
    with op.batch_alter_table("contact_mappings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ghl_event_received_at", UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("aloware_event_received_at", UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("disposition_event_at", UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("disposition_received_at", UTCDateTime(timezone=True), nullable=True))
        batch_op.drop_index("contact_mappings_aloware_contact_id_unique")
        batch_op.drop_index("contact_mappings_ghl_contact_id_unique")
    op.create_index(
        "contact_mappings_aloware_contact_id_unique",
        "contact_mappings",
        ["aloware_contact_id"],
        unique=True,
        postgresql_where=LIVE,
        sqlite_where=LIVE,
    )
    op.create_index(
        "contact_mappings_ghl_contact_id_unique",
        "contact_mappings",
        ["ghl_contact_id"],
        unique=True,
        postgresql_where=LIVE,
        sqlite_where=LIVE,
    )
    # Every mapping look-up by id, deleted rows included (history).
    op.create_index("contact_mappings_ghl_contact_id_idx", "contact_mappings", ["ghl_contact_id"])
    op.create_index("contact_mappings_aloware_contact_id_idx", "contact_mappings", ["aloware_contact_id"])


def downgrade() -> None:
    op.drop_index("contact_mappings_aloware_contact_id_idx", table_name="contact_mappings")
    op.drop_index("contact_mappings_ghl_contact_id_idx", table_name="contact_mappings")
    op.drop_index("contact_mappings_ghl_contact_id_unique", table_name="contact_mappings")
    op.drop_index("contact_mappings_aloware_contact_id_unique", table_name="contact_mappings")
    with op.batch_alter_table("contact_mappings", schema=None) as batch_op:
        batch_op.create_index("contact_mappings_ghl_contact_id_unique", ["ghl_contact_id"], unique=True)
        batch_op.create_index(
            "contact_mappings_aloware_contact_id_unique", ["aloware_contact_id"], unique=True
        )
        batch_op.drop_column("disposition_received_at")
        batch_op.drop_column("disposition_event_at")
        batch_op.drop_column("aloware_event_received_at")
        batch_op.drop_column("ghl_event_received_at")
    with op.batch_alter_table("sync_effects", schema=None) as batch_op:
        batch_op.drop_column("state")
