"""The auditor API: who may reach recordings, Range replay, integrity, verdicts, the access log."""

from __future__ import annotations

import asyncio
import sqlite3

import aiohttp
import pytest

from server.appkeys import CONFIG
from server.routes.audit import QC_ITEMS

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
            json={"result": "fail", "reason": "disclosure_missing", "notes": "风险揭示未读完"},
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


# -- a work queue of sessions with face-check outcomes -----------------------------------------


async def _session_with(counter, name: str, events: list[tuple[str, dict]]) -> str:
    """A customer who queued, had ``events`` put on their timeline by the broker, and left."""
    customer = await counter.customer("account_opening", name, media=False)
    for kind, data in events:
        await counter.broker.log_event(customer.session_id, kind, **data)
    await customer.hangup()
    return customer.session_id


async def _search(http, counter, **params) -> list[dict]:
    async with http.get(f"{counter.url}/api/audit/sessions", params=params) as r:
        assert r.status == 200, await r.text()
        return (await r.json())["sessions"]


async def test_a_manual_verification_resolves_the_face_anomaly_before_it(counter):
    rejected = await _session_with(
        counter,
        "Rejected",
        [("identity_rejected", {"distance": 0.61, "threshold": 0.4, "distances": [0.61, 0.66]})],
    )
    resolved = await _session_with(
        counter,
        "Resolved",
        [
            ("liveness_failed", {"reason": "no_blink"}),
            ("identity_manual", {"verified": True, "reason": "核对了身份证原件", "by": "alice"}),
        ],
    )
    inconclusive = await _session_with(
        counter, "Inconclusive", [("identity_inconclusive", {"reason": "too_dark"})]
    )
    reopened = await _session_with(
        counter,
        "Reopened",
        [
            ("face_mismatch", {}),
            ("identity_manual", {"verified": True, "reason": "same person", "by": "alice"}),
            ("face_mismatch", {}),
        ],
    )
    token = await login(counter, "auditor")
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        by_id = {s["id"]: s for s in await _search(http, counter)}
        # the anomaly stays (the anomalies-only filter finds it) and says who settled it, and why
        assert by_id[resolved]["anomalies"] == ["liveness_failed"]
        [(kind, how)] = by_id[resolved]["resolved"].items()
        assert kind == "liveness_failed"
        assert (how["by"], how["reason"]) == ("alice", "核对了身份证原件") and how["at"]
        assert by_id[rejected]["resolved"] == {} and by_id[rejected]["anomalies"] == [
            "identity_rejected"
        ]
        # raised again after the manual verification: open again
        assert by_id[reopened]["resolved"] == {}
        # an inconclusive attempt is no anomaly
        assert by_id[inconclusive]["anomalies"] == [] and by_id[inconclusive]["resolved"] == {}
        assert {s["id"] for s in await _search(http, counter, anomalies="1")} == {
            rejected,
            resolved,
            reopened,
        }
        assert [s["id"] for s in await _search(http, counter, anomaly="liveness_failed")] == [
            resolved
        ]
        # by severity: open face anomalies first, the resolved one after them, then the rest
        order = [s["id"] for s in await _search(http, counter, sort="severity")]
        assert order.index(rejected) < order.index(resolved) < order.index(inconclusive)
        assert order.index(reopened) < order.index(resolved)
        async with http.get(f"{counter.url}/api/audit/sessions/{resolved}") as r:
            assert (await r.json())["session"]["resolved"]["liveness_failed"]["by"] == "alice"
        async with http.get(f"{counter.url}/api/audit/sessions", params={"sort": "x"}) as r:
            assert r.status == 400


async def test_verdict_filter_is_the_work_queue(counter):
    first = await _session_with(counter, "First", [])
    second = await _session_with(counter, "Second", [])
    token = await login(counter, "auditor")
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        async with http.post(
            f"{counter.url}/api/audit/sessions/{first}/verdict",
            json={"result": "pass", "items": list(QC_ITEMS)},
        ) as r:
            assert r.status == 201
        assert [s["id"] for s in await _search(http, counter, verdict="none")] == [second]
        assert [s["id"] for s in await _search(http, counter, verdict="pass")] == [first]
        assert await _search(http, counter, verdict="fail") == []
        async with http.get(f"{counter.url}/api/audit/sessions", params={"verdict": "x"}) as r:
            assert r.status == 400


async def test_since_and_before_bound_a_viewers_local_day(counter):
    from datetime import UTC, datetime

    from server.db import CallSession

    session_id = await _session_with(counter, "Midnight", [])

    def set_created(s):
        row = s.get(CallSession, session_id)
        row.created_at = datetime(2026, 11, 22, 23, 30, tzinfo=UTC)  # 07:30 on the 23rd in Beijing
        s.add(row)

    await counter.db.run(set_created)
    token = await login(counter, "auditor")
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        # the 23rd in Beijing (UTC+8)
        beijing = {"since": "2026-11-23T00:00:00+08:00", "before": "2026-11-24T00:00:00+08:00"}
        assert [s["id"] for s in await _search(http, counter, **beijing)] == [session_id]
        utc = {"since": "2026-11-23T00:00:00Z", "before": "2026-11-24T00:00:00Z"}
        assert await _search(http, counter, **utc) == []
        async with http.get(
            f"{counter.url}/api/audit/sessions", params={"since": "2026-11-23T00:00:00"}
        ) as r:
            assert r.status == 400  # a time without its offset is ambiguous


async def test_a_replay_the_viewer_abandons_ends_quietly(counter, recorded, caplog, monkeypatch):
    import logging
    import time

    from aiohttp import web

    from server.routes import audit

    from .helpers import eventually

    session_id, recording_id, tokens = recorded

    class SlowDisk(audit.EncryptedFile):  # a disk slow enough for the viewer to leave mid-file
        def read(self, position, length):
            time.sleep(0.02)
            return super().read(position, length)

    monkeypatch.setattr(audit, "EncryptedFile", SlowDisk)
    monkeypatch.setattr(audit, "STREAM_BLOCK", 4096)
    # the same app served as `vcounter serve` serves it: aiohttp's test server cancels a handler
    # whose client left, `vcounter serve` (web.AppRunner's default) lets it run into the closed
    # connection
    app = counter.app
    runner = web.ServerRunner(
        web.Server(app._handle, request_factory=app._make_request, handler_cancellation=False)
    )
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    url = f"http://127.0.0.1:{port}/api/audit/recordings/{recording_id}/customer.webm"
    caplog.set_level(logging.DEBUG)
    try:
        for byte_range in (None, "bytes=100-"):  # a replay closed, and one a seek replaced
            caplog.clear()
            headers = {"Authorization": f"Bearer {tokens['auditor']}"}
            if byte_range:
                headers["Range"] = byte_range
            async with aiohttp.ClientSession(headers=headers) as http:
                r = await http.get(url)
                assert r.status in (200, 206)
                assert len(await r.content.read(8192)) > 0
                r.close()  # drops the connection mid-stream

            def left():
                return [r for r in caplog.records if "viewer left" in r.getMessage()] or [
                    r for r in caplog.records if r.levelno >= logging.ERROR
                ]

            await eventually(left, timeout=10)
            await asyncio.sleep(0.2)
            noisy = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
            assert not noisy, [(r.name, r.getMessage(), r.exc_info) for r in noisy]
            quiet = [r for r in caplog.records if "viewer left" in r.getMessage()]
            assert len(quiet) == 1 and quiet[0].levelno <= logging.INFO
    finally:
        await runner.cleanup()


async def test_a_verdict_carries_its_qc_items_and_a_fails_reason_code(counter):
    session_id = await _session_with(counter, "QC", [])
    token = await login(counter, "auditor")
    url = f"{counter.url}/api/audit/sessions/{session_id}/verdict"
    refused = [
        ({"result": "pass", "items": ["script_complete", "smiled"]}, "unknown_item"),
        ({"result": "fail", "reason": "bad_mood", "notes": "x"}, "unknown_reason"),
        ({"result": "fail", "notes": "风险揭示未读完"}, "reason_required"),
        ({"result": "fail", "reason": "other", "notes": "  "}, "notes_required"),
        ({"result": "pass", "items": ["script_complete"]}, "notes_required"),
        ({"result": "pass", "items": list(QC_ITEMS), "reason": "other"}, "bad_request"),
        ({"result": "pass", "items": "script_complete"}, "bad_request"),
        ({"result": "maybe"}, "bad_request"),
    ]
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        for body, code in refused:
            async with http.post(url, json=body) as r:
                answer = await r.json()
                assert (r.status, answer["error"]) == (400, code), (body, answer)
                assert answer["message"], body
        # a fail for a listed reason needs no notes; a pass with every item ticked neither
        ticked = ["customer_confirmed", "script_complete"]
        async with http.post(
            url, json={"result": "fail", "reason": "disclosure_missing", "items": ticked}
        ) as r:
            assert r.status == 201
            saved = await r.json()
        assert saved["items"] == ["script_complete", "customer_confirmed"]  # in QC_ITEMS order
        assert (saved["reason"], saved["notes"], saved["by"]) == (
            "disclosure_missing",
            "",
            "auditor",
        )
        async with http.post(
            url, json={"result": "pass", "items": ["signed_on_camera"], "notes": "签名补录在案"}
        ) as r:
            assert r.status == 201
        async with http.get(f"{counter.url}/api/audit/sessions/{session_id}") as r:
            detail = await r.json()
        assert [(v["result"], v["reason"], v["items"]) for v in detail["verdicts"]] == [
            ("fail", "disclosure_missing", ["script_complete", "customer_confirmed"]),
            ("pass", None, ["signed_on_camera"]),
        ]
        latest = detail["session"]["verdict"]
        assert (latest["result"], latest["reason"], latest["items"]) == (
            "pass",
            None,
            ["signed_on_camera"],
        )
        [found] = [s for s in await _search(http, counter, verdict="pass") if s["id"] == session_id]
        assert found["verdict"]["items"] == ["signed_on_camera"]
    admin = await login(counter, "admin")
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {admin}"}) as http:
        async with http.get(f"{counter.url}/api/admin/access-log") as r:
            log = await r.json()
    verdicts = [e["action"] for e in log["entries"] if e["target"] == session_id]
    assert sorted(a for a in verdicts if a.startswith("verdict_")) == [
        "verdict_fail",
        "verdict_pass",
    ]
