"""The agent workbench for many calls a day, in a real Chromium: the wrap-up after each call (saved
on the session's timeline, then ready again on its own unless the agent chose away) and the
keyboard shortcuts with their help overlay."""

from __future__ import annotations

import time

import pytest

from signaling.contrib.fake_media import make_tone_wav, make_y4m

from .browser import call_state, join_queue, launch, ready_agent, require_chromium
from .helpers import eventually, session_events, shared_data

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SHORTCUTS = ["accept", "decline", "next", "confirmed", "mute", "hangup", "help"]
#: what the help overlay says of accepting and hanging up, by page language
HELP_WORDS = {"en": ("Accept the offered customer", "Hang up"), "zh-CN": ("接听", "挂断")}


async def _help_overlay(agent) -> tuple[str, list[str], str]:
    """The page's language, the shortcuts its help overlay lists, and the overlay's text."""
    help_ = agent.get_by_test_id("shortcuts-help")
    await help_.wait_for(state="visible", timeout=5_000)
    names = await agent.eval_on_selector_all(
        '[data-testid="shortcuts-list"] [data-shortcut]',
        "rows => rows.map(r => r.dataset.shortcut)",
    )
    return await agent.evaluate("document.documentElement.lang"), names, await help_.inner_text()


async def _wrap_up(counter, session_id: str) -> list[dict]:
    return [e.data for e in await session_events(counter, session_id) if e.kind == "wrap_up"]


async def test_wrap_up_then_ready_on_its_own_and_shortcuts(make_counter, video_clip, audio_clip):
    require_chromium()
    from playwright.async_api import async_playwright

    counter = await make_counter(video_clip, audio_clip, wrap_up_seconds=3.0)
    camera = make_y4m(shared_data("videos/d18.mp4"), width=320, height=240, fps=15)
    errors: list[str] = []
    async with async_playwright() as pw:
        agent_browser = await launch(pw, camera, make_tone_wav(1000.0))
        customer_browser = await launch(pw, camera, make_tone_wav(440.0))
        try:
            agent = await ready_agent(agent_browser, counter, errors)

            # "?" opens the shortcuts, in the page's language and after switching it
            seen = {}
            for opener in ("?", "button"):
                if opener == "?":
                    await agent.keyboard.press("?")
                else:
                    await agent.get_by_test_id("lang-toggle").click()
                    await agent.get_by_test_id("shortcuts-button").click()
                lang, names, text = await _help_overlay(agent)
                assert names == SHORTCUTS, names
                assert all(word in text for word in HELP_WORDS[lang]), (lang, text)
                seen[lang] = text
                await agent.keyboard.press("Escape")
                await agent.get_by_test_id("shortcuts-help").wait_for(state="hidden")
            assert sorted(seen) == ["en", "zh-CN"], seen.keys()

            first = await customer_browser.new_page()
            second = await customer_browser.new_page()
            third = await customer_browser.new_page()
            for page in (first, second, third):
                page.on("pageerror", lambda e: errors.append(f"customer: {e}"))
            await join_queue(first, counter, name="王一")
            await call_state(agent, "offered")
            await agent.keyboard.press("a")  # accept
            await call_state(agent, "active")
            await call_state(first, "active")
            first_id = await agent.get_by_test_id("customer-session").text_content()
            await join_queue(second, counter, name="王二")  # waits while the agent is busy

            # keys typed into a field are text, not shortcuts
            reason = agent.get_by_test_id("manual-verify-reason")
            await reason.click()
            await agent.keyboard.type("h?m")
            assert await reason.input_value() == "h?m"
            assert await agent.get_by_test_id("hangup-confirm-agent").is_hidden()
            assert await agent.get_by_test_id("shortcuts-help").is_hidden()
            assert (
                await agent.get_by_test_id("mute-button").get_attribute("aria-pressed") == "false"
            )
            await agent.evaluate("document.activeElement.blur()")

            # "h" asks first: Escape keeps the call, Enter on the dialog ends it
            await agent.keyboard.press("h")
            confirm = agent.get_by_test_id("hangup-confirm-agent")
            await confirm.wait_for(state="visible")
            await agent.keyboard.press("Escape")
            await confirm.wait_for(state="hidden")
            await call_state(agent, "active")
            await agent.keyboard.press("h")
            await confirm.wait_for(state="visible")
            await agent.keyboard.press("Enter")
            await call_state(agent, "ended")
            ended_at = time.monotonic()
            await call_state(first, "ended")

            # the wrap-up: away meanwhile, the waiting customer is not offered
            wrap_up = agent.get_by_test_id("wrap-up")
            assert await wrap_up.is_visible()
            countdown = agent.get_by_test_id("wrap-up-countdown")
            assert await countdown.is_visible()
            assert int(await countdown.get_attribute("data-remaining")) in (1, 2, 3)
            toggle = agent.get_by_test_id("ready-toggle")
            assert await toggle.get_attribute("data-status") == "away"
            await agent.get_by_test_id("wrap-up-disposition").select_option("needs_follow_up")
            await agent.get_by_test_id("wrap-up-notes").fill("客户下周回电 h a")
            assert await confirm.is_hidden()
            await agent.evaluate("document.activeElement.blur()")
            # ... then ready on its own, and offered the customer who waited
            await call_state(agent, "offered", timeout=10_000)
            assert time.monotonic() - ended_at >= 2.5, "offered during the wrap-up"
            assert await agent.get_by_test_id("offer-name").text_content() == "王二"
            assert await _wrap_up(counter, first_id) == [
                {"disposition": "needs_follow_up", "notes": "客户下周回电 h a", "by": "alice"}
            ]

            # the second call: choosing away after it stops the return to ready
            await agent.get_by_test_id("accept-button").click()
            await call_state(agent, "active")
            second_id = await agent.get_by_test_id("customer-session").text_content()
            await join_queue(third, counter, name="王三")
            await agent.get_by_test_id("hangup-button").click()
            await call_state(agent, "ended")
            await agent.get_by_test_id("wrap-up-disposition").select_option("completed")
            await agent.get_by_test_id("wrap-up-away").click()
            await call_state(agent, "idle")
            await eventually(
                lambda: _wrap_up(counter, second_id),
                message="the second call's wrap-up is saved",
            )
            await agent.wait_for_timeout(4_500)  # longer than the wrap-up time
            await call_state(agent, "idle", timeout=1_000)
            assert await toggle.get_attribute("data-status") == "away"
            assert [s.display_name for s in counter.broker.sessions if s.state == "queued"] == [
                "王三"
            ]
            assert (await _wrap_up(counter, second_id))[0]["disposition"] == "completed"
            assert not errors, errors
        finally:
            await customer_browser.close()
            await agent_browser.close()
