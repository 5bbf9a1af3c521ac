"""A customer in a real Firefox and an agent in a real Chromium see and hear each other.

The customer's browser is Debian's ``firefox-esr`` with its fake camera and microphone (a
1 kHz tone), driven by ``tests/firefox/customer.mjs`` (puppeteer-core over WebDriver BiDi); the
agent's is Chromium, its camera playing a face clip and its microphone a 440 Hz tone. The call
goes through the server's media hub, which forwards Firefox's packets to Chromium and back.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from signaling.contrib.fake_media import make_tone_wav, make_y4m

from .browser import (
    audio_peaks,
    call_state,
    grab_frame,
    is_blank,
    launch,
    ready_agent,
    require_chromium,
)
from .helpers import REPO, shared_data

pytestmark = [pytest.mark.browser, pytest.mark.slow]

FIREFOX = os.environ.get("VCOUNTER_FIREFOX", "/usr/bin/firefox-esr")
DRIVER = REPO / "tests" / "firefox"
#: the tone of Firefox's fake microphone
FIREFOX_TONE_HZ = 1000.0
AGENT_TONE_HZ = 440.0


def require_firefox() -> str:
    if not Path(FIREFOX).exists():
        pytest.skip(f"Debian firefox-esr is not installed at {FIREFOX} (make test installs it)")
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (make test installs it)")
    assert (DRIVER / "node_modules" / "puppeteer-core").is_dir(), (
        f"puppeteer-core is missing: run `npm ci` in {DRIVER} (make firefox does)"
    )
    return node


class FirefoxCustomer:
    """``customer.mjs`` as a child process: its JSON events on stdout, its commands on stdin."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def event(self, expected: str, timeout: float = 60.0) -> dict:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            assert self.proc.stderr is not None
            stderr = (await self.proc.stderr.read()).decode(errors="replace")
            raise AssertionError(f"Firefox customer exited before {expected!r}:\n{stderr[-3000:]}")
        event = json.loads(line)
        assert event["event"] == expected, event
        return event

    async def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{line}\n".encode())
        await self.proc.stdin.drain()

    async def aclose(self) -> None:
        """End of input closes Firefox; failing that, SIGTERM (puppeteer closes Firefox on it)."""
        if self.proc.returncode is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            for stop in (self.proc.terminate, self.proc.kill):
                try:
                    await asyncio.wait_for(self.proc.wait(), 15)
                    break
                except TimeoutError:
                    stop()
            await self.proc.wait()


def _dominant(peaks: list[dict]) -> float:
    loud = [p["hz"] for p in peaks if p["db"] > -80]
    assert loud, f"the agent hears silence from Firefox: {peaks}"
    return float(np.median(loud))


async def test_firefox_customer_and_chromium_agent_see_and_hear_each_other(counter):
    node = require_firefox()
    require_chromium()
    from playwright.async_api import async_playwright

    agent_cam = make_y4m(shared_data("videos/d18.mp4"), width=320, height=240, fps=15)
    async with async_playwright() as pw:
        agent_browser = await launch(pw, agent_cam, make_tone_wav(AGENT_TONE_HZ))
        customer = FirefoxCustomer(
            await asyncio.create_subprocess_exec(
                node,
                str(DRIVER / "customer.mjs"),
                counter.url,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        )
        try:
            errors: list[str] = []
            agent = await ready_agent(agent_browser, counter, errors)
            await customer.event("waiting")

            await agent.get_by_test_id("accept-button").click(timeout=15_000)
            await call_state(agent, "active")
            await customer.event("active")
            await agent.wait_for_function(
                """() => { const v = document.querySelector('[data-testid="remote-video"]');
                           return v && v.videoWidth > 0 && v.currentTime > 1.0; }""",
                timeout=20_000,
            )

            # the agent sees Firefox's camera and hears its tone
            frame = await grab_frame(agent, "remote-video")
            assert frame is not None, "the agent's remote video has no frame"
            assert not is_blank(frame), f"the agent sees a blank picture (std {frame.std():.1f})"
            await asyncio.sleep(0.7)
            later = await grab_frame(agent, "remote-video")
            assert later is not None
            change = float(np.abs(later.astype(int) - frame.astype(int)).mean())
            assert change > 0.5, f"the agent's picture of Firefox is frozen (change {change:.2f})"
            heard_by_agent = _dominant(await audio_peaks(agent, "remote-video"))
            assert abs(heard_by_agent - FIREFOX_TONE_HZ) < 30, heard_by_agent
            # forwarded as Firefox encoded it, not decoded by the server
            [session] = list(counter.broker.sessions)
            tap = counter.hub.find(session.id).tap("customer", "video")
            assert tap.keyframes_in >= 1 and tap.frames_decoded == 0

            # and Firefox shows the agent's camera and plays the agent's tone
            result = await customer.event("result")
            assert result["errors"] == [], result["errors"]
            assert result["playButton"] is False, "Firefox asked for a tap to play the call"
            local = result["local"]
            assert local and local["std"] >= 8.0 and local["change"] > 0.5, local
            video = result["video"]
            assert video is not None, "Firefox's remote video has no frame"
            assert video["std"] >= 8.0, f"Firefox shows a blank picture: {video}"
            assert video["change"] > 0.5, f"Firefox shows a frozen picture: {video}"
            audio = result["audio"]
            assert audio is not None, "Firefox's remote video has no audio track"
            assert audio["rms"] > 0.01, f"Firefox hears silence: {audio}"
            assert abs(audio["hz"] - AGENT_TONE_HZ) < 30, audio

            # the customer hangs up in Firefox; both pages end the call
            await customer.send("hangup")
            ended = await customer.event("ended")
            assert ended["state"] == "ended" and ended["errors"] == [], ended
            await call_state(agent, "ended")
            assert await asyncio.wait_for(customer.proc.wait(), 15) == 0
            assert not errors, errors
        finally:
            await customer.aclose()
            await agent_browser.close()
