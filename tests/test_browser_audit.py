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
