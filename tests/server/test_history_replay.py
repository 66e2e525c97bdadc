"""History on the live wire (issue 24): readers below the log read sealed segments, in-process.

Real parts throughout (tests/server/history_helpers.py): synthetic relay frames through the real
ingest pipeline into a real RocksDB log and a small ring, sealed by the real sealer into a real
archive directory, the log then trimmed of sealed events, real websockets over loopback. The
oracle is what the same client received from the log before the trim: after it, the archive must
give the same bytes (v1) and frames (v2), every event exactly once, across archive -> log -> ring.
"""
from __future__ import annotations

import asyncio
import json
import os

import pytest
from prometheus_client import CollectorRegistry

from jetstream.archive.format import FRAME_PREFIX_SIZE
from jetstream.archive.xrpc import ArchiveService, ArchiveSettings
from jetstream.compression import decompress
from jetstream.dictionary import active_dictionary, active_v2_dictionary, dictionary_id
from jetstream.health import Problems
from jetstream.server.metrics import register_server
from tests.archive.test_sealer import seal_all
from tests.server.history_helpers import V2_PATH, HistoryStack, v2_event, v2_seqs
from tests.server.server_helpers import http_get
from tests.waiting import until
from tests.wsclient import connect

pytestmark = pytest.mark.timeout(120)


async def history_stack(tmp_path, frames: int = 240, trim_fraction: float = 0.6, **settings):
    """A stack whose first `trim_fraction` of events live only in the archive; returns (stack, oracle)."""
    stack = await HistoryStack(tmp_path, **settings).start()
    count = stack.ingest(frames)
    oracle = {
        "v2": (await stack.collect(V2_PATH, "cursor=1", count))[0],
        "v1": (await stack.collect("/subscribe", "cursor=0", count))[0],
        "v1_sync": (await stack.collect("/subscribe", "cursor=0&includeSync=true", count))[0],
    }
    oracle["time_us"] = {row.seq: row.time_us for row in stack.event_log.read_after(0, 1 << 20, False)}
    stack.seal()
    assert len(stack.service.manifest.segments) >= 3
    stack.trim_below_seq(int(count * trim_fraction))
    return stack, count, oracle


async def test_v2_seq_and_time_cursors_cross_archive_log_and_ring_exactly_once(tmp_path):
    stack, count, oracle = await history_stack(tmp_path)
    try:
        frames, client = await stack.collect(V2_PATH, "cursor=1", count)
        assert frames == oracle["v2"], "the archive's frames are the log's, byte for byte"
        assert v2_seqs(frames) == list(range(1, count + 1))
        assert client.close_code is None
        middle = v2_event(oracle["v2"][count // 4])
        frames, _ = await stack.collect(V2_PATH, f"cursor={oracle['time_us'][middle['seq']]}", count - count // 4)
        assert frames == oracle["v2"][count // 4:]
        frames, _ = await stack.collect(V2_PATH, f"cursor={middle['seq']}", count - count // 4)
        assert frames == oracle["v2"][count // 4:]
        # Live events keep arriving after the replay, still exactly once.
        transport, client = await connect(stack.url(V2_PATH, "cursor=1"))
        more = stack.ingest(40)
        payloads = await client.wait_for_count(count + more, 30)
        transport.disconnect()
        assert v2_seqs(payloads) == list(range(1, count + more + 1))
        assert payloads[:count] == oracle["v2"]
    finally:
        await stack.stop()


async def test_v2_filters_over_the_archive_equal_filtering_the_full_list(tmp_path):
    stack, count, oracle = await history_stack(tmp_path)
    try:
        full = [v2_event(frame) for frame in oracle["v2"]]
        dids = sorted({f["did"] for f in full})[:2]
        cases = [
            ("collections=app.bsky.feed.like", lambda f: f["kind"] != "commit"
             or f["collection"] == "app.bsky.feed.like"),
            ("collections=app.bsky.graph.*&kinds=commit", lambda f: f["kind"] == "commit"
             and f["collection"].startswith("app.bsky.graph.")),
            ("&".join(f"dids={did}" for did in dids), lambda f: f["did"] in dids),
            ("kinds=commit&" + f"dids={dids[0]}", lambda f: f["kind"] == "commit" and f["did"] == dids[0]),
            ("kinds=identity&kinds=account&kinds=sync", lambda f: f["kind"] != "commit"),
        ]
        for query, wanted in cases:
            expected = [frame for frame, f in zip(oracle["v2"], full) if wanted(f)]
            if not expected:  # kinds the synthetic relay does not send: the archive must send none either
                status, _, body = await http_get(stack.server.port, f"{V2_PATH}?cursor=1&{query}")
                assert b"InvalidRequest" not in body, query
                continue
            frames, _ = await stack.collect(V2_PATH, f"cursor=1&{query}", len(expected))
            assert frames == expected, query
    finally:
        await stack.stop()


async def test_v2_zstd_frames_from_the_archive_decode_to_the_logs(tmp_path):
    stack, count, oracle = await history_stack(tmp_path)
    try:
        dictionary = active_v2_dictionary()
        frames, _ = await stack.collect(V2_PATH, f"cursor=1&zstdDictionary={dictionary_id(dictionary)}", count)
        assert [decompress(frame, dictionary) for frame in frames] == oracle["v2"]
    finally:
        await stack.stop()


async def test_v1_old_cursors_replay_the_archive_as_v1s_exact_bytes(tmp_path):
    stack, count, oracle = await history_stack(tmp_path)
    try:
        payloads, _ = await stack.collect("/subscribe", "cursor=0", len(oracle["v1"]))
        assert payloads == oracle["v1"]
        payloads, _ = await stack.collect("/subscribe", "cursor=0&includeSync=true", len(oracle["v1_sync"]))
        assert payloads == oracle["v1_sync"]
        third = json.loads(oracle["v1"][len(oracle["v1"]) // 3])["time_us"]
        expected = [p for p in oracle["v1"] if json.loads(p)["time_us"] >= third]
        payloads, _ = await stack.collect("/subscribe", f"cursor={third}", len(expected))
        assert payloads == expected
        expected = [p for p in oracle["v1"] if json.loads(p).get("commit", {}).get("collection", "app.bsky.feed.post")
                    == "app.bsky.feed.post"]
        payloads, _ = await stack.collect("/subscribe", "cursor=0&wantedCollections=app.bsky.feed.post", len(expected))
        assert payloads == expected
        payloads, _ = await stack.collect("/subscribe", "cursor=0&compress=true", len(oracle["v1"]))
        assert [decompress(p, active_dictionary()) for p in payloads] == oracle["v1"]
    finally:
        await stack.stop()


async def test_a_trim_passing_a_reader_at_the_log_floor_sends_it_to_the_archive_without_a_gap(tmp_path):
    """The seam race, driven step by step: each time the reader has read from the log, the trim
    removes everything up to well past its position (sealed events only, as the daemon's hold says),
    so its next read finds the log beyond it and must take the archive, then the log again."""
    stack = await HistoryStack(tmp_path, max_sub_rate=400.0).start()  # steps of ~8 events
    try:
        count = stack.ingest(240)
        stack.seal()
        stack.trim_below_seq(20)
        event_log = stack.event_log
        transport, client = await connect(stack.url(V2_PATH, "cursor=20"))
        trims = 0
        while len(client.messages) < count - 19:
            await client.changed.wait()
            client.changed.clear()
            received = v2_seqs(client.payloads)
            floor = event_log.oldest_seq()
            if received and floor is not None and received[-1] + 1 >= floor and received[-1] + 30 < count:
                stack.trim_below_seq(received[-1] + 30)  # the trim runs past the reader at the floor
                trims += 1
        await asyncio.sleep(0.3)
        transport.disconnect()
        assert v2_seqs(client.payloads) == list(range(20, count + 1)), "no gap, no duplicate"
        assert trims >= 2
        reader_steps = stack.server.disconnects  # nothing closed it
        assert not reader_steps
    finally:
        await stack.stop()


async def test_a_trim_between_the_log_read_and_its_check_is_caught(tmp_path):
    """The narrowest window: the rows are read, then the trim drops them (and more) before the reader
    checks the seam. The check after the read sees the log no longer holds the next seq and takes the
    archive instead of sending rows whose predecessors it may have missed."""
    stack = await HistoryStack(tmp_path, max_sub_rate=400.0).start()
    try:
        count = stack.ingest(240)
        stack.seal()
        stack.trim_below_seq(10)
        event_log = stack.event_log
        real_read_after = event_log.read_after
        fired = []

        def read_then_trim(after_time_us, limit, compressed, **kwargs):
            rows = real_read_after(after_time_us, limit, compressed, **kwargs)
            if rows and not fired and rows[0].seq >= 20:
                fired.append(rows[0].seq)
                stack.trim_below_seq(rows[0].seq + 60)
            return rows

        event_log.read_after = read_then_trim  # the real log; only the moment of the trim is chosen
        payloads, _ = await stack.collect(V2_PATH, "cursor=10", count - 9)
        assert fired
        assert v2_seqs(payloads) == list(range(10, count + 1))
    finally:
        await stack.stop()


async def test_a_corrupt_block_mid_replay_closes_1011_naming_the_range_and_raises_the_problem(tmp_path):
    stack, count, oracle = await history_stack(tmp_path)
    try:
        problems = Problems()
        stack.service.problems = problems
        summary = stack.service.manifest.segments[1]
        footer = stack.service.manifest.footer(summary)
        block = footer.blocks[0]
        path = os.path.join(stack.archive_dir, summary.name)
        with open(path, "r+b") as f:  # one byte inside the block's zstd frame: its checksum fails
            f.seek(block.offset + FRAME_PREFIX_SIZE + block.compressed_size // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0xFF]))
        os.utime(path, ns=(summary.mtime_ns, summary.mtime_ns))  # same version: only the bytes changed
        transport, client = await connect(stack.url("/subscribe", "cursor=0"))
        await until(lambda: client.close_code is not None, "the close", timeout=20)
        assert int(client.close_code) == 1011
        assert f"archive damaged: {summary.name}" in client.close_reason
        assert str(block.min_witnessed_at) in client.close_reason
        before = [json.loads(p)["time_us"] for p in client.payloads]
        assert before and before[-1] < block.min_witnessed_at, "nothing past the damage was sent"
        assert problems.is_active("archive_segment_corrupt")
        assert scrape(stack.server)['jetstream_server_disconnects_total{reason="archive_damage"}'] == 1
        # v2: an error frame first, then the close.
        transport, client = await connect(stack.url(V2_PATH, "cursor=1"))
        await until(lambda: client.close_code is not None, "the v2 close", timeout=20)
        assert int(client.close_code) == 1011
        last = json.loads(client.payloads[-1])
        assert last["$type"] == "error" and f"archive damaged: {summary.name}" in last["message"], last
    finally:
        await stack.stop()


async def test_without_an_archive_old_v2_cursors_are_refused_as_before_and_lookback_bounds_them(tmp_path):
    stack, count, oracle = await history_stack(tmp_path)
    try:
        status, _, body = await http_get(stack.server.port, f"{V2_PATH}?cursor=1")
        assert b"CursorTooOld" not in body  # with the archive: accepted (refused here only as no websocket)
        stack.server.archive, stack.server._history = None, None  # --archive=false: exactly today's behaviour
        status, _, body = await http_get(stack.server.port, f"{V2_PATH}?cursor=1")
        assert status == 400 and json.loads(body)["error"] == "CursorTooOld"
    finally:
        await stack.stop()
    lookback = await HistoryStack(tmp_path / "lookback", archive_replay_lookback_s=1e-3).start()
    try:
        lookback.ingest(240)
        lookback.seal()
        lookback.trim_below_seq(150)
        await asyncio.sleep(0.01)  # every segment is now older than the lookback
        status, _, body = await http_get(lookback.server.port, f"{V2_PATH}?cursor=1")
        assert status == 400 and json.loads(body)["error"] == "CursorTooOld"
        assert "below lookback floor 150" in json.loads(body)["message"]
    finally:
        await lookback.stop()


def scrape(server) -> dict[str, float]:
    """The server's /metrics families as the collector renders them, series -> value."""
    registry = CollectorRegistry()
    register_server(server, registry)
    series = {}
    for family in registry.collect():
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            series[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return series


async def test_metrics_count_blocks_steps_and_events_from_the_archive_per_wire(tmp_path):
    stack, count, oracle = await history_stack(tmp_path)
    try:
        before = scrape(stack.server)
        assert before["jetstream_history_blocks_read_total"] == 0
        assert before['jetstream_history_events_sent_total{wire="v2"}'] == 0
        floor = stack.event_log.oldest_seq()
        await stack.collect(V2_PATH, "cursor=1", count)
        after = scrape(stack.server)
        sent_v2 = after['jetstream_history_events_sent_total{wire="v2"}']
        assert floor - 1 <= sent_v2 <= count, "at least every event below the log came from the archive"
        assert after['jetstream_history_steps_total{wire="v2"}'] >= 1
        assert after['jetstream_history_events_sent_total{wire="v1"}'] == 0
        assert after["jetstream_history_blocks_read_total"] >= (floor - 1) // 32
        assert after["jetstream_history_reads_in_flight"] == 0
        await stack.collect("/subscribe", "cursor=0", len(oracle["v1"]))
        assert scrape(stack.server)['jetstream_history_events_sent_total{wire="v1"}'] > 0
        # A narrow filter passes over blocks whose DID blooms rule it out, without reading them.
        did = v2_event(oracle["v2"][0])["did"]
        expected = [frame for frame in oracle["v2"] if v2_event(frame)["did"] == did]
        read_before = scrape(stack.server)["jetstream_history_blocks_read_total"]
        frames, _ = await stack.collect(V2_PATH, f"cursor=1&dids={did}", len(expected))
        assert frames == expected
        narrow = scrape(stack.server)
        assert narrow["jetstream_history_blocks_skipped_total"] > 0
        assert narrow["jetstream_history_blocks_read_total"] - read_before < (floor - 1) // 32
    finally:
        await stack.stop()


def attach_unlisted_archive(stack: HistoryStack, directory) -> None:
    """The archive service as the daemon makes it at start: its store not listed yet (its run() not begun)."""
    stack.service = ArchiveService(ArchiveSettings(str(directory), cache_dir=str(stack.tmp_path / "cache")))
    stack.server.archive, stack.server._history = stack.service, None
    assert not stack.server.history.manifest.scanned


async def test_before_the_first_listing_old_cursors_wait_for_it_and_are_never_refused(tmp_path):
    """Start-up: the manifest has not been listed when the first clients arrive. An old v2 cursor is held
    at the front door until the listing (no CursorTooOld, no clamp to the log with #info OutdatedCursor),
    and a v1 reader below the log waits for it in ARCHIVE_READ instead of resuming at the log's oldest."""
    stack = HistoryStack(tmp_path)
    count = stack.ingest(240)
    stack.seal()  # no service yet: sealed into the directory only
    oldest_time_us = stack.event_log.time_us_of_seq(1)
    stack.trim_below_seq(150)
    attach_unlisted_archive(stack, stack.archive_dir)
    await stack.start(archive=False)
    try:
        frames, client = await stack.collect(V2_PATH, "cursor=1", count)
        assert v2_seqs(frames) == list(range(1, count + 1)) and client.close_code is None
        attach_unlisted_archive(stack, stack.archive_dir)
        frames, _ = await stack.collect(V2_PATH, f"cursor={oldest_time_us}", count)
        assert v2_seqs(frames) == list(range(1, count + 1)), "a time cursor is not clamped to the log"
        assert json.loads(frames[0])["$type"] != "#info"
        attach_unlisted_archive(stack, stack.archive_dir)
        payloads, _ = await stack.collect("/subscribe", "cursor=0", 200)
        assert json.loads(payloads[0])["time_us"] == oldest_time_us, "v1 replays the archive, no silent gap"
        assert stack.server.refused_requests["not_ready"] == 0
    finally:
        await stack.stop()


async def test_a_store_that_cannot_be_listed_answers_503_and_stops_v1_replay_never_a_wrong_answer(tmp_path):
    stack = HistoryStack(tmp_path, handshake_timeout_s=2.0)
    count = stack.ingest(240)
    stack.seal()
    stack.trim_below_seq(150)
    not_a_directory = tmp_path / "archive-file"
    not_a_directory.write_bytes(b"")  # listing it fails (NotADirectoryError): the store is unreachable
    attach_unlisted_archive(stack, not_a_directory)
    await stack.start(archive=False)
    try:
        status, _, body = await http_get(stack.server.port, f"{V2_PATH}?cursor=1")
        assert status == 503 and b"archive manifest warming up" in body, body
        assert stack.server.refused_requests["not_ready"] == 1
        frames, _ = await stack.collect(V2_PATH, "cursor=200", count - 199)  # inside the log: served now
        assert v2_seqs(frames) == list(range(200, count + 1))
        transport, client = await connect(stack.url("/subscribe", "cursor=0"))
        await until(lambda: client.close_code is not None, "the close", timeout=20)
        assert int(client.close_code) == 1011 and "archive unreachable" in client.close_reason
        assert not client.payloads, "nothing from the log's middle was sent as if it followed the cursor"
        assert stack.server.disconnects["archive_damage"] == 1
    finally:
        await stack.stop()


async def test_a_segment_sealed_since_the_last_listing_is_found_by_a_fresh_listing_not_jumped(tmp_path):
    """The log lacks the next seq and the listed segments end before the position: a segment was sealed
    (and the log trimmed) after the process last listed the store. The reader waits for a listing that
    began after it saw this, reads the new segment, and sends every seq once; no seq jump is taken."""
    stack = await HistoryStack(tmp_path).start()
    try:
        first = stack.ingest(120)
        stack.seal()  # listed: the archive ends at `first`
        listed_tip = stack.service.manifest.segments[-1].header.max_seq
        assert listed_tip == first
        count = first + stack.ingest(120)
        seal_all(stack.sealer)  # sealed into the directory, not listed by this process
        assert stack.service.manifest.segments[-1].header.max_seq == listed_tip
        stack.trim_below_seq(200)  # the log now starts well past the listed archive's end
        listings = stack.server.history.last_completed_scan_started
        frames, client = await stack.collect(V2_PATH, "cursor=1", count)
        assert v2_seqs(frames) == list(range(1, count + 1)), "no gap where the unlisted segment is"
        assert client.close_code is None
        assert stack.server.history.last_completed_scan_started > listings, "a fresh listing was made"
        assert stack.service.manifest.segments[-1].header.max_seq > listed_tip
    finally:
        await stack.stop()
