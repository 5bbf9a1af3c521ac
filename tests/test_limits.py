"""What one anonymous client may take of the counter (server/limits.py, signaling/media_hub.py).

Real servers, real aiortc peers, real face workers and photos: a pixel bomb never reaches a
face worker and a genuine ID photo is checked at once beside it; uploads, queued customers
and idle sockets are limited per session and per address, on every node; the media hub
sends ICE checks only where a browser's candidates may point, and no more than the cap.
"""

from __future__ import annotations

import asyncio
import functools
import json
import secrets
import struct
import time
import zlib
from collections import Counter as Tally

import aiohttp
import pytest
from aioice.ice import get_host_addresses
from aiortc import RTCPeerConnection

from .helpers import eventually, session_events, upload_reference

# -- ID photos -------------------------------------------------------------------------------


def _png(width: int, height: int) -> bytes:
    """A real, complete black PNG of ``width`` x ``height``: 7999 x 7999 is 186 kB on the wire
    and 192 MB decoded (what the finding sent, three at once)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\0" * (width * 3 + 1)
    deflate = zlib.compressobj(9)
    idat = b"".join(deflate.compress(row) for _ in range(height)) + deflate.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def pixel_bomb() -> bytes:
    return _png(7999, 7999)


#: the uploads here are PNGs unless a call says otherwise
_upload = functools.partial(upload_reference, **{"Content-Type": "image/png"})


async def _customer(counter, name: str) -> tuple[str, str]:
    c = counter.participant(name, media=False)
    joined = await c.join("account_opening", name, face_consent=True)
    return joined["session_id"], joined["rejoin_token"]


async def test_pixel_bombs_never_reach_a_face_worker_and_a_genuine_photo_is_checked_at_once(
    make_counter, pixel_bomb, same_person_photo
):
    counter = await make_counter(identity=True, identity_workers=1)
    assert len(pixel_bomb) < 200_000
    attackers = [await _customer(counter, f"attacker{i}") for i in range(3)]
    genuine = await _customer(counter, "genuine")

    started = time.monotonic()
    results = await asyncio.gather(
        *(_upload(counter, sid, token, pixel_bomb) for sid, token in attackers),
        _upload(counter, *genuine, same_person_photo, **{"Content-Type": "image/jpeg"}),
    )
    took = time.monotonic() - started
    for status, body in results[:3]:
        # refused from the header (64 megapixels), before decoding
        assert (status, body["error"]) == (413, "image_too_large"), body
        assert "megapixels" in body["message"] and body["message_zh"]
    status, body = results[3]
    assert status == 200 and body["reference"]["source"] == "upload", body
    assert took < 20, f"the genuine check took {took:.1f} s beside three pixel bombs"


async def test_uploads_are_limited_per_session_and_per_address_before_a_worker(make_counter):
    counter = await make_counter(
        identity=True,
        identity_workers=1,
        identity_uploads_per_session=3,
        identity_uploads_per_address=5,
        trusted_proxies=("127.0.0.1",),
    )
    first, second = await _customer(counter, "first"), await _customer(counter, "second")
    for _ in range(3):
        status, body = await _upload(counter, *first, b"not an image at all")
        assert (status, body["error"]) == (400, "bad_image")
    status, body = await _upload(counter, *first, b"not an image at all")
    assert (status, body["error"]) == (429, "too_many_uploads") and "session" in body["message"]
    # the other session of the same address has what is left of the address's five
    assert (await _upload(counter, *second, b"still not an image"))[0] == 400
    status, body = await _upload(counter, *second, b"still not an image")
    assert (status, body["error"]) == (429, "too_many_uploads") and "network" in body["message"]
    # another address (behind the trusted balancer) is not held back by this one
    other = {"X-Forwarded-For": "198.51.100.20"}
    assert (await _upload(counter, *second, b"from elsewhere", **other))[0] == 400


async def test_one_upload_of_a_session_is_checked_at_a_time(make_counter, same_person_photo):
    counter = await make_counter(identity=True, identity_workers=1)
    session = await _customer(counter, "twice")
    jpeg = {"Content-Type": "image/jpeg"}
    results = await asyncio.gather(
        _upload(counter, *session, same_person_photo, **jpeg),
        _upload(counter, *session, same_person_photo, **jpeg),
    )
    assert sorted(status for status, _ in results) == [200, 429]
    assert any(body.get("error") == "upload_in_progress" for _, body in results)


async def test_the_upload_limit_per_address_holds_across_nodes(make_counter, redis_url):
    shared = {
        "redis_url": redis_url,
        "redis_prefix": f"t{secrets.token_hex(4)}:",
        "identity": True,
        "identity_workers": 1,
        "identity_uploads_per_address": 3,
    }
    a = await make_counter(node_id="node-a", **shared)
    b = await make_counter(node_id="node-b", **shared)
    on_a, on_b = await _customer(a, "on-a"), await _customer(b, "on-b")
    assert a.broker.session(on_a[0]) is not None and b.broker.session(on_b[0]) is not None
    assert (await _upload(a, *on_a, b"x" * 20))[0] == 400
    assert (await _upload(a, *on_a, b"x" * 20))[0] == 400
    assert (await _upload(b, *on_b, b"x" * 20))[0] == 400
    status, body = await _upload(b, *on_b, b"x" * 20)
    assert (status, body["error"]) == (429, "too_many_uploads")


# -- customers per address, idle sockets -------------------------------------------------------


async def _ws_customer(http: aiohttp.ClientSession, counter, address: str | None = None):
    headers = {"X-Forwarded-For": address} if address else {}
    return await http.ws_connect(
        counter.url.replace("http", "ws", 1) + "/ws/customer", headers=headers
    )


async def _until(ws, *types: str, timeout: float = 5.0) -> dict:
    """The next frame of one of ``types`` (or an error)."""
    while True:
        msg = await ws.receive(timeout=timeout)
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise AssertionError(f"socket closed ({ws.close_code}) waiting for {types}")
        data = json.loads(msg.data)
        if data["type"] in types or data["type"] == "error":
            return data


async def _join_soon(http, counter, address: str, name: str, timeout: float = 5.0):
    """Join from ``address`` once the server has freed a slot (it notices a close a moment
    later): the socket and the answer."""
    deadline = time.monotonic() + timeout
    while True:
        ws = await _ws_customer(http, counter, address)
        answer = await _join(ws, name)
        if answer["type"] == "joined" or time.monotonic() > deadline:
            return ws, answer
        await ws.close()
        await asyncio.sleep(0.1)


async def _join(ws, name: str) -> dict:
    await ws.send_json(
        {
            "type": "join",
            "business": "account_opening",
            "display_name": name,
            "recording_consent": True,
        }
    )
    return await _until(ws, "joined")


@pytest.mark.parametrize("backend", ["local", "shared"], indirect=True)
async def test_one_address_cannot_fill_the_queue(make_counter, backend):
    counter = await make_counter(
        customers_per_address=3, trusted_proxies=("127.0.0.1",), rejoin_window_s=2.0
    )
    flooder = "203.0.113.9"
    async with aiohttp.ClientSession() as http:
        sockets = [await _ws_customer(http, counter, flooder) for _ in range(3)]
        joined = [await _join(ws, f"bot{i}") for i, ws in enumerate(sockets)]
        assert all(j["type"] == "joined" for j in joined), joined
        extra = await _ws_customer(http, counter, flooder)
        refused = await _join(extra, "bot3")
        assert (refused["type"], refused["code"], refused["fatal"]) == (
            "error",
            "too_many_customers",
            True,
        )
        await extra.receive(timeout=5)
        assert extra.close_code == 1008
        assert len(await counter.broker.state.queue()) == 3

        # a customer from anywhere else is not held back
        real = await counter.customer("account_opening", "真客户", media=False)
        assert (await real.wait_for("queue_update"))["position"] == 4

        # a session that is over frees its slot at once
        await sockets[0].send_json({"type": "cancel"})
        assert (await _until(sockets[0], "call_ended"))["reason"] == "customer_cancelled"
        await sockets[0].close()
        bot4, answer = await _join_soon(http, counter, flooder, "bot4")
        assert answer["type"] == "joined"

        # a dropped session keeps its slot for the rejoin window (it still waits in the queue),
        # and its rejoin takes the slot back even at the cap
        dropped = joined[1]
        await sockets[1].close()
        await eventually(lambda: not counter.broker.session(dropped["session_id"]).connected)
        late = await _ws_customer(http, counter, flooder)
        assert (await _join(late, "bot5"))["code"] == "too_many_customers"
        back = await _ws_customer(http, counter, flooder)
        await back.send_json(
            {
                "type": "rejoin",
                "session_id": dropped["session_id"],
                "rejoin_token": dropped["rejoin_token"],
            }
        )
        assert (await _until(back, "rejoined"))["type"] == "rejoined"
        # once the window has passed after a drop without rejoin, the slot is free again
        await back.close()
        await eventually(lambda: counter.broker.session(dropped["session_id"]) is None, timeout=10)
        bot6, answer = await _join_soon(http, counter, flooder, "bot6")
        assert answer["type"] == "joined"
        await bot4.close()
        await bot6.close()


async def test_the_customer_cap_holds_across_nodes(make_counter, redis_url):
    shared = {
        "redis_url": redis_url,
        "redis_prefix": f"t{secrets.token_hex(4)}:",
        "customers_per_address": 2,
    }
    a = await make_counter(node_id="node-a", **shared)
    b = await make_counter(node_id="node-b", **shared)
    async with aiohttp.ClientSession() as http:
        on_a = await _ws_customer(http, a)
        assert (await _join(on_a, "one"))["type"] == "joined"
        on_b = await _ws_customer(http, b)
        assert (await _join(on_b, "two"))["type"] == "joined"
        third = await _ws_customer(http, a)
        assert (await _join(third, "three"))["code"] == "too_many_customers"


async def test_a_customer_socket_that_never_joins_is_closed(make_counter):
    counter = await make_counter(customer_join_timeout_s=1.0)
    async with aiohttp.ClientSession() as http:
        idle = await _ws_customer(http, counter)
        joined = await _ws_customer(http, counter)
        assert (await _join(joined, "waits"))["type"] == "joined"
        started = time.monotonic()
        for _ in range(3):  # keepalive pings do not make it a customer
            await idle.send_json({"type": "ping"})
            assert (await _until(idle, "pong"))["type"] == "pong"
        err = await _until(idle, "never", timeout=5)
        assert (err["code"], err["fatal"]) == ("join_timeout", True)
        await idle.receive(timeout=5)
        assert idle.close_code == 1008 and time.monotonic() - started < 4
        # a customer who joined waits as long as the queue takes
        await asyncio.sleep(1.5)
        await joined.send_json({"type": "ping"})
        assert (await _until(joined, "pong"))["type"] == "pong"
        assert not joined.closed


async def test_a_call_whose_customer_never_starts_media_ends(make_counter, video_clip, audio_clip):
    counter = await make_counter(video_clip, audio_clip, customer_media_start_s=2.0)
    mute = await counter.customer("account_opening", "Mute", auto_media=False)
    alice = await counter.agent("alice")
    await alice.accept_next()
    await mute.wait_for("call_started")
    # a genuine call beside it goes on
    real = await counter.customer("loan_signing", "Real")
    carol = await counter.agent("carol")
    await carol.accept_next()
    await carol.wait_media(frames=10)

    error = await alice.wait_for("error", timeout=10)
    assert error["code"] == "customer_media_timeout"
    ended = await alice.wait_for("call_ended", timeout=5, allow_errors=True)
    assert ended["session_id"] == mute.session_id
    assert (await mute.wait_for("error", timeout=5))["code"] == "media_timeout"
    await mute.wait_for("call_ended", timeout=5, allow_errors=True)
    kinds = [e.kind for e in await session_events(counter, mute.session_id)]
    assert "customer_media_timeout" in kinds and "ended" in kinds
    await carol.wait_media(frames=20)
    assert counter.broker.session(real.session_id).state == "active"


# -- ICE candidates ----------------------------------------------------------------------------


class _Listener(asyncio.DatagramProtocol):
    def __init__(self, tally: Tally[int], port_of: list[int]) -> None:
        self.tally, self.port_of = tally, port_of

    def connection_made(self, transport) -> None:
        self.port_of.append(transport.get_extra_info("sockname")[1])

    def datagram_received(self, data: bytes, addr) -> None:
        self.tally[self.port_of[0]] += 1


async def _listen(host: str, count: int) -> tuple[list[int], Tally[int], list]:
    """``count`` UDP sockets on ``host``: their ports, the datagrams each received, the transports."""
    loop = asyncio.get_running_loop()
    tally: Tally[int] = Tally()
    ports, transports = [], []
    for _ in range(count):
        port_of: list[int] = []
        transport, _ = await loop.create_datagram_endpoint(
            lambda port_of=port_of: _Listener(tally, port_of), local_addr=(host, 0)
        )
        ports.append(port_of[0])
        transports.append(transport)
    return ports, tally, transports


async def _scan(customer, targets: list[tuple[str, int]]) -> None:
    """What the finding did: a real aiortc offer with candidates for ``targets`` added, from a
    client that never takes part in ICE itself (its peer connection is closed once the answer
    is in): whatever the hub probes, it probes because the offer named it."""
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="sendrecv")
    pc.addTransceiver("video", direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    forged = "".join(
        f"a=candidate:f{i} 1 udp {2_000_000_000 - i} {host} {port} typ host\r\n"
        for i, (host, port) in enumerate(targets)
    )
    sdp = pc.localDescription.sdp.replace(
        "a=end-of-candidates\r\n", forged + "a=end-of-candidates\r\n", 1
    )
    since = len(customer.messages)
    await customer.send({"type": "offer", "sdp": sdp})
    await customer.wait_for("answer", since=since)
    await pc.close()


async def _in_call(counter):
    customer = await counter.customer("account_opening", "Scanner", auto_media=False)
    agent = await counter.agent("alice")
    await agent.accept_next()
    await customer.wait_for("call_started")
    return customer


async def test_offer_candidates_pointing_inside_are_never_probed(counter):
    customer = await _in_call(counter)
    loopback, on_loopback, t1 = await _listen("127.0.0.1", 25)
    host = get_host_addresses(use_ipv4=True, use_ipv6=False)[0]  # this machine's own (private) one
    lan, on_lan, t2 = await _listen(host, 25)
    targets = (
        [("127.0.0.1", p) for p in loopback]
        + [(host, p) for p in lan]
        + [
            ("224.0.0.251", 5353),
            ("0.0.0.0", 40000),
            ("169.254.1.1", 40000),
            ("scanner.local", 40000),
        ]
    )
    try:
        await _scan(customer, targets)
        await asyncio.sleep(3)  # aioice paces a check every 20 ms: 54 would be out by now
        assert sum(on_loopback.values()) == 0 and sum(on_lan.values()) == 0, (on_loopback, on_lan)
    finally:
        for transport in t1 + t2:
            transport.close()


async def test_candidates_over_the_cap_are_never_probed(make_counter, video_clip, audio_clip):
    counter = await make_counter(
        video_clip, audio_clip, ice_peer_networks=("127.0.0.0/8",), ice_max_candidates=4
    )
    customer = await _in_call(counter)
    ports, tally, transports = await _listen("127.0.0.1", 50)
    try:
        await _scan(customer, [("127.0.0.1", p) for p in ports])
        await eventually(lambda: len(tally) >= 4, timeout=10)  # the allowed ones are checked
        await asyncio.sleep(3)
        assert set(tally) == set(ports[:4]), f"probed {len(tally)} ports: {sorted(tally)}"
    finally:
        for transport in transports:
            transport.close()


def test_the_candidate_policy_keeps_what_a_browser_can_offer():
    from signaling.media_hub import CandidatePolicy, filter_candidates

    policy = CandidatePolicy(max_candidates=3)
    for address in ("203.0.113.0", "8.8.8.8", "2606:4700::1111"):
        assert policy.allows(address) is (address != "203.0.113.0"), address
    for address in (
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.9",
        "192.168.1.1",
        "169.254.9.9",
        "100.64.0.1",
        "224.0.0.1",
        "239.255.255.250",
        "0.0.0.0",
        "255.255.255.255",
        "::1",
        "fe80::1",
        "fd00::2",
        "ff02::1",
        "::",
        "::ffff:127.0.0.1",
        "x.local",
    ):
        assert not policy.allows(address), address
    lines = [
        "a=candidate:1 1 udp 1 8.8.8.8 5000 typ host",
        "a=candidate:2 1 tcp 1 8.8.4.4 9 typ host tcptype active",
        "a=candidate:3 1 udp 1 8.8.4.4 53 typ host",
        "a=candidate:4 1 udp 1 10.0.0.1 5000 typ host",
        *(f"a=candidate:{i} 1 udp 1 1.1.1.{i} 6000 typ srflx" for i in range(5, 10)),
        "a=end-of-candidates",
    ]
    sdp, dropped = filter_candidates("\r\n".join(["v=0", "m=audio 9 UDP 0", *lines]), policy)
    kept = [line for line in sdp.split("\r\n") if line.startswith("a=candidate")]
    assert kept == [lines[0], lines[4], lines[5]] and len(dropped) == 6
    assert "a=end-of-candidates" in sdp
    # a section left without candidates waits for the peer's own checks
    sdp, _ = filter_candidates(
        "v=0\r\nm=audio 9 UDP 0\r\n" + lines[3] + "\r\na=end-of-candidates", policy
    )
    assert "a=candidate" not in sdp and "a=end-of-candidates" not in sdp


async def test_headless_customers_still_need_no_configuration(counter):
    """The default policy drops this machine's private host candidates: media flows anyway."""
    customer = await counter.customer("account_opening", "Plain")
    agent = await counter.agent("alice")
    await agent.accept_next()
    await asyncio.gather(customer.wait_media(frames=20), agent.wait_media(frames=20))
    assert customer.count("error") == agent.count("error") == 0
