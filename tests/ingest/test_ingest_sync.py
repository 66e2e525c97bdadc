"""#sync frames (Sync 1.1) become `kind: "sync"` events, stored and served only on request.

The end-to-end test runs relay-sim with its #sync fault (every 5th seq becomes a #sync
frame) into a real Daemon over a websocket, then compares what a v1 client and an
includeSync=true client receive with what the relay sent.
"""
from __future__ import annotations

import asyncio
import json
import random

import libipld
import pytest

from jetstream.config import parse_serve_args
from jetstream.daemon import Daemon
from jetstream.events import KIND_SYNC, render_json
from jetstream.ingest.decode import decode_frame
from jetstream.relaysim.cbor import encode
from jetstream.relaysim.faults import Faults, sync_frame
from jetstream.relaysim.server import FileSource, RelaySim

pytestmark = pytest.mark.timeout(60)


def test_sync_frame_becomes_a_sync_event_shaped_like_jetstream_legacy_pr_79():
    frame = sync_frame(random.Random(3), 4242, "did:plc:abcdefghijklmnopqrstuvwx", 1_700_000_000_123_000)
    _, body = libipld.decode_dag_cbor_multi(frame)
    decoded = decode_frame(frame)
    assert (decoded.frame_type, decoded.seq, decoded.drops) == ("#sync", 4242, [])
    [event] = decoded.events
    assert (event.kind, event.collection, event.did) == (KIND_SYNC, "", "did:plc:abcdefghijklmnopqrstuvwx")
    line = render_json(event, 1_800_000_000_000_001)
    assert line == (b'{"did":"did:plc:abcdefghijklmnopqrstuvwx","time_us":1800000000000001,"kind":"sync",'
                    b'"sync":{"did":"did:plc:abcdefghijklmnopqrstuvwx","rev":"%s","seq":4242,"time":"%s"}}'
                    % (body["rev"].encode(), body["time"].encode()))


def test_sync_frame_with_a_bad_time_is_dropped_and_one_without_rev_is_a_bad_body():
    header = encode({"op": 1, "t": "#sync"})
    bad_time = decode_frame(header + encode({"did": "did:plc:a", "seq": 5, "rev": "r", "time": "yesterday",
                                             "blocks": b""}))
    assert bad_time.events == [] and [reason for reason, _ in bad_time.drops] == ["bad_time"]
    with pytest.raises(Exception, match="bad_body"):
        decode_frame(header + encode({"did": "did:plc:a", "seq": 5, "time": "2026-01-01T00:00:00Z"}))


async def _collect(url: str, count: int) -> list[bytes]:
    from tests.wsclient import connect  # noqa: PLC0415 - tests/ is on the path when pytest runs

    _, client = await connect(url)
    return await client.wait_for_count(count, timeout=30)


async def test_relay_sync_frames_reach_include_sync_clients_only(tmp_path, corpus_dir, corpus_frames, expected_v1_lines):
    first = libipld.decode_dag_cbor_multi(corpus_frames[0])[1]["seq"]
    relay = RelaySim(FileSource(corpus_dir / "frames.bin.zst", loops=1), rate=0, faults=Faults(sync=5))
    await relay.start("127.0.0.1", 0)
    daemon = Daemon(parse_serve_args([
        "--ws-url", relay.url, "--listen-addr", "127.0.0.1:0", "--metrics-listen-addr", "",
        "--data-dir", str(tmp_path / "data"), "--override-relay-cursor", str(first - 1), "--max-sub-rate", "100000",
    ], environ={}))
    await daemon.start()
    try:
        last = first + len(corpus_frames) - 1
        while daemon.event_log.relay_cursor() != last:
            await asyncio.sleep(0.02)
        stored = [row for row in daemon.event_log.read_after(0, 100_000, False)]
        syncs = [row for row in stored if row.kind == KIND_SYNC]
        v1_rows = [row.payload for row in stored if row.kind != KIND_SYNC]
        base = f"ws://127.0.0.1:{daemon.port}/subscribe?cursor=0"
        plain = await _collect(base, len(v1_rows))
        wanted = [row.payload for row in stored
                  if row.kind == KIND_SYNC or row.collection in ("app.bsky.feed.post", "")]
        with_sync = await _collect(base + "&includeSync=true&wantedCollections=app.bsky.feed.post", len(wanted))
    finally:
        await daemon.stop()
        await relay.close()
    # relay-sim replaced every 5th seq with a #sync: those frames' commits are gone, the syncs are stored
    sync_seqs = [json.loads(row.payload)["sync"]["seq"] for row in syncs]
    assert {b - a for a, b in zip(sync_seqs, sync_seqs[1:])} == {5}
    assert first <= sync_seqs[0] < first + 5 and last - 5 < sync_seqs[-1] <= last
    assert plain == v1_rows and all(b'"kind":"sync"' not in line for line in plain)
    assert with_sync == wanted and sum(b'"kind":"sync"' in line for line in with_sync) == len(syncs)
