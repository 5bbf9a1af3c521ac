"""The three business flows end to end in real Chromium pages: customer page, agent workbench, auditor page.

Each flow is driven as people would: the agent reads the checklist and
completes steps when the server says nothing is missing; the customer accepts
the consents, confirms the disclosures, answers the questionnaire, scrolls the
contract to its end and signs on the pad, then downloads the receipt. The
account opening passes the identity step by face (ID photo upload, automatic
verification, blink liveness); the loan and the wealth purchase by the agent's
manual verification on a server without face checks (quicker). After each
flow the signed timeline holds every step's start and end in the flow's
order, and the receipt the customer downloaded verifies against the server's
key. The auditor's page shows the checklist with times, and flags a flow the
customer abandoned half way. On a phone the signature pad opens over the
whole screen, and the customer page never shows an internal id or hash.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from recorder.keys import SigningKey
from recorder.receipt import verify_receipt
from server.appkeys import CONFIG, FLOWS
from signaling.contrib.fake_media import make_tone_wav

from .browser import (
    accept_call,
    call_state,
    customer_hangs_up,
    face_cameras,
    go_ready,
    join_queue,
    launch,
    ready_agent,
    require_chromium,
    settled,
)
from .helpers import ID_PHOTO_FRAME, PASSWORD, audited_session, frame_jpeg, shared_data
from .recordings import wait_recordings

pytestmark = [pytest.mark.browser, pytest.mark.slow]

MANUAL_REASON = "核对了客户手持的身份证原件，人证一致"


async def _accept(agent, customer) -> str:
    """The agent accepts the customer; returns the session id once the flow's checklist shows."""
    await accept_call(agent, customer)
    await agent.wait_for_selector('[data-testid="flow-step"]', timeout=15_000)
    return (await agent.get_by_test_id("customer-session").text_content() or "").strip()


async def _identity_by_face(agent, customer) -> None:
    assert await settled(agent, "identity-verdict", "verified", timeout=45_000) == "true", (
        await agent.get_by_test_id("identity-panel").text_content()
    )
    missing = await agent.get_by_test_id("step-missing").text_content()
    assert "liveness" in missing, missing
    for _attempt in range(2):
        await agent.get_by_test_id("liveness-start").click(timeout=15_000)
        await customer.wait_for_selector(
            '[data-testid="liveness-instruction"][data-step="blink"]',
            state="visible",
            timeout=10_000,
        )
        passed = await settled(customer, "liveness-result", "passed", timeout=40_000)
        if passed == "true":
            break
        # a missed blink on a busy machine (see test_browser_identity): the agent asks again
        await settled(agent, "liveness-status", "state", where=':not([data-state="running"])')
    assert passed == "true", await customer.get_by_test_id("liveness-result").text_content()


async def _identity_by_hand(agent) -> None:
    await agent.get_by_test_id("manual-verify-reason").fill(MANUAL_REASON)
    await agent.get_by_test_id("manual-verify-pass").click()


async def _read_document(customer) -> None:
    view = customer.locator('#flow-panel [data-testid="document-view"]')
    await view.wait_for(state="visible")
    await customer.wait_for_selector(
        '#flow-panel [data-testid="document-view"][data-sha256]', timeout=10_000
    )
    end = customer.get_by_test_id("document-end")
    if await view.evaluate("e => e.scrollHeight > e.clientHeight + 8"):
        assert await end.is_disabled(), "document-end must wait for the end of the document"
    await view.evaluate("e => { e.scrollTop = e.scrollHeight; }")
    await customer.wait_for_selector('[data-testid="document-end"]:enabled', timeout=10_000)
    await end.click()


async def _sign(customer) -> None:
    pad = customer.get_by_test_id("signature-pad")
    submit = customer.get_by_test_id("signature-submit")
    await pad.scroll_into_view_if_needed()
    assert await submit.is_disabled(), "an empty pad cannot be submitted"
    box = await pad.bounding_box()
    assert box and box["width"] > 100
    x0, y0, w, h = box["x"], box["y"], box["width"], box["height"]
    await customer.mouse.move(x0 + 0.08 * w, y0 + 0.7 * h)
    await customer.mouse.down()
    for i in range(1, 13):
        await customer.mouse.move(
            x0 + (0.08 + 0.07 * i) * w, y0 + (0.3 if i % 2 else 0.7) * h, steps=4
        )
    await customer.mouse.up()
    await customer.wait_for_selector('[data-testid="signature-submit"]:enabled', timeout=5_000)
    await submit.click()
    await customer.get_by_test_id("receipt-download").wait_for(state="visible", timeout=20_000)


async def _run_flow(agent, customer, *, identity: str, on_step=None) -> list[str]:
    """Do every step from both pages; returns the step ids in the order the agent completed them.
    ``on_step(kind)`` is awaited once the customer's page shows each step, before it is done."""
    done: list[str] = []
    while True:
        status = await agent.get_by_test_id("flow-status").get_attribute("data-status")
        if status != "running":
            break
        title = agent.locator('#flow-panel [data-testid="step-title"]')
        step, kind = await title.get_attribute("data-step"), await title.get_attribute("data-kind")
        assert step, "a running flow has a current step"
        # the customer's page shows the same step
        await customer.wait_for_selector(
            f'[data-testid="step-title"][data-step="{step}"][data-kind="{kind}"]', timeout=10_000
        )
        if on_step is not None:
            await on_step(kind)
        if kind == "consent":
            await customer.get_by_test_id("consent-accept").click()
        elif kind == "identity":
            await (
                _identity_by_face(agent, customer)
                if identity == "face"
                else _identity_by_hand(agent)
            )
        elif kind == "disclosure":
            assert await agent.get_by_test_id("step-next").is_disabled()
            await agent.get_by_test_id("mark-confirmed").click()
            await agent.wait_for_selector('[data-testid="mark-confirmed"][data-marked="true"]')
            assert "customer" in (await agent.get_by_test_id("step-missing").text_content() or "")
            await customer.get_by_test_id("disclosure-confirm").click()
        elif kind == "questionnaire":
            groups = customer.locator('[data-testid^="question-"]')
            for i in range(await groups.count()):
                # options are listed from the most cautious: the last scores highest
                await groups.nth(i).locator('input[type="radio"]').last.check()
            await customer.get_by_test_id("questionnaire-submit").click()
        elif kind == "document":
            await _read_document(customer)
        elif kind == "signature":
            await _sign(customer)
        # the agent completes the step once the server says nothing is missing
        await agent.wait_for_selector(
            '[data-testid="step-missing"][data-missing="false"]', timeout=30_000
        )
        await agent.get_by_test_id("step-next").click(timeout=10_000)
        await agent.wait_for_function(
            """(sid) => { const t = document.querySelector('#flow-panel [data-testid="step-title"]');
                          return t.dataset.step !== sid; }""",
            arg=step,
            timeout=15_000,
        )
        await agent.wait_for_selector(
            f'[data-testid="flow-step"][data-step="{step}"][data-status="done"]'
        )
        done.append(step)
    return done


async def _auditor_events(counter, session_id: str) -> tuple[list[dict], dict]:
    detail = await audited_session(counter, session_id)
    return detail["events"], detail["flow"]


async def _download_receipt(customer, tmp_path: Path) -> bytes:
    async with customer.expect_download() as info:
        await customer.get_by_test_id("receipt-download").click()
    download = await info.value
    assert download.suggested_filename.startswith(
        "receipt-"
    ) and download.suggested_filename.endswith(".json")
    target = tmp_path / download.suggested_filename
    await download.save_as(target)
    return target.read_bytes()


async def _check_flow(
    counter, business: str, session_id: str, done: list[str], receipt: bytes
) -> None:
    flow = counter.app[FLOWS].flows[business]
    ids = [s.id for s in flow.steps]
    assert done == ids
    events, checklist = await _auditor_events(counter, session_id)
    started = [e["data"]["step"] for e in events if e["kind"] == "step_started"]
    completed = [e["data"]["step"] for e in events if e["kind"] == "step_completed"]
    assert started == completed == ids, (started, completed)
    kinds = [e["kind"] for e in events]
    assert "flow_completed" in kinds and "signature_sealed" in kinds
    assert checklist["status"] == "completed" and all(
        s["status"] == "done" for s in checklist["steps"]
    )
    # the recording's signed timeline holds every step, in the flow's order
    [row] = await wait_recordings(counter.db, session_id)
    manifest = json.loads(
        (counter.app[CONFIG].recordings_dir / row.id / "manifest.json").read_text()
    )
    recorded = manifest["timeline"]["events"]
    for kind in ("step_started", "step_completed"):
        assert [e["data"]["step"] for e in recorded if e["kind"] == kind] == ids, (kind, recorded)
    assert "signature_sealed" in [e["kind"] for e in recorded]
    # the receipt the customer downloaded is byte-exact and verifies against the server's key
    signing = SigningKey.load(counter.app[CONFIG].signing_key_file)
    check = verify_receipt(receipt, trusted_public_keys=[signing.public_pem()])
    assert check.ok, check.reason
    sealed = next(e["data"] for e in events if e["kind"] == "signature_sealed")
    assert sealed["receipt_id"] in receipt.decode()


async def _finish(agent, customer, business: str) -> None:
    """Both pages say the flow completed; the agent sees the booked outcome; the call ends."""
    await customer.wait_for_selector(
        '[data-testid="flow-status"][data-status="completed"]', state="visible"
    )
    await agent.wait_for_selector(
        '#flow-panel [data-testid="flow-status"][data-status="completed"]'
    )
    outcome = await agent.get_by_test_id("flow-outcome").text_content()
    expected = {
        "account_opening": ("Account", "账户"),
        "loan_signing": ("Loan", "贷款"),
        "wealth_product": ("Order", "订单"),
    }[business]
    assert any(word in outcome for word in expected), outcome


async def test_account_opening_with_face_verification(
    make_counter, video_clip, audio_clip, tmp_path
):
    require_chromium()
    from playwright.async_api import async_playwright

    customer_cam, agent_cam = face_cameras()
    id_photo = tmp_path / "id-photo.jpg"
    id_photo.write_bytes(frame_jpeg(shared_data("videos/d13.mp4"), ID_PHOTO_FRAME))
    counter = await make_counter(
        video_clip, audio_clip, identity=True, liveness_steps="blink", liveness_step_seconds=16.0
    )
    errors: list[str] = []
    async with async_playwright() as pw:
        agent_browser = await launch(pw, agent_cam, make_tone_wav(1000.0))
        customer_browser = await launch(pw, customer_cam, make_tone_wav(440.0))
        try:
            agent = await ready_agent(agent_browser, counter, errors)
            customer = await customer_browser.new_page()
            customer.on("pageerror", lambda e: errors.append(f"customer: {e}"))
            await join_queue(
                customer, counter, "account_opening", face_consent=True, id_photo=id_photo
            )
            session_id = await _accept(agent, customer)

            # nothing can be completed before the customer accepted the consents
            assert await agent.get_by_test_id("step-next").is_disabled()
            assert (
                await agent.get_by_test_id("step-missing").get_attribute("data-missing") == "true"
            )
            assert await customer.get_by_test_id("consent-face").is_checked()
            done = await _run_flow(agent, customer, identity="face")
            await _finish(agent, customer, "account_opening")
            receipt = await _download_receipt(customer, tmp_path)
            await customer_hangs_up(customer)
            await call_state(agent, "ended")
            await call_state(customer, "ended")
            # the business is done: a tick, and the new account's number in groups of four
            assert await customer.get_by_test_id("ended-icon").get_attribute("data-done") == "true"
            outcome = await customer.get_by_test_id("ended-outcome").text_content() or ""
            assert re.search(r"\d{4} \d{4} \d{4}", outcome), outcome
            # the receipt stays downloadable on the end screen
            assert await customer.get_by_test_id("receipt-download").is_visible()
            assert not errors, errors
        finally:
            await customer_browser.close()
            await agent_browser.close()
    await _check_flow(counter, "account_opening", session_id, done, receipt)
    events, _ = await _auditor_events(counter, session_id)
    sealed = next(e["data"] for e in events if e["kind"] == "signature_sealed")
    assert sealed["identity"] == "face" and sealed["snapshot_sha256"]


async def test_loan_and_wealth_by_manual_verification_and_the_auditor_checklist(
    make_counter, video_clip, audio_clip, tmp_path
):
    require_chromium()
    from playwright.async_api import async_playwright

    customer_cam, agent_cam = face_cameras()
    counter = await make_counter(
        video_clip, audio_clip
    )  # face checks off: the agent verifies by hand
    errors: list[str] = []
    sessions: dict[str, str] = {}
    async with async_playwright() as pw:
        agent_browser = await launch(pw, agent_cam, make_tone_wav(1000.0))
        customer_browser = await launch(pw, customer_cam, make_tone_wav(440.0))
        try:
            agent = await ready_agent(agent_browser, counter, errors)
            customer = await customer_browser.new_page()
            customer.on("pageerror", lambda e: errors.append(f"customer: {e}"))
            for business in ("loan_signing", "wealth_product"):
                await join_queue(customer, counter, business, face_consent=False)
                session_id = sessions[business] = await _accept(agent, customer)
                if business == "wealth_product":
                    # the agent pushes the risk disclosure statement at any time: an overlay to close
                    await agent.get_by_test_id("document-select").select_option("risk_disclosure")
                    await agent.get_by_test_id("push-document").click()
                    overlay = customer.locator('#doc-overlay [data-testid="document-view"]')
                    await overlay.wait_for(state="visible", timeout=10_000)
                    assert "风险" in (await overlay.text_content() or "")
                    await customer.get_by_test_id("document-close").click()
                    await overlay.wait_for(state="hidden")
                done = await _run_flow(agent, customer, identity="manual")
                await _finish(agent, customer, business)
                if business == "wealth_product":
                    facts = await agent.get_by_test_id("flow-facts").text_content()
                    assert "C5" in facts, facts
                receipt = await _download_receipt(customer, tmp_path)
                await agent.get_by_test_id("hangup-button").click()
                await call_state(customer, "ended")
                await call_state(agent, "ended")
                await _check_flow(counter, business, session_id, done, receipt)
                events, _ = await _auditor_events(counter, session_id)
                assert any(
                    e["kind"] == "document_shown" and e["data"]["pushed"] for e in events
                ) == (business == "wealth_product")
                await customer.get_by_test_id("start-over-button").click()
                await go_ready(agent)

            # an abandoned flow: the customer hangs up after the consent step
            await join_queue(customer, counter, "account_opening", face_consent=False)
            abandoned = await _accept(agent, customer)
            await customer.get_by_test_id("consent-accept").click()
            await agent.wait_for_selector(
                '[data-testid="step-missing"][data-missing="false"]', timeout=10_000
            )
            await agent.get_by_test_id("step-next").click()
            await agent.wait_for_selector(
                '[data-testid="flow-step"][data-step="consent"][data-status="done"]'
            )
            await customer_hangs_up(customer)
            await call_state(agent, "ended")

            # the auditor's page: the completed loan with step times, the abandoned flow flagged
            auditor = await (await agent_browser.new_context()).new_page()
            auditor.on("pageerror", lambda e: errors.append(f"auditor: {e}"))
            await auditor.goto(f"{counter.url}/audit#session/{sessions['loan_signing']}")
            await auditor.get_by_test_id("login-username").fill("auditor")
            await auditor.get_by_test_id("login-password").fill(PASSWORD)
            await auditor.get_by_test_id("login-submit").click()
            steps = auditor.locator('[data-testid="audit-checklist"] [data-testid="audit-step"]')
            loan = counter.app[FLOWS].flows["loan_signing"]
            await steps.nth(len(loan.steps) - 1).wait_for(timeout=15_000)
            assert await steps.count() == len(loan.steps)
            for i, step in enumerate(loan.steps):
                item = steps.nth(i)
                assert await item.get_attribute("data-step") == step.id
                assert await item.get_attribute("data-status") == "done"
                time = item.get_by_test_id("audit-step-time")
                assert await time.get_attribute("data-started") and await time.get_attribute(
                    "data-ended"
                )
                assert (await time.text_content() or "").strip()
            # each step links to where it started on the recording's own timeline (the session's
            # offsets count from the queue join, seconds earlier)
            markers = auditor.locator('[data-testid="timeline-marker"][data-kind="step_started"]')
            started = {await m.get_attribute("data-offset-ms") for m in await markers.all()}
            links = auditor.locator('[data-testid="audit-step-time"] button')
            linked = {await b.get_attribute("data-offset-ms") for b in await links.all()}
            assert len(linked) == len(loan.steps) and linked <= started, (linked, started)
            assert await auditor.get_by_test_id("flow-flag").is_hidden()

            await auditor.goto(f"{counter.url}/audit#session/{abandoned}")
            flag = auditor.get_by_test_id("flow-flag")
            await flag.wait_for(state="visible", timeout=15_000)
            assert await flag.get_attribute("data-status") == "incomplete"
            first = auditor.locator('[data-testid="audit-step"][data-step="consent"]')
            assert await first.get_attribute("data-status") == "done"
            assert (
                await auditor.locator('[data-testid="audit-step"][data-status="active"]').count()
                == 1
            )
            assert not errors, errors
        finally:
            await customer_browser.close()
            await agent_browser.close()


#: a hex run (hashes, receipt and evidence ids) and the server's ids (signaling.ids.new_id:
#: 16+ URL-safe base64 characters, letters and digits mixed)
HEX_RUN = re.compile(r"[0-9a-fA-F]{16,}")
TOKEN = re.compile(r"[A-Za-z0-9_-]{16,}")


def _ids_shown(text: str) -> list[str]:
    tokens = [t for t in TOKEN.findall(text) if re.search(r"\d", t) and re.search(r"[A-Za-z]", t)]
    return HEX_RUN.findall(text) + tokens


async def _pad_fills_the_screen(customer, width: float = 0.9) -> None:
    """The signature pad is open over the whole view (at least ``width`` of its width and half its
    height), its buttons big and in sight."""
    view = customer.viewport_size
    overlay = customer.get_by_test_id("signature-overlay")
    await overlay.wait_for(state="visible", timeout=10_000)
    pad = await customer.get_by_test_id("signature-pad").bounding_box()
    assert pad and pad["width"] >= width * view["width"], (pad, view)
    assert pad["height"] >= 0.5 * view["height"], (pad, view)
    for testid in ("signature-clear", "signature-submit", "signature-close"):
        b = await customer.get_by_test_id(testid).bounding_box()
        assert b and b["height"] >= 52 and b["width"] >= 88, (testid, b)
        assert b["x"] >= 0 and b["y"] >= 0, (testid, b)
        assert b["x"] + b["width"] <= view["width"] + 0.5, (testid, b, view)
        assert b["y"] + b["height"] <= view["height"] + 0.5, (testid, b, view)
    # nothing of the call shows over it
    top = await customer.evaluate(
        """() => { const r = document.querySelector('[data-testid="signature-pad"]').getBoundingClientRect();
                   const e = document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2);
                   return e && e.dataset.testid; }"""
    )
    assert top == "signature-pad", top


async def test_phone_customer_signs_on_a_full_screen_pad_and_sees_no_ids(
    make_counter, video_clip, audio_clip
):
    require_chromium()
    from playwright.async_api import async_playwright

    customer_cam, agent_cam = face_cameras()
    counter = await make_counter(video_clip, audio_clip)  # face checks off: manual verification
    errors: list[str] = []
    shown: list[str] = []
    async with async_playwright() as pw:
        agent_browser = await launch(pw, agent_cam, make_tone_wav(1000.0))
        customer_browser = await launch(pw, customer_cam, make_tone_wav(440.0))
        try:
            agent = await ready_agent(agent_browser, counter, errors)
            context = await customer_browser.new_context(
                viewport={"width": 390, "height": 844}, is_mobile=True, locale="zh-CN"
            )
            customer = await context.new_page()
            customer.on("pageerror", lambda e: errors.append(f"customer: {e}"))
            await join_queue(customer, counter, "account_opening", face_consent=False)
            session_id = await _accept(agent, customer)

            async def on_step(kind: str) -> None:
                shown.append(await customer.evaluate("document.body.innerText"))
                if kind != "signature":
                    return
                await _pad_fills_the_screen(customer)
                # closing without signing goes back to the step; its button opens the pad again
                await customer.get_by_test_id("signature-close").click()
                await customer.get_by_test_id("signature-overlay").wait_for(state="hidden")
                assert await customer.get_by_test_id("step-title").get_attribute("data-kind") == (
                    "signature"
                )
                await customer.get_by_test_id("signature-open").click()
                await _pad_fills_the_screen(customer)
                # turned sideways: the buttons go beside the pad
                await customer.set_viewport_size({"width": 844, "height": 390})
                await _pad_fills_the_screen(customer, width=0.7)
                await customer.set_viewport_size({"width": 390, "height": 844})

            await _run_flow(agent, customer, identity="manual", on_step=on_step)
            await _finish(agent, customer, "account_opening")
            assert await customer.get_by_test_id("signature-overlay").is_hidden()
            shown.append(await customer.evaluate("document.body.innerText"))  # with the receipt
            receipt_id = await customer.get_by_test_id("receipt-download").get_attribute(
                "data-receipt-id"
            )
            assert receipt_id, "the receipt id stays on the download link"
            await customer_hangs_up(customer)
            await call_state(customer, "ended")
            end = await customer.evaluate("document.body.innerText")
            shown.append(end)
            outcome = await customer.get_by_test_id("ended-outcome").text_content() or ""
            assert re.search(r"\d{4} \d{4} \d{4}", outcome), outcome
            for text in shown:
                assert _ids_shown(text) == [], text
                assert session_id not in text and receipt_id not in text, text
            assert not errors, errors
        finally:
            await customer_browser.close()
            await agent_browser.close()
