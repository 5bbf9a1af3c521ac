"""Login tokens: a login leaves only live tokens in the database."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlmodel import select

from server import auth
from server.db import AuthToken, Database, utcnow
from server.migrations import create_all


async def test_a_login_purges_expired_tokens_and_keeps_live_ones(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    create_all(db)
    try:
        with db.session() as s:
            user = auth.add_user(
                s,
                role="agent",
                username="agent1",
                password="correct horse battery",
                skills=["account_opening"],
                display_name="Agent One",
            )
            s.add(
                AuthToken(
                    token_hash="e" * 64, user_id=user.id, expires_at=utcnow() - timedelta(minutes=1)
                )
            )
            s.add(
                AuthToken(
                    token_hash="l" * 64, user_id=user.id, expires_at=utcnow() + timedelta(hours=1)
                )
            )
            s.commit()

        token, _ = await auth.login(db, "agent1", "correct horse battery", 3600)

        with db.session() as s:
            left = {row.token_hash for row in s.exec(select(AuthToken))}
        assert left == {"l" * 64, auth.token_hash(token)}
        assert await auth.user_for_token(db, token) is not None
    finally:
        db.close()
