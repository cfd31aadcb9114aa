"""retention: index sync_effects by creation time and ghl_conversations by last write

The daily prune walks old effects in creation order and picks conversation ids not written for
longer than the retention; without these indexes each batch would scan the whole table.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("sync_effects_created_at_idx", "sync_effects", ["created_at"], unique=False)
    op.create_index("ghl_conversations_updated_at_idx", "ghl_conversations", ["updated_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ghl_conversations_updated_at_idx", table_name="ghl_conversations")
    op.drop_index("sync_effects_created_at_idx", table_name="sync_effects")
