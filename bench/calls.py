"""How much server CPU one call costs, passthrough against transcode, and how many calls fit.

    python bench/calls.py --calls 2 --duration 20 --media-mode both
    python bench/calls.py --calls 40 --duration 30 --media-mode passthrough --json

Unless ``--url`` is given, each media mode gets a fresh server
(``vcounter serve --no-tls --no-recording`` on a free port, a fresh data
directory holding N agents created once per run with ``vcounter user add``,
keys in the temp dir), started as a subprocess so that its CPU can be read
from the outside with psutil, and stopped at the end (SIGTERM, then SIGKILL).
``--recording`` leaves recording on (transcode mode has nothing to record).

Participants are :class:`~signaling.contrib.headless.HeadlessParticipant` objects sending
one pre-encoded 640x480 30 fps VP8 clip and one Opus clip, encoded once per run
and shared. By default they are lean (``--client lean``: ready-made RTP packets
out, packets taken off the socket in, as the hub itself does it; see
signaling/contrib/headless.py); ``--client aiortc`` uses aiortc's sender and receiver,
which costs the clients about N times more. They run in ``--workers`` client processes (one asyncio loop each)
so that the client side can use more than one core; this process only
orchestrates and measures. Calls are set up ``--batch`` at a time, each batch in
one worker, so every agent accepts a customer of its own worker.

Once every call carries media in both directions and ``--settle`` seconds have
passed, the steady-state window opens for ``--duration`` seconds. Over the
window we read:

* server CPU (user+system, children included) -> ``server_cpu_s_per_call_min``
  = cpu_s / (calls * minutes), ``server_cpu_percent`` (of one core) and
  ``server_cpu_ms_per_frame`` (per frame delivered: fairer when a saturated
  server drops frames); the same for the client processes and the whole
  machine (``other_cpu_percent``: what the rest of this shared machine used);
* frames sent by every participant's tracks and frames received by the peer's
  taps -> ``frames_forwarded`` (all frames received) and ``frames_lost``
  (per participant and kind: peer's frames sent minus new frames received,
  clamped at 0; ``frames_stale`` counts repeats that do not make up for a loss);
* video queueing delay: how far each participant's frames arrive behind the
  sender's pacing, above the best seen (grows when some event loop falls behind);
* event-loop lag and GC pauses in each client process, UDP receive-buffer drops.

Call setup (agent sends ``accept`` -> first video frame received by both
sides) is measured during the ramp. Logs go to stderr; ``--json`` prints one
JSON object on stdout (with ``both``: ``passthrough``, ``transcode``,
``cpu_ratio``, ``cpu_per_frame_ratio``). The machine may be shared:
``--quiet-below`` waits for it to calm down before each mode.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import json
import logging
import math
import multiprocessing as mp
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/calls.py` from a checkout without `pip install -e`
    sys.path.insert(0, str(REPO))

logger = logging.getLogger("bench.calls")

KINDS = ("audio", "video")
PASSWORD = "bench-password-1"
SKILLS = "account_opening,loan_signing,wealth_product"
BUSINESS = "account_opening"
#: frames of each kind both sides must have received before a call counts as set up
MEDIA_FRAMES = 30


# -- client worker (runs in its own process) ---------------------------------------------


class _FrameWatch:
    """Watches the frames one tap receives: repeats, and how late they arrive.

    * **Stale frames**: under heavy loss aiortc's jitter buffer can hand out a
      frame again (after a reset on a late packet), and its timestamp mapper
      then takes the old timestamp for a wrap (a jump of 2**32). Comparing
      modulo 2**32 catches both.
    * **Delay**: the sender paces frames by their timestamps, so
      ``arrival - timestamp / clock`` is constant while nothing queues; its
      rise above the smallest value seen is the queueing delay added by the
      sender, the server and the receiver (buffers, overloaded event loops).

    Fed by a tap sink (frames from aiortc's receiver) or, for lean participants,
    by their lanes' frame observers (RTP timestamp and arrival of each frame's
    last packet: nothing is reassembled for it).
    """

    def __init__(self) -> None:
        self.stale = 0
        #: loop time of the first frame (the participant is new for every call)
        self.first_at: float | None = None
        self.delay = 0.0
        self.max_delay = 0.0
        self._last: int | None = None
        self._media_time = 0.0
        self._base: float | None = None

    def __call__(self, frame: Any) -> None:
        """A tap sink: a frame reassembled by aiortc's receiver."""
        self.observe(frame.timestamp, frame.clock_rate, frame.arrival)

    def observe(self, ts: int, clock_rate: int, arrival: float) -> None:
        """A frame's RTP timestamp and arrival (lean participants count frames from headers)."""
        if self.first_at is None:
            self.first_at = arrival
        if self._last is not None:
            step = (ts - self._last) % (1 << 32)
            if not 0 < step < (1 << 31):
                self.stale += 1
                return
            self._media_time += step / clock_rate
        self._last = ts
        offset = arrival - self._media_time
        if self._base is None or offset < self._base:
            self._base = offset
        self.delay = offset - self._base
        self.max_delay = max(self.max_delay, self.delay)

    def take_max_delay(self) -> float:
        """Largest delay since the previous call."""
        value, self.max_delay = self.max_delay, self.delay
        return value


@dataclass
class _Call:
    agent: Any
    customer: Any
    session_id: str
    accept_at: float
    #: monotonic time of the first video frame received, by role
    first_video: dict[str, float]


class _Worker:
    """One client process: sets up calls on command, snapshots counters, hangs up."""

    def __init__(self, url: str, video: Any, audio: Any, *, lean: bool = False) -> None:
        self.url = url
        #: lean participants (packet-level media, see signaling/contrib/headless.py) or aiortc's own path
        self.lean = lean
        self.video = video
        self.audio = audio
        self.calls: list[_Call] = []
        self.failures: list[str] = []
        self.marks: list[dict[str, Any]] = []
        self.watch: dict[int, dict[str, _FrameWatch]] = {}
        self.lags: list[float] = []
        self._measure_lag = False
        self.gc_pauses: list[float] = []
        self._gc_started = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        """Time the garbage collector stops this loop (every collection within the window)."""
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._measure_lag:
            self.gc_pauses.append(time.perf_counter() - self._gc_started)

    def _participant(self, name: str) -> Any:
        from signaling.contrib.headless import HeadlessParticipant

        p = HeadlessParticipant(self.url, video=self.video, audio=self.audio, name=name, lean=self.lean)
        self.watch[id(p)] = self._watch(p)
        return p

    @staticmethod
    def _watch(p: Any) -> dict[str, _FrameWatch]:
        """Frame watches for ``p``: fed by its tap (aiortc receiver) or its lanes' headers (lean)."""
        watches = {k: _FrameWatch() for k in KINDS}
        for kind, watch in watches.items():
            if p.lean:
                p.frame_observers[kind] = watch.observe
            else:
                p.taps[kind].add_sink(watch)
        return watches

    async def _setup_one(self, username: str, index: int, timeout: float) -> tuple[Any, Any, dict[str, Any]]:
        """Agent ready + customer joined; the agent accepts whatever it is offered."""
        agent = self._participant(f"agent-{username}")
        customer = self._participant(f"customer-{index}")
        try:
            await agent.login(username, PASSWORD)
            await agent.set_ready()
            await customer.join(BUSINESS, f"Bench customer {index}")
            offer = await agent.next_offer(timeout=timeout)
            accept_at = time.monotonic()
            await agent.send({"type": "accept", "session_id": offer["session_id"]})
            return agent, customer, {"session_id": offer["session_id"], "accept_at": accept_at}
        except BaseException:
            await asyncio.gather(agent.aclose(), customer.aclose(), return_exceptions=True)
            raise

    async def add(self, usernames: list[str], first_index: int, timeout: float) -> dict[str, Any]:
        results = await asyncio.gather(
            *(self._setup_one(u, first_index + i, timeout) for i, u in enumerate(usernames)),
            return_exceptions=True,
        )
        by_customer, offers = {}, []
        for r in results:
            if isinstance(r, BaseException):
                self.failures.append(f"setup: {r!r}")
                continue
            agent, customer, offer = r
            by_customer[customer.session_id] = customer
            offers.append((agent, offer))
        # the broker pairs agents and customers of this batch as it likes: match by session
        added = 0
        for agent, offer in offers:
            customer = by_customer.pop(offer["session_id"], None)
            try:
                if customer is None:
                    raise RuntimeError(f"{agent.name} was offered {offer['session_id']}, not a bench customer")
                await asyncio.gather(customer.wait_media(MEDIA_FRAMES, timeout),
                                     agent.wait_media(MEDIA_FRAMES, timeout))
            except Exception as exc:
                self.failures.append(f"media {agent.name}: {exc!r}")
                with contextlib.suppress(Exception):
                    await agent.hangup()
                await asyncio.gather(agent.aclose(), *([customer.aclose()] if customer else []),
                                     return_exceptions=True)
                continue
            first = {role: self.watch[id(p)]["video"].first_at or math.nan
                     for role, p in (("agent", agent), ("customer", customer))}
            self.calls.append(_Call(agent, customer, offer["session_id"], offer["accept_at"], first))
            added += 1
        # customers nobody in this batch accepted (their agent failed): leave the queue
        await asyncio.gather(*(c.aclose() for c in by_customer.values()), return_exceptions=True)
        return {"added": added, "failures": len(results) - added}

    @staticmethod
    def _ice_backlog(p: Any) -> int:
        """Datagrams read from the socket but not yet processed by this participant (aioice's queue).

        A diagnostic reaching into aiortc/aioice internals: 0 when they moved.
        """
        try:
            transceiver = p.pc.getTransceivers()[0]
            return int(transceiver.receiver.transport.transport._connection._queue.qsize())
        except Exception:
            return 0

    def mark(self) -> dict[str, Any]:
        """Counters of every participant now: frames sent by its tracks, received by its taps."""
        snap: dict[str, Any] = {"t": time.monotonic(), "calls": {}}
        for call in self.calls:
            snap["calls"][call.session_id] = {
                role: {
                    "sent": {k: (p.tracks[k].frames_sent if k in p.tracks else 0) for k in KINDS},
                    "recv": {k: p.taps[k].frames_in for k in KINDS},
                    "stale": {k: self.watch[id(p)][k].stale for k in KINDS},
                    # queueing delay of the latest frame, and the largest since the last mark
                    "delay": {k: self.watch[id(p)][k].delay for k in KINDS},
                    "max_delay": {k: self.watch[id(p)][k].take_max_delay() for k in KINDS},
                    "bytes": {k: p.taps[k].bytes_in for k in KINDS},
                    "keyframes": p.taps["video"].keyframes_in,
                    "ice_backlog": self._ice_backlog(p),
                }
                for role, p in (("customer", call.customer), ("agent", call.agent))
            }
        self.marks.append(snap)
        return snap

    async def lag_monitor(self) -> None:
        """How late a 50 ms sleep wakes up: the client loop's own backlog."""
        interval = 0.05
        while True:
            before = time.monotonic()
            await asyncio.sleep(interval)
            if self._measure_lag:
                self.lags.append(time.monotonic() - before - interval)

    @staticmethod
    def _state(p: Any) -> dict[str, Any]:
        """What one participant went through, to explain a call that stopped carrying media."""
        types: dict[str, int] = {}
        for m in p.messages:
            types[m.get("type", "?")] = types.get(m.get("type", "?"), 0) + 1
        return {"messages": types, "media_starts": len(p.setup_times),
                "pc": p.pc.connectionState if p.pc is not None else None,
                "tracks": sorted(p.tracks),
                "errors": [m for m in p.messages if m.get("type") in ("error", "call_ended", "requeued")][:3]}

    async def finish(self) -> dict[str, Any]:
        states = {c.session_id: {"customer": self._state(c.customer), "agent": self._state(c.agent)}
                  for c in self.calls}

        async def hang_up(call: _Call) -> None:
            with contextlib.suppress(Exception):
                await call.customer.hangup()
                await call.agent.wait_for("call_ended", timeout=10)

        await asyncio.gather(*(hang_up(c) for c in self.calls))
        await asyncio.gather(*(p.aclose() for c in self.calls for p in (c.agent, c.customer)),
                             return_exceptions=True)
        return {
            "calls": [
                {"session_id": c.session_id, "accept_at": c.accept_at, "first_video": c.first_video,
                 "setup_times": {"agent": c.agent.setup_times, "customer": c.customer.setup_times}}
                for c in self.calls
            ],
            "failures": self.failures,
            "states": states,
            "marks": self.marks,
            "lag_ms": _lag_summary(self.lags),
            "gc_ms": {"count": len(self.gc_pauses), "total": round(1000 * sum(self.gc_pauses), 1),
                      "max": round(1000 * max(self.gc_pauses, default=0.0), 1)},
        }

    async def serve(self, conn: Connection) -> None:
        loop = asyncio.get_running_loop()
        lag = loop.create_task(self.lag_monitor(), name="lag-monitor")
        try:
            while True:
                command, payload = await loop.run_in_executor(None, conn.recv)
                if command == "add":
                    conn.send(await self.add(payload["usernames"], payload["first_index"], payload["timeout"]))
                elif command == "mark":
                    self._measure_lag = payload.get("lag", self._measure_lag)
                    conn.send(self.mark())
                elif command == "finish":
                    conn.send(await self.finish())
                    return
        finally:
            lag.cancel()
            await asyncio.gather(lag, return_exceptions=True)


def _lag_summary(lags: list[float]) -> dict[str, float]:
    if not lags:
        return {"mean": 0.0, "p95": 0.0, "max": 0.0}
    ordered = sorted(lags)
    return {"mean": round(1000 * statistics.fmean(ordered), 1),
            "p95": round(1000 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 1),
            "max": round(1000 * ordered[-1], 1)}


def _worker_main(conn: Connection, url: str, video: Any, audio: Any, verbose: bool, nice: int,
                 worker_factory: Callable[[str, Any, Any], _Worker] = _Worker) -> None:
    """A client process; ``worker_factory`` (picklable) lets other benches use a :class:`_Worker` subclass."""
    if nice:
        os.nice(nice)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr,
                        format=f"%(asctime)s worker-{os.getpid()} %(levelname)s %(name)s: %(message)s")
    for name in ("aioice", "aiortc"):
        logging.getLogger(name).setLevel(logging.ERROR)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the orchestrator decides when we stop
    asyncio.run(worker_factory(url, video, audio).serve(conn))


# -- orchestrator ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: ``--server-cmd``: how to run ``vcounter`` (to try another event loop, a profiler...)
_SERVER_CMD: list[str] = []


def _vcounter_cmd() -> list[str]:
    if _SERVER_CMD:
        return list(_SERVER_CMD)
    script = Path(sys.executable).with_name("vcounter")
    return [str(script)] if script.exists() else [sys.executable, "-m", "server.cli"]


def _cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def _machine_times() -> dict[str, float]:
    """CPU seconds of the whole machine since boot: busy, total, and parts of busy."""
    t = psutil.cpu_times()
    idle = t.idle + getattr(t, "iowait", 0.0)
    total = sum(t)
    return {"busy": total - idle, "total": total, "steal": getattr(t, "steal", 0.0),
            "softirq": getattr(t, "softirq", 0.0)}


def _udp_rcvbuf_errors() -> int | None:
    """Datagrams the kernel dropped because a socket's receive buffer was full (Linux)."""
    try:
        lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()
                 if line.startswith("Udp:")]
        return int(lines[1][lines[0].index("RcvbufErrors")])
    except (OSError, ValueError, IndexError):
        return None


def _wait_quiet(below: float, timeout: float) -> float:
    """CPU the rest of the (shared) machine uses now; with ``below``, wait until it is under it."""
    ncpu = os.cpu_count() or 1
    deadline = time.monotonic() + timeout
    while True:
        busy = psutil.cpu_percent(interval=3) * ncpu
        if not below or busy < below:
            return round(busy, 1)
        if time.monotonic() > deadline:
            logger.warning("machine still %.0f%% busy after %.0fs: measuring anyway", busy, timeout)
            return round(busy, 1)
        logger.info("machine %.0f%% busy (other work): waiting for < %.0f%%", busy, below)
        time.sleep(7)


def _create_users(data_dir: Path, usernames: list[str]) -> None:
    """N agents with the real CLI; the first alone (it creates the tables), the rest in parallel."""
    def start(name: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [*_vcounter_cmd(), "user", "add", "--data-dir", str(data_dir), "--role", "agent",
             "--username", name, "--password", PASSWORD, "--skills", SKILLS],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=data_dir.parent,
            env=_server_env(data_dir.parent / "keys"))

    def wait(proc: subprocess.Popen[bytes], name: str) -> None:
        _, err = proc.communicate(timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"vcounter user add {name} failed: {err.decode(errors='replace')}")

    started = time.monotonic()
    wait(start(usernames[0]), usernames[0])
    parallel = max(1, os.cpu_count() or 1) * 2
    pending = list(usernames[1:])
    while pending:
        chunk, pending = pending[:parallel], pending[parallel:]
        for proc, name in [(start(n), n) for n in chunk]:
            wait(proc, name)
    logger.info("created %d agents in %.1fs", len(usernames), time.monotonic() - started)


def _server_env(keys: Path) -> dict[str, str]:
    """The environment of every vcounter we start: its keys stay in our temp dir, not in the cwd."""
    return {**os.environ, "PYTHONUNBUFFERED": "1",
            # a media benchmark: face checks only when asked for (VCOUNTER_IDENTITY=1)
            "VCOUNTER_IDENTITY": os.environ.get("VCOUNTER_IDENTITY", "0"),
            "VCOUNTER_MASTER_KEY_FILE": str(keys / "master.key"),
            "VCOUNTER_SIGNING_KEY_FILE": str(keys / "signing.pem")}


@dataclass
class _Server:
    mode: str
    data_dir: Path
    recording: bool = False
    port: int = field(default_factory=_free_port)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        self.log_path = self.data_dir.parent / f"server-{self.mode}.log"
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [*_vcounter_cmd(), "serve", "--no-tls", "--host", "127.0.0.1", "--port", str(self.port),
             "--data-dir", str(self.data_dir), "--media-mode", self.mode,
             *([] if self.recording else ["--no-recording"])],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.data_dir.parent,
            env=_server_env(self.data_dir.parent / f"keys-{self.mode}"))
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        break
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not healthy after {timeout}s:\n{self.log_tail()}")
            time.sleep(0.1)
        logger.info("%s server pid %d on %s", self.mode, self.proc.pid, self.url)

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/healthz", timeout=5) as resp:
            return dict(json.load(resp))

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def log_summary(self) -> dict[str, Any]:
        """Peer connections the server saw fail, and its warnings/errors."""
        if self.log_path is None or not self.log_path.exists():
            return {}
        lines = self.log_path.read_text(errors="replace").splitlines()
        problems = [line for line in lines if " WARNING " in line or " ERROR " in line
                    or "Traceback" in line]
        return {"media_failed": sum(1 for line in lines if line.endswith(" media failed")),
                "media_closed": sum(1 for line in lines if line.endswith(" media closed")),
                "warnings_errors": len(problems), "first_problems": problems[:5]}

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            logger.warning("server %d ignored SIGTERM: killing it", self.proc.pid)
            self.proc.kill()
            self.proc.wait(timeout=10)


class _WorkerHandle:
    def __init__(self, ctx: Any, url: str, video: Any, audio: Any, verbose: bool, nice: int,
                 worker_factory: Callable[[str, Any, Any], _Worker] = _Worker) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main,
                                args=(child, url, video, audio, verbose, nice, worker_factory),
                                name="bench-client", daemon=True)
        self.proc.start()
        child.close()
        self.ps = psutil.Process(self.proc.pid)
        self.finished = False

    def ask(self, command: str, payload: dict[str, Any] | None = None, timeout: float = 300.0) -> Any:
        self.conn.send((command, payload or {}))
        if not self.conn.poll(timeout):
            raise TimeoutError(f"client worker {self.proc.pid}: no answer to {command!r} in {timeout}s")
        return self.conn.recv()

    def send(self, command: str, payload: dict[str, Any] | None = None) -> None:
        self.conn.send((command, payload or {}))

    def receive(self, timeout: float = 300.0) -> Any:
        if not self.conn.poll(timeout):
            raise TimeoutError(f"client worker {self.proc.pid}: no answer in {timeout}s")
        return self.conn.recv()

    def stop(self) -> None:
        self.proc.join(timeout=15)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


@contextlib.contextmanager
def _server_for(mode: str, url: str | None, template: Path | None, root: Path,
                recording: bool) -> Iterator[tuple[str, psutil.Process | None, _Server | None]]:
    if url is not None:
        yield url.rstrip("/"), None, None
        return
    assert template is not None
    data_dir = root / f"data-{mode}{'-recording' if recording else ''}"
    shutil.copytree(template, data_dir)  # the agents created once with the CLI, fresh copy per server
    server = _Server(mode, data_dir, recording=recording)
    try:
        server.start()
        assert server.proc is not None
        yield server.url, psutil.Process(server.proc.pid), server
    finally:
        server.stop()


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _frames(start: dict[str, Any], end: dict[str, Any]) -> dict[str, Any]:
    """Totals over the window: received by each participant vs sent by its peer."""
    received = {k: 0 for k in KINDS}
    expected = {k: 0 for k in KINDS}
    lost = {k: 0 for k in KINDS}
    sent_total = {k: 0 for k in KINDS}
    stale = {k: 0 for k in KINDS}
    details = []
    delays: list[float] = []
    backlogs: list[int] = []
    window = end["t"] - start["t"]
    for session_id, roles in end["calls"].items():
        before = start["calls"].get(session_id)
        if before is None:
            continue
        for role, peer in (("customer", "agent"), ("agent", "customer")):
            row: dict[str, Any] = {"session": session_id[:8], "role": role}
            for k in KINDS:
                got = roles[role]["recv"][k] - before[role]["recv"][k]
                old = roles[role]["stale"][k] - before[role]["stale"][k]
                sent = roles[peer]["sent"][k] - before[peer]["sent"][k]
                received[k] += got
                stale[k] += old
                expected[k] += sent
                # a stale frame does not make up for a lost one
                lost[k] += max(0, sent - (got - old))
                sent_total[k] += roles[role]["sent"][k] - before[role]["sent"][k]
                row[f"{k}_sent_fps"] = round((roles[role]["sent"][k] - before[role]["sent"][k]) / window, 1)
                row[f"{k}_recv_fps"] = round(got / window, 1)
                row[f"{k}_recv_kbps"] = round(8 * (roles[role]["bytes"][k] - before[role]["bytes"][k]) / window / 1000, 1)
            row["keyframes_per_s"] = round((roles[role]["keyframes"] - before[role]["keyframes"]) / window, 2)
            row["ice_backlog_end"] = roles[role]["ice_backlog"]
            backlogs.append(roles[role]["ice_backlog"])
            if roles[role]["recv"]["video"] > before[role]["recv"]["video"]:
                row["video_delay_ms_max"] = round(1000 * roles[role]["max_delay"]["video"], 1)
                row["video_delay_ms_end"] = round(1000 * roles[role]["delay"]["video"], 1)
                delays.append(roles[role]["max_delay"]["video"])
            details.append(row)
    return {"received": received, "expected": expected, "lost": lost, "sent": sent_total, "stale": stale,
            "details": details, "delays": delays, "backlogs": backlogs}


def run_mode(mode: str, args: argparse.Namespace, clips: tuple[Any, Any], template: Path | None,
             root: Path) -> dict[str, Any]:
    usernames = [f"bench{i:03d}" for i in range(args.calls)]
    ctx = mp.get_context("spawn")
    background = _wait_quiet(args.quiet_below, args.quiet_timeout)
    with _server_for(mode, args.url, template, root, args.recording) as (url, server_ps, server):
        factory = functools.partial(_Worker, lean=args.client == "lean")
        workers = [_WorkerHandle(ctx, url, *clips, args.verbose, args.client_nice, factory)
                   for _ in range(args.workers)]
        try:
            rates = {clip.kind: clip.clock_rate / clip.ticks for clip in clips}  # frames per second
            report = _drive(mode, args, usernames, workers, server_ps, server, rates)
            report["machine_cpu_before_percent"] = background
            report["recording"] = args.recording if server is not None else None
        finally:
            for w in workers:
                if not w.finished and w.proc.is_alive():
                    with contextlib.suppress(Exception):
                        w.send("finish")
            for w in workers:
                w.stop()
    # the server has stopped: its log is complete
    if server is not None:
        report["server_log"] = server.log_summary()
    return report


def _ramp(mode: str, args: argparse.Namespace, usernames: list[str], workers: list[_WorkerHandle],
          server: _Server | None) -> tuple[int, float]:
    """Set the calls up, one batch at a time, batches dealt round-robin to the workers.

    Returns the calls established and the seconds it took; raises when none could be.
    """
    ramp_started = time.monotonic()
    established = 0
    for n, first in enumerate(range(0, len(usernames), args.batch)):
        batch = usernames[first:first + args.batch]
        worker = workers[n % len(workers)]
        reply = worker.ask("add", {"usernames": batch, "first_index": first, "timeout": args.setup_timeout})
        established += reply["added"]
        logger.info("%s: %d/%d calls up (%d failed in this batch)", mode, established, len(usernames),
                    reply["failures"])
    ramp_s = time.monotonic() - ramp_started
    if established == 0:
        raise RuntimeError(f"{mode}: no call could be set up" + (f"\n{server.log_tail()}" if server else ""))
    return established, ramp_s


def _drive(mode: str, args: argparse.Namespace, usernames: list[str], workers: list[_WorkerHandle],
           server_ps: psutil.Process | None, server: _Server | None,
           rates: dict[str, float]) -> dict[str, Any]:
    established, ramp_s = _ramp(mode, args, usernames, workers, server)
    health = server.health() if server else {}
    time.sleep(args.settle)

    # steady-state window
    def mark(lag: bool) -> list[dict[str, Any]]:
        for w in workers:
            w.send("mark", {"lag": lag})
        return [w.receive(30) for w in workers]

    client_ps = [w.ps for w in workers]
    me = psutil.Process()
    cpu0 = _cpu_s(server_ps) if server_ps else 0.0
    clients0 = sum(_cpu_s(p) for p in client_ps)
    me0 = _cpu_s(me)
    m0 = _machine_times()
    drops0 = _udp_rcvbuf_errors()
    t0 = time.monotonic()
    starts = mark(True)
    time.sleep(args.duration)
    ends = mark(False)
    t1 = time.monotonic()
    cpu1 = _cpu_s(server_ps) if server_ps else 0.0
    clients1 = sum(_cpu_s(p) for p in client_ps)
    me1 = _cpu_s(me)
    m1 = _machine_times()
    drops1 = _udp_rcvbuf_errors()
    window = t1 - t0

    for w in workers:
        w.send("finish")
        w.finished = True
    results = [w.receive(120) for w in workers]

    # frames
    received = {k: 0 for k in KINDS}
    expected = {k: 0 for k in KINDS}
    lost = {k: 0 for k in KINDS}
    sent = {k: 0 for k in KINDS}
    stale = {k: 0 for k in KINDS}
    details = []
    delays: list[float] = []
    backlogs: list[int] = []
    for i, (start, end) in enumerate(zip(starts, ends, strict=True)):
        f = _frames(start, end)
        delays += f["delays"]
        backlogs += f["backlogs"]
        for k in KINDS:
            stale[k] += f["stale"][k]
            received[k] += f["received"][k]
            expected[k] += f["expected"][k]
            lost[k] += f["lost"][k]
            sent[k] += f["sent"][k]
        details += [{"worker": i, **row} for row in f["details"]]
    window_calls = sum(len(e["calls"]) for e in ends)

    # setup: accept -> first video frame on both sides
    setup_ms: list[float] = []
    started_to_video_ms: list[float] = []
    failures: list[str] = []
    lags = []
    gcs = []
    for r in results:
        failures += r["failures"]
        lags.append(r["lag_ms"])
        gcs.append(r["gc_ms"])
        for c in r["calls"]:
            setup_ms.append(1000 * (max(c["first_video"].values()) - c["accept_at"]))
            for times in c["setup_times"].values():
                started_to_video_ms += [1000 * t for t in times[:1]]

    cpu_s = cpu1 - cpu0
    nominal = round(2 * window_calls * window * sum(rates.values()))
    total_expected = sum(expected.values())
    total_lost = sum(lost.values())
    ncpu = os.cpu_count() or 1
    def machine(part: str) -> float:
        return 100 * ncpu * (m1[part] - m0[part]) / max(1e-9, m1["total"] - m0["total"])

    machine_cpu = machine("busy")
    ours = 100 * ((cpu1 - cpu0) + (clients1 - clients0) + (me1 - me0)) / window
    report: dict[str, Any] = {
        "media_mode": mode,
        "calls": window_calls,
        "calls_requested": len(usernames),
        "calls_failed": len(usernames) - established,
        "duration_s": round(window, 2),
        "workers": len(workers),
        "client": args.client,
        "server_cpu_s": round(cpu_s, 2) if server_ps else None,
        "server_cpu_percent": round(100 * cpu_s / window, 1) if server_ps else None,
        "server_cpu_s_per_call_min": round(cpu_s / (window_calls * window / 60), 3) if server_ps and window_calls else None,
        # per frame actually delivered: fairer than per call when a saturated server drops frames
        "server_cpu_ms_per_frame": round(1000 * cpu_s / sum(received.values()), 3) if server_ps and sum(received.values()) else None,
        "client_cpu_percent": round(100 * (clients1 - clients0) / window, 1),
        "machine_cpu_percent": round(machine_cpu, 1),
        "other_cpu_percent": round(max(0.0, machine_cpu - ours), 1),
        # of which: the hypervisor gave our vCPUs to someone else / kernel packet processing
        "steal_cpu_percent": round(machine("steal"), 1),
        "softirq_cpu_percent": round(machine("softirq"), 1),
        "machine_cores": ncpu,
        "udp_rcvbuf_drops": drops1 - drops0 if drops0 is not None and drops1 is not None else None,
        "frames_forwarded": sum(received.values()),
        "frames_forwarded_video": received["video"],
        "frames_forwarded_audio": received["audio"],
        "frames_stale": sum(stale.values()),
        # what 30 fps video + 50 packets/s audio both ways would have delivered: calls whose
        # media died send nothing, so they lower frames_expected, not this
        "frames_nominal": nominal,
        "delivered_percent_of_nominal": round(100 * sum(received.values()) / nominal, 1) if nominal else None,
        "frames_expected": total_expected,
        "frames_lost": total_lost,
        "frames_lost_video": lost["video"],
        "frames_lost_audio": lost["audio"],
        "frames_lost_percent": round(100 * total_lost / total_expected, 2) if total_expected else None,
        "frames_lost_video_percent": round(100 * lost["video"] / expected["video"], 2) if expected["video"] else None,
        "video_fps_per_participant": round(received["video"] / (2 * window_calls * window), 1) if window_calls else None,
        # what the clients managed to send (30 when they keep up)
        "video_sent_fps_per_participant": round(sent["video"] / (2 * window_calls * window), 1) if window_calls else None,
        # per participant receiving video: the largest queueing delay in the window
        "video_delay_ms_p50": round(1000 * _percentile(delays, 0.5), 1),
        "video_delay_ms_p95": round(1000 * _percentile(delays, 0.95), 1),
        # datagrams waiting in the clients' own ICE queues at the end: client-side backlog
        "client_ice_backlog_max": max(backlogs, default=0),
        "setup_ms_p50": round(_percentile(setup_ms, 0.5), 1),
        "setup_ms_p95": round(_percentile(setup_ms, 0.95), 1),
        "setup_ms_max": round(max(setup_ms), 1) if setup_ms else None,
        "call_started_to_video_ms_p50": round(_percentile(started_to_video_ms, 0.5), 1),
        "ramp_s": round(ramp_s, 1),
        "client_loop_lag_ms": {
            "mean": round(statistics.fmean(x["mean"] for x in lags), 1) if lags else 0.0,
            "p95": max((x["p95"] for x in lags), default=0.0),
            "max": max((x["max"] for x in lags), default=0.0),
        },
        "client_gc_ms": {"total": round(sum(g["total"] for g in gcs), 1),
                         "max": max((g["max"] for g in gcs), default=0.0)},
        "server_health": health,
        "failures": failures[:10],
    }
    states = {sid: st for r in results for sid, st in r["states"].items()}
    report["participants_stalled"] = sum(1 for row in details if row["video_recv_fps"] < 1)
    report["participants_pc_not_connected"] = sum(
        1 for st in states.values() for p in st.values() if p["pc"] != "connected")
    if args.details:
        for row in details:
            full = next((sid for sid in states if sid.startswith(row["session"])), None)
            if full is not None:
                row["state"] = states[full][row["role"]]
        report["participants"] = details
    return report


# -- output ------------------------------------------------------------------------------

_ROWS = [
    ("calls (in window)", "calls"),
    ("window (s)", "duration_s"),
    ("client processes", "workers"),
    ("client media path", "client"),
    ("server CPU (% of one core)", "server_cpu_percent"),
    ("server CPU s per call-minute", "server_cpu_s_per_call_min"),
    ("server CPU ms per frame delivered", "server_cpu_ms_per_frame"),
    ("client CPU (% of one core)", "client_cpu_percent"),
    ("machine CPU (% of one core)", "machine_cpu_percent"),
    ("  not ours (other load)", "other_cpu_percent"),
    ("    of which steal", "steal_cpu_percent"),
    ("    of which softirq", "softirq_cpu_percent"),
    ("  busy before the run", "machine_cpu_before_percent"),
    ("frames forwarded (all)", "frames_forwarded"),
    ("  of which video", "frames_forwarded_video"),
    ("frames stale (repeats)", "frames_stale"),
    ("frames lost", "frames_lost"),
    ("delivered % of nominal 30+50 fps", "delivered_percent_of_nominal"),
    ("frames lost %", "frames_lost_percent"),
    ("video frames lost %", "frames_lost_video_percent"),
    ("video fps sent per participant", "video_sent_fps_per_participant"),
    ("video fps received per participant", "video_fps_per_participant"),
    ("video queueing delay p50 (ms)", "video_delay_ms_p50"),
    ("video queueing delay p95 (ms)", "video_delay_ms_p95"),
    ("client ICE queue max (datagrams)", "client_ice_backlog_max"),
    ("setup p50 (ms)", "setup_ms_p50"),
    ("setup p95 (ms)", "setup_ms_p95"),
    ("UDP receive-buffer drops", "udp_rcvbuf_drops"),
    ("calls failed", "calls_failed"),
    ("participants without video", "participants_stalled"),
    ("peer connections not connected", "participants_pc_not_connected"),
]


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render(reports: list[dict[str, Any]], ratio: float | None, frame_ratio: float | None) -> str:
    headers = [r["media_mode"] for r in reports]
    width = max(len(label) for label, _ in _ROWS) + 2
    lines = [" " * width + "".join(f"{h:>14}" for h in headers)]
    for label, key in _ROWS:
        lines.append(f"{label:<{width}}" + "".join(f"{_fmt(r.get(key)):>14}" for r in reports))
    lag = "  ".join(f"{r['media_mode']}: mean {r['client_loop_lag_ms']['mean']} / max "
                    f"{r['client_loop_lag_ms']['max']}" for r in reports)
    lines.append(f"client event-loop lag (ms)  {lag}")
    gcs = "  ".join(f"{r['media_mode']}: total {r['client_gc_ms']['total']} / max {r['client_gc_ms']['max']}"
                    for r in reports)
    lines.append(f"client GC pauses (ms)       {gcs}")
    if ratio is not None:
        lines.append(f"\nserver CPU per call-minute, transcode / passthrough: {ratio:.1f}x")
    if frame_ratio is not None:
        lines.append(f"server CPU per frame delivered, transcode / passthrough: {frame_ratio:.1f}x")
    for r in reports:
        if (r["other_cpu_percent"] or 0) > 25:
            lines.append(f"warning: during the {r['media_mode']} window other work used "
                         f"{r['other_cpu_percent']}% of a core on this machine: compare with care")
        if (r["video_delay_ms_p50"] or 0) > 200:
            lines.append(f"warning: {r['media_mode']} video arrived {r['video_delay_ms_p50']:.0f} ms late "
                         "(median): queues are building up somewhere")
        if r["participants_stalled"]:
            lines.append(f"warning: {r['participants_stalled']} of {2 * r['calls']} participants received no "
                         f"video in the window ({r['participants_pc_not_connected']} peer connections were no "
                         "longer connected): frames_lost only counts what their peers still sent")
        if (r["frames_lost_percent"] or 0) > 2:
            lines.append(f"warning: {r['media_mode']} lost {r['frames_lost_percent']}% of frames: "
                         "the machine could not keep up, its CPU per call is an underestimate")
    for r in reports:
        log = r.get("server_log") or {}
        if log.get("media_failed") or log.get("warnings_errors"):
            lines.append(f"{r['media_mode']} server log: {log.get('media_failed')} peer connections failed, "
                         f"{log.get('warnings_errors')} warnings/errors")
        for failure in r["failures"]:
            lines.append(f"{r['media_mode']} failure: {failure}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=10, help="concurrent calls (default 10)")
    parser.add_argument("--duration", type=float, default=20.0, help="steady-state window, seconds")
    parser.add_argument("--media-mode", choices=["passthrough", "transcode", "both"], default="both")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--url", help="use this running server (no server CPU measured); it needs agents "
                        f"bench000, bench001... with password {PASSWORD!r} and skill {BUSINESS}")
    parser.add_argument("--workers", type=int, default=0,
                        help="client processes (default: one per 10 calls, at most the core count)")
    parser.add_argument("--client", choices=["lean", "aiortc"], default="lean",
                        help="participants' media path: lean (packet level, like the hub: cheap enough to "
                        "drive 40 calls from this machine) or aiortc's own sender/receiver (default lean)")
    parser.add_argument("--batch", type=int, default=5, help="calls set up at a time (default 5)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds between ramp end and window")
    parser.add_argument("--setup-timeout", type=float, default=60.0, help="seconds one batch may take")
    parser.add_argument("--quiet-below", type=float, default=0.0,
                        help="before each mode, wait until the machine is less busy than this "
                        "(%% of one core), for a shared machine")
    parser.add_argument("--quiet-timeout", type=float, default=600.0, help="longest such wait, seconds")
    parser.add_argument("--client-nice", type=int, default=0,
                        help="nice increment for the client processes, to give the server the CPU first")
    parser.add_argument("--server-cmd", help="command that runs vcounter (default: the vcounter "
                        "script next to this Python), e.g. a wrapper installing another event loop")
    parser.add_argument("--recording", action="store_true",
                        help="let the server record the calls (default: --no-recording, as transcode "
                        "mode has nothing to record and the comparison is about media)")
    parser.add_argument("--details", action="store_true", help="JSON: add per-participant frame rates")
    parser.add_argument("--compare-recording", action="store_true",
                        help="passthrough without, then with recording, in one run: prints the overhead")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.duration <= 0 or args.batch < 1:
        parser.error("--calls, --duration and --batch must be positive")
    if args.url and args.media_mode == "both":
        parser.error("--media-mode both starts its own servers; it cannot be used with --url")
    if args.server_cmd:
        _SERVER_CMD[:] = shlex.split(args.server_cmd)
    if args.workers <= 0:
        args.workers = max(1, min(os.cpu_count() or 1, math.ceil(args.calls / 10)))

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from signaling.contrib.encoded_source import encode_audio, encode_video

    started = time.monotonic()
    clips = (encode_video(width=640, height=480, fps=30, seconds=4), encode_audio(4))
    logger.info("encoded clips in %.1fs (%d video, %d audio packets)", time.monotonic() - started,
                len(clips[0].packets), len(clips[1].packets))

    modes = ["passthrough", "transcode"] if args.media_mode == "both" else [args.media_mode]
    root = Path(tempfile.mkdtemp(prefix="vcounter-bench-"))
    try:
        template = None
        if args.url is None:
            template = root / "users"
            _create_users(template, [f"bench{i:03d}" for i in range(args.calls)])
        reports = []
        if args.compare_recording:
            for recording in (False, True):
                reports.append(run_mode("passthrough", argparse.Namespace(**{**vars(args), "recording": recording}),
                                        clips, template, root))
        else:
            for mode in modes:
                reports.append(run_mode(mode, args, clips, template, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    if args.compare_recording:
        off, on = reports
        overhead = None
        if off["server_cpu_s_per_call_min"]:
            overhead = round(100 * (on["server_cpu_s_per_call_min"] / off["server_cpu_s_per_call_min"] - 1), 1)
        if args.json:
            print(json.dumps({"without_recording": off, "with_recording": on,
                              "recording_overhead_percent": overhead}, indent=2))
        else:
            print("without recording:\n" + render([off], None, None))
            print("with recording:\n" + render([on], None, None))
            print(f"recording overhead: {overhead}% server CPU per call-minute")
        return 0

    ratio = frame_ratio = None
    if len(reports) == 2 and reports[0]["server_cpu_s_per_call_min"]:
        ratio = round(reports[1]["server_cpu_s_per_call_min"] / reports[0]["server_cpu_s_per_call_min"], 2)
    if len(reports) == 2 and reports[0]["server_cpu_ms_per_frame"] and reports[1]["server_cpu_ms_per_frame"]:
        frame_ratio = round(reports[1]["server_cpu_ms_per_frame"] / reports[0]["server_cpu_ms_per_frame"], 2)
    if args.json:
        out: dict[str, Any] = (reports[0] if len(reports) == 1 else
                               {"passthrough": reports[0], "transcode": reports[1], "cpu_ratio": ratio,
                                "cpu_per_frame_ratio": frame_ratio})
        print(json.dumps(out, indent=2))
    else:
        print(render(reports, ratio, frame_ratio))
    return 0


if __name__ == "__main__":
    sys.exit(main())
