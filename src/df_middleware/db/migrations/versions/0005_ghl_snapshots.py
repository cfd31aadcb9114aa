"""GHL snapshots: each mapped contact's last-seen GHL profile, and each contact's conversation

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from df_middleware.db.types import UTCDateTime

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("contact_mappings", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("ghl_profile", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=True)
        )
        batch_op.add_column(sa.Column("ghl_profile_at", UTCDateTime(timezone=True), nullable=True))
    op.create_table(
        "ghl_conversations",
        sa.Column("ghl_contact_id", sa.Text(), nullable=False),
        sa.Column("conversation_id", sa.Text(), nullable=False),
        sa.Column("location_id", sa.Text(), nullable=True),
        sa.Column("updated_at", UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("ghl_contact_id", name=op.f("pk_ghl_conversations")),
    )


def downgrade() -> None:
    op.drop_table("ghl_conversations")
    with op.batch_alter_table("contact_mappings", schema=None) as batch_op:
        batch_op.drop_column("ghl_profile_at")
        batch_op.drop_column("ghl_profile")
