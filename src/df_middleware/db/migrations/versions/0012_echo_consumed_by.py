"""echo_guard.consumed_by: an echo stays its event's echo when the event runs again after a crash

A recognised echo of our own write used to be deleted in its own transaction. When the event's
outcome was then lost (a worker killed before it was recorded, R-REL-1), the event ran again, found
no echo, and took our own write for a change made in GHL: our DND write after a STOP became a GHL
opt-out over the person's later START (break14 finding 6). The fingerprint is now kept until it
expires, marked with the event that consumed it: that event, run again, still sees its echo, and no
other event does.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("echo_guard", schema=None) as batch_op:
        batch_op.add_column(sa.Column("consumed_by", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("echo_guard", schema=None) as batch_op:
        batch_op.drop_column("consumed_by")
