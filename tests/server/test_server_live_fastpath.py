"""The live fast path over real sockets: caught-up readers served by the fan-out pass, mixed with
readers that are rate-limited, paused by backpressure, filtered, zstd or size-capped.

Each connection's stream is checked against the expected events computed here from the
corpus lines (json-parsed, not through the server's filter): in order, nothing missing,
nothing twice, whichever path (its own step or the fan-out pass) delivered each event.
Both fan-out twins run through the real SubscribeServer, with the fast path on whatever
JETSTREAM_LIVE_FASTPATH says (the other suites run under both settings).
"""
from __future__ import annotations

import asyncio
import json

import pytest

from jetstream._py import fanout as py_fanout
from jetstream.compression import decompress
from jetstream.server import live
from tests.server.server_helpers import Stack, settle
from tests.wsclient import connect

pytestmark = pytest.mark.timeout(60)

try:
    from jetstream._core import fanout as cy_fanout
except ImportError:  # pragma: no cover - only when the extensions are not built
    cy_fanout = None

TWINS = [pytest.param(py_fanout, id="py"),
         pytest.param(cy_fanout, id="cy", marks=pytest.mark.skipif(cy_fanout is None, reason="not built"))]
POSTS = "app.bsky.feed.post"


@pytest.fixture(params=TWINS)
def fanout_twin(request, monkeypatch):
    monkeypatch.setattr(live, "LiveFanout", request.param.LiveFanout)
    monkeypatch.setattr(live, "LiveSlot", request.param.LiveSlot)
    return request.param


def wanted(line: bytes, collections=(), max_size: int = 0, compressed: bool = False) -> bool:
    parsed = json.loads(line)
    if collections and parsed["kind"] == "commit" and parsed["commit"]["collection"] not in collections:
        return False
    return not max_size or len(line) <= max_size


async def subscribe(stack: Stack, query: str = ""):
    before = stack.server.connected_count
    transport, client = await connect(stack.url + ("?" + query if query else ""))
    await settle(lambda: stack.server.connected_count > before)
    return transport, client


async def publish_in_batches(stack: Stack, lines: list[bytes], batch: int, pause_s: float = 0.002) -> list:
    published = []
    for start in range(0, len(lines), batch):
        published += stack.publish(lines[start:start + batch])
        await asyncio.sleep(pause_s)
    return published


async def test_caught_up_readers_are_served_by_the_pass_with_exact_streams(tmp_path, expected_v1_lines, fanout_twin):
    stack = await Stack(tmp_path, live_fastpath=True).start()
    try:
        clients = {}
        for name, query in [("plain", ""), ("posts", f"wantedCollections={POSTS}"), ("zstd", "compress=true"),
                            ("small", "maxMessageSizeBytes=600")]:
            clients[name] = await subscribe(stack, query)
        await asyncio.sleep(0.05)  # every reader's first step finds it caught up: it joins the fan-out
        assert stack.server.live.joined == 4
        lines = expected_v1_lines * 3
        published = await publish_in_batches(stack, lines, batch=5)
        expected = {
            "plain": [e.json for e in published],
            "posts": [e.json for e, line in zip(published, lines) if wanted(line, (POSTS,))],
            "zstd": [e.json for e in published],
            "small": [e.json for e in published if len(e.json) <= 600],
        }
        assert 0 < len(expected["posts"]) < len(published) and 0 < len(expected["small"]) < len(published)
        for name, (_, client) in clients.items():
            received = await client.wait_for_count(len(expected[name]))
            if name == "zstd":
                received = [decompress(payload) for payload in received]
            assert received == expected[name], name
        await asyncio.sleep(0.05)
        for name, (_, client) in clients.items():
            assert len(client.messages) == len(expected[name]), f"{name}: more than expected"
        assert stack.server.live.passes > 0
        assert all(s.live_slot.steps > 0 for s in stack.server.subscribers), "a reader never took the fast path"
        delivered = sum(count for count, _ in stack.server.delivered_by_ip().values())
        assert delivered == sum(map(len, expected.values()))
    finally:
        await stack.stop()


def padded(lines: list[bytes], pad: int) -> list[bytes]:
    """The corpus lines with a `pad`-byte field: large events fill a socket quickly."""
    return [line.replace(b'"kind"', b'"pad":"' + b"x" * pad + b'","kind"', 1) for line in lines]


def check_streams(clients: dict, expected: dict) -> None:
    for name, client in clients.items():
        received = client.payloads
        if name == "zstd":
            received = [decompress(payload) for payload in received]
        assert received == expected[name], name


async def wait_for_streams(clients: dict, expected: dict, timeout: float) -> None:
    for name, client in clients.items():
        await client.wait_for_count(len(expected[name]), timeout=timeout)
    await asyncio.sleep(0.1)  # anything extra (a duplicate) would arrive now
    check_streams(clients, expected)


async def test_rate_limited_readers_leave_the_pass_and_rejoin_with_every_event_once_in_order(
        tmp_path, expected_v1_lines, fanout_twin):
    # 2,000 events/s shared by the IP's four connections: the bucket runs dry mid-stream, so
    # readers are handed back to their own step, wait for tokens, and rejoin when caught up.
    stack = await Stack(tmp_path, max_sub_rate=2_000, live_fastpath=True).start()
    try:
        clients = {}
        for name, query in [("plain", ""), ("posts", f"wantedCollections={POSTS}"), ("zstd", "compress=true"),
                            ("small", "maxMessageSizeBytes=600")]:
            clients[name] = (await subscribe(stack, query))[1]
        await asyncio.sleep(0.05)
        lines = (expected_v1_lines * 20)[:3_000]
        published = await publish_in_batches(stack, lines, batch=20, pause_s=0.001)
        expected = {
            "plain": [e.json for e in published],
            "posts": [e.json for e, line in zip(published, lines) if wanted(line, (POSTS,))],
            "zstd": [e.json for e in published],
            "small": [e.json for e in published if len(e.json) <= 600],
        }
        await wait_for_streams(clients, expected, timeout=40)
        assert stack.server.live.handed_back > 0, "the bucket never ran dry: the test did not mix the paths"
        assert stack.server.live.passes > 0
        assert all(s.live_slot.steps > 0 for s in stack.server.subscribers)
        assert not stack.server.disconnects
    finally:
        await stack.stop()


async def test_a_paused_reader_leaves_the_pass_catches_up_on_its_own_and_rejoins(
        tmp_path, expected_v1_lines, fanout_twin):
    stack = await Stack(tmp_path, ring_capacity=500, live_fastpath=True).start()
    try:
        slow_transport, slow = await subscribe(stack)
        slow_reader = next(iter(stack.server.subscribers))
        clients = {"slow": slow}
        for name, query in [("plain", ""), ("posts", f"wantedCollections={POSTS}"), ("zstd", "compress=true"),
                            ("small", "maxMessageSizeBytes=600")]:
            clients[name] = (await subscribe(stack, query))[1]
        await asyncio.sleep(0.05)
        slow_transport.underlying_transport.pause_reading()  # this client stops reading: backpressure
        published, lines = [], []
        for _ in range(200):  # until its socket is full (loopback buffers are a few MB)
            batch = padded(expected_v1_lines[:50], 8_000)
            lines += batch
            published += stack.publish(batch)
            await asyncio.sleep(0.002)
            if slow_reader.pauses:
                break
        assert slow_reader.pauses, "the slow client's socket never filled"
        tail = expected_v1_lines * 4  # more events while it is paused: it falls below the ring
        lines += tail
        published += await publish_in_batches(stack, tail, batch=10)
        slow_transport.underlying_transport.resume_reading()
        expected = {
            "slow": [e.json for e in published],
            "plain": [e.json for e in published],
            "posts": [e.json for e, line in zip(published, lines) if wanted(line, (POSTS,))],
            "zstd": [e.json for e in published],
            "small": [e.json for e in published if len(e.json) <= 600],
        }
        await wait_for_streams(clients, expected, timeout=40)
        # caught up again, it is back in the fan-out: one more batch goes through the pass
        steps_before = slow_reader.live_slot.steps
        more = stack.publish(expected_v1_lines[:5])
        await slow.wait_for_count(len(expected["slow"]) + 5)
        assert slow.payloads[-5:] == [e.json for e in more]
        assert slow_reader.live_slot.steps > steps_before and slow_reader.log_steps > 0
        assert not stack.server.disconnects
    finally:
        await stack.stop()


async def test_options_update_while_in_the_fan_out_applies_from_the_next_event(tmp_path, expected_v1_lines, fanout_twin):
    stack = await Stack(tmp_path, live_fastpath=True).start()
    try:
        transport, client = await subscribe(stack)
        await asyncio.sleep(0.05)
        first = stack.publish(expected_v1_lines[:50])
        await client.wait_for_count(50)
        from picows import WSMsgType
        transport.send(WSMsgType.TEXT, json.dumps({"type": "options_update", "payload": {
            "wantedCollections": [POSTS]}}).encode())
        await settle(lambda: stack.server.options_updates == 1)
        second = stack.publish(expected_v1_lines[50:])
        expected = [e.json for e in first] + [e.json for e, line in zip(second, expected_v1_lines[50:])
                                               if wanted(line, (POSTS,))]
        assert await client.wait_for_count(len(expected)) == expected
        await asyncio.sleep(0.05)
        assert len(client.messages) == len(expected)
        assert next(iter(stack.server.subscribers)).live_slot.steps > 0
    finally:
        await stack.stop()


class HoldingGate:
    """The server's cursor gate as the cluster node uses it: hold a reader until told to release it."""

    def __init__(self) -> None:
        self.held = []

    def hold(self, subscriber, cursor: int) -> None:
        self.held.append((subscriber, cursor))


async def test_a_reader_released_by_the_cursor_gate_joins_the_pass_at_its_cursor(
        tmp_path, expected_v1_lines, fanout_twin):
    # Regression: the gate's release used to give the reader a new Position while its fan-out
    # slot kept the old one, so once caught up the pass resent everything from the old value.
    stack = await Stack(tmp_path, live_fastpath=True).start()
    gate = stack.server.cursor_gate = HoldingGate()
    try:
        before = stack.publish(expected_v1_lines[:20])
        cursor = before[-1].time_us + 7 * 10  # the 10th event still to come: ahead of this node's log
        _, client = await subscribe(stack, f"cursor={cursor}")
        await settle(lambda: len(gate.held) == 1)
        caught_up = stack.publish(expected_v1_lines[20:40])
        assert caught_up[9].time_us == cursor
        gate.held[0][0].cursor_reached()
        await client.wait_for_count(11)
        await asyncio.sleep(0.05)  # caught up: it joins the fan-out
        assert stack.server.live.joined == 1
        live_events = await publish_in_batches(stack, expected_v1_lines[40:100], batch=5)
        expected = [e.json for e in caught_up[9:] + live_events]
        assert await client.wait_for_count(len(expected)) == expected
        await asyncio.sleep(0.05)
        assert client.payloads == expected, "the cursor is inclusive; nothing before it, nothing twice"
        reader = next(iter(stack.server.subscribers))
        assert reader.live_slot.steps > 0 and not stack.server.disconnects
    finally:
        await stack.stop()


async def test_with_the_fast_path_off_readers_wait_in_the_server_set(tmp_path, expected_v1_lines):
    stack = await Stack(tmp_path, live_fastpath=False).start()
    try:
        _, client = await subscribe(stack)
        await asyncio.sleep(0.05)
        published = stack.publish(expected_v1_lines)
        assert await client.wait_for_count(len(published)) == [e.json for e in published]
        assert stack.server.live.passes == 0 and stack.server.live.joined == 0
    finally:
        await stack.stop()


def test_the_environment_switch_reads_like_every_other_boolean_flag():
    assert live.fastpath_from_env({}) is True
    assert live.fastpath_from_env({"JETSTREAM_LIVE_FASTPATH": "0"}) is False
    assert live.fastpath_from_env({"JETSTREAM_LIVE_FASTPATH": "true"}) is True
    with pytest.raises(ValueError):
        live.fastpath_from_env({"JETSTREAM_LIVE_FASTPATH": "maybe"})
