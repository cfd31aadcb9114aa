"""found by the soak: a contact's list signals are ordered by time; a refused text remembers why

- `contact_agent_state.signals_at` / `signals_received_at`: the time (and receipt) of the newest
  GHL contact event whose owner and tags placed the contact on its lists. A late resend of an
  older event (GHL resends under a new `webhookId`) carried older tags and moved the contact back
  off a list it had joined since; now an event older than the signals applied changes no list.
- `message_mappings.error_code`: why an agent's text was refused (`opted_out`, `invalid_phone`,
  `empty_message`). The refusal is final and recorded before GHL is told; when telling GHL failed,
  the retry tells it again with the same reason instead of leaving the message `pending`.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from df_middleware.db.types import UTCDateTime

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("contact_agent_state", schema=None) as batch_op:
        batch_op.add_column(sa.Column("signals_at", UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("signals_received_at", UTCDateTime(timezone=True), nullable=True))
    with op.batch_alter_table("message_mappings", schema=None) as batch_op:
        batch_op.add_column(sa.Column("error_code", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("message_mappings", schema=None) as batch_op:
        batch_op.drop_column("error_code")
    with op.batch_alter_table("contact_agent_state", schema=None) as batch_op:
        batch_op.drop_column("signals_received_at")
        batch_op.drop_column("signals_at")
