"""The access log's head is anchored: signed seals of its latest entry, append-only like the log.

A database upgraded to this revision has no seal yet: its log is first sealed by a node's next
periodic seal (or an export), and everything before that seal is anchored by it.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from server.db import append_only_ddl

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

#: the tables this revision makes refuse UPDATE and DELETE (and TRUNCATE on PostgreSQL)
APPEND_ONLY = ("accesslogseal",)


def upgrade() -> None:
    op.create_table(
        "accesslogseal",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("head_hash", sa.String(length=64), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("node_id", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column("key_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("signature", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    for ddl in append_only_ddl(op.get_bind().dialect.name, APPEND_ONLY):
        op.execute(ddl)


def downgrade() -> None:
    # dropping the table drops its triggers (the PostgreSQL function is 0001's)
    op.drop_table("accesslogseal")
