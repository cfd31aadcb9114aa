"""contact mappings: event time of the newest change applied from each side

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from df_middleware.db.types import UTCDateTime

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("contact_mappings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ghl_event_at", UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("aloware_event_at", UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("contact_mappings", schema=None) as batch_op:
        batch_op.drop_column("aloware_event_at")
        batch_op.drop_column("ghl_event_at")
