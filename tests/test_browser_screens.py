"""The pages fit the screens people use: a phone (390x844, Chinese) and a desk (1366x768,
English). The top bar says the state in words, nothing overflows sideways, the customer reads
at least 18 px text (22 px in the large-text mode) and is told why the join button waits. In a
real call the current step's main action is in sight on both sizes, the liveness instruction
sits over the customer's own picture with its countdown and is read aloud, and the agent sees
the video, the step's script, its button and the identity result together."""

from __future__ import annotations

import re

import pytest

from signaling.contrib.fake_media import make_tone_wav

from .browser import (
    NO_SIDEWAYS_SCROLL_JS,
    RECORD_SPEECH_JS,
    accept_call,
    box,
    call_state,
    contains,
    customer_hangs_up,
    face_cameras,
    font_px,
    join_queue,
    launch,
    not_in_view,
    ready_agent,
    require_chromium,
    settled,
)
from .helpers import ID_PHOTO_FRAME, frame_jpeg, shared_data

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "locale": "zh-CN"}
DESK = {"viewport": {"width": 1366, "height": 768}, "locale": "en-US"}


def _chinese(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


@pytest.mark.parametrize("path", ["/", "/agent"], ids=["customer", "agent"])
async def test_the_phone_top_bar_says_the_state_in_words(counter, path) -> None:
    require_chromium()
    from playwright.async_api import async_playwright

    cam, _ = face_cameras()
    async with async_playwright() as pw:
        browser = await launch(pw, cam, make_tone_wav(440.0))
        try:
            context = await browser.new_context(**PHONE)
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(f"{counter.url}{path}")
            status = page.get_by_test_id("status-text")
            await status.wait_for(state="visible")
            text = (await status.text_content() or "").strip()
            assert text and _chinese(text), text
            assert await page.get_by_test_id("call-state").is_hidden()  # the code is for tools
            assert await page.evaluate("window.vcounter.state") == "idle"
            assert await page.evaluate(NO_SIDEWAYS_SCROLL_JS)
            assert not errors, errors
        finally:
            await browser.close()


async def test_the_customer_reads_large_text_and_is_told_why_join_waits(counter) -> None:
    require_chromium()
    from playwright.async_api import async_playwright

    cam, _ = face_cameras()
    async with async_playwright() as pw:
        browser = await launch(pw, cam, make_tone_wav(440.0))
        try:
            page = await (await browser.new_context(**PHONE)).new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(f"{counter.url}/")
            # without the recording consent the button waits, and says so next to it
            reason = page.get_by_test_id("join-disabled-reason")
            await page.wait_for_selector(
                '[data-testid="join-disabled-reason"][data-reason="consent"]', state="visible"
            )
            assert await page.get_by_test_id("join-button").is_disabled()
            assert _chinese(await reason.text_content() or "")
            for selector in ("body", ".muted", '[data-testid="device-status"]', ".field-label"):
                assert await font_px(page, selector) >= 18, selector
            await page.get_by_test_id("recording-consent").check()
            await reason.wait_for(state="hidden")
            assert await page.get_by_test_id("join-button").is_enabled()

            # 大字模式: larger text at once, kept over a reload, and still nothing sideways
            toggle = page.get_by_test_id("large-text-toggle")
            await toggle.click()
            assert await toggle.get_attribute("aria-pressed") == "true"
            assert await font_px(page, "body") >= 22
            await page.reload()
            await page.get_by_test_id("business-account_opening").wait_for()
            assert await font_px(page, "body") >= 22
            assert await page.get_by_test_id("large-text-toggle").get_attribute("aria-pressed") == (
                "true"
            )
            assert await page.evaluate(NO_SIDEWAYS_SCROLL_JS)
            await page.get_by_test_id("large-text-toggle").click()
            assert 18 <= await font_px(page, "body") < 22
            assert not errors, errors
        finally:
            await browser.close()


async def _agent_sees_the_call(agent) -> list[str]:
    """The agent's video, the step's script and button, the identity panel and its result."""
    misses = await not_in_view(
        agent,
        "remote-video",
        agent.locator("#flow-script"),
        "step-next",
        "identity-panel",
        "identity-verdict",
        "liveness-status",
    )
    if await agent.get_by_test_id("sidebar").is_visible():
        misses.append("the side panel is not folded during the call")
    return misses


async def _one_call(counter, customer, agent, *, phone: bool, id_photo=None) -> None:
    """A real call through the counter, checked at the customer's size and the agent's desk."""
    lang = "zh-CN" if phone else "en"
    await join_queue(customer, counter, face_consent=True, id_photo=id_photo)
    if phone:
        assert await customer.evaluate(NO_SIDEWAYS_SCROLL_JS), "the queue screen overflows"
    await accept_call(agent, customer)
    await customer.wait_for_selector(
        '[data-testid="step-title"][data-kind="consent"]', state="visible", timeout=15_000
    )
    if id_photo is not None:
        await settled(agent, "identity-verdict", "verified", timeout=45_000)

    # the consent step: its main action, the video and the step's own text are in sight
    misses = await not_in_view(customer, "consent-accept", "step-title", "remote-video")
    misses += await _agent_sees_the_call(agent)
    assert not misses, misses
    assert await font_px(customer, "#step-text") >= 18
    if phone:
        assert await customer.evaluate(NO_SIDEWAYS_SCROLL_JS), "the call view overflows"
    # the folded side panel opens over the desk and folds again
    await agent.get_by_test_id("sidebar-toggle").click()
    assert not await not_in_view(agent, "sidebar", "ready-toggle")
    await agent.get_by_test_id("sidebar-toggle").click()
    await agent.get_by_test_id("sidebar").wait_for(state="hidden")

    await customer.get_by_test_id("consent-accept").click()
    await agent.wait_for_selector(
        '[data-testid="step-missing"][data-missing="false"]', timeout=15_000
    )
    await agent.get_by_test_id("step-next").click()
    await agent.wait_for_selector('[data-testid="step-title"][data-kind="identity"]')

    # the liveness challenge: the instruction over the customer's own picture, with its
    # countdown, in sight, and read aloud in the page's language
    instruction = customer.get_by_test_id("liveness-instruction")
    for attempt in range(2):
        await agent.get_by_test_id("liveness-start").click(timeout=15_000)
        try:
            await instruction.wait_for(state="visible", timeout=15_000)
            break
        except Exception:
            # what the agent's panel says (busy, an error) tells why the challenge did not start
            panel = await agent.get_by_test_id("identity-panel").inner_text()
            if attempt:
                raise AssertionError(f"no liveness challenge; the agent's panel: {panel}") from None
    assert not await not_in_view(customer, "liveness-instruction", "self-view")
    assert contains(await box(customer, "self-view"), await box(customer, instruction))
    assert await font_px(customer, "#liveness-step-text") >= 24
    countdown = await customer.get_by_test_id("liveness-countdown").text_content() or ""
    assert re.fullmatch(r"\d+", countdown.strip()), countdown
    spoken = await customer.evaluate("window.spoken")
    said = (await customer.locator("#liveness-step-text").text_content() or "").strip()
    assert {"text": said, "lang": lang} in spoken, spoken
    misses = await _agent_sees_the_call(agent)
    assert not misses, misses
    # and its outcome, whichever it is, in sight too
    await settled(customer, "liveness-result", "passed", timeout=30_000)
    assert not await not_in_view(customer, "liveness-result")

    await customer_hangs_up(customer)
    await call_state(agent, "ended")
    await call_state(customer, "ended")


async def test_a_real_call_fits_the_phone_and_the_desk(
    make_counter, video_clip, audio_clip, tmp_path
):
    require_chromium()
    from playwright.async_api import async_playwright

    customer_cam, agent_cam = face_cameras()
    id_photo = tmp_path / "id-photo.jpg"
    id_photo.write_bytes(frame_jpeg(shared_data("videos/d13.mp4"), ID_PHOTO_FRAME))
    # a short one-step challenge: its instruction, countdown and outcome are what is looked at
    counter = await make_counter(
        video_clip, audio_clip, identity=True, liveness_steps="turn_left", liveness_step_seconds=6.0
    )
    errors: list[str] = []
    async with async_playwright() as pw:
        agent_browser = await launch(pw, agent_cam, make_tone_wav(1000.0))
        customer_browser = await launch(pw, customer_cam, make_tone_wav(440.0))
        try:
            agent_context = await agent_browser.new_context(**DESK)
            agent = await ready_agent(agent_context, counter, errors)
            for size, photo in ((PHONE, id_photo), (DESK, None)):
                context = await customer_browser.new_context(**size)
                await context.add_init_script(RECORD_SPEECH_JS)
                customer = await context.new_page()
                customer.on("pageerror", lambda e: errors.append(f"customer: {e}"))
                await _one_call(counter, customer, agent, phone=size is PHONE, id_photo=photo)
                await context.close()
                await agent.get_by_test_id("wrap-up-ready").click()
                await agent.wait_for_selector('[data-testid="ready-toggle"][data-status="ready"]')
            assert not errors, errors
        finally:
            await customer_browser.close()
            await agent_browser.close()
