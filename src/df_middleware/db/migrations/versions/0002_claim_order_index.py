"""index active events by received order, for the claim query

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EVENT_TABLES = ("webhook_events", "texting_webhook_events", "broadcast_webhook_events")
ACTIVE = sa.text("status IN ('pending', 'processing')")


def upgrade() -> None:
    for table in EVENT_TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.create_index(
                f"{table}_active_received_idx",
                ["received_at", "id"],
                unique=False,
                postgresql_where=ACTIVE,
                sqlite_where=ACTIVE,
            )


def downgrade() -> None:
    for table in EVENT_TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(f"{table}_active_received_idx", postgresql_where=ACTIVE, sqlite_where=ACTIVE)
