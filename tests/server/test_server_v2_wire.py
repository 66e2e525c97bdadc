"""`GET /xrpc/network.bsky.jetstream.subscribeEvents` served by the one reader (in-process server).

Events are the corpus frames through our real decode and sequencer, stored in a real RocksDB
log and appended to the ring exactly as the pipeline does; clients are real websockets over
loopback. What is checked: the v2 frames each reader receives (from the log and from the
ring, with and without the live fast path), seq and time cursors, the #info OutdatedCursor
clamp, CursorTooOld, filters on kinds/dids/collections, zstd frames with our v2 dictionary,
the refusals' XRPC envelopes, and that a client data frame ends the stream.
"""
from __future__ import annotations

import asyncio
import json

import pytest
from picows import WSMsgType

from jetstream.compression import decompress
from jetstream.dictionary import active_v2_dictionary, dictionary_id
from jetstream.events import KIND_COMMIT, KIND_IDENTITY
from jetstream.ingest.decode import decode_frame
from tests.server.server_helpers import V2_PATH as PATH
from tests.server.server_helpers import Stack, http_get, settle
from tests.wsclient import connect

V2_DICTIONARY = active_v2_dictionary()
V2_DICTIONARY_ID = dictionary_id(V2_DICTIONARY)


@pytest.fixture(scope="module")
def pending(corpus_frames):
    out = []
    for raw in corpus_frames:
        try:
            out += decode_frame(raw).events
        except Exception:  # noqa: BLE001 - frames the decoder refuses yield nothing, as in the pipeline
            pass
    return out


async def running(tmp_path, pending, **kwargs) -> Stack:
    return await Stack(tmp_path, relay_events=pending, **kwargs).start()


def seqs_of(frames: list[bytes]) -> list[int]:
    return [json.loads(frame)["payload"]["seq"] for frame in frames]


@pytest.mark.parametrize("fastpath", [True, False], ids=["fastpath", "no_fastpath"])
async def test_seq_cursor_replays_from_the_log_into_live_without_gap_duplicate_or_reorder(tmp_path, pending, fastpath):
    stack = await running(tmp_path, pending, ring_capacity=16, max_sub_rate=400, live_fastpath=fastpath)
    try:
        history = stack.publish_sequenced(600)  # all but the last 16 only in the log
        cursor = history[100].seq
        assert not stack.ring.covers(history[100].time_us - 1)
        _, client = await connect(stack.v2_url(f"cursor={cursor}"))
        live = []
        for _ in range(10):
            live += stack.publish_sequenced(15)
            await asyncio.sleep(0.02)
        expected = history[100:] + live
        received = await client.wait_for_count(len(expected), timeout=30)
        assert received == [event.v2 for event in expected]  # inclusive: the cursor's event first
        assert seqs_of(received) == list(range(cursor, cursor + len(expected)))
    finally:
        await stack.stop()


async def test_time_cursor_starts_at_the_first_event_at_or_after_it(tmp_path, pending):
    stack = await running(tmp_path, pending, ring_capacity=8)
    try:
        history = stack.publish_sequenced(100)
        _, client = await connect(stack.v2_url(f"cursor={history[40].time_us}"))
        live = stack.publish_sequenced(5)
        received = await client.wait_for_count(65)
        assert received == [event.v2 for event in history[40:] + live]
    finally:
        await stack.stop()


async def test_a_time_cursor_below_the_floor_gets_outdated_cursor_then_the_oldest_events(tmp_path, pending):
    stack = await running(tmp_path, pending, ring_capacity=8)
    try:
        history = stack.publish_sequenced(50)
        stack.event_log.trim_older_than(history[20].time_us)
        stack.ring.drop_before(history[20].time_us)
        _, client = await connect(stack.v2_url(f"cursor={history[0].time_us}"))
        received = await client.wait_for_count(31)
        info = json.loads(received[0])
        assert info == {"$type": "message", "payload": {
            "$type": "network.bsky.jetstream.subscribeEvents#info", "name": "OutdatedCursor",
            "message": f"requested timestamp cursor below retention floor; starting at seq {history[20].seq}"}}
        assert received[1:] == [event.v2 for event in history[20:]]
    finally:
        await stack.stop()


async def test_a_seq_cursor_below_the_floor_is_refused_with_cursor_too_old(tmp_path, pending):
    stack = await running(tmp_path, pending)
    try:
        history = stack.publish_sequenced(30)
        stack.event_log.trim_older_than(history[10].time_us)
        status, headers, body = await http_get(stack.server.port, f"{PATH}?cursor=3", {"Origin": "https://x"})
        assert status == 400 and headers["content-type"] == "application/json"
        assert headers["access-control-allow-origin"] == "*"
        assert json.loads(body) == {"error": "CursorTooOld", "message": "subscribe: cursor too old: cursor 3 below "
                                    f"lookback floor {history[10].seq}; re-backfill from your last seq"}
        status, _, _ = await http_get(stack.server.port, f"{PATH}?cursor={history[10].seq}")
        assert status == 400  # not a websocket handshake: gorilla's 400, after the cursor was accepted
    finally:
        await stack.stop()


@pytest.mark.parametrize("query, error, message", [
    ("wantedDids=did:plc:x", "InvalidRequest",
     "subscribe: invalid options: wantedDids is the legacy /subscribe parameter; use dids"),
    ("kinds=post", "InvalidRequest",
     'subscribe: invalid options: unknown kind "post" (valid: commit, identity, account, sync)'),
    ("cursor=abc", "InvalidRequest", 'subscribe: invalid cursor: "abc"'),
    ("zstdDictionary=7", "UnknownZstdDictionary",
     f"unknown zstd dictionary id 7; current dictionary id is {V2_DICTIONARY_ID} "
     "(fetch it via getZstdDictionary and reconnect)"),
    ("compress=true", "InvalidRequest", None),
])
async def test_bad_parameters_are_refused_with_400_and_an_xrpc_envelope(tmp_path, pending, query, error, message):
    stack = await running(tmp_path, pending)
    try:
        status, _, body = await http_get(stack.server.port, f"{PATH}?{query}")
        assert status == 400
        envelope = json.loads(body)
        assert envelope["error"] == error
        if message is not None:
            assert envelope["message"] == message
        assert stack.server.connected_count == 0
    finally:
        await stack.stop()


def _wanted(event, kinds, dids, collections) -> bool:
    if kinds is not None and event.kind not in kinds:
        return False
    if dids is not None and event.did not in dids:
        return False
    if collections is None or event.kind != KIND_COMMIT:
        return True
    return any(event.collection == c or (c.endswith(".*") and event.collection.startswith(c[:-1]))
               for c in collections)


@pytest.mark.parametrize("fastpath", [True, False], ids=["fastpath", "no_fastpath"])
async def test_kinds_dids_and_collections_filters_from_log_and_ring(tmp_path, pending, fastpath):
    stack = await running(tmp_path, pending, ring_capacity=32, live_fastpath=fastpath)
    try:
        history = stack.publish_sequenced(300)
        dids = sorted({e.did for e in history[:60]})[:5]
        cases = {
            "kinds=identity&kinds=account": ({1, 2}, None, None),
            "collections=app.bsky.feed.like&collections=app.bsky.graph.*": (
                None, None, ["app.bsky.feed.like", "app.bsky.graph.*"]),
            "&".join(f"dids={d}" for d in dids) + "&kinds=commit": ({KIND_COMMIT}, set(dids), None),
        }
        clients = {}
        for query, _ in cases.items():
            _, clients[query] = await connect(stack.v2_url(f"cursor=1&{query}"))
        live = stack.publish_sequenced(100)
        for query, (kinds, wanted_dids, collections) in cases.items():
            expected = [e.v2 for e in history + live if _wanted(e, kinds, wanted_dids, collections)]
            assert expected, query
            assert await clients[query].wait_for_count(len(expected)) == expected, query
            await asyncio.sleep(0.05)
            assert len(clients[query].messages) == len(expected), query
        assert any(e.kind == KIND_IDENTITY for e in history + live)
    finally:
        await stack.stop()


@pytest.mark.parametrize("fastpath", [True, False], ids=["fastpath", "no_fastpath"])
async def test_zstd_dictionary_connections_get_one_zstd_frame_per_message(tmp_path, pending, fastpath):
    stack = await running(tmp_path, pending, ring_capacity=16, live_fastpath=fastpath)
    try:
        history = stack.publish_sequenced(60)  # most only in the log: compressed on the way out
        _, client = await connect(stack.v2_url(f"cursor=1&zstdDictionary={V2_DICTIONARY_ID}"))
        live = stack.publish_sequenced(20)
        await client.wait_for_count(80)
        assert {kind for kind, _ in client.messages} == {WSMsgType.BINARY}
        frames = [decompress(payload, V2_DICTIONARY) for _, payload in client.messages]
        assert frames == [event.v2 for event in history + live]
    finally:
        await stack.stop()


async def test_get_zstd_dictionary_serves_ours_by_id(tmp_path, pending):
    stack = await running(tmp_path, pending)
    try:
        port = stack.server.port
        status, headers, body = await http_get(port, "/xrpc/network.bsky.jetstream.getZstdDictionary")
        assert status == 200 and body == V2_DICTIONARY
        assert headers["x-zstd-dictionary-id"] == str(V2_DICTIONARY_ID)
        assert headers["content-type"] == "application/octet-stream"
        status, _, body = await http_get(port, f"/xrpc/network.bsky.jetstream.getZstdDictionary?id={V2_DICTIONARY_ID}")
        assert status == 200 and body == V2_DICTIONARY
        status, _, body = await http_get(port, "/xrpc/network.bsky.jetstream.getZstdDictionary?id=5")
        assert status == 404 and json.loads(body)["error"] == "DictionaryNotFound"
        status, _, body = await http_get(port, "/xrpc/network.bsky.jetstream.getZstdDictionary?id=x")
        assert status == 400 and json.loads(body)["error"] == "InvalidRequest"
    finally:
        await stack.stop()


async def test_subprotocol_is_echoed_only_when_offered_and_a_client_frame_ends_the_stream(tmp_path, pending):
    stack = await running(tmp_path, pending)
    try:
        transport, client = await connect(stack.v2_url(), extra_headers={"Sec-WebSocket-Protocol": "xrpc.v1.json"})
        assert transport.response.headers.get("Sec-WebSocket-Protocol") == "xrpc.v1.json"
        plain_transport, _ = await connect(stack.v2_url())
        assert plain_transport.response.headers.get("Sec-WebSocket-Protocol") is None
        transport.send(WSMsgType.TEXT, b'{"type":"options_update"}')
        await settle(lambda: client.close_code is not None)
        assert int(client.close_code) == 1008 and client.close_reason == "unexpected data message"
    finally:
        await stack.stop()


async def test_v1_subscribe_beside_v2_is_unchanged(tmp_path, pending):
    stack = await running(tmp_path, pending)
    try:
        history = stack.publish_sequenced(40)
        _, v1 = await connect(stack.url + "?cursor=0")
        _, v2 = await connect(stack.v2_url("cursor=0"))
        assert await v1.wait_for_count(40) == [event.json for event in history]
        assert await v2.wait_for_count(40) == [event.v2 for event in history]
    finally:
        await stack.stop()
