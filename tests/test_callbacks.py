"""Call-back requests: a waiting customer leaves a phone number instead of waiting; staff list them."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from sqlmodel import select

from server.db import CallbackRequest, CallSession

from .helpers import login


async def _request(counter, session_id: str, token: str | None, body: Any) -> tuple[int, Any]:
    headers = {"X-Session-Token": token} if token is not None else {}
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{counter.url}/api/callbacks/{session_id}", json=body, headers=headers) as r,
    ):
        return r.status, await r.json()


async def _list(counter, username: str | None) -> tuple[int, Any]:
    headers = {}
    if username is not None:
        headers["Authorization"] = f"Bearer {await login(counter, username)}"
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{counter.url}/api/callbacks", headers=headers) as r,
    ):
        return r.status, await r.json()


async def _stored(counter) -> list[CallbackRequest]:
    return await counter.db.run(lambda s: list(s.exec(select(CallbackRequest)).all()))


async def test_a_waiting_customer_leaves_a_number_and_the_queue(counter) -> None:
    first = await counter.customer("loan_signing", "张先生", media=False)
    second = await counter.customer("loan_signing", "Second", media=False)
    assert (await second.wait_for("queue_update"))["position"] == 2
    for bad in ("123456", "1234567890123456", "+86-138-abcd-5678", "++8613812345678", "", 13812345):
        status, body = await _request(counter, first.session_id, first.rejoin_token, {"phone": bad})
        assert (status, body["error"]) == (400, "bad_phone"), bad
    assert await _stored(counter) == []
    since = len(second.messages)
    status, body = await _request(
        counter, first.session_id, first.rejoin_token, {"phone": "+86 138-1234-5678"}
    )
    assert status == 201, body
    assert body["callback"]["phone"] == "+8613812345678"
    # the customer has left the queue, told why; the one behind moves up
    assert (await first.wait_for("call_ended"))["reason"] == "callback_requested"
    assert (await second.wait_for("queue_update", since=since))["position"] == 1
    [row] = await _stored(counter)
    assert (row.session_id, row.business, row.display_name, row.phone) == (
        first.session_id,
        "loan_signing",
        "张先生",
        "+8613812345678",
    )
    session = await counter.db.run(lambda s: s.get(CallSession, first.session_id))
    assert (session.state, session.end_reason) == ("abandoned", "callback_requested")
    # once: the session is over
    status, _ = await _request(
        counter, first.session_id, first.rejoin_token, {"phone": "13812345678"}
    )
    assert status == 403
    assert len(await _stored(counter)) == 1


async def test_only_administrators_and_the_banks_systems_list_the_requests(counter) -> None:
    customer = await counter.customer("account_opening", "Call me", media=False)
    status, _ = await _request(
        counter, customer.session_id, customer.rejoin_token, {"phone": "0755-12345678"}
    )
    assert status == 201
    assert (await _list(counter, None))[0] == 401
    for username in ("alice", "auditor"):
        status, body = await _list(counter, username)
        assert (status, body["error"]) == (403, "forbidden"), username
    for username in ("admin", "integration"):
        status, body = await _list(counter, username)
        assert status == 200, body
        [listed] = body["callbacks"]
        assert listed["session_id"] == customer.session_id
        assert (listed["phone"], listed["display_name"]) == ("075512345678", "Call me")
        assert listed["business"] == "account_opening" and listed["created_at"]


async def test_a_strangers_session_id_is_refused(counter) -> None:
    victim = await counter.customer("account_opening", "Victim", media=False)
    stranger = await counter.customer("account_opening", "Stranger", media=False)
    status, body = await _request(
        counter, victim.session_id, stranger.rejoin_token, {"phone": "13812345678"}
    )
    assert (status, body["error"]) == (403, "forbidden")
    status, _ = await _request(counter, victim.session_id, None, {"phone": "13812345678"})
    assert status == 401
    assert await _stored(counter) == []
    assert counter.broker.session(victim.session_id).state == "queued"
    with pytest.raises(TimeoutError):
        await victim.wait_for("call_ended", timeout=0.3)


async def test_no_call_back_once_the_call_started(counter) -> None:
    customer = await counter.customer("account_opening", "In a call", media=False)
    agent = await counter.agent("alice")
    await agent.accept_next()
    await customer.wait_for("call_started")
    status, body = await _request(
        counter, customer.session_id, customer.rejoin_token, {"phone": "13812345678"}
    )
    assert (status, body["error"]) == (409, "bad_state")
    assert await _stored(counter) == []
