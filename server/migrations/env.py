"""Alembic's environment: runs the revisions on the connection ``server.migrations`` hands it.

``server.migrations`` opens the connection, takes the migration lock and the
transaction, and passes the connection in ``config.attributes["connection"]``;
this file only configures Alembic on it. The target of ``--autogenerate`` is
the models' metadata (``server/db.py``).
"""

from __future__ import annotations

from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy.types import TypeDecorator
from sqlmodel import SQLModel

import server.db  # noqa: F401  (registers the tables on SQLModel.metadata)

config = context.config


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Render sqlmodel's column types (AutoString, UTCDateTime) as the SQLAlchemy types they are
    stored as: revisions import nothing of sqlmodel, and say what the database holds."""
    if (
        type_ == "type"
        and isinstance(obj, TypeDecorator)
        and type(obj).__module__.startswith("sqlmodel.")
    ):
        return f"sa.{obj.impl!r}"
    return False


def run_migrations() -> None:
    if context.is_offline_mode():
        raise RuntimeError("offline (--sql) migrations are not set up: use `vcounter db upgrade`")
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError(
            "server/migrations runs on a connection from server.migrations "
            "(`vcounter db upgrade`, `vcounter db revision`), not from an alembic.ini"
        )
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        # ALTER on SQLite means rebuilding the table: autogenerate writes batch operations
        render_as_batch=True,
        render_item=render_item,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
