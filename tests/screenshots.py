"""Screenshots of the customer page and the agent workbench during a real call, at a phone's
size (390x844, Chinese) and a desk's (1366x768, English), into ``docs/screenshots/``.

    .venv/bin/python -m tests.screenshots [OUTDIR]

Not a test (pytest collects ``test_*.py`` only): run it by hand after a layout change. It
starts a counter in this process (SQLite in a temporary directory, face checks on), drives two
real Chromiums through tests/browser.py, and writes one PNG per page and size, plus the
customer's liveness challenge on each size.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from aiohttp.test_utils import TestServer

from server import auth
from server.app import create_app
from server.config import Config
from server.db import Database
from server.migrations import create_all
from signaling.contrib.fake_media import make_tone_wav

from .browser import accept_call, call_state, face_cameras, go_ready, join_queue, launch
from .helpers import ID_PHOTO_FRAME, PASSWORD, REPO, frame_jpeg, shared_data

PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "locale": "zh-CN"}
DESK = {"viewport": {"width": 1366, "height": 768}, "locale": "en-US"}


class _Counter:
    def __init__(self, server: TestServer) -> None:
        self.url = str(server.make_url("")).rstrip("/")


async def _start_counter(root: Path) -> TestServer:
    config = Config(
        data_dir=root / "data",
        tls=False,
        host="127.0.0.1",
        port=0,
        node_id="screenshots",
        master_key_file=root / "keys" / "master.key",
        signing_key_file=root / "keys" / "signing.pem",
        identity=True,
        liveness_steps="turn_left",
        liveness_step_seconds=8.0,
    )
    config.data_dir.mkdir(parents=True, mode=0o700)
    db = Database(config.db_url)
    create_all(db)
    with db.session() as s:
        auth.add_user(
            s,
            role="agent",
            username="alice",
            password=PASSWORD,
            skills=["account_opening", "loan_signing", "wealth_product"],
            display_name="Alice",
        )
        s.commit()
    db.close()
    server = TestServer(create_app(config), host="127.0.0.1")
    await server.start_server()
    return server


async def _call(pw, counter, out: Path, customer_size: dict, agent_size: dict, id_photo: Path):
    customer_cam, agent_cam = face_cameras()
    agent_browser = await launch(pw, agent_cam, make_tone_wav(1000.0))
    customer_browser = await launch(pw, customer_cam, make_tone_wav(440.0))
    c_name = "phone" if customer_size is PHONE else "desk"
    a_name = "phone" if agent_size is PHONE else "desk"
    try:
        agent = await (await agent_browser.new_context(**agent_size)).new_page()
        await agent.goto(f"{counter.url}/agent")
        await agent.get_by_test_id("login-username").fill("alice")
        await agent.get_by_test_id("login-password").fill(PASSWORD)
        await agent.get_by_test_id("login-submit").click()
        await go_ready(agent)
        customer = await (await customer_browser.new_context(**customer_size)).new_page()
        await join_queue(customer, counter, face_consent=True, id_photo=id_photo)
        await accept_call(agent, customer)
        await agent.wait_for_selector(
            '[data-testid="identity-verdict"]:not([data-verified=""])', timeout=45_000
        )
        await customer.wait_for_selector('[data-testid="consent-accept"]', state="visible")
        await asyncio.sleep(2.0)  # both pictures playing
        await customer.screenshot(path=out / f"customer-{c_name}.png")
        await agent.screenshot(path=out / f"agent-{a_name}.png")

        await customer.get_by_test_id("consent-accept").click()
        await agent.wait_for_selector('[data-testid="step-missing"][data-missing="false"]')
        await agent.get_by_test_id("step-next").click()
        await agent.get_by_test_id("liveness-start").click(timeout=15_000)
        await customer.wait_for_selector('[data-testid="liveness-instruction"]', state="visible")
        await asyncio.sleep(1.5)
        await customer.screenshot(path=out / f"customer-{c_name}-liveness.png")
        await customer.get_by_test_id("hangup-button").click()
        await customer.get_by_test_id("hangup-confirm-button").click()
        await call_state(agent, "ended")
    finally:
        await customer_browser.close()
        await agent_browser.close()


async def main(out: Path) -> None:
    from playwright.async_api import async_playwright

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        id_photo = root / "id-photo.jpg"
        id_photo.write_bytes(frame_jpeg(shared_data("videos/d13.mp4"), ID_PHOTO_FRAME))
        server = await _start_counter(root)
        try:
            counter = _Counter(server)
            async with async_playwright() as pw:
                await _call(pw, counter, out, PHONE, DESK, id_photo)
                await _call(pw, counter, out, DESK, PHONE, id_photo)
        finally:
            await server.close()


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs" / "screenshots"
    target.mkdir(parents=True, exist_ok=True)
    asyncio.run(main(target))
    for png in sorted(target.glob("*.png")):
        print(png.relative_to(REPO) if png.is_relative_to(REPO) else png)
