"""Agents, lists and broadcasts: a contact's pipeline placement, its sequence, and one GHL record per broadcast

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from df_middleware.db.types import UTCDateTime

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("contact_agent_state", schema=None) as batch_op:
        batch_op.add_column(sa.Column("stage_list_key", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("stage_name", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("stage_at", UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("aloware_sequence_id", sa.Text(), nullable=True))
    op.create_table(
        "broadcast_records",
        sa.Column("broadcast_id", sa.Text(), nullable=False),
        sa.Column("location_id", sa.Text(), nullable=True),
        sa.Column("ghl_record_id", sa.Text(), nullable=True),
        sa.Column("properties", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=True),
        sa.Column("source_event_id", sa.Uuid(), nullable=True),
        sa.Column("event_received_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("written_at", UTCDateTime(timezone=True), nullable=True),
        sa.Column("updated_at", UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("broadcast_id", name=op.f("pk_broadcast_records")),
    )


def downgrade() -> None:
    op.drop_table("broadcast_records")
    with op.batch_alter_table("contact_agent_state", schema=None) as batch_op:
        batch_op.drop_column("aloware_sequence_id")
        batch_op.drop_column("stage_at")
        batch_op.drop_column("stage_name")
        batch_op.drop_column("stage_list_key")
