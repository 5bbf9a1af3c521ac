"""A lease on each recording: the node recording it, and until when (database time).

The recording node renews it while it records; a node that finds it lapsed takes the
recording over (one atomic UPDATE) and finalises it from the shared object store.
Recordings made before this revision have no lease (NULL): one left unfinished is
claimable at once, as before, by the node that recovers it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 07:26:42.017557
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("recording", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lease_node", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_recording_lease_until"), ["lease_until"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("recording", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_recording_lease_until"))
        batch_op.drop_column("lease_until")
        batch_op.drop_column("lease_node")
