"""The pages on a phone (390x844, Chinese): the top bar says the state in words, never as a raw
code, and nothing overflows sideways."""

from __future__ import annotations

import pytest

from signaling.contrib.fake_media import make_tone_wav

from .browser import face_cameras, launch, require_chromium

pytestmark = [pytest.mark.browser, pytest.mark.slow]

NO_SIDEWAYS_SCROLL_JS = "() => document.documentElement.scrollWidth <= window.innerWidth"


@pytest.mark.parametrize("path", ["/", "/agent"], ids=["customer", "agent"])
async def test_the_phone_top_bar_says_the_state_in_words(counter, path) -> None:
    require_chromium()
    from playwright.async_api import async_playwright

    cam, _ = face_cameras()
    async with async_playwright() as pw:
        browser = await launch(pw, cam, make_tone_wav(440.0))
        try:
            context = await browser.new_context(
                locale="zh-CN", viewport={"width": 390, "height": 844}, is_mobile=True
            )
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(f"{counter.url}{path}")
            status = page.get_by_test_id("status-text")
            await status.wait_for(state="visible")
            text = (await status.text_content() or "").strip()
            assert text and any("\u4e00" <= ch <= "\u9fff" for ch in text), text
            assert await page.get_by_test_id("call-state").is_hidden()  # the code is for tools
            assert await page.evaluate("window.vcounter.state") == "idle"
            assert await page.evaluate(NO_SIDEWAYS_SCROLL_JS)
            assert not errors, errors
        finally:
            await browser.close()
