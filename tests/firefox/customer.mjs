// A customer in a real Firefox: Debian's firefox-esr, driven over WebDriver BiDi by puppeteer-core.
//
//   node tests/firefox/customer.mjs URL [--screenshot FILE.png]
//
// Opens the customer page at URL (http://127.0.0.1:PORT: a secure context), chooses account
// opening, accepts the recording and joins the queue as people do, then waits for an agent.
// Firefox's fake camera and microphone (media.navigator.streams.fake) stand in for real ones.
//
// It prints one JSON object a line on stdout, each with an "event":
//   {"event": "waiting"}                   in the queue
//   {"event": "active"}                    the call started
//   {"event": "result", ...}              what the page shows and plays, with
//        video, local   the remote and the own <video>: {width, height, mean, std, change}
//                       (RGB pixel mean and deviation, and the mean difference 0.7 s later)
//        audio          the remote audio: {seconds, rms, hz} (the strongest frequency)
//        playButton     whether the page asks for a tap to play; errors: page errors so far
//   {"event": "ended", "state": ...}       after "hangup" was read on stdin: hung up, call ended
//   {"event": "error", "message": ...}     something failed; the exit status is then 1
// After "result" it waits for one line on stdin: "hangup" taps hang up and confirms it; an end
// of input closes the browser without hanging up.
//
// Received audio is measured without an audio output device (there is none on a server, and a
// Firefox AudioContext does not run without one): a MediaRecorder records the remote audio
// track, and an OfflineAudioContext decodes the recording.

import { createInterface } from 'node:readline';
import puppeteer from 'puppeteer-core';

const FIREFOX = process.env.VCOUNTER_FIREFOX || '/usr/bin/firefox-esr';
const STEP_MS = 20_000;
const CALL_WAIT_MS = 60_000;

const [url, ...rest] = process.argv.slice(2);
const screenshotAt = rest[0] === '--screenshot' ? rest[1] : null;
if (!url) {
  process.stderr.write('usage: node customer.mjs URL [--screenshot FILE.png]\n');
  process.exit(2);
}

function emit(event, fields = {}) {
  process.stdout.write(`${JSON.stringify({ event, ...fields })}\n`);
}

const lines = createInterface({ input: process.stdin });
const received = [];
let inputEnded = false;
let waiter = null;
lines.on('line', (line) => {
  received.push(line.trim());
  if (waiter) waiter();
});
lines.on('close', () => {
  inputEnded = true;
  if (waiter) waiter();
});
/** The next line read on stdin, or null at the end of input. */
async function nextLine() {
  while (!received.length && !inputEnded) {
    await new Promise((resolve) => {
      waiter = resolve;
    });
  }
  waiter = null;
  return received.length ? received.shift() : null;
}

const byTestId = (id) => `[data-testid="${id}"]`;

async function callState(page, value, timeout = STEP_MS) {
  await page.waitForFunction(
    (v) => document.querySelector('[data-testid="call-state"]').textContent.trim() === v,
    { timeout },
    value,
  );
}

/**
 * What a <video data-testid=testid> shows: pixel statistics (RGB, 0..255) of the frame now, and
 * how much a frame `gapMs` later differs from it (mean absolute difference: 0 for a frozen picture).
 */
async function frameStats(testid, gapMs) {
  const v = document.querySelector(`[data-testid="${testid}"]`);
  if (!v || !v.videoWidth) return null;
  const c = document.createElement('canvas');
  c.width = v.videoWidth;
  c.height = v.videoHeight;
  const g = c.getContext('2d', { willReadFrequently: true });
  const grab = () => {
    g.drawImage(v, 0, 0);
    return g.getImageData(0, 0, c.width, c.height).data;
  };
  const d = grab();
  let sum = 0;
  let sq = 0;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) {
    for (let k = 0; k < 3; k += 1) {
      sum += d[i + k];
      sq += d[i + k] * d[i + k];
      n += 1;
    }
  }
  const mean = sum / n;
  await new Promise((resolve) => setTimeout(resolve, gapMs));
  const later = grab();
  let diff = 0;
  for (let i = 0; i < d.length; i += 4) {
    for (let k = 0; k < 3; k += 1) diff += Math.abs(later[i + k] - d[i + k]);
  }
  return {
    width: c.width,
    height: c.height,
    mean,
    std: Math.sqrt(Math.max(0, sq / n - mean * mean)),
    change: diff / n,
  };
}

/** ~1.5 s of a <video>'s audio, recorded and decoded: its RMS and dominant frequency. */
async function audioStats(testid) {
  const v = document.querySelector(`[data-testid="${testid}"]`);
  const tracks = v && v.srcObject ? v.srcObject.getAudioTracks() : [];
  if (!tracks.length) return null;
  const recorder = new MediaRecorder(new MediaStream(tracks));
  const chunks = [];
  recorder.ondataavailable = (e) => chunks.push(e.data);
  const stopped = new Promise((resolve) => {
    recorder.onstop = resolve;
  });
  recorder.start();
  await new Promise((resolve) => setTimeout(resolve, 1500));
  recorder.stop();
  await stopped;
  const encoded = await new Blob(chunks).arrayBuffer();
  const decoded = await new OfflineAudioContext(1, 48000, 48000).decodeAudioData(encoded);
  const x = decoded.getChannelData(0);
  let sq = 0;
  for (const s of x) sq += s * s;
  // the strongest frequency from 100 Hz to 3 kHz, in 5 Hz steps (Goertzel over the last 0.5 s)
  const rate = decoded.sampleRate;
  const tail = x.subarray(Math.max(0, x.length - Math.round(rate / 2)));
  let best = { hz: 0, power: 0 };
  for (let hz = 100; hz <= 3000; hz += 5) {
    const coeff = 2 * Math.cos((2 * Math.PI * hz) / rate);
    let s1 = 0;
    let s2 = 0;
    for (const s of tail) {
      const s0 = s + coeff * s1 - s2;
      s2 = s1;
      s1 = s0;
    }
    const power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    if (power > best.power) best = { hz, power };
  }
  return { seconds: decoded.duration, rms: Math.sqrt(sq / x.length), hz: best.hz };
}

async function main() {
  const errors = [];
  const browser = await puppeteer.launch({
    browser: 'firefox',
    protocol: 'webDriverBiDi',
    executablePath: FIREFOX,
    headless: true,
    extraPrefsFirefox: {
      // a fake camera and microphone, granted without asking
      'media.navigator.streams.fake': true,
      'media.navigator.permission.disabled': true,
      // puppeteer points Firefox's remote settings at dummy.test: resolve it to this machine
      'network.dns.localDomains': 'dummy.test',
    },
    // a release build honours that server only with this set; without it Firefox looks up
    // Mozilla's hosts at every start
    env: { ...process.env, MOZ_REMOTE_SETTINGS_DEVTOOLS: '1' },
  });
  try {
    const page = await browser.newPage();
    await page.setViewport({ width: 1280, height: 800 });
    page.on('pageerror', (err) => errors.push(`pageerror: ${err.message || err}`));
    page.on('console', (msg) => {
      if (msg.type() === 'error') errors.push(`console.error: ${msg.text()}`);
    });

    await page.goto(`${url}/`, { waitUntil: 'load' });
    await page.locator(byTestId('business-account_opening')).setTimeout(STEP_MS).click();
    await page.locator(byTestId('display-name')).fill('王五');
    await page.locator(byTestId('recording-consent')).click();
    await page.waitForSelector(`${byTestId('join-button')}:enabled`, { timeout: STEP_MS });
    await page.locator(byTestId('join-button')).click();
    await callState(page, 'waiting');
    emit('waiting');

    await callState(page, 'active', CALL_WAIT_MS);
    emit('active');
    await page.waitForFunction(
      () => {
        const v = document.querySelector('[data-testid="remote-video"]');
        return v && v.videoWidth > 0 && v.currentTime > 1.0;
      },
      { timeout: STEP_MS },
    );
    const playButton = await page.$eval(byTestId('play-button'), (b) => !b.hidden);
    const video = await page.evaluate(frameStats, 'remote-video', 700);
    const audio = await page.evaluate(audioStats, 'remote-video');
    const local = await page.evaluate(frameStats, 'local-video', 700);
    if (screenshotAt) await page.screenshot({ path: screenshotAt });
    emit('result', { video, audio, local, playButton, userAgent: await browser.userAgent(), errors });

    if ((await nextLine()) === 'hangup') {
      await page.locator(byTestId('hangup-button')).click();
      await page.locator(byTestId('hangup-confirm-button')).click();
      await callState(page, 'ended');
      const state = await page.$eval(byTestId('call-state'), (e) => e.textContent.trim());
      emit('ended', { state, errors });
    }
  } finally {
    lines.close();
    const firefox = browser.process();
    await browser.close();
    // close() gives up without a word when Firefox drops the connection first: end it then
    if (firefox && firefox.exitCode === null && firefox.signalCode === null) {
      try {
        process.kill(-firefox.pid, 'SIGKILL'); // its process group: it and its content processes
      } catch {
        // it exited meanwhile
      }
    }
  }
}

main().catch((err) => {
  emit('error', { message: String((err && err.stack) || err) });
  process.exitCode = 1;
});
