"""oauth: single-use install states, install time of each location's token

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from df_middleware.db.types import UTCDateTime

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "oauth_state_uses",
        sa.Column("nonce", sa.Text(), nullable=False),
        sa.Column("used_at", UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("nonce"),
    )
    op.create_index("oauth_state_uses_used_at_idx", "oauth_state_uses", ["used_at"], unique=False)
    with op.batch_alter_table("ghl_oauth_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("installed_at", UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ghl_oauth_tokens", schema=None) as batch_op:
        batch_op.drop_column("installed_at")
    op.drop_index("oauth_state_uses_used_at_idx", table_name="oauth_state_uses")
    op.drop_table("oauth_state_uses")
