"""Floor cost of moving call-shaped UDP through the kernel: an SFU that does nothing else.

    python bench/udp_floor.py
    python bench/udp_floor.py --calls 40 --json

How much of a core do the packets of N video calls cost a Python SFU process
even with zero media work (no DTLS, SRTP, RTP parsing or RTCP), with the
clients on the same machine (loopback)? This is the lower bound under
``bench/calls.py``: whatever the real server does per packet comes on top.

Model of one call: 2 participants, each sending to the server ``--audio-pps``
datagrams/s of 100 bytes and ``--video-pps`` datagrams/s of 1100 bytes; the
server forwards every datagram to the other participant. Per call the server
thus receives and sends ``2 * (audio_pps + video_pps)`` datagrams/s each.

* The server is one process with a plain asyncio event loop and one
  :class:`asyncio.DatagramProtocol` socket per participant, bound to
  127.0.0.1 (like aioice: one socket per peer connection). It learns each
  participant's address from its first datagram (as ICE does) and
  ``datagram_received`` calls ``transport.sendto(data, addr)`` on the paired
  socket at once. Nothing else.
* The clients run in ``--client-procs`` other processes (both participants of a
  call in the same process), each with one asyncio loop and one connected UDP
  socket per participant. A timer every 10 ms sends, per socket, the datagrams
  due by then (each socket with a random phase, so that sends spread over the
  ticks), numbered in their first 4 bytes; every socket counts what it receives
  and the highest number received.
* This process only orchestrates and measures: for each N of ``--calls`` it
  starts fresh processes, waits ``--warmup`` seconds, then over a window of
  ``--duration`` seconds reads the user and system CPU of the server and the
  clients (psutil, % of one core), the datagram counters of every process (so
  the server's datagrams/s in and out, the clients' pacing and the datagrams
  lost between clients, i.e. sent minus received; counted from the sequence
  numbers so that datagrams in flight at either end of the window do not
  count: loopback through one loop keeps them in order), the kernel's UDP
  receive-buffer drops (``/proc/net/snmp``, machine-wide) and ``/proc/stat``
  (busy % of the whole machine, of ``ncpu * 100``), to show what the rest of a
  shared machine took.

From the window we derive the server's CPU microseconds per datagram forwarded
(one receive plus one send, ``in+out``; half of it is shown as ``in or out``,
per datagram crossing the server's sockets) and extrapolate the server's CPU % of one core
for ``--target-calls`` (default 40) calls from that per-datagram cost; the same
for server plus clients, the co-located test setup.

``--json`` prints one JSON object on stdout; otherwise a table (one column per
N). Child processes are stopped at the end (asked, then SIGTERM, then SIGKILL),
also on Ctrl-C or errors; they exit on their own if this process dies.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext, SpawnProcess
from pathlib import Path
from typing import Any, cast

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calls import _udp_rcvbuf_errors  # noqa: E402  (bench/calls.py: the same /proc/net/snmp reading)

HOST = "127.0.0.1"
TICK_S = 0.010
AUDIO_BYTES = 100
VIDEO_BYTES = 1100
REPLY_TIMEOUT_S = 15.0

Addr = tuple[str, int]


# --------------------------------------------------------------------------- children


async def _serve_commands(conn: Connection, snapshot: Callable[[], dict[str, Any]]) -> None:
    """Answer the orchestrator's ``snap`` requests until ``stop`` or until its end of the pipe closes."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            msg = "stop"
        if msg == "snap":
            conn.send(snapshot())
        elif msg == "stop" and not done.done():
            done.set_result(None)

    loop.add_reader(conn.fileno(), on_readable)
    try:
        await done
    finally:
        loop.remove_reader(conn.fileno())


class _ServerCounters:
    __slots__ = ("errors", "received", "sent")

    def __init__(self) -> None:
        self.received = 0
        self.sent = 0
        self.errors = 0


class _ServerLeg(asyncio.DatagramProtocol):
    """One server socket, i.e. one participant's peer connection; forwards to the paired leg."""

    transport: asyncio.DatagramTransport

    def __init__(self, counters: _ServerCounters) -> None:
        self.counters = counters
        self.remote: Addr | None = None
        self.other: _ServerLeg = self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        counters = self.counters
        counters.received += 1
        if self.remote is None:
            self.remote = addr  # the participant's address, learnt from its first datagram
        other = self.other
        if other.remote is not None:
            other.transport.sendto(data, other.remote)
            counters.sent += 1

    def error_received(self, exc: Exception) -> None:
        self.counters.errors += 1


async def _server(conn: Connection, n_legs: int) -> None:
    loop = asyncio.get_running_loop()
    counters = _ServerCounters()
    legs: list[_ServerLeg] = []
    for _ in range(n_legs):
        _, leg = await loop.create_datagram_endpoint(
            lambda: _ServerLeg(counters), local_addr=(HOST, 0)
        )
        legs.append(leg)
    for a, b in zip(legs[0::2], legs[1::2], strict=True):
        a.other, b.other = b, a
    conn.send([leg.transport.get_extra_info("sockname")[1] for leg in legs])

    def snapshot() -> dict[str, Any]:
        return {
            "t": time.monotonic(),
            "received": counters.received,
            "sent": counters.sent,
            "errors": counters.errors,
            "latched": sum(leg.remote is not None for leg in legs),
        }

    try:
        await _serve_commands(conn, snapshot)
    finally:
        for leg in legs:
            leg.transport.close()


def _server_main(conn: Connection, n_legs: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the orchestrator stops us
    asyncio.run(_server(conn, n_legs))


class _ClientLeg(asyncio.DatagramProtocol):
    """One participant's socket, connected to its server leg."""

    transport: asyncio.DatagramTransport

    def __init__(self) -> None:
        self.phase = random.random()  # seconds: spreads this socket's sends over the ticks
        self.sent_audio = 0
        self.sent_video = 0
        self.received = 0
        self.highest = -1  # highest sequence number received from the peer
        self.errors = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        self.received += 1
        seq = int.from_bytes(data[:4], "big")
        if seq > self.highest:
            self.highest = seq

    def error_received(self, exc: Exception) -> None:
        self.errors += 1


async def _client(
    conn: Connection, server_ports: list[int], audio_pps: float, video_pps: float
) -> None:
    loop = asyncio.get_running_loop()
    legs: list[_ClientLeg] = []
    for port in server_ports:
        _, leg = await loop.create_datagram_endpoint(
            _ClientLeg, local_addr=(HOST, 0), remote_addr=(HOST, port)
        )
        legs.append(leg)
    # the first 4 bytes carry the socket's sequence number (audio and video share it); sendto
    # sends at once or copies, so one buffer per size can be reused
    audio, video = bytearray(AUDIO_BYTES), bytearray(VIDEO_BYTES)
    bases = [(int(leg.phase * audio_pps), int(leg.phase * video_pps)) for leg in legs]
    start = loop.time()
    late = {"ticks": 0, "sum": 0.0, "max": 0.0}
    handle: asyncio.TimerHandle | None = None

    def tick(k: int) -> None:
        nonlocal handle
        now = loop.time()
        lateness = now - (start + k * TICK_S)
        late["ticks"] += 1
        late["sum"] += lateness
        late["max"] = max(late["max"], lateness)
        elapsed = now - start
        for leg, (base_a, base_v) in zip(legs, bases, strict=True):
            t = elapsed + leg.phase
            seq = leg.sent_audio + leg.sent_video
            sendto = leg.transport.sendto
            due = int(t * audio_pps) - base_a - leg.sent_audio
            for _ in range(due):
                audio[:4] = seq.to_bytes(4, "big")
                sendto(audio)
                seq += 1
            if due > 0:
                leg.sent_audio += due
            due = int(t * video_pps) - base_v - leg.sent_video
            for _ in range(due):
                video[:4] = seq.to_bytes(4, "big")
                sendto(video)
                seq += 1
            if due > 0:
                leg.sent_video += due
        nxt = max(k + 1, int((loop.time() - start) / TICK_S) + 1)  # skip ticks we are too late for
        handle = loop.call_at(start + nxt * TICK_S, tick, nxt)

    def snapshot() -> dict[str, Any]:
        out = {
            "t": time.monotonic(),
            "sent": sum(leg.sent_audio + leg.sent_video for leg in legs),
            "received": sum(leg.received for leg in legs),
            # sequence numbers passed: what was sent up to the newest datagram received
            "expected": sum(leg.highest + 1 for leg in legs),
            "errors": sum(leg.errors for leg in legs),
            "ticks": late["ticks"],
            "late_sum_s": late["sum"],
            "late_max_s": late["max"],
        }
        late["max"] = 0.0  # max over the interval between snapshots
        return out

    tick(0)
    conn.send("ready")
    try:
        await _serve_commands(conn, snapshot)
    finally:
        if handle is not None:
            handle.cancel()
        for leg in legs:
            leg.transport.close()


def _client_main(
    conn: Connection, server_ports: list[int], audio_pps: float, video_pps: float
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asyncio.run(_client(conn, server_ports, audio_pps, video_pps))


# --------------------------------------------------------------------------- orchestrator


@dataclass
class _Child:
    name: str
    process: SpawnProcess
    conn: Connection
    ps: psutil.Process

    def reply(self) -> Any:
        if not self.conn.poll(REPLY_TIMEOUT_S):
            raise RuntimeError(
                f"{self.name} did not answer in {REPLY_TIMEOUT_S:.0f}s "
                f"(exit code {self.process.exitcode})"
            )
        return self.conn.recv()


def _start(
    ctx: SpawnContext, name: str, target: Callable[..., None], args: tuple[Any, ...]
) -> _Child:
    parent_end, child_end = ctx.Pipe()
    process = ctx.Process(target=target, args=(child_end, *args), name=name, daemon=True)
    process.start()
    child_end.close()
    assert process.pid is not None
    return _Child(name, process, parent_end, psutil.Process(process.pid))


def _stop(children: list[_Child]) -> None:
    """Ask every child to stop, then SIGTERM, then SIGKILL the ones still alive."""
    for child in children:
        try:
            child.conn.send("stop")
        except (OSError, ValueError):
            pass
    deadline = time.monotonic() + 3.0
    for child in children:
        child.process.join(max(0.0, deadline - time.monotonic()))
    for child in children:
        if child.process.is_alive():
            child.process.terminate()
            child.process.join(2.0)
        if child.process.is_alive():
            child.process.kill()
            child.process.join(2.0)
        child.conn.close()


_STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def _proc_stat() -> dict[str, int]:
    """The machine's ``cpu`` line of /proc/stat (clock ticks since boot); guest time is inside user."""
    values = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    return dict(zip(_STAT_FIELDS, map(int, values), strict=False))


@dataclass
class _Snapshot:
    wall: float
    stat: dict[str, int]
    cpu: dict[str, tuple[float, float]]  # name -> (user, system) seconds
    counters: dict[str, dict[str, Any]]
    rcvbuf_errors: int | None


def _snapshot(children: list[_Child]) -> _Snapshot:
    for child in children:
        child.conn.send("snap")
    wall = time.monotonic()
    stat = _proc_stat()
    cpu = {}
    for proc_name, ps in [(c.name, c.ps) for c in children] + [("orchestrator", psutil.Process())]:
        t = ps.cpu_times()
        cpu[proc_name] = (t.user, t.system)
    rcvbuf = _udp_rcvbuf_errors()
    return _Snapshot(wall, stat, cpu, {c.name: c.reply() for c in children}, rcvbuf)


def _pct(seconds: float, wall: float) -> float:
    return round(100.0 * seconds / wall, 1)


def run_calls(ctx: SpawnContext, n_calls: int, args: argparse.Namespace) -> dict[str, Any]:
    """One measurement: fresh server and client processes carrying ``n_calls`` calls."""
    children: list[_Child] = []
    try:
        server = _start(ctx, "server", _server_main, (2 * n_calls,))
        children.append(server)
        ports: list[int] = server.reply()
        n_procs = max(1, min(args.client_procs, n_calls))
        for i in range(n_procs):
            mine = [p for c in range(i, n_calls, n_procs) for p in (ports[2 * c], ports[2 * c + 1])]
            children.append(
                _start(ctx, f"client{i}", _client_main, (mine, args.audio_pps, args.video_pps))
            )
        clients = children[1:]
        for client in clients:
            if client.reply() != "ready":
                raise RuntimeError(f"{client.name} failed to start")
        time.sleep(args.warmup)
        s0 = _snapshot(children)
        time.sleep(args.duration)
        s1 = _snapshot(children)
    finally:
        _stop(children)
    return _report(n_calls, args, s0, s1, [c.name for c in clients])


def _report(
    n_calls: int, args: argparse.Namespace, s0: _Snapshot, s1: _Snapshot, client_names: list[str]
) -> dict[str, Any]:
    wall = s1.wall - s0.wall
    ncpu = os.cpu_count() or 1
    per_call_pps = 2 * (args.audio_pps + args.video_pps)

    def cpu(names: list[str]) -> tuple[float, float]:
        user = sum(s1.cpu[n][0] - s0.cpu[n][0] for n in names)
        system = sum(s1.cpu[n][1] - s0.cpu[n][1] for n in names)
        return user, system

    def delta(names: list[str], key: str) -> float:
        return sum(s1.counters[n][key] - s0.counters[n][key] for n in names)

    srv_user, srv_sys = cpu(["server"])
    cli_user, cli_sys = cpu(client_names)
    orch_user, orch_sys = cpu(["orchestrator"])
    srv_in, srv_out = delta(["server"], "received"), delta(["server"], "sent")
    cli_sent, cli_recv = delta(client_names, "sent"), delta(client_names, "received")
    # rates over each process's own window (its loop may answer a snapshot request late)
    srv_wall = delta(["server"], "t")
    cli_wall = delta(client_names, "t") / len(client_names)
    ticks = delta(client_names, "ticks")
    late_mean_ms = 1000.0 * delta(client_names, "late_sum_s") / ticks if ticks else None
    late_max_ms = 1000.0 * max(s1.counters[n]["late_max_s"] for n in client_names)
    # datagrams arrive in order on loopback through one forwarding loop, so the datagrams lost in
    # the window are the sequence numbers passed minus the datagrams received: exact, unlike
    # sent minus received, which counts the datagrams in flight at either end of the window
    lost = max(0, int(delta(client_names, "expected") - cli_recv))

    st = {k: s1.stat.get(k, 0) - s0.stat.get(k, 0) for k in _STAT_FIELDS}
    total = sum(st.values()) or 1
    scale = 100.0 * ncpu / total  # clock ticks -> % of one core

    def machine(*keys: str) -> float:
        return round(scale * sum(st[k] for k in keys), 1)

    busy = machine("user", "nice", "system", "irq", "softirq", "steal")
    srv_pct = _pct(srv_user + srv_sys, wall)
    cli_pct = _pct(cli_user + cli_sys, wall)
    us_fwd = 1e6 * (srv_user + srv_sys) / srv_in if srv_in else None
    us_cli = 1e6 * (cli_user + cli_sys) / cli_sent if cli_sent else None
    target_pps = args.target_calls * per_call_pps  # datagrams/s the server receives at target_calls
    rcvbuf = (
        s1.rcvbuf_errors - s0.rcvbuf_errors
        if s0.rcvbuf_errors is not None and s1.rcvbuf_errors is not None
        else None
    )
    return {
        "calls": n_calls,
        "client_procs": len(client_names),
        "window_s": round(wall, 2),
        "target_server_in_pps": round(n_calls * per_call_pps),
        "server_in_pps": round(srv_in / srv_wall),
        "server_out_pps": round(srv_out / srv_wall),
        "client_sent_pps": round(cli_sent / cli_wall),
        "client_received_pps": round(cli_recv / cli_wall),
        "pacing_percent": round(100.0 * cli_sent / cli_wall / (n_calls * per_call_pps), 1),
        "client_tick_late_mean_ms": None if late_mean_ms is None else round(late_mean_ms, 2),
        "client_tick_late_max_ms": round(late_max_ms, 1),
        "lost": lost,
        "lost_percent": round(100.0 * lost / cli_sent, 2) if cli_sent else None,
        "kernel_rcvbuf_drops": rcvbuf,
        "send_errors": int(delta(["server"], "errors") + delta(client_names, "errors")),
        "server_cpu_user_percent": _pct(srv_user, wall),
        "server_cpu_system_percent": _pct(srv_sys, wall),
        "server_cpu_percent": srv_pct,
        "server_us_per_datagram_forwarded": None if us_fwd is None else round(us_fwd, 2),
        "server_us_per_datagram_in_or_out": None if us_fwd is None else round(us_fwd / 2, 2),
        "clients_cpu_user_percent": _pct(cli_user, wall),
        "clients_cpu_system_percent": _pct(cli_sys, wall),
        "clients_cpu_percent": cli_pct,
        "clients_us_per_datagram_sent_and_received": None if us_cli is None else round(us_cli, 2),
        "machine_busy_percent": busy,
        "machine_capacity_percent": 100 * ncpu,
        "machine_user_percent": machine("user", "nice"),
        "machine_system_percent": machine("system"),
        "machine_irq_softirq_percent": machine("irq", "softirq"),
        "machine_steal_percent": machine("steal"),
        "others_cpu_percent": round(
            max(0.0, busy - srv_pct - cli_pct - _pct(orch_user + orch_sys, wall)), 1
        ),
        "target_calls": args.target_calls,
        "server_cpu_percent_at_target_calls": None
        if us_fwd is None
        else round(us_fwd * target_pps / 1e4, 1),
        "server_and_clients_cpu_percent_at_target_calls": None
        if us_fwd is None or us_cli is None
        else round((us_fwd + us_cli) * target_pps / 1e4, 1),
    }


_ROWS: list[tuple[str, str, str]] = [
    ("calls", "calls", "{}"),
    ("target_server_in_pps", "target server in, datagrams/s", "{}"),
    ("server_in_pps", "server received, datagrams/s", "{}"),
    ("server_out_pps", "server sent, datagrams/s", "{}"),
    ("pacing_percent", "client pacing achieved, %", "{}"),
    ("client_tick_late_max_ms", "client tick late, max ms", "{}"),
    ("lost", "datagrams lost (window)", "{}"),
    ("lost_percent", "lost, % of sent", "{}"),
    ("kernel_rcvbuf_drops", "kernel rcvbuf drops (machine)", "{}"),
    ("server_cpu_user_percent", "server CPU user, % core", "{}"),
    ("server_cpu_system_percent", "server CPU system, % core", "{}"),
    ("server_cpu_percent", "server CPU total, % core", "{}"),
    ("server_us_per_datagram_forwarded", "server us / datagram (in+out)", "{}"),
    ("server_us_per_datagram_in_or_out", "server us / datagram in or out", "{}"),
    ("clients_cpu_user_percent", "clients CPU user, % core", "{}"),
    ("clients_cpu_system_percent", "clients CPU system, % core", "{}"),
    ("clients_cpu_percent", "clients CPU total, % core", "{}"),
    ("clients_us_per_datagram_sent_and_received", "clients us / datagram (out+in)", "{}"),
    ("machine_busy_percent", "machine busy, % (of capacity)", "{}"),
    ("machine_irq_softirq_percent", "  of which irq+softirq", "{}"),
    ("machine_steal_percent", "  of which steal", "{}"),
    ("others_cpu_percent", "others (machine - ours), %", "{}"),
    ("server_cpu_percent_at_target_calls", "server CPU % core at {target} calls", "{}"),
    (
        "server_and_clients_cpu_percent_at_target_calls",
        "server+clients % core at {target} calls",
        "{}",
    ),
]


def render(runs: list[dict[str, Any]], args: argparse.Namespace) -> str:
    capacity = runs[0]["machine_capacity_percent"] if runs else 100 * (os.cpu_count() or 1)
    lines = [
        f"UDP floor: {args.audio_pps:g} audio ({AUDIO_BYTES} B) + {args.video_pps:g} video "
        f"({VIDEO_BYTES} B) datagrams/s per participant, 2 participants per call, "
        f"{args.duration:g}s window, {runs[0]['client_procs'] if runs else '?'} client process(es), "
        f"machine capacity {capacity}%"
    ]
    width = max(len(label.format(target=args.target_calls)) for _, label, _ in _ROWS)
    for key, label, fmt in _ROWS:
        cells = ["-" if r[key] is None else fmt.format(r[key]) for r in runs]
        lines.append(
            f"{label.format(target=args.target_calls):<{width}}  "
            + "  ".join(f"{c:>9}" for c in cells)
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--calls",
        type=int,
        nargs="+",
        default=[10, 20, 40],
        help="concurrent calls, one measurement each (default 10 20 40)",
    )
    parser.add_argument(
        "--duration", type=float, default=10.0, help="measurement window, seconds (default 10)"
    )
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="seconds before the window (default 2)"
    )
    parser.add_argument(
        "--video-pps",
        type=float,
        default=90.0,
        help="video datagrams/s per participant (default 90)",
    )
    parser.add_argument(
        "--audio-pps",
        type=float,
        default=50.0,
        help="audio datagrams/s per participant (default 50)",
    )
    parser.add_argument("--client-procs", type=int, default=1, help="client processes (default 1)")
    parser.add_argument(
        "--target-calls",
        type=int,
        default=40,
        help="calls to extrapolate the per-datagram cost to (default 40)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args(argv)
    if (
        min(args.calls) < 1
        or args.duration <= 0
        or args.warmup < 0
        or args.client_procs < 1
        or args.video_pps < 0
        or args.audio_pps < 0
        or args.audio_pps + args.video_pps <= 0
    ):
        parser.error("--calls, --duration, --client-procs and the rates must be positive")

    ctx = mp.get_context("spawn")
    runs = []
    try:
        for n in args.calls:
            print(f"udp_floor: {n} calls...", file=sys.stderr, flush=True)
            runs.append(run_calls(ctx, n, args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        if not runs:
            return 130
    if args.json:
        print(
            json.dumps(
                {
                    "audio_pps": args.audio_pps,
                    "video_pps": args.video_pps,
                    "audio_bytes": AUDIO_BYTES,
                    "video_bytes": VIDEO_BYTES,
                    "duration_s": args.duration,
                    "warmup_s": args.warmup,
                    "ncpu": os.cpu_count(),
                    "runs": runs,
                },
                indent=2,
            )
        )
    else:
        print(render(runs, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
