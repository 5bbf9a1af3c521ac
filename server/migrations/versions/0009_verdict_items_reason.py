"""Verdicts keep the QC items the auditor ticked and, for a fail, its reason code.

Verdicts made before this revision have neither (both null).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from server.db import append_only_ddl

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain ADD COLUMN: SQLite does not rebuild the table, so its append-only triggers stay
    op.add_column("verdict", sa.Column("items", sa.String(length=256), nullable=True))
    op.add_column("verdict", sa.Column("reason", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("verdict", schema=None) as batch_op:
        batch_op.drop_column("reason")
        batch_op.drop_column("items")
    # the batch rebuilds the table on SQLite, dropping its triggers
    for ddl in append_only_ddl(op.get_bind().dialect.name, ("verdict",)):
        op.execute(ddl)
