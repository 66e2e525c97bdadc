"""The fake relay over real sockets on 127.0.0.1: what each client receives, and when."""
from __future__ import annotations

import asyncio

import libipld
import pytest
from picows import WSCloseCode, WSHandshakeError, ws_connect

from jetstream.config import RELAY_SIM_FLAGS, Config
from jetstream.relaysim.seqpatch import patch_seq
from jetstream.relaysim.server import WRITE_BUFFER_HIGH, FileSource, RelaySim, SyntheticSource, run_from_config
from tests.wsclient import CollectingListener, connect

pytestmark = pytest.mark.timeout(30)


def seq_of(frame: bytes) -> int:
    return libipld.decode_dag_cbor_multi(frame)[1]["seq"]


def frame_type(frame: bytes) -> str:
    return libipld.decode_dag_cbor_multi(frame)[0]["t"]


async def started_relay(source, rate: float = 0, **kwargs) -> RelaySim:
    relay = RelaySim(source, rate=rate, **kwargs)
    await relay.start("127.0.0.1", 0)
    return relay


async def settle_count(listener: CollectingListener, seconds: float = 0.2) -> int:
    """Message count after a quiet period (to show nothing more arrives)."""
    await asyncio.sleep(seconds)
    return len(listener.messages)


async def test_two_plays_of_the_corpus_give_contiguous_seqs_and_original_bytes(corpus_frames):
    relay = await started_relay(FileSource(corpus_frames, loops=2))
    try:
        _, first_client = await connect(relay.url + "?cursor=0")
        _, second_client = await connect(relay.url + f"?cursor={seq_of(corpus_frames[0]) - 1}")
        received = await second_client.wait_for_count(300)
        await first_client.wait_for_count(301)  # #info OutdatedCursor + 300 frames
        assert await settle_count(second_client) == 300, "loops=2 serves exactly two plays"
        first_seq = seq_of(corpus_frames[0])
        assert [seq_of(frame) for frame in received] == list(range(first_seq, first_seq + 300))
        for index, frame in enumerate(received):
            original = corpus_frames[index % len(corpus_frames)]
            header, body = libipld.decode_dag_cbor_multi(frame)
            original_header, original_body = libipld.decode_dag_cbor_multi(original)
            assert (header, body) == (original_header, {**original_body, "seq": first_seq + index})
            assert patch_seq(frame, original_body["seq"]) == original
        assert first_client.payloads[1:] == received, "every client reads the same broadcast"
        assert relay.frames_sent == 600 and relay.head_seq == first_seq + 299
    finally:
        await relay.close()


async def test_cursor_resumes_exactly_after_itself_across_a_loop_boundary(corpus_frames):
    relay = await started_relay(FileSource(corpus_frames, loops=2))
    first_seq = seq_of(corpus_frames[0])
    try:
        _, mid_play = await connect(relay.url + f"?cursor={first_seq + 40}")
        _, at_boundary = await connect(relay.url + f"?cursor={first_seq + 149}")
        mid = await mid_play.wait_for_count(259)
        boundary = await at_boundary.wait_for_count(150)
        assert await settle_count(mid_play) == 259 and len(at_boundary.messages) == 150
        assert [seq_of(frame) for frame in mid] == list(range(first_seq + 41, first_seq + 300))
        assert [seq_of(frame) for frame in boundary] == list(range(first_seq + 150, first_seq + 300))
        assert boundary[0] == patch_seq(corpus_frames[0], first_seq + 150)
    finally:
        await relay.close()


async def test_too_old_cursor_gets_outdated_cursor_info_then_the_oldest_frame(corpus_frames):
    relay = await started_relay(FileSource(corpus_frames, loops=1))
    try:
        _, client = await connect(relay.url + "?cursor=5")
        info, oldest = (await client.wait_for_count(2))[:2]
        header, body = libipld.decode_dag_cbor_multi(info)
        assert header == {"op": 1, "t": "#info"} and body["name"] == "OutdatedCursor"
        assert oldest == corpus_frames[0]
    finally:
        await relay.close()


async def test_cursor_behind_the_retention_window_starts_at_the_oldest_held_frame():
    relay = await started_relay(SyntheticSource(seed=5, dids=20), rate=500, retention=50)
    try:
        await asyncio.sleep(0.4)
        head_before = relay.head_seq
        _, client = await connect(relay.url + "?cursor=1")
        info, oldest = (await client.wait_for_count(2))[:2]
        head_after = relay.head_seq
        assert frame_type(info) == "#info"
        assert head_before > 100
        # The relay picked the oldest held frame at some head between these two readings.
        assert head_before - 50 <= seq_of(oldest) <= head_after - 50 + 1, (head_before, seq_of(oldest), head_after)
    finally:
        await relay.close()


async def test_client_without_cursor_starts_at_the_live_head():
    relay = await started_relay(SyntheticSource(seed=1, dids=50), rate=200)
    try:
        await asyncio.sleep(0.5)
        head_before = relay.head_seq
        assert head_before >= 50
        _, client = await connect(relay.url)
        head_after = relay.head_seq
        received = await client.wait_for_count(5)
        assert head_before + 1 <= seq_of(received[0]) <= head_after + 1
        assert [seq_of(frame) for frame in received[:5]] == list(range(seq_of(received[0]), seq_of(received[0]) + 5))
    finally:
        await relay.close()


async def test_paced_relay_delivers_roughly_its_rate():
    relay = await started_relay(SyntheticSource(seed=2, dids=50), rate=200)
    try:
        _, client = await connect(relay.url)
        await client.wait_for_count(1)
        start_count = len(client.messages)
        await asyncio.sleep(1.0)
        per_second = len(client.messages) - start_count
        assert 100 <= per_second <= 400, per_second
    finally:
        await relay.close()


async def test_future_cursor_waits_for_the_live_stream_to_reach_it():
    relay = await started_relay(SyntheticSource(seed=3, dids=50), rate=200)
    try:
        cursor = relay.head_seq + 40
        _, client = await connect(relay.url + f"?cursor={cursor}")
        assert await settle_count(client, 0.05) == 0
        received = await client.wait_for_count(3, timeout=5)
        assert [seq_of(frame) for frame in received[:3]] == [cursor + 1, cursor + 2, cursor + 3]
        assert relay.head_seq >= cursor + 1
    finally:
        await relay.close()


async def test_other_paths_are_404_and_a_bad_cursor_is_400(corpus_frames):
    relay = await started_relay(FileSource(corpus_frames, loops=1))
    base = f"ws://127.0.0.1:{relay.port}"
    try:
        for url, status in ((base + "/subscribe", 404), (relay.url + "?cursor=abc", 400), (relay.url + "?cursor=-3", 400)):
            with pytest.raises(WSHandshakeError) as raised:
                await ws_connect(CollectingListener, url)
            assert raised.value.response.status == status, url
        assert relay.connections_total == 0
    finally:
        await relay.close()


async def test_close_sends_going_away_to_every_client(corpus_frames):
    relay = await started_relay(FileSource(corpus_frames, loops=1))
    _, client = await connect(relay.url + "?cursor=0")
    await client.wait_for_count(10)
    await relay.close()
    for _ in range(100):
        if client.close_code is not None:
            break
        await asyncio.sleep(0.01)
    assert client.close_code == WSCloseCode.GOING_AWAY
    assert relay.connections == set()


async def test_slow_reader_keeps_the_server_write_buffer_bounded_and_loses_nothing(corpus_frames):
    loops = 30
    relay = await started_relay(FileSource(corpus_frames, loops=loops))
    largest_frame = max(len(frame) for frame in corpus_frames)
    first_seq = seq_of(corpus_frames[0])
    try:
        transport, client = await connect(relay.url + f"?cursor={first_seq - 1}")
        transport.underlying_transport.pause_reading()
        (connection,) = relay.connections
        buffer_sizes, sent_counts = [], []
        for _ in range(25):
            await asyncio.sleep(0.02)
            buffer_sizes.append(connection.write_buffer_size())
            sent_counts.append(relay.frames_sent)
        assert sent_counts[-1] == sent_counts[-10], "the server stops pulling frames for a stalled reader"
        assert sent_counts[-1] < loops * len(corpus_frames)
        assert max(buffer_sizes) > 0, "the reader really did stall the socket"
        assert max(buffer_sizes) <= WRITE_BUFFER_HIGH + largest_frame

        transport.underlying_transport.resume_reading()
        received = await client.wait_for_count(loops * len(corpus_frames), timeout=20)
        assert [seq_of(frame) for frame in received] == list(range(first_seq, first_seq + loops * len(corpus_frames)))
    finally:
        await relay.close()


async def test_run_from_config_serves_synthetic_frames_until_cancelled():
    cfg = Config({flag.attr: flag.default for flag in RELAY_SIM_FLAGS})
    cfg.values.update(listen_addr="127.0.0.1:0", synthetic=True, rate=0.0, seed=7, dids=30, clock=False)
    started: asyncio.Future = asyncio.get_running_loop().create_future()
    task = asyncio.ensure_future(run_from_config(cfg, started))
    relay = await asyncio.wait_for(started, 5)
    _, client = await connect(relay.url + "?cursor=0")
    received = await client.wait_for_count(20)
    assert received[:20] == [SyntheticSource(seed=7, dids=30).frame(seq) for seq in range(1, 21)]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert relay.connections == set()


async def test_close_finishes_even_when_a_client_has_stopped_reading(corpus_frames):
    relay = await started_relay(FileSource(corpus_frames, loops=0))
    transport, client = await connect(relay.url + "?cursor=0")
    await client.wait_for_count(1)
    transport.underlying_transport.pause_reading()
    (connection,) = relay.connections
    for _ in range(200):
        if connection.paused:
            break
        await asyncio.sleep(0.01)
    assert connection.paused, "the reader must have stalled the socket for this test to mean anything"
    await asyncio.wait_for(relay.close(), 10)
    assert relay.connections == set()
    transport.disconnect(graceful=False)
