"""Sessions keep the SHA-256 of the customer's rejoin token, so any node can let the customer back in.

Sessions made before this revision have none (an empty string): they cannot be taken over by
another node, exactly as before.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("callsession", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("token_hash", sa.String(length=64), nullable=False, server_default="")
        )


def downgrade() -> None:
    with op.batch_alter_table("callsession", schema=None) as batch_op:
        batch_op.drop_column("token_hash")
