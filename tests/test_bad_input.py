"""Bad input of every kind gets a clear error; the server and other calls keep going."""

from __future__ import annotations

import json
import logging

import aiohttp
import pytest

from signaling.contrib.headless import ProtocolError

from .helpers import PASSWORD, eventually, login


async def _raw_ws(counter, path: str, session: aiohttp.ClientSession):
    return await session.ws_connect(counter.url.replace("http", "ws", 1) + path)


async def _next_json(ws, timeout: float = 5.0) -> dict:
    msg = await ws.receive(timeout=timeout)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return json.loads(msg.data)


@pytest.fixture
async def live_call(counter):
    """A call with media flowing, to show that it survives other clients' bad input."""
    customer = await counter.customer("loan_signing", "Bystander")
    agent = await counter.agent("carol")
    await agent.accept_next()
    await agent.wait_media(frames=10)
    return customer, agent


async def test_malformed_and_unknown_messages_are_answered_not_fatal(counter, live_call):
    _, agent = live_call
    async with aiohttp.ClientSession() as http:
        ws = await _raw_ws(counter, "/ws/customer", http)
        await ws.send_str("{not json")
        err = await _next_json(ws)
        assert (err["type"], err["code"], err["fatal"]) == ("error", "bad_json", False)
        await ws.send_str("[1, 2, 3]")
        assert (await _next_json(ws))["code"] == "invalid_message"
        await ws.send_str(json.dumps({"type": "teleport"}))
        err = await _next_json(ws)
        assert err["code"] == "unknown_type" and "teleport" in err["message"]
        # an agent-only message from a customer is unknown for a customer
        await ws.send_str(json.dumps({"type": "accept", "session_id": "abcdefgh12"}))
        assert (await _next_json(ws))["code"] == "unknown_type"
        await ws.send_str(json.dumps({"type": "join", "business": "casino", "display_name": "X"}))
        err = await _next_json(ws)
        assert err["code"] == "invalid_message" and "business" in err["message"]
        await ws.send_str(
            json.dumps({"type": "join", "business": "loan_signing", "display_name": "<script>"})
        )
        assert (await _next_json(ws))["code"] == "invalid_message"
        # the recording notice must be accepted before joining
        await ws.send_str(
            json.dumps({"type": "join", "business": "loan_signing", "display_name": "Ann"})
        )
        err = await _next_json(ws)
        assert err["code"] == "consent_required" and "record" in err["message"]
        await ws.send_str(json.dumps({"type": "offer", "sdp": "v=0 and more"}))
        assert (await _next_json(ws))["code"] == "bad_state"  # no session yet
        # still open and serving
        await ws.send_str(json.dumps({"type": "ping"}))
        assert (await _next_json(ws))["type"] == "pong"
        await ws.close()
    await agent.wait_media(frames=10)  # the other call never noticed


async def test_oversized_message_is_refused_and_closed(counter, live_call):
    _, agent = live_call
    async with aiohttp.ClientSession() as http:
        ws = await _raw_ws(counter, "/ws/customer", http)
        await ws.send_str(
            json.dumps({"type": "join", "business": "loan_signing", "display_name": "x" * 70_000})
        )
        err = await _next_json(ws)
        assert (err["code"], err["fatal"]) == ("too_large", True)
        msg = await ws.receive(timeout=5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == 1009
    await agent.wait_media(frames=10)


async def test_the_frame_limit_counts_bytes_not_characters(counter, live_call):
    _, agent = live_call
    name = "李" * 22_000  # 22,000 characters, 66,000 bytes of UTF-8
    async with aiohttp.ClientSession() as http:
        ws = await _raw_ws(counter, "/ws/customer", http)
        await ws.send_str(
            json.dumps(
                {"type": "join", "business": "loan_signing", "display_name": name},
                ensure_ascii=False,
            )
        )
        err = await _next_json(ws)
        assert (err["code"], err["fatal"]) == ("too_large", True) and "bytes" in err["message"]
        await ws.receive(timeout=5)
        assert ws.close_code == 1009
    await agent.wait_media(frames=10)


async def test_deep_nesting_and_loose_consents_get_a_clear_error(counter, live_call):
    _, agent = live_call
    async with aiohttp.ClientSession() as http:
        ws = await _raw_ws(counter, "/ws/customer", http)
        for deep in ("[" * 30_000 + "]" * 30_000, '{"type": "ping", "x": ' + "{" * 20_000):
            await ws.send_str(deep)
            err = await _next_json(ws)
            assert (err["code"], err["fatal"]) == ("too_deep", False), err
        # consents are JSON true, nothing that merely looks like it
        for loose in ("yes", "true", 1, "1", "on"):
            await ws.send_str(
                json.dumps(
                    {
                        "type": "join",
                        "business": "loan_signing",
                        "display_name": "Ann",
                        "recording_consent": loose,
                    }
                )
            )
            err = await _next_json(ws)
            assert err["code"] == "invalid_message" and "recording_consent" in err["message"]
        await ws.send_str(json.dumps({"type": "face_consent", "accepted": "yes"}))
        assert (await _next_json(ws))["code"] == "invalid_message"
        assert counter.broker.sessions == [counter.broker.sessions[0]]  # only the live call's
        await ws.send_str(json.dumps({"type": "ping"}))
        assert (await _next_json(ws))["type"] == "pong"
        await ws.close()
    await agent.wait_media(frames=10)


async def test_message_flood_is_rate_limited_then_closed(counter, live_call):
    _, agent = live_call
    async with aiohttp.ClientSession() as http:
        ws = await _raw_ws(counter, "/ws/customer", http)
        for _ in range(300):
            await ws.send_str('{"type": "ping"}')
        codes = []
        while True:
            msg = await ws.receive(timeout=5)
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(msg.data)
            if data["type"] == "error":
                codes.append((data["code"], data["fatal"]))
        assert ("rate_limited", False) in codes
        assert codes[-1] == ("rate_limited", True)
        assert ws.close_code == 1008
    await agent.wait_media(frames=10)


async def test_garbage_sdp_gets_bad_sdp_and_call_continues(counter, live_call):
    customer, agent = live_call
    await customer.send({"type": "offer", "sdp": "v=0\r\nthis is not an sdp at all\r\n" * 3})
    err = await customer.wait_for("error")
    assert err["code"] == "bad_sdp" and not err["fatal"]
    await customer.send(
        {
            "type": "offer",
            "sdp": "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
            "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n",
        }
    )
    since = len(customer.messages)
    # the working connection was not replaced by the unusable offers
    await agent.wait_media(frames=20)
    await customer.wait_media(frames=20)
    assert counter.broker.session(customer.session_id).state == "active"
    assert since > 0


async def test_agent_actions_without_login_are_refused(counter):
    async with aiohttp.ClientSession() as http:
        ws = await _raw_ws(counter, "/ws/agent", http)
        await ws.send_str(json.dumps({"type": "set_status", "status": "ready"}))
        err = await _next_json(ws)
        assert (err["code"], err["fatal"]) == ("not_authenticated", True)
        await ws.receive(timeout=5)
        assert ws.close_code == 4401

        ws = await _raw_ws(counter, "/ws/agent", http)
        await ws.send_str(json.dumps({"type": "auth", "token": "x" * 43}))
        assert (await _next_json(ws))["code"] == "not_authenticated"
        await ws.receive(timeout=5)
        assert ws.close_code == 4401

        # an auditor is authenticated but is not an agent
        token = await login(counter, "auditor")
        ws = await _raw_ws(counter, "/ws/agent", http)
        await ws.send_str(json.dumps({"type": "auth", "token": token}))
        assert (await _next_json(ws))["code"] == "forbidden"


async def test_stranger_cannot_reach_someone_elses_session(counter):
    victim = await counter.customer("account_opening", "Victim", media=False)
    stranger = await counter.customer("account_opening", "Stranger", media=False)
    intruder = counter.participant("intruder", media=False)
    with pytest.raises(ProtocolError, match="forbidden"):
        await intruder.rejoin(victim.session_id, stranger.rejoin_token)
    assert intruder.closed_code == 1008 or intruder.ws.closed
    guesser = counter.participant("guesser", media=False)
    with pytest.raises(ProtocolError, match="forbidden"):
        await guesser.rejoin("nonexistent-session-id", victim.rejoin_token)
    # the victim is untouched: still first in line and reachable
    bob = await counter.agent("bob")
    assert (await bob.next_offer())["session_id"] == victim.session_id
    assert counter.broker.session(victim.session_id).connected


async def test_http_login_errors_are_json_and_throttled(counter):
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{counter.url}/api/login", data="not json") as r:
            # text/plain: what a page of another site could send without asking first
            assert r.status == 415 and (await r.json())["error"] == "unsupported_media_type"
        async with http.post(
            f"{counter.url}/api/login",
            data="not json",
            headers={"Content-Type": "application/json"},
        ) as r:
            assert r.status == 400 and (await r.json())["error"] == "bad_request"
        async with http.post(f"{counter.url}/api/login", json={"username": "bob"}) as r:
            assert r.status == 400
        for _ in range(5):
            async with http.post(
                f"{counter.url}/api/login", json={"username": "bob", "password": "nope"}
            ) as r:
                assert r.status == 401 and (await r.json())["error"] == "bad_credentials"
        async with http.post(
            f"{counter.url}/api/login", json={"username": "bob", "password": PASSWORD}
        ) as r:
            assert r.status == 429
        async with http.get(f"{counter.url}/api/me") as r:
            assert r.status == 401 and (await r.json())["error"] == "unauthorized"


async def test_no_token_or_password_reaches_the_logs(counter, caplog):
    caplog.set_level(logging.DEBUG)
    customer = await counter.customer("account_opening", "Private", media=False)
    agent = await counter.agent("alice")
    await agent.accept_next()
    await customer.wait_for("call_started")
    await customer.drop()
    back = counter.participant("back", media=False)
    await back.rejoin(customer.session_id, customer.rejoin_token)
    bad = counter.participant("bad", media=False)
    with pytest.raises(ProtocolError):
        await bad.rejoin(customer.session_id, "wrong-token-" + "z" * 30)
    await eventually(lambda: "rejoin refused" in caplog.text)
    text = caplog.text
    assert customer.session_id in text  # the logs do name sessions
    for secret in (customer.rejoin_token, agent.token, PASSWORD, "wrong-token-"):
        assert secret not in text
