"""The auditor API: who may reach recordings, Range replay, integrity, verdicts, the access log."""

from __future__ import annotations

import asyncio
import sqlite3

import aiohttp
import pytest

from server.appkeys import CONFIG

from .helpers import login
from .recordings import decrypt_output, recorded_call


@pytest.fixture
async def recorded(counter):
    session_id, recording_id = await recorded_call(counter)
    tokens = {u: await login(counter, u) for u in ("auditor", "admin", "alice")}
    return session_id, recording_id, tokens


async def test_authorization_matrix_for_recordings(counter, recorded):
    session_id, recording_id, tokens = recorded
    urls = [
        "/api/audit/sessions?business=loan_signing",
        f"/api/audit/sessions/{session_id}",
        f"/api/audit/recordings/{recording_id}/customer.webm",
        f"/api/audit/recordings/{recording_id}/verify",
    ]
    expected = {None: 401, "alice": 403, "auditor": 200, "admin": 200}  # alice is an agent
    async with aiohttp.ClientSession() as http:
        for who, status in expected.items():
            headers = {"Authorization": f"Bearer {tokens[who]}"} if who else {}
            for url in urls:
                async with http.get(counter.url + url, headers=headers) as r:
                    assert r.status == status, (who, url, r.status)
                    if status >= 400:
                        assert (await r.json())["error"] in ("unauthorized", "forbidden")
        # a customer's rejoin token is no login either
        async with http.get(
            counter.url + urls[2], headers={"Authorization": "Bearer " + "c" * 43}
        ) as r:
            assert r.status == 401


async def test_search_detail_and_unknown_ids(counter, recorded):
    session_id, recording_id, tokens = recorded
    auth = {"Authorization": f"Bearer {tokens['auditor']}"}
    async with aiohttp.ClientSession(headers=auth) as http:
        async with http.get(
            f"{counter.url}/api/audit/sessions", params={"agent": "carol", "outcome": "ended"}
        ) as r:
            found = (await r.json())["sessions"]
        assert [s["id"] for s in found] == [session_id]
        assert (
            found[0]["recording"]["id"] == recording_id and found[0]["agent"]["username"] == "carol"
        )
        async with http.get(f"{counter.url}/api/audit/sessions", params={"agent": "bob"}) as r:
            assert (await r.json())["total"] == 0
        async with http.get(f"{counter.url}/api/audit/sessions", params={"q": "张三"}) as r:
            assert (await r.json())["total"] == 1
        async with http.get(f"{counter.url}/api/audit/sessions", params={"from": "yesterday"}) as r:
            assert r.status == 400
        async with http.get(f"{counter.url}/api/audit/sessions/{session_id}") as r:
            detail = await r.json()
        [rec] = detail["recordings"]
        assert {o["party"] for o in rec["outputs"]} == {"customer", "agent"}
        kinds = [e["kind"] for e in rec["timeline"]]
        assert kinds[0] == "recording_started" and "recording_stopped" in kinds
        assert [e["kind"] for e in detail["events"]][:1] == ["queued"]
        async with http.get(f"{counter.url}/api/audit/sessions/no-such-session-id") as r:
            assert r.status == 404 and (await r.json())["error"] == "not_found"
        async with http.get(
            f"{counter.url}/api/audit/recordings/no-such-session-1/customer.webm"
        ) as r:
            assert r.status == 404
        async with http.get(f"{counter.url}/api/audit/recordings/../../etc-1/customer.webm") as r:
            assert r.status == 404


async def test_range_requests_decrypt_exactly_the_slice(counter, recorded):
    session_id, recording_id, tokens = recorded
    config = counter.app[CONFIG]
    plain = decrypt_output(config.recordings_dir / recording_id, config.master_key_file, "agent")
    size = len(plain)
    url = f"{counter.url}/api/audit/recordings/{recording_id}/agent.webm"
    auth = {"Authorization": f"Bearer {tokens['auditor']}"}
    async with aiohttp.ClientSession(headers=auth) as http:
        async with http.get(url) as r:
            assert r.status == 200 and r.headers["Accept-Ranges"] == "bytes"
            assert r.headers["Content-Type"] == "video/webm" and await r.read() == plain
        # across a 64 KiB chunk boundary
        start, end = 65_000, min(size - 1, 140_000)
        async with http.get(url, headers={"Range": f"bytes={start}-{end}"}) as r:
            assert r.status == 206 and r.headers["Content-Range"] == f"bytes {start}-{end}/{size}"
            assert await r.read() == plain[start : end + 1]
        async with http.get(url, headers={"Range": "bytes=-100"}) as r:
            assert r.status == 206 and await r.read() == plain[-100:]
        async with http.get(url, headers={"Range": f"bytes={size - 10}-"}) as r:
            assert await r.read() == plain[-10:]
        for bad in (f"bytes={size}-", f"bytes={size + 5}-{size + 10}", "bytes=abc", "items=0-1"):
            async with http.get(url, headers={"Range": bad}) as r:
                assert r.status == 416, bad
                assert r.headers.get("Content-Range") == f"bytes */{size}"


async def test_flipped_byte_fails_verification_naming_the_segment(counter, recorded):
    session_id, recording_id, tokens = recorded
    config = counter.app[CONFIG]
    auth = {"Authorization": f"Bearer {tokens['auditor']}"}
    url = f"{counter.url}/api/audit/recordings/{recording_id}/verify"
    async with aiohttp.ClientSession(headers=auth) as http:
        async with http.get(url) as r:
            assert (await r.json())["ok"] is True
        segment = sorted((config.recordings_dir / recording_id / "segments").glob("*.seg"))[0]
        data = bytearray(segment.read_bytes())
        data[len(data) // 2] ^= 0x01
        segment.write_bytes(bytes(data))
        async with http.get(url) as r:
            result = await r.json()
        assert result["ok"] is False and segment.stem in result["reason"]


async def test_verdicts_and_access_log_chain(counter, recorded):
    session_id, recording_id, tokens = recorded
    async with aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {tokens['auditor']}"}
    ) as http:
        async with http.get(
            f"{counter.url}/api/audit/recordings/{recording_id}/customer.webm"
        ) as r:
            await r.read()
        async with http.post(
            f"{counter.url}/api/audit/sessions/{session_id}/verdict", json={"result": "maybe"}
        ) as r:
            assert r.status == 400
        async with http.post(
            f"{counter.url}/api/audit/sessions/{session_id}/verdict",
            json={"result": "fail", "notes": "  "},
        ) as r:
            assert r.status == 400 and (await r.json())["error"] == "notes_required"
        async with http.post(
            f"{counter.url}/api/audit/sessions/{session_id}/verdict",
            json={"result": "fail", "notes": "风险揭示未读完"},
        ) as r:
            assert r.status == 201 and (await r.json())["by"] == "auditor"
        async with http.post(
            f"{counter.url}/api/audit/sessions/{session_id}/verdict",
            json={"result": "pass", "notes": "re-checked"},
        ) as r:
            assert r.status == 201
        async with http.get(f"{counter.url}/api/audit/sessions/{session_id}") as r:
            detail = await r.json()
        assert [v["result"] for v in detail["verdicts"]] == ["fail", "pass"]
        assert detail["session"]["verdict"]["result"] == "pass"
        async with http.get(f"{counter.url}/api/admin/access-log") as r:
            assert r.status == 403  # auditors do not read the log
    async with aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {tokens['admin']}"}
    ) as http:
        async with http.get(f"{counter.url}/api/admin/access-log") as r:
            log = await r.json()
    assert log["chain_ok"] is True
    actions = [(e["username"], e["action"]) for e in reversed(log["entries"])]
    assert ("auditor", "replay") in actions and ("auditor", "verdict_fail") in actions
    assert ("auditor", "view_session") in actions

    # tampering with the log (even by someone who drops the triggers) is detected
    config = counter.app[CONFIG]
    db_file = config.db_url.removeprefix("sqlite:///")
    with sqlite3.connect(db_file) as conn:
        conn.execute("DROP TRIGGER accesslog_no_update")
        conn.execute("UPDATE accesslog SET username = 'someone_else' WHERE action = 'replay'")
    async with aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {tokens['admin']}"}
    ) as http:
        async with http.get(f"{counter.url}/api/admin/access-log") as r:
            log = await r.json()
    assert log["chain_ok"] is False and "altered" in log["chain"]


async def _log_entries(counter) -> list[tuple[str, str, str]]:
    from sqlmodel import select

    from server.db import AccessLog

    return await counter.db.run(
        lambda s: [
            (e.username, e.action, e.target)
            for e in s.exec(select(AccessLog).order_by(AccessLog.seq))
        ]
    )


async def test_every_viewing_is_logged_once_whatever_its_byte_ranges(
    counter, recorded, monkeypatch
):
    from server.routes import audit

    session_id, recording_id, tokens = recorded
    base = f"{counter.url}/api/audit/recordings/{recording_id}"

    async def get(who: str, party: str, byte_range: str | None) -> int:
        headers = {"Authorization": f"Bearer {tokens[who]}"}
        if byte_range:
            headers["Range"] = byte_range
        async with (
            aiohttp.ClientSession(headers=headers) as http,
            http.get(f"{base}/{party}.webm") as r,
        ):
            await r.read()
            return r.status

    def replays(entries, who: str, party: str) -> int:
        return entries.count((who, "replay", f"{recording_id}/{party}"))

    # a viewing that never asks for byte 0 (a download resumed, a player starting mid-file)
    assert await get("auditor", "customer", "bytes=1-") == 206
    assert replays(await _log_entries(counter), "auditor", "customer") == 1
    # the rest of that viewing, from any offset: still one entry
    for byte_range in ("bytes=500-1000", "bytes=-100", "bytes=1000-", None):
        assert await get("auditor", "customer", byte_range) in (200, 206)
    entries = await _log_entries(counter)
    assert replays(entries, "auditor", "customer") == 1
    # the other party, and another user, are viewings of their own
    assert await get("auditor", "agent", "bytes=2-") == 206
    assert await get("admin", "customer", "bytes=3-10") == 206
    entries = await _log_entries(counter)
    assert replays(entries, "auditor", "agent") == 1 and replays(entries, "admin", "customer") == 1
    # a later viewing (after the window) is logged again
    monkeypatch.setattr(audit, "REPLAY_LOG_INTERVAL_S", 0.2)
    await asyncio.sleep(0.3)
    assert await get("auditor", "customer", "bytes=7-") == 206
    assert replays(await _log_entries(counter), "auditor", "customer") == 2


async def test_searches_are_logged_with_the_query_not_the_results(counter, recorded):
    session_id, recording_id, tokens = recorded
    auth = {"Authorization": f"Bearer {tokens['auditor']}"}
    async with aiohttp.ClientSession(headers=auth) as http:
        async with http.get(
            f"{counter.url}/api/audit/sessions",
            params={"agent": "carol", "business": "loan_signing"},
        ) as r:
            assert [s["customer_name"] for s in (await r.json())["sessions"]] == ["张三 Audit"]
        async with http.get(f"{counter.url}/api/audit/sessions") as r:
            assert (await r.json())["total"] == 1
    searches = [(t, a) for u, a, t in await _log_entries(counter) if a == "search"]
    assert searches == [
        ('{"agent":"carol","business":"loan_signing"}', "search"),
        ("{}", "search"),
    ]
    assert not any(session_id in t or "张三" in t for t, _ in searches)


async def test_a_range_of_thousands_of_digits_is_answered_not_a_server_error(counter, recorded):
    session_id, recording_id, tokens = recorded
    config = counter.app[CONFIG]
    plain = decrypt_output(config.recordings_dir / recording_id, config.master_key_file, "agent")
    size = len(plain)
    url = f"{counter.url}/api/audit/recordings/{recording_id}/agent.webm"
    huge = "9" * 4400  # beyond Python's int() limit of 4300 digits (aiohttp takes 8190 bytes)
    async with aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {tokens['auditor']}"}
    ) as http:
        for start_beyond_the_end in (f"bytes={huge}-", f"bytes={huge}-{'9' * 3000}"):
            async with http.get(url, headers={"Range": start_beyond_the_end}) as r:
                assert r.status == 416, (r.status, await r.text())
                assert r.headers["Content-Range"] == f"bytes */{size}"
        # an end or a suffix beyond the file is the rest of it (RFC 9110), however long
        async with http.get(url, headers={"Range": f"bytes=10-{huge}"}) as r:
            assert r.status == 206 and await r.read() == plain[10:]
        async with http.get(url, headers={"Range": f"bytes=-{huge}"}) as r:
            assert r.status == 206 and await r.read() == plain
        async with http.get(url, headers={"Range": f"bytes={'0' * 4400}5-9"}) as r:
            assert r.status == 206 and await r.read() == plain[5:10]
