"""A customer comes through the bank's appointment link, in real Chromium.

The bank's system books the call through the API and supplies the ID photo
(a frame of d13); the customer opens ``/?appointment=<token>`` with a fake
camera playing d13: the page shows the appointment, the service and name are
set, and after joining with face consent the agent's panel verifies the
customer against the bank's photo without any upload. A second visit to the
same link is told it is no longer valid and can still join the queue.
"""

from __future__ import annotations

import aiohttp
import pytest

from signaling.contrib.fake_media import make_tone_wav

from .browser import (
    accept_call,
    call_state,
    face_cameras,
    launch,
    ready_agent,
    require_chromium,
    settled,
)
from .helpers import ID_PHOTO_FRAME, frame_jpeg, login, shared_data

pytestmark = [pytest.mark.browser, pytest.mark.slow]


async def _book(counter, photo: bytes) -> dict:
    auth = {"Authorization": f"Bearer {await login(counter, 'integration')}"}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{counter.url}/api/appointments",
            headers=auth,
            json={"business": "loan_signing", "display_name": "王五"},
        ) as r:
            assert r.status == 201
            booked = await r.json()
        async with http.put(
            f"{counter.url}/api/appointments/{booked['id']}/reference",
            data=photo,
            headers={**auth, "Content-Type": "image/jpeg"},
        ) as r:
            assert r.status == 200, await r.text()
    return booked


async def test_the_appointment_link_sets_the_service_and_brings_the_banks_photo(
    make_counter, video_clip, audio_clip
):
    require_chromium()
    from playwright.async_api import async_playwright

    customer_cam, agent_cam = face_cameras()
    photo = frame_jpeg(shared_data("videos/d13.mp4"), ID_PHOTO_FRAME)
    counter = await make_counter(video_clip, audio_clip, identity=True)
    booked = await _book(counter, photo)
    link = booked["join_url"]
    assert link.startswith(counter.url)
    errors: list[str] = []
    async with async_playwright() as pw:
        agent_browser = await launch(pw, agent_cam, make_tone_wav(1000.0))
        customer_browser = await launch(pw, customer_cam, make_tone_wav(440.0))
        try:
            agent = await ready_agent(agent_browser, counter, errors)
            customer = await customer_browser.new_page()
            customer.on("pageerror", lambda e: errors.append(f"customer: {e}"))
            await customer.goto(link)
            note = customer.get_by_test_id("appointment-note")
            await customer.wait_for_selector(
                '[data-testid="appointment-note"][data-state="booked"]', timeout=15_000
            )
            assert "王五" in (await note.text_content() or "")
            # the booked service is chosen, the others cannot be; the name is the bank's
            assert (
                await customer.get_by_test_id("business-loan_signing").get_attribute("aria-pressed")
                == "true"
            )
            assert await customer.get_by_test_id("business-account_opening").is_disabled()
            name = customer.get_by_test_id("display-name")
            assert await name.input_value() == "王五" and not await name.is_editable()

            await customer.get_by_test_id("recording-consent").check()
            await customer.get_by_test_id("face-consent").check()
            await customer.wait_for_selector('[data-testid="join-button"]:enabled', timeout=15_000)
            await customer.get_by_test_id("join-button").click()
            await call_state(customer, "waiting")
            await customer.wait_for_selector(
                '[data-testid="id-photo-status"][data-state="ok"]', timeout=10_000
            )

            await accept_call(agent, customer)
            # verified against the bank's photo: nobody uploaded anything
            assert await settled(agent, "identity-verdict", "verified", timeout=45_000) == "true", (
                await agent.get_by_test_id("identity-panel").text_content()
            )
            source = agent.get_by_test_id("identity-reference-source")
            assert await source.get_attribute("data-source") == "appointment"
            await agent.get_by_test_id("hangup-button").click()
            await call_state(customer, "ended")

            # the same link again: used; the customer is told and may still queue
            again = await (await customer_browser.new_context()).new_page()
            again.on("pageerror", lambda e: errors.append(f"again: {e}"))
            await again.goto(link)
            await again.wait_for_selector(
                '[data-testid="appointment-note"][data-state="invalid"]', timeout=15_000
            )
            assert await again.get_by_test_id("business-account_opening").is_enabled()
            assert await again.get_by_test_id("display-name").is_editable()
            assert not errors, errors
        finally:
            await customer_browser.close()
            await agent_browser.close()
