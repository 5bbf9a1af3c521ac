"""Customers who asked to be called back instead of waiting in the queue.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "callbackrequest",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("business", sa.String(length=32), nullable=False),
        sa.Column("display_name", sa.String(length=128), nullable=False),
        sa.Column("phone", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_callbackrequest_session_id", "callbackrequest", ["session_id"], unique=True)
    op.create_index("ix_callbackrequest_created_at", "callbackrequest", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_callbackrequest_created_at", table_name="callbackrequest")
    op.drop_index("ix_callbackrequest_session_id", table_name="callbackrequest")
    op.drop_table("callbackrequest")
