"""Real Chromium for end-to-end tests: fake cameras playing real face clips.

Chromium plays a ``.y4m`` file as its camera and a ``.wav`` as its microphone
(``--use-file-for-fake-video-capture``/``--use-file-for-fake-audio-capture``).
Each participant needs its own browser process, since the fake devices are
per process (the files come from :mod:`signaling.contrib.fake_media`).
Helpers here launch Chromium with Playwright (``executable_path=/usr/bin/chromium``,
never a downloaded browser), drive the pages as people do, and read back what a
page's ``<video>`` shows and what its audio carries.
"""

from __future__ import annotations

import base64
import io
import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from signaling.contrib.fake_media import CHROMIUM, CHROMIUM_ARGS, make_y4m

from .helpers import PASSWORD, shared_data


def require_chromium() -> str:
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip("Debian chromium is not installed (make test installs it)")
    return CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")  # type: ignore[return-value]


async def launch(playwright, video: Path, audio: Path):
    """A Chromium whose camera plays ``video`` and microphone plays ``audio``."""
    return await playwright.chromium.launch(
        executable_path=require_chromium(),
        headless=True,
        args=[
            *CHROMIUM_ARGS,
            f"--use-file-for-fake-video-capture={video}",
            f"--use-file-for-fake-audio-capture={audio}",
        ],
    )


def face_cameras() -> tuple[Path, Path]:
    """Camera clips of two people: the customer's d13 (8 s), the agent's d18 (small)."""
    customer_cam = make_y4m(shared_data("videos/d13.mp4"), seconds=8.0)
    # the agent's picture matters little here: a small one leaves the CPU to the customer's checks
    agent_cam = make_y4m(shared_data("videos/d18.mp4"), width=320, height=240, fps=15)
    return customer_cam, agent_cam


# -- driving the pages ----------------------------------------------------------------------


async def call_state(page, value: str, timeout: float = 20_000) -> None:
    """Wait until the page's ``call-state`` reads ``value`` (waiting, active, ended...)."""
    await page.wait_for_function(
        "(v) => document.querySelector('[data-testid=\"call-state\"]').textContent.trim() === v",
        arg=value,
        timeout=timeout,
    )


async def settled(page, testid: str, attr: str, timeout: float = 30_000, where: str = "") -> str:
    """Wait until ``[data-testid=testid]`` has a non-empty ``data-<attr>`` (and matches ``where``)."""
    selector = f'[data-testid="{testid}"][data-{attr}]:not([data-{attr}=""]){where}'
    handle = await page.wait_for_selector(selector, state="attached", timeout=timeout)
    return await handle.get_attribute(f"data-{attr}")


async def go_ready(agent) -> None:
    """On the agent workbench: out of an ended call's wrap-up if need be, then ready for the next one."""
    if await agent.get_by_test_id("wrap-up-away").is_visible():
        await agent.get_by_test_id("wrap-up-away").click()
    await agent.wait_for_selector(
        '[data-testid="ready-toggle"][data-status="away"], '
        '[data-testid="ready-toggle"][data-status="ready"]',
        timeout=15_000,
    )
    if await agent.get_by_test_id("ready-toggle").get_attribute("data-status") != "ready":
        await agent.get_by_test_id("ready-toggle").click()
    await agent.wait_for_selector(
        '[data-testid="ready-toggle"][data-status="ready"]', timeout=10_000
    )


async def ready_agent(browser, counter, errors: list[str], username: str = "alice"):
    """A workbench page, logged in and ready; its page errors go to ``errors``."""
    agent = await browser.new_page()
    agent.on("pageerror", lambda e: errors.append(f"agent: {e}"))
    await agent.goto(f"{counter.url}/agent")
    await agent.get_by_test_id("login-username").fill(username)
    await agent.get_by_test_id("login-password").fill(PASSWORD)
    await agent.get_by_test_id("login-submit").click()
    await go_ready(agent)
    return agent


async def customer_hangs_up(customer) -> None:
    """The customer taps hang up and confirms it (hanging up asks first)."""
    await customer.get_by_test_id("hangup-button").click()
    await customer.get_by_test_id("hangup-confirm-button").click()


async def accept_call(agent, customer) -> None:
    """The agent accepts the waiting customer; both pages show the call active."""
    await agent.get_by_test_id("accept-button").click(timeout=15_000)
    await call_state(agent, "active")
    await call_state(customer, "active")


async def join_queue(
    customer,
    counter,
    business: str = "account_opening",
    *,
    name: str = "李四",
    face_consent: bool = False,
    id_photo: Path | None = None,
) -> None:
    """On the customer page: choose ``business``, accept the recording, join; with ``id_photo``,
    upload it as the ID photo while waiting."""
    await customer.goto(f"{counter.url}/")
    await customer.get_by_test_id(f"business-{business}").click()
    await customer.get_by_test_id("display-name").fill(name)
    await customer.get_by_test_id("recording-consent").check()
    if face_consent:
        await customer.get_by_test_id("face-consent").check()
    await customer.wait_for_selector('[data-testid="join-button"]:enabled', timeout=15_000)
    await customer.get_by_test_id("join-button").click()
    await call_state(customer, "waiting")
    if id_photo is not None:
        await customer.get_by_test_id("id-photo-input").set_input_files(str(id_photo))
        await customer.wait_for_selector(
            '[data-testid="id-photo-status"][data-state="ok"]', timeout=30_000
        )


# -- where things are on the screen -------------------------------------------------------------

#: records what a page reads aloud (speechSynthesis.speak) in ``window.spoken``, as {text, lang}
RECORD_SPEECH_JS = """(() => {
  window.spoken = [];
  const synth = window.speechSynthesis;
  if (!synth) return;
  const speak = synth.speak.bind(synth);
  synth.speak = (u) => { window.spoken.push({ text: u.text, lang: u.lang }); try { speak(u); } catch (e) {} };
})()"""

NO_SIDEWAYS_SCROLL_JS = "() => document.documentElement.scrollWidth <= window.innerWidth"


async def not_in_view(page, *targets) -> list[str]:
    """Which of ``targets`` (data-testids or locators) a person does not see whole on the page
    without scrolling (hidden, or partly outside ``page.viewport_size``): one line each."""
    view = page.viewport_size
    misses = []
    for target in targets:
        locator = page.get_by_test_id(target) if isinstance(target, str) else target
        name = target if isinstance(target, str) else str(target)
        found = await locator.bounding_box() if await locator.is_visible() else None
        if found is None:
            misses.append(f"{name}: not visible")
        elif not contains({"x": 0, "y": 0, **view}, found):
            misses.append(
                f"{name}: {found} is not inside the {view['width']}x{view['height']} view"
            )
    return misses


async def box(page, target) -> dict:
    """The bounding box of a visible ``target`` (a data-testid or a locator)."""
    locator = page.get_by_test_id(target) if isinstance(target, str) else target
    found = await locator.bounding_box()
    assert found is not None, f"{target} has no box"
    return found


def contains(outer: dict, inner: dict) -> bool:
    """Whether bounding box ``inner`` lies within ``outer``."""
    return (
        inner["x"] >= outer["x"] - 0.5
        and inner["y"] >= outer["y"] - 0.5
        and inner["x"] + inner["width"] <= outer["x"] + outer["width"] + 0.5
        and inner["y"] + inner["height"] <= outer["y"] + outer["height"] + 0.5
    )


async def font_px(page, selector: str) -> float:
    """The computed font size, in CSS pixels, of the first element matching ``selector``."""
    return await page.eval_on_selector(selector, "e => parseFloat(getComputedStyle(e).fontSize)")


# -- what the pages show and play -------------------------------------------------------------


GRAB_FRAME_JS = """(testid) => {
  const v = document.querySelector(`[data-testid="${testid}"]`);
  if (!v || !v.videoWidth) return null;
  const c = document.createElement('canvas');
  c.width = v.videoWidth; c.height = v.videoHeight;
  c.getContext('2d').drawImage(v, 0, 0);
  return c.toDataURL('image/png');
}"""

# dominant frequency of a <video>'s audio, over ~1 s of analysis
AUDIO_PEAK_JS = """async (testid) => {
  const v = document.querySelector(`[data-testid="${testid}"]`);
  const stream = v && v.srcObject;
  if (!stream || !stream.getAudioTracks().length) return null;
  const ctx = new AudioContext();
  await ctx.resume();
  const src = ctx.createMediaStreamSource(new MediaStream(stream.getAudioTracks()));
  const an = ctx.createAnalyser();
  an.fftSize = 8192;
  src.connect(an);
  const data = new Float32Array(an.frequencyBinCount);
  const peaks = [];
  for (let i = 0; i < 10; i++) {
    await new Promise(r => setTimeout(r, 100));
    an.getFloatFrequencyData(data);
    let best = 0;
    for (let k = 1; k < data.length; k++) if (data[k] > data[best]) best = k;
    peaks.push({hz: best * ctx.sampleRate / an.fftSize, db: data[best]});
  }
  ctx.close();
  return peaks;
}"""


async def grab_frame(page, testid: str) -> np.ndarray | None:
    """The frame a ``<video data-testid=testid>`` shows now, as RGB."""
    url = await page.evaluate(GRAB_FRAME_JS, testid)
    if not url:
        return None
    png = base64.b64decode(url.split(",", 1)[1])
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


async def audio_peaks(page, testid: str) -> list[dict]:
    return await page.evaluate(AUDIO_PEAK_JS, testid) or []


def is_blank(rgb: np.ndarray) -> bool:
    return float(rgb.std()) < 8.0


def face_encoding(rgb: np.ndarray) -> np.ndarray | None:
    import face_recognition

    locations = face_recognition.face_locations(rgb, number_of_times_to_upsample=1)
    if not locations:
        return None
    encodings = face_recognition.face_encodings(rgb, locations[:1])
    return encodings[0] if encodings else None


def source_encoding(video: Path, frame_index: int = 15) -> np.ndarray:
    with av.open(str(video)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i == frame_index:
                enc = face_encoding(frame.to_ndarray(format="rgb24"))
                assert enc is not None, f"no face in {video} frame {frame_index}"
                return enc
    raise AssertionError(f"{video} has fewer than {frame_index} frames")
