"""The broker's :class:`~signaling.broker.SessionLog` on the database."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import true
from sqlmodel import Session as DbSession
from sqlmodel import col, select

from signaling.broker import AgentUser, Session, SessionRecord

from .db import CallSession, Database, Participant, SessionEvent, User, utcnow


def _dt(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, UTC)


class DbSessionLog:
    def __init__(self, db: Database, node_id: str) -> None:
        self.db = db
        self.node_id = node_id
        self._created: dict[str, datetime] = {}
        #: called with (session_id, kind, data) for every event: the recording's timeline
        self.listeners: list[Callable[[str, str, dict[str, object]], None]] = []

    async def session_created(self, session: Session) -> None:
        created = _dt(session.created_at)
        assert created is not None
        self._created[session.id] = created

        def work(s: DbSession) -> None:
            s.add(
                CallSession(
                    id=session.id,
                    business=session.business,
                    state=session.state,
                    customer_name=session.display_name,
                    node_id=self.node_id,
                    token_hash=session.token_hash,
                    face_consent=session.face_consent,
                    created_at=created,
                )
            )
            s.add(
                Participant(
                    session_id=session.id,
                    role="customer",
                    display_name=session.display_name,
                    joined_at=created,
                )
            )

        await self.db.run(work)

    async def session_changed(self, session: Session) -> None:
        def work(s: DbSession) -> None:
            row = s.get(CallSession, session.id)
            if row is None:
                return
            row.state = session.state
            row.node_id = self.node_id  # a session changes only on the node holding it
            row.end_reason = session.end_reason
            row.face_consent = session.face_consent
            row.started_at = row.started_at or _dt(session.started_at)
            row.ended_at = _dt(session.ended_at)
            if session.agent is not None:
                row.agent_id = session.agent.id
                known = s.exec(
                    select(Participant).where(
                        Participant.session_id == session.id,
                        Participant.user_id == session.agent.id,
                    )
                ).first()
                if known is None:
                    s.add(
                        Participant(
                            session_id=session.id,
                            role="agent",
                            user_id=session.agent.id,
                            display_name=session.agent.display_name,
                        )
                    )
            s.add(row)

        await self.db.run(work)
        if session.state in ("ended", "abandoned", "failed"):
            self._created.pop(session.id, None)

    async def record(self, session_id: str) -> SessionRecord | None:
        return await self.db.run(lambda s: session_record(s, session_id))

    async def event(self, session_id: str, kind: str, data: dict[str, object]) -> None:
        for listener in self.listeners:
            listener(session_id, kind, data)
        now = utcnow()
        created = self._created.get(session_id)

        def work(s: DbSession) -> None:
            start = created
            if start is None:
                row = s.get(CallSession, session_id)
                start = row.created_at if row is not None else now
            offset = max(0, int((now - start).total_seconds() * 1000))
            s.add(
                SessionEvent(
                    session_id=session_id,
                    at=now,
                    offset_ms=offset,
                    kind=kind,
                    data=json.dumps(data, ensure_ascii=False, default=str),
                )
            )

        await self.db.run(work)


def close_orphaned_sessions(
    s: DbSession, live_nodes: set[str], *, now: datetime | None = None
) -> list[str]:
    """Mark the open sessions of every node not in ``live_nodes`` as failed (``server_restart``: the
    process holding them is gone); returns their ids."""
    rows = s.exec(
        select(CallSession).where(
            col(CallSession.node_id).not_in(live_nodes) if live_nodes else true(),
            col(CallSession.state).in_(("queued", "offered", "active")),
        )
    ).all()
    now = now or utcnow()
    for row in rows:
        was = row.state
        row.state = "failed"
        row.end_reason = "server_restart"
        row.ended_at = now
        s.add(row)
        created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
        s.add(
            SessionEvent(
                session_id=row.id,
                at=now,
                kind="failed",
                offset_ms=max(0, int((now - created).total_seconds() * 1000)),
                data=json.dumps({"reason": "server_restart", "state": was, "node": row.node_id}),
            )
        )
    return [r.id for r in rows]


def session_record(s: DbSession, session_id: str) -> SessionRecord | None:
    """What another node needs to take the session over, if it is still open."""
    row = s.get(CallSession, session_id)
    if row is None or row.state not in ("queued", "offered", "active") or not row.token_hash:
        return None
    created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
    agent = s.get(User, row.agent_id) if row.agent_id is not None else None
    return SessionRecord(
        id=row.id,
        business=row.business,
        display_name=row.customer_name,
        token_hash=row.token_hash,
        created_at=created.timestamp(),
        state=row.state,
        face_consent=row.face_consent,
        agent=None
        if agent is None or agent.id is None
        else AgentUser(
            id=agent.id,
            username=agent.username,
            display_name=agent.display_name,
            skills=agent.skill_set,
        ),
    )
