"""A real Chromium drives /audit: find the session, play both sides, seek by a timeline marker, record a verdict."""

from __future__ import annotations

import asyncio

import pytest

from .browser import CHROMIUM_ARGS, require_chromium
from .helpers import PASSWORD
from .recordings import wait_recordings

pytestmark = [pytest.mark.browser, pytest.mark.slow]


async def _times(page) -> list[float]:
    return await page.evaluate("""() => ['replay-customer', 'replay-agent'].map(
        id => document.querySelector(`[data-testid="${id}"]`).currentTime)""")


async def _at(page, seconds: float) -> None:
    """Wait until both videos are at ``seconds``."""
    await page.wait_for_function(
        """(t) => ['replay-customer', 'replay-agent'].every(id =>
            Math.abs(document.querySelector(`[data-testid="${id}"]`).currentTime - t) < 0.25)""",
        arg=seconds,
        timeout=10_000,
    )


async def test_auditor_finds_replays_seeks_and_judges_a_call(counter):
    require_chromium()
    from playwright.async_api import async_playwright

    # a recorded call with a reconnect, so the timeline has a marker in the middle
    customer = await counter.customer("wealth_product", "质检 Replay")
    agent = await counter.agent("alice")
    await agent.accept_next()
    await agent.wait_media(frames=30)
    await asyncio.sleep(2.0)  # two seconds of call before the reconnect
    await customer.drop()
    back = counter.participant("back")
    await back.rejoin(customer.session_id, customer.rejoin_token)
    await agent.wait_for("peer_reconnected")
    await agent.wait_media(frames=30, kinds=("video",))
    await asyncio.sleep(2.0)  # and two after it
    await agent.hangup()
    [row] = await wait_recordings(counter.db, customer.session_id)

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=require_chromium(), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(f"{counter.url}/audit")
            await page.get_by_test_id("login-username").fill("auditor")
            await page.get_by_test_id("login-password").fill(PASSWORD)
            await page.get_by_test_id("login-submit").click()
            await page.get_by_test_id("search-button").click()
            row_el = page.locator(
                f'[data-testid="session-row"][data-session-id="{customer.session_id}"]'
            )
            await row_el.click(timeout=10_000)

            badge = page.get_by_test_id("integrity-badge")
            await page.wait_for_selector(
                '[data-testid="integrity-badge"][data-state="verified"]', timeout=15_000
            )
            assert await badge.is_visible()

            await page.get_by_test_id("play-pause").click()
            await page.wait_for_function(
                """() => ['replay-customer', 'replay-agent'].every(id => {
                const v = document.querySelector(`[data-testid="${id}"]`);
                return v.currentTime > 0.5 && !v.paused; })""",
                timeout=15_000,
            )
            customer_t, agent_t = await _times(page)
            assert abs(customer_t - agent_t) < 0.3, (customer_t, agent_t)

            marker = page.locator('[data-testid="timeline-marker"][data-kind="customer_rejoined"]')
            offset_s = int(await marker.get_attribute("data-offset-ms")) / 1000
            assert offset_s > 1.0
            await page.get_by_test_id("play-pause").click()  # pause, so currentTime stays put
            await marker.click()
            await page.wait_for_function(
                """(t) => ['replay-customer', 'replay-agent'].every(id =>
                    Math.abs(document.querySelector(`[data-testid="${id}"]`).currentTime - t) < 0.25)""",
                arg=offset_s,
                timeout=10_000,
            )

            # the work queue's keys and the jump to the next anomaly, the video paused
            dropped = page.locator(
                '[data-testid="timeline-marker"][data-kind="customer_disconnected"]'
            )
            dropped_s = int(await dropped.first.get_attribute("data-offset-ms")) / 1000
            await page.evaluate("() => document.activeElement.blur()")
            await page.keyboard.press("ArrowLeft")  # 5 s back: the start
            await _at(page, 0.0)
            await page.get_by_test_id("next-anomaly").click()
            await _at(page, dropped_s)
            await page.evaluate("() => document.activeElement.blur()")
            await page.keyboard.press("k")  # the next event after the drop
            times = sorted(
                int(m) / 1000
                for m in await page.eval_on_selector_all(
                    '[data-testid="timeline-marker"]', "ms => ms.map(m => m.dataset.offsetMs)"
                )
            )
            after = next(t for t in times if t > dropped_s + 0.05)
            await _at(page, after)
            await page.keyboard.press("j")  # back to the drop
            await _at(page, dropped_s)
            await page.keyboard.press(" ")
            await page.wait_for_selector('[data-testid="play-pause"][data-state="playing"]')
            await page.keyboard.press(" ")
            await page.wait_for_selector('[data-testid="play-pause"][data-state="paused"]')
            # events read as sentences, never as "key: value" pairs
            sentences = await page.get_by_test_id("event-sentence").all_text_contents()
            assert sentences and not any(": " in s and "·" in s for s in sentences), sentences
            assert "The customer reconnected" in sentences or "客户重新连接" in sentences

            await page.get_by_test_id("speed").select_option("2")
            rates = await page.evaluate("""() => ['replay-customer', 'replay-agent'].map(
                id => document.querySelector(`[data-testid="${id}"]`).playbackRate)""")
            assert rates == [2, 2]

            await page.get_by_test_id("verdict-pass").check()
            await page.get_by_test_id("verdict-notes").fill("风险揭示完整，客户本人确认")
            await page.get_by_test_id("verdict-submit").click()
            saved = page.get_by_test_id("verdict-saved")
            await saved.wait_for(state="visible", timeout=10_000)
            assert "auditor" in await saved.text_content()
            assert not errors, errors
        finally:
            await browser.close()

    # the verdict and every access are on record
    from sqlmodel import select

    from server.db import AccessLog, Verdict

    def load(s):
        verdicts = s.exec(select(Verdict).where(Verdict.session_id == customer.session_id)).all()
        actions = {(e.username, e.action) for e in s.exec(select(AccessLog))}
        return verdicts, actions

    verdicts, actions = await counter.db.run(load)
    assert [(v.result, v.username) for v in verdicts] == [("pass", "auditor")]
    assert {("auditor", "replay"), ("auditor", "verify"), ("auditor", "verdict_pass")} <= actions
    assert row.id


# -- face-check outcomes, flow steps, the receipt, the viewer's own days ------------------------


def _signature_png() -> bytes:
    import io

    from PIL import Image, ImageDraw

    image = Image.new("RGB", (320, 120), "white")
    ImageDraw.Draw(image).line([(20, 90), (90, 30), (160, 80), (290, 40)], fill="black", width=4)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


async def _queued_and_left(counter, name: str, events, created_at) -> str:
    """A customer who queued and left, with ``events`` logged by the broker, created at that time."""
    from server.db import CallSession

    customer = await counter.customer("account_opening", name, media=False)
    for kind, data in events:
        await counter.broker.log_event(customer.session_id, kind, **data)
    await customer.hangup()

    def set_created(s):
        row = s.get(CallSession, customer.session_id)
        row.created_at = created_at
        s.add(row)

    await counter.db.run(set_created)
    return customer.session_id


async def test_auditor_sees_face_outcomes_step_titles_and_the_receipt_in_local_days(
    make_counter, video_clip, audio_clip
):
    require_chromium()
    from datetime import UTC, datetime

    from playwright.async_api import async_playwright

    from recorder.receipt import seal_receipt
    from server.appkeys import FLOWS, IDENTITY, KEYS

    from .helpers import frame_jpeg, shared_data

    counter = await make_counter(video_clip, audio_clip, identity=True, identity_workers=1)
    flow = counter.app[FLOWS].flows["account_opening"]
    terms = flow.step("account_terms")  # a disclosure step that is no risk disclosure
    evidence = counter.app[IDENTITY].evidence
    signing = counter.app[KEYS][1]
    steps = [
        (
            "flow_started",
            {
                "business": "account_opening",
                "version": flow.version,
                "steps": [s.id for s in flow.steps],
            },
        ),
        ("step_started", {"step": terms.id, "kind": "disclosure", "index": 2}),
        ("disclosure_confirmed", {"step": terms.id, "by": "customer"}),
        ("step_completed", {"step": terms.id, "kind": "disclosure", "index": 2, "by": "agent"}),
    ]
    # 07:30 on the 23rd in Beijing, still the 22nd in UTC
    resolved = await _queued_and_left(
        counter, "核验 Resolved", steps, datetime(2026, 11, 22, 23, 30, tzinfo=UTC)
    )
    jpeg = frame_jpeg(shared_data("videos/d13.mp4"), 100)
    snaps = [
        await asyncio.to_thread(evidence.put, resolved, "snapshot", jpeg, content_type="image/jpeg")
        for _ in range(2)
    ]
    for kind, data in [
        (
            "identity_rejected",
            {
                "distance": 0.61,
                "threshold": 0.4,
                "distances": [0.61, 0.66],
                "snapshots": [s.id for s in snaps],
                "snapshot": snaps[0].id,
                "snapshot_sha256": snaps[0].sha256,
            },
        ),
        ("liveness_failed", {"reason": "timeout"}),
        (
            "identity_manual",
            {"verified": True, "reason": "核对了身份证原件，与本人一致", "by": "alice"},
        ),
    ]:
        await counter.broker.log_event(resolved, kind, **data)
    receipt = seal_receipt(
        signing,
        session_id=resolved,
        flow={"business": "account_opening", "version": flow.version},
        step_id="sign_agreement",
        document={"id": "account_agreement", "title": "Agreement", "sha256": "0" * 64},
        signature_png=_signature_png(),
        face_snapshot_jpeg=jpeg,
        identity={"method": "manual", "verified": True, "by": "alice"},
        signed_at=datetime.now(UTC),
    )
    await asyncio.to_thread(
        evidence.put, resolved, "receipt", receipt, content_type="application/json"
    )
    inconclusive = await _queued_and_left(
        counter,
        "核验 Inconclusive",
        [("identity_inconclusive", {"reason": "too_dark", "automatic": True})],
        datetime(2026, 11, 23, 10, 0, tzinfo=UTC),
    )
    await _queued_and_left(
        counter, "核验 Other day", [], datetime(2026, 11, 23, 16, 30, tzinfo=UTC)
    )

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=require_chromium(), headless=True, args=CHROMIUM_ARGS
        )
        try:
            context = await browser.new_context(timezone_id="Asia/Shanghai", locale="zh-CN")
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(f"{counter.url}/audit")
            await page.get_by_test_id("login-username").fill("auditor")
            await page.get_by_test_id("login-password").fill(PASSWORD)
            await page.get_by_test_id("login-submit").click()
            assert await page.get_by_test_id("filter-verdict").input_value() == "none"
            # the 23rd as Beijing has it: 00:00 to 24:00 UTC+8 (the last one is the 24th there)
            await page.get_by_test_id("filter-from").fill("2026-11-23")
            await page.get_by_test_id("filter-to").fill("2026-11-23")
            await page.get_by_test_id("search-button").click()
            rows = page.get_by_test_id("session-row")
            await page.wait_for_function(
                "() => document.querySelectorAll('[data-testid=session-row]').length === 2",
                timeout=10_000,
            )
            ids = [await r.get_attribute("data-session-id") for r in await rows.all()]
            assert ids == [inconclusive, resolved]

            await page.locator(f'[data-session-id="{resolved}"]').click()
            res = page.locator('[data-testid="anomaly-resolved"][data-anomaly="liveness_failed"]')
            await res.wait_for(timeout=10_000)
            text = await res.text_content()
            assert "alice" in text and "核对了身份证原件，与本人一致" in text
            mismatch = page.locator('[data-testid="detail-anomalies"] li').filter(
                has=page.locator('[data-anomaly="identity_rejected"][data-resolved="true"]')
            )
            assert "0.61, 0.66" in await mismatch.get_by_test_id("anomaly-distances").text_content()
            await page.wait_for_function(
                """() => { const imgs = document.querySelectorAll('[data-testid="anomaly-snapshot"]');
                    return imgs.length === 2 && [...imgs].every(i => i.complete && i.naturalWidth > 0); }""",
                timeout=15_000,
            )
            # the receipt's signature is an image, decoded
            await page.wait_for_function(
                """() => { const i = document.querySelector('[data-testid="receipt-signature"]');
                    return i && i.complete && i.naturalWidth > 0; }""",
                timeout=15_000,
            )
            # the step is named by its own title, not by its kind ("风险揭示")
            step = page.locator(f'[data-testid="audit-step"][data-step="{terms.id}"]')
            title = await step.get_by_test_id("audit-step-title").text_content()
            assert title == terms.title.zh and "风险揭示" not in title
            log = await page.get_by_test_id("session-events").text_content()
            assert f"坐席完成步骤“{terms.title.zh}”" in log
            assert f"客户确认了“{terms.title.zh}”" in log
            assert "index" not in log and "kind:" not in log

            # the session before it in the list (newest first): an inconclusive attempt, no anomaly
            assert await page.get_by_test_id("next-session").is_disabled()
            await page.get_by_test_id("prev-session").click()
            await page.wait_for_function(
                "(id) => document.querySelector('[data-testid=detail-session-id]')"
                ".textContent === id",
                arg=inconclusive,
                timeout=10_000,
            )
            attempt = page.locator('[data-testid="identity-attempt"][data-outcome="inconclusive"]')
            await attempt.wait_for(timeout=10_000)
            assert "画面过暗" in await attempt.text_content()
            details = page.get_by_test_id("detail-anomalies")
            assert await details.get_by_test_id("anomaly-badge").count() == 0
            await page.get_by_test_id("no-anomalies").wait_for()

            # the anomaly filter, in English
            await page.get_by_test_id("back-to-results").click()
            await page.get_by_test_id("lang-toggle").click()
            await page.get_by_test_id("filter-anomaly").select_option("liveness_failed")
            await page.get_by_test_id("search-button").click()
            await page.wait_for_function(
                "() => document.querySelectorAll('[data-testid=session-row]').length === 1",
                timeout=10_000,
            )
            assert await rows.first.get_attribute("data-session-id") == resolved
            assert (
                "resolved" in await rows.first.get_by_test_id("anomaly-badge").first.text_content()
            )
            assert not errors, errors
        finally:
            await browser.close()


async def test_a_fail_needs_a_reason_code_and_the_qc_items_are_kept(counter):
    require_chromium()
    from datetime import UTC, datetime

    from playwright.async_api import async_playwright

    session_id = await _queued_and_left(counter, "质检 Items", [], datetime.now(UTC))
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=require_chromium(), headless=True, args=CHROMIUM_ARGS
        )
        try:
            context = await browser.new_context(locale="zh-CN")
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            posted: list[str] = []
            page.on(
                "request",
                lambda r: posted.append(r.url) if r.method == "POST" and "/verdict" in r.url else 0,
            )
            await page.goto(f"{counter.url}/audit#session/{session_id}")
            await page.get_by_test_id("login-username").fill("auditor")
            await page.get_by_test_id("login-password").fill(PASSWORD)
            await page.get_by_test_id("login-submit").click()
            await page.wait_for_function(
                "(id) => document.querySelector('[data-testid=detail-session-id]')"
                ".textContent === id",
                arg=session_id,
                timeout=10_000,
            )
            for item in ("script_complete", "customer_confirmed"):
                await page.locator(f'[data-testid="qc-item"][data-item="{item}"]').check()
            await page.get_by_test_id("verdict-fail").check()
            await page.get_by_test_id("verdict-submit").click()
            error = page.locator("#verdict-error")
            await error.wait_for(state="visible", timeout=5_000)
            assert "原因" in await error.text_content()
            await asyncio.sleep(0.3)
            assert posted == []

            await page.get_by_test_id("verdict-reason").select_option("disclosure_missing")
            await page.get_by_test_id("verdict-submit").click()
            await page.locator('[data-testid="verdict-saved"][data-result="fail"]').wait_for(
                timeout=10_000
            )
            assert len(posted) == 1

            await page.reload()
            saved = page.locator('[data-testid="verdict-saved"][data-reason="disclosure_missing"]')
            await saved.wait_for(timeout=10_000)
            assert (
                "未宣读风险揭示"
                in await saved.get_by_test_id("verdict-saved-reason").text_content()
            )
            qc = await saved.get_by_test_id("verdict-saved-qc").text_content()
            assert "2/4" in qc and "话术完整" in qc and "客户确认" in qc and "当面签名" not in qc
            assert not errors, errors
        finally:
            await browser.close()

    from sqlmodel import select

    from server.db import Verdict

    def load(s):
        return s.exec(select(Verdict).where(Verdict.session_id == session_id)).all()

    [verdict] = await counter.db.run(load)
    assert (verdict.result, verdict.reason) == ("fail", "disclosure_missing")
