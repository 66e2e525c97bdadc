"""/subscribe end to end: real EventLog in tmp_path, real LiveRing, real websockets on 127.0.0.1.

Expected streams are derived in the test from the corpus lines (parsed with json here),
never from the server's own filter code.
"""
from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest
from picows import WSMsgType

from jetstream.compression import decompress
from tests.server.server_helpers import Stack, settle, time_us_of
from tests.wsclient import connect

pytestmark = pytest.mark.timeout(30)


def collection_of(line: bytes) -> str:
    parsed = json.loads(line)
    return parsed["commit"]["collection"] if parsed["kind"] == "commit" else ""


def did_of(line: bytes) -> str:
    return json.loads(line)["did"]


async def subscribe(stack: Stack, query: str = "", **kwargs):
    before = stack.server.connected_count
    transport, client = await connect(stack.url + ("?" + query if query else ""), **kwargs)
    await settle(lambda: stack.server.connected_count > before)
    return transport, client


async def running(tmp_path, **kwargs) -> Stack:
    return await Stack(tmp_path, **kwargs).start()


def send_text(transport, payload: bytes | str) -> None:
    transport.send(WSMsgType.TEXT, payload.encode() if isinstance(payload, str) else payload)


async def wait_closed(client, timeout: float = 5.0) -> None:
    async def _wait():
        while client.close_code is None:
            client.changed.clear()
            await client.changed.wait()
    await asyncio.wait_for(_wait(), timeout)


async def test_live_events_arrive_in_order_as_exact_text_frames(tmp_path, expected_v1_lines):
    stack = await running(tmp_path)
    try:
        _, client = await subscribe(stack)
        published = stack.publish(expected_v1_lines[:60]) + stack.publish(expected_v1_lines[60:])
        received = await client.wait_for_count(len(published))
        assert received == [event.json for event in published]
        assert {message_type for message_type, _ in client.messages} == {WSMsgType.TEXT}
        await asyncio.sleep(0.05)
        assert len(client.messages) == len(published)  # nothing extra: no info or heartbeat frames
    finally:
        await stack.stop()


@pytest.mark.parametrize("how", ["query", "header"])
async def test_compressed_client_gets_the_zstd_bytes_as_binary_frames(tmp_path, expected_v1_lines, how):
    stack = await running(tmp_path)
    try:
        if how == "query":
            _, client = await subscribe(stack, "compress=true")
        else:
            _, client = await subscribe(stack, extra_headers={"Socket-Encoding": "gzip, zstd"})
        published = stack.publish(expected_v1_lines[:40])
        received = await client.wait_for_count(len(published))
        assert received == [event.zstd for event in published]
        assert {message_type for message_type, _ in client.messages} == {WSMsgType.BINARY}
        assert [decompress(payload) for payload in received] == [event.json for event in published]
    finally:
        await stack.stop()


async def test_collection_filters_exact_and_prefix_with_identity_and_account_bypassing(tmp_path, expected_v1_lines):
    lines = expected_v1_lines
    wanted = [l for l in lines if collection_of(l) in ("", "app.bsky.feed.post") or collection_of(l).startswith("app.bsky.graph.")]
    assert any(collection_of(l) == "" for l in wanted) and any(collection_of(l).startswith("app.bsky.graph.") for l in wanted)
    assert len(wanted) < len(lines)
    stack = await running(tmp_path)
    try:
        _, client = await subscribe(stack, "wantedCollections=app.bsky.feed.post&wantedCollections=app.bsky.graph.*")
        _, nothing = await subscribe(stack, "wantedCollections=.*&wantedDids=did:web:nobody.example")
        published = stack.publish(lines)
        by_line = dict(zip(lines, published))
        received = await client.wait_for_count(len(wanted))
        assert received == [by_line[l].json for l in wanted]
        await asyncio.sleep(0.05)
        assert len(client.messages) == len(wanted) and nothing.messages == []
    finally:
        await stack.stop()


async def test_did_filter_applies_to_every_kind(tmp_path, expected_v1_lines):
    lines = expected_v1_lines
    identity_dids = [did_of(l) for l in lines if collection_of(l) == ""]
    target = identity_dids[0]
    wanted = [l for l in lines if did_of(l) == target and collection_of(l) in ("", "app.bsky.feed.post")]
    assert any(collection_of(l) == "" for l in wanted)
    stack = await running(tmp_path)
    try:
        _, client = await subscribe(stack, f"wantedDids={target}&wantedCollections=app.bsky.feed.post")
        published = dict(zip(lines, stack.publish(lines)))
        received = await client.wait_for_count(len(wanted))
        assert received == [published[l].json for l in wanted]
        await asyncio.sleep(0.05)
        assert len(client.messages) == len(wanted)
    finally:
        await stack.stop()


async def test_cursor_replay_from_the_log_is_seamless_into_live(tmp_path, expected_v1_lines):
    """The ring holds 16 events, so the replay must come from RocksDB and cross into the ring
    while new events keep arriving; a modest rate keeps the replay and the appends interleaved."""
    stack = await running(tmp_path, ring_capacity=16, max_sub_rate=400)
    try:
        history = stack.publish(expected_v1_lines * 4)  # 608 events, all but 16 only in the log
        cursor_event = history[100]
        assert not stack.ring.covers(cursor_event.time_us - 1)
        _, client = await subscribe(stack, f"cursor={cursor_event.time_us}")
        subscriber = next(iter(stack.server.subscribers))
        # The 400-event burst is spent and the reader is still in the log when live events land.
        assert 0 < len(client.messages) or subscriber.sent_events > 0
        assert not stack.ring.covers(subscriber.position)
        live = []
        for round_number in range(10):
            live += stack.publish(expected_v1_lines[round_number * 15:(round_number + 1) * 15])
            await asyncio.sleep(0.02)
        expected = history[100:] + live
        received = await client.wait_for_count(len(expected), timeout=20)
        assert received == [event.json for event in expected]  # inclusive cursor: history[100] is re-sent
        times = [time_us_of(payload) for payload in received]
        assert times == sorted(set(times))
    finally:
        await stack.stop()


async def test_cursor_zero_replays_everything_and_future_cursor_is_live_only(tmp_path, expected_v1_lines):
    stack = await running(tmp_path, ring_capacity=8)
    try:
        history = stack.publish(expected_v1_lines[:50])
        _, everything = await subscribe(stack, "cursor=0")
        _, negative = await subscribe(stack, "cursor=-12")
        future = time.time_ns() // 1000 + 3_600_000_000
        _, live_only = await subscribe(stack, f"cursor={future}")
        _, no_cursor = await subscribe(stack)
        live = stack.publish(expected_v1_lines[50:60])
        all_json = [event.json for event in history + live]
        assert await everything.wait_for_count(60) == all_json
        assert await negative.wait_for_count(60) == all_json
        assert await live_only.wait_for_count(10) == [event.json for event in live]
        assert await no_cursor.wait_for_count(10) == [event.json for event in live]
    finally:
        await stack.stop()


async def test_max_message_size_skips_larger_events_json_and_zstd(tmp_path, expected_v1_lines):
    stack = await running(tmp_path)
    try:
        sizes = sorted(len(line) for line in expected_v1_lines)
        limit = sizes[len(sizes) // 2]
        _, plain = await subscribe(stack, f"maxMessageSizeBytes={limit}")
        _, packed = await subscribe(stack, f"maxMessageSizeBytes={limit // 2}&compress=true")
        published = stack.publish(expected_v1_lines)
        small_json = [e.json for e in published if len(e.json) <= limit]
        small_zstd = [e.zstd for e in published if len(e.zstd) <= limit // 2]
        assert 0 < len(small_json) < len(published) and 0 < len(small_zstd) < len(published)
        assert await plain.wait_for_count(len(small_json)) == small_json
        assert await packed.wait_for_count(len(small_zstd)) == small_zstd
    finally:
        await stack.stop()


async def test_options_update_switches_filters_mid_stream(tmp_path, expected_v1_lines):
    first, second = expected_v1_lines[:76], expected_v1_lines[76:]
    stack = await running(tmp_path)
    try:
        transport, client = await subscribe(stack, "wantedCollections=app.bsky.feed.post")
        before = stack.publish(first)
        posts_before = [e.json for l, e in zip(first, before) if collection_of(l) in ("", "app.bsky.feed.post")]
        await client.wait_for_count(len(posts_before))
        send_text(transport, '{"type":"options_update","payload":{"wantedCollections":["app.bsky.feed.like"],'
                             '"maxMessageSizeBytes":100000}}')
        await settle(lambda: stack.server.options_updates == 1)
        after = stack.publish(second)
        likes_after = [e.json for l, e in zip(second, after) if collection_of(l) in ("", "app.bsky.feed.like")]
        assert likes_after
        received = await client.wait_for_count(len(posts_before) + len(likes_after))
        assert received == posts_before + likes_after
    finally:
        await stack.stop()


async def test_require_hello_holds_delivery_until_a_valid_options_update(tmp_path, expected_v1_lines):
    stack = await running(tmp_path)
    try:
        transport, client = await subscribe(stack, "requireHello=true")
        early = stack.publish(expected_v1_lines[:30])
        send_text(transport, '{"type":"something_else","payload":{}}')  # not a hello: ignored
        send_text(transport, b'{"type":"OPTIONS_UPDATE","payload":{}}')  # the type value is case-sensitive
        transport.send(WSMsgType.BINARY, b'{"type":"options_update","payload":{}}')  # binary: ignored
        await asyncio.sleep(0.2)
        assert client.messages == [] and client.close_code is None
        send_text(transport, '{"type":"options_update","payload":{"wantedCollections":["app.bsky.feed.*"]}}')
        late = stack.publish(expected_v1_lines[30:])
        wanted = [e.json for l, e in zip(expected_v1_lines, early + late)
                  if collection_of(l) == "" or collection_of(l).startswith("app.bsky.feed.")]
        assert await client.wait_for_count(len(wanted)) == wanted
    finally:
        await stack.stop()


@pytest.mark.parametrize("message, reason", [
    ('{"type":"options_update","payload":{"wantedCollections":["app.bsky.feed.po*"]}}',
     "failed to parse subscriber options: invalid subscriber options: invalid collection: app.bsky.feed.po*"),
    ("{not json", "failed to unmarshal subscriber sourced message: invalid character 'n' looking for beginning of object key string"),
    ('{"type":"options_update","payload":{"wantedDids":"did:plc:x"}}',
     # v1 would fail to send this 170-byte reason at all (1006); we send its first 123 bytes.
     ("failed to unmarshal subscriber options update: json: cannot unmarshal string into Go struct field "
      "SubscriberOptionsUpdatePayload.wantedDids of type []string")[:123]),
])
async def test_bad_options_update_closes_1000_with_the_v1_reason(tmp_path, message, reason):
    stack = await running(tmp_path)
    try:
        transport, client = await subscribe(stack, "requireHello=true")
        send_text(transport, message)
        await wait_closed(client)
        assert (client.close_code.value, client.close_reason) == (1000, reason)
        await settle(lambda: stack.server.connected_count == 0)
        assert stack.server.disconnects["bad_client_message"] == 1
    finally:
        await stack.stop()


async def test_did_cap_applies_to_options_update(tmp_path):
    stack = await running(tmp_path)
    try:
        transport, client = await subscribe(stack)
        dids = [f"did:web:h{i}.example" for i in range(10_001)]
        send_text(transport, json.dumps({"type": "options_update", "payload": {"wantedDids": dids}}))
        await wait_closed(client)
        assert client.close_reason == "failed to parse subscriber options: invalid subscriber options: too many wanted DIDs"
    finally:
        await stack.stop()


async def test_shutdown_closes_every_subscriber_with_1001_and_the_reason(tmp_path):
    stack = await running(tmp_path)
    try:
        _, first = await subscribe(stack)
        _, second = await subscribe(stack, "cursor=0&compress=true")
        await stack.server.close("server shutting down")
        for client in (first, second):
            await wait_closed(client)
            assert (client.close_code.value, client.close_reason) == (1001, "server shutting down")
    finally:
        stack.event_log.close()


async def test_connections_from_one_ip_share_one_token_bucket(tmp_path, expected_v1_lines):
    rate = 40
    stack = await running(tmp_path, max_sub_rate=rate)
    try:
        _, first = await subscribe(stack)
        _, second = await subscribe(stack)
        started = time.monotonic()
        published = stack.publish(expected_v1_lines[:50])
        await settle(lambda: len(first.messages) + len(second.messages) >= rate)
        elapsed = time.monotonic() - started
        delivered = len(first.messages) + len(second.messages)
        # A shared bucket cannot have paid out more than its burst plus what refilled meanwhile;
        # two private buckets would have delivered 2 x 40 at once.
        assert delivered <= rate + rate * elapsed + 1
        expected = [e.json for e in published]
        assert await first.wait_for_count(50, timeout=10) == expected
        assert await second.wait_for_count(50, timeout=10) == expected
    finally:
        await stack.stop()


async def test_slow_client_is_paced_by_the_socket_not_a_queue(tmp_path, expected_v1_lines):
    stack = await running(tmp_path, ring_capacity=64)
    try:
        transport, client = await subscribe(stack)
        subscriber = next(iter(stack.server.subscribers))
        # A small kernel send buffer, so the socket pushes back long before the stream ends.
        server_socket = subscriber.transport.underlying_transport.get_extra_info("socket")
        server_socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        transport.underlying_transport.pause_reading()
        published = []
        for _ in range(40):
            published += stack.publish(expected_v1_lines)  # 6,080 events, ~5 MB of JSON
            await asyncio.sleep(0)
        await settle(lambda: subscriber.pauses > 0)
        # The reader stopped at the socket's high-water mark instead of buffering everything.
        assert subscriber.sent_events < len(published)
        # A wide buffer again, so draining is quick (4 KiB crawls on delayed ACKs).
        server_socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        transport.underlying_transport.resume_reading()
        received = await client.wait_for_count(len(published), timeout=20)
        assert received == [e.json for e in published]  # fell back to the log, then the ring: no gap
    finally:
        await stack.stop()
