"""Sessions keep the customer's face-verification consent, so a node taking a session over after
its node died goes on checking (or not) as the customer chose.

Sessions made before this revision count as not consenting, as face checks did by default.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("callsession", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("face_consent", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("callsession", schema=None) as batch_op:
        batch_op.drop_column("face_consent")
