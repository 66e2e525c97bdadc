"""heartbeatSeconds=N and includeSync=true over real sockets (real EventLog, LiveRing, server).

A heartbeat's T promises: every event with time_us <= T that the client's filter wants was
sent before it. The tests check that promise against the corpus lines they published,
parsed here, never against the server's own filter.
"""
from __future__ import annotations

import asyncio
import json
import random

import pytest
from picows import WSMsgType

from jetstream.compression import decompress
from jetstream.events import render_json
from jetstream.ingest.decode import decode_frame
from jetstream.relaysim.faults import sync_frame
from tests.server.server_helpers import Stack, http_get, settle
from tests.wsclient import connect

pytestmark = pytest.mark.timeout(60)


def kind_of(payload: bytes) -> str:
    return json.loads(payload)["kind"]


def collection_of(line: bytes) -> str:
    parsed = json.loads(line)
    return parsed["commit"]["collection"] if parsed["kind"] == "commit" else ""


def sync_lines(count: int, seed: int = 5) -> list[bytes]:
    """Real sync events: relay-sim #sync frames through the ingest decoder."""
    rng = random.Random(seed)
    lines = []
    for index in range(count):
        decoded = decode_frame(sync_frame(rng, 1000 + index, "did:plc:syncsyncsyncsyncsyncsync", 1_700_000_000_000_000))
        lines.append(render_json(decoded.events[0], 0))
    return lines


async def running(tmp_path, **kwargs) -> Stack:
    return await Stack(tmp_path, **kwargs).start()


async def subscribe(stack: Stack, query: str = ""):
    before = stack.server.connected_count
    transport, client = await connect(stack.url + ("?" + query if query else ""))
    await settle(lambda: stack.server.connected_count > before)
    return transport, client


def split(payloads: list[bytes]) -> tuple[list[bytes], list[int]]:
    """(events, heartbeat T values) in arrival order."""
    events, beats = [], []
    for payload in payloads:
        if kind_of(payload) == "heartbeat":
            beats.append(json.loads(payload)["time_us"])
        else:
            events.append(payload)
    return events, beats


async def wait_for_heartbeats(client, count: int, timeout: float = 15.0) -> list[int]:
    async def _wait():
        while len(split(client.payloads)[1]) < count:
            client.changed.clear()
            await client.changed.wait()
    await asyncio.wait_for(_wait(), timeout)
    return split(client.payloads)[1]


async def test_sparse_filter_gets_heartbeats_whose_T_passes_the_events_it_did_not_want(tmp_path, expected_v1_lines):
    stack = await running(tmp_path)
    try:
        _, client = await subscribe(stack, "wantedCollections=app.bsky.nothing.here&heartbeatSeconds=1")
        published = stack.publish(expected_v1_lines)
        # only identity/account pass a collection filter (v1's rule): they arrive, then heartbeats
        beats = await wait_for_heartbeats(client, 2)
        events, _ = split(client.payloads)
        assert [kind_of(e) for e in events] == [kind_of(e.json) for e in published if not collection_of(e.json)]
        assert beats[0] == published[-1].time_us  # the reader scanned past every unwanted event
        assert beats == sorted(beats)
        raw = client.payloads[-1]
        assert raw == b'{"kind":"heartbeat","time_us":%d}' % beats[-1]
    finally:
        await stack.stop()


async def test_heartbeat_T_never_decreases_and_resuming_from_T_plus_1_loses_nothing(tmp_path, expected_v1_lines):
    stack = await running(tmp_path)
    wanted = "app.bsky.feed.like"
    try:
        transport, client = await subscribe(stack, f"wantedCollections={wanted}&heartbeatSeconds=1")
        first = stack.publish(expected_v1_lines[:80])
        beats = await wait_for_heartbeats(client, 1)
        stack.publish(expected_v1_lines[80:100])
        beats = await wait_for_heartbeats(client, 2)
        assert beats == sorted(beats) and beats[0] >= first[-1].time_us
        events_before, beats = split(client.payloads)
        last_t = beats[-1]
        transport.disconnect()
        await settle(lambda: stack.server.connected_count == 0)
        later = stack.publish(expected_v1_lines[100:])
        _, resumed = await subscribe(stack, f"wantedCollections={wanted}&cursor={last_t + 1}")
        everything = [row.payload for row in stack.event_log.read_after(0, 10_000, False)]
        assert len(everything) == len(expected_v1_lines) and everything[-1] == later[-1].json
        wanted_all = [line for line in everything if collection_of(line) in (wanted, "")]
        expected_after = [line for line in wanted_all if json.loads(line)["time_us"] > last_t]
        received_after = await resumed.wait_for_count(len(expected_after))
        assert events_before + received_after == wanted_all  # nothing lost, nothing twice
        assert all(json.loads(line)["time_us"] <= last_t for line in events_before)
    finally:
        await stack.stop()


async def test_heartbeats_come_during_a_slow_filtered_replay_and_T_stays_below_what_is_unsent(tmp_path, expected_v1_lines):
    # max_sub_rate 0.4/s: one wanted event every 2.5 s, so the reader spends seconds mid-log, sending nothing.
    stack = Stack(tmp_path, max_sub_rate=0.4)
    await stack.start()
    try:
        stored = stack.publish(expected_v1_lines)
        wanted = [e for e in stored if collection_of(e.json) == "app.bsky.feed.post"][:3]
        _, client = await subscribe(stack, "wantedCollections=app.bsky.feed.post&cursor=1&heartbeatSeconds=1")
        await client.wait_for_count(len(wanted) + 2, timeout=30)
        history = []  # (events received so far, heartbeat T)
        received = 0
        for payload in client.payloads:
            if kind_of(payload) == "heartbeat":
                history.append((received, json.loads(payload)["time_us"]))
            else:
                received += 1
        assert history, "no heartbeat during the replay"
        posts = [e.time_us for e in stored if collection_of(e.json) in ("app.bsky.feed.post", "")]
        for count, t in history:
            assert t < stored[-1].time_us  # mid-replay
            assert t >= posts[count - 1] if count else True  # every event sent is at or below T
            assert posts[count] > t  # and the next one it wants was not skipped
        assert [t for _, t in history] == sorted(t for _, t in history)
    finally:
        await stack.stop()


async def test_compressed_client_gets_heartbeats_as_zstd_frames(tmp_path, expected_v1_lines):
    stack = await running(tmp_path)
    try:
        _, client = await subscribe(stack, "compress=true&heartbeatSeconds=1&wantedCollections=app.none.at.all")
        published = stack.publish(expected_v1_lines[:10])
        await asyncio.sleep(0)  # the reader scans them; then a second of silence
        async def _beat():
            while not any(b'heartbeat' in decompress(p) for t, p in client.messages if t == WSMsgType.BINARY):
                client.changed.clear()
                await client.changed.wait()
        await asyncio.wait_for(_beat(), 10)
        assert {message_type for message_type, _ in client.messages} == {WSMsgType.BINARY}
        beat = next(json.loads(decompress(p)) for _, p in client.messages if b"heartbeat" in decompress(p))
        assert beat == {"kind": "heartbeat", "time_us": published[-1].time_us}
    finally:
        await stack.stop()


async def test_v1_client_sees_no_heartbeat_and_no_sync_event(tmp_path, expected_v1_lines):
    stack = await running(tmp_path)
    try:
        _, plain = await subscribe(stack)
        _, filtered = await subscribe(stack, "wantedCollections=app.bsky.feed.post")
        _, with_sync = await subscribe(stack, "includeSync=true&wantedCollections=app.bsky.feed.post")
        lines = expected_v1_lines[:30] + sync_lines(3) + expected_v1_lines[30:]
        published = stack.publish(lines)
        v1_events = [e for e in published if kind_of(e.json) != "sync"]
        assert await plain.wait_for_count(len(v1_events)) == [e.json for e in v1_events]
        posts = [e.json for e in v1_events if collection_of(e.json) in ("app.bsky.feed.post", "")]
        assert await filtered.wait_for_count(len(posts)) == posts
        # includeSync: the sync events too, in order, bypassing the collection filter like identity
        wanted_sync = [e.json for e in published if collection_of(e.json) in ("app.bsky.feed.post", "")]
        assert await with_sync.wait_for_count(len(wanted_sync)) == wanted_sync
        assert sum(kind_of(p) == "sync" for p in with_sync.payloads) == 3
        await asyncio.sleep(1.5)  # longer than any heartbeat interval would be
        assert plain.payloads == [e.json for e in v1_events] and filtered.payloads == posts
        # a replay from the log (not the ring) hides them the same way
        _, replay = await subscribe(stack, "cursor=1")
        assert await replay.wait_for_count(len(v1_events)) == [e.json for e in v1_events]
        _, replay_sync = await subscribe(stack, "cursor=1&includeSync=true")
        assert await replay_sync.wait_for_count(len(published)) == [e.json for e in published]
    finally:
        await stack.stop()


@pytest.mark.parametrize("value", ["0", "3601", "-1", "1.5", "abc", "%20"])
async def test_bad_heartbeat_seconds_is_a_400_naming_the_value(tmp_path, value):
    stack = await running(tmp_path)
    try:
        status, _, body = await http_get(stack.server.port, f"/subscribe?heartbeatSeconds={value}")
        decoded = value.replace("%20", " ")
        assert (status, body) == (400, f"invalid heartbeatSeconds: {decoded}".encode())
    finally:
        await stack.stop()


async def test_options_update_turns_heartbeats_on_and_a_bad_value_closes_with_a_reason(tmp_path, expected_v1_lines):
    stack = await running(tmp_path)
    try:
        transport, client = await subscribe(stack, "wantedCollections=app.none.at.all")
        published = stack.publish(expected_v1_lines[:5])
        await asyncio.sleep(1.2)
        assert split(client.payloads)[1] == []  # not asked: none
        transport.send(WSMsgType.TEXT, json.dumps({"type": "options_update", "payload": {
            "wantedCollections": ["app.none.at.all"], "heartbeatSeconds": 1}}).encode())
        beats = await wait_for_heartbeats(client, 1)
        assert beats[0] == published[-1].time_us
        transport.send(WSMsgType.TEXT, b'{"type":"options_update","payload":{"heartbeatSeconds":7200}}')
        await asyncio.wait_for(_closed(client), 5)
        assert client.close_reason == "failed to parse subscriber options: invalid heartbeatSeconds: 7200"
    finally:
        await stack.stop()


async def _closed(client) -> None:
    while client.close_code is None:
        client.changed.clear()
        await client.changed.wait()
