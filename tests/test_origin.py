"""What a page of another site, an upload or a finished login cannot do (server/origin.py).

Real servers and clients: a foreign page cannot open the WebSockets or post a verdict with
an auditor's cookie (nor slip a text/plain body past as JSON), while the counter's own
pages, configured origins, a TLS balancer's public origin and clients without ``Origin``
(the CLI, scripts, these tests) go on; an upload is never served back as a page; an agent
socket closes when its login does, on its own node at once and on the others soon after.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from server import ws as server_ws

from .helpers import PASSWORD, eventually, login


async def _ws(counter, path: str, http: aiohttp.ClientSession, **headers):
    return await http.ws_connect(counter.url.replace("http", "ws", 1) + path, headers=headers)


async def _handshake(counter, path: str, origin: str | None, **headers) -> int:
    """The status of a WebSocket handshake sent with ``origin`` (101 when it opened)."""
    if origin is not None:
        headers["Origin"] = origin
    async with aiohttp.ClientSession() as http:
        try:
            ws = await _ws(counter, path, http, **headers)
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status
        await ws.close()
        return 101


@pytest.mark.parametrize("path", ["/ws/customer", "/ws/agent"])
async def test_websockets_open_only_for_the_counters_own_pages(make_counter, path):
    counter = await make_counter(allowed_origins=("https://app.example-bank.cn",))
    assert await _handshake(counter, path, "https://evil.example") == 403
    assert await _handshake(counter, path, "null") == 403
    # the same host on another port is another origin
    port = int(counter.url.rsplit(":", 1)[1])
    assert await _handshake(counter, path, f"http://127.0.0.1:{port + 1}") == 403
    assert await _handshake(counter, path, counter.url) == 101
    assert await _handshake(counter, path, "https://app.example-bank.cn") == 101
    assert await _handshake(counter, path, None) == 101  # not a browser's page


async def test_behind_a_tls_balancer_the_public_origin_is_the_counters(make_counter):
    counter = await make_counter(trusted_proxies=("127.0.0.1",))
    public = {"Host": "counter.example-bank.cn", "X-Forwarded-Proto": "https"}
    path = "/ws/customer"
    assert await _handshake(counter, path, "https://counter.example-bank.cn", **public) == 101
    # an http page of the same host never acts on the https counter
    assert await _handshake(counter, path, "http://counter.example-bank.cn", **public) == 403
    assert await _handshake(counter, path, "https://evil.example", **public) == 403


async def test_a_foreign_page_cannot_post_a_verdict_with_the_auditors_cookie(counter):
    customer = await counter.customer("account_opening", "Audited", media=False)
    token = await login(counter, "auditor")
    cookie = {"Cookie": f"vc_session={token}"}
    url = f"{counter.url}/api/audit/sessions/{customer.session_id}/verdict"
    body = '{"result": "pass", "notes": "looks fine"}'
    async with aiohttp.ClientSession() as http:
        # what a form or a no-preflight fetch of another site sends
        async with http.post(
            url,
            data=body,
            headers={**cookie, "Origin": "https://evil.example", "Content-Type": "text/plain"},
        ) as r:
            assert r.status == 403 and (await r.json())["error"] == "bad_origin"
        # not JSON by type, even from the counter's own page
        async with http.post(
            url,
            data=body,
            headers={**cookie, "Origin": counter.url, "Content-Type": "text/plain"},
        ) as r:
            assert r.status == 415 and (await r.json())["error"] == "unsupported_media_type"
        async with http.post(
            url,
            data=body,
            headers={**cookie, "Content-Type": "application/x-www-form-urlencoded"},
        ) as r:
            assert r.status == 415
        # the auditor's own page
        async with http.post(
            url,
            data=body,
            headers={**cookie, "Origin": counter.url, "Content-Type": "application/json"},
        ) as r:
            assert r.status == 201, await r.text()
            assert (await r.json())["by"] == "auditor"
        # a script without Origin, as the CLI and the bank's systems are
        async with http.post(
            url, json={"result": "pass", "notes": "looks fine"}, headers=cookie
        ) as r:
            assert r.status == 201
        # reading is not refused: the browser keeps another site's page from the answer
        async with http.get(
            f"{counter.url}/api/config", headers={"Origin": "https://evil.example"}
        ) as r:
            assert r.status == 200


async def test_an_upload_is_served_back_as_an_image_never_as_a_page(
    make_counter, same_person_photo
):
    counter = await make_counter(identity=True, identity_workers=1)
    customer = counter.participant("customer", media=False)
    joined = await customer.join("account_opening", "上传", face_consent=True)
    sid, token = joined["session_id"], joined["rejoin_token"]
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{counter.url}/api/identity/{sid}/reference",
            data=same_person_photo,
            headers={"X-Session-Token": token, "Content-Type": "text/html"},
        ) as r:
            # text/html is no form type: the photo goes in, its claimed type does not
            assert r.status == 200, await r.text()
        auditor = {"Authorization": f"Bearer {await login(counter, 'auditor')}"}
        async with http.get(f"{counter.url}/api/identity/{sid}/evidence", headers=auditor) as r:
            [item] = [i for i in (await r.json())["items"] if i["kind"] == "reference_image"]
        assert item["content_type"] == "image/jpeg"
        async with http.get(f"{counter.url}{item['url']}", headers=auditor) as r:
            assert r.status == 200 and await r.read() == same_person_photo
            assert r.headers["Content-Type"] == "image/jpeg"
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            assert r.headers["Content-Disposition"].startswith("attachment;")
        # a form post of an "image" is what another site's page could send: refused
        async with http.post(
            f"{counter.url}/api/identity/{sid}/reference",
            data=same_person_photo,
            headers={"X-Session-Token": token, "Content-Type": "multipart/form-data"},
        ) as r:
            assert r.status == 415


async def test_an_agent_socket_closes_when_its_login_is_logged_out(counter):
    agent = await counter.agent("alice")
    bob = await counter.agent("bob")
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{counter.url}/api/logout", headers={"Authorization": f"Bearer {agent.token}"}
        ) as r,
    ):
        assert r.status == 200
    error = await agent.wait_for("error", timeout=5)
    assert (error["code"], error["fatal"]) == ("not_authenticated", True)
    await eventually(lambda: agent.ws.closed, timeout=5)
    assert agent.ws.close_code == 4401
    # nobody else's: bob still works
    await bob.send({"type": "ping"})
    await bob.wait_for("pong")


async def test_a_logout_on_another_node_closes_the_socket_soon(
    make_counter, monkeypatch, video_clip, audio_clip
):
    monkeypatch.setattr(server_ws, "TOKEN_CHECK_S", 0.5)
    a = await make_counter(video_clip, audio_clip, node_id="node-a")
    b = await make_counter(video_clip, audio_clip, node_id="node-b")  # the same database
    agent = await a.agent("alice")
    token = await login(b, "alice", PASSWORD)
    assert token != agent.token
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{b.url}/api/logout", headers={"Authorization": f"Bearer {agent.token}"}
        ) as r:
            assert r.status == 200
    error = await agent.wait_for("error", timeout=5)
    assert error["code"] == "not_authenticated" and "login ended" in error["message"]
    await eventually(lambda: agent.ws.closed, timeout=5)
    # the other login of the same agent still opens the workbench
    async with aiohttp.ClientSession() as http:
        ws = await _ws(a, "/ws/agent", http)
        await ws.send_json({"type": "auth", "token": token})
        assert (await ws.receive_json(timeout=5))["type"] == "authenticated"
        await ws.close()
    await asyncio.sleep(0)
