"""Redis lost during calls: the calls go on, new customers are told to try again, and the counter
comes back with Redis."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from server.db import CallSession
from signaling.contrib.headless import ProtocolError

from .redis_server import RedisServer


async def test_calls_go_on_without_redis_and_joins_resume_when_it_returns(
    make_counter, video_clip, audio_clip, tmp_path: Path
) -> None:
    redis = RedisServer(tmp_path / "redis")
    try:
        counter = await make_counter(
            video_clip, audio_clip, redis_url=redis.url, redis_prefix=f"t{secrets.token_hex(4)}:"
        )
        customer = await counter.customer("account_opening", "王女士")
        agent = await counter.agent("alice")
        await agent.accept_next()
        await customer.wait_media(frames=20)

        redis.stop()
        await customer.wait_media(frames=45)  # media and recording are this node's own
        late = counter.participant("late", media=False)
        with pytest.raises(ProtocolError, match="temporarily_unavailable"):
            await late.join("account_opening", "迟到")
        await agent.hangup()
        assert (await customer.wait_for("call_ended"))["reason"] == "agent_hangup"
        row = await counter.db.run(lambda s: s.get(CallSession, customer.session_id))
        assert (row.state, row.end_reason) == ("ended", "agent_hangup")

        redis.start()
        again = counter.participant("again", media=False)
        await again.join("account_opening", "再来")
        assert (await again.wait_for("queue_update"))["position"] == 1
        await agent.set_ready()
        assert (await agent.next_offer())["session_id"] == again.session_id
    finally:
        redis.stop()
