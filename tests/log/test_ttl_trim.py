"""--event-ttl: events older than the TTL leave the log (range delete), the space comes back
(compaction), the cursor and high-water mark stay, they leave the live ring in the same pass,
and replay no longer returns them from either.

Real RocksDB in tmp_path; the daemon test runs a real relay-sim -> daemon -> websocket client.
"""
from __future__ import annotations

import asyncio
import json
import time

import pytest
from prometheus_client import REGISTRY

from jetstream.compression import EventCompressor
from jetstream.config import parse_serve_args
from jetstream.daemon import Daemon
from jetstream.events import KIND_COMMIT, Event
from jetstream.log.store import EventLog
from jetstream.log.ttl import TtlTrimmer, trim_interval_s
from jetstream.relaysim.server import FileSource, RelaySim
from tests.wsclient import connect

pytestmark = pytest.mark.timeout(60)

OLD_BASE_US = 1_700_000_000_000_000
NEW_BASE_US = 1_800_000_000_000_000


def make_events(lines: list[bytes], count: int, base_us: int) -> list[Event]:
    compressor = EventCompressor()
    events = []
    for index in range(count):
        line = lines[index % len(lines)]
        events.append(Event(base_us + index, "did:plc:ttl", KIND_COMMIT, "app.bsky.feed.post", line,
                            compressor.compress(line)))
    return events


def ring_floor_at_read(ring) -> int:
    return ring.time_us_at(0) - 1 if len(ring) else ring.floor_time_us


def test_default_trim_interval_is_a_tenth_of_the_ttl_within_bounds():
    assert trim_interval_s(24 * 3600) == 60.0
    assert trim_interval_s(100) == 10.0
    assert trim_interval_s(2) == 0.5
    assert trim_interval_s(2, configured_s=0.2) == 0.2


def test_trim_removes_only_expired_events_keeps_cursor_and_hwm_and_reclaims_space(tmp_path, expected_v1_lines):
    old = make_events(expected_v1_lines, 4000, OLD_BASE_US)
    new = make_events(expected_v1_lines, 50, NEW_BASE_US)
    with EventLog(str(tmp_path / "log")) as event_log:
        for start in range(0, len(old), 500):
            event_log.append(old[start:start + 500], relay_cursor=start)
        event_log.append(new, relay_cursor=777)
        bytes_before = event_log.stored_event_bytes()
        ttl_s = 60.0
        # The clock sits ttl after the first new event: every old one is expired, no new one is.
        trimmer = TtlTrimmer(event_log, ttl_s, 1.0, clock_s=lambda: NEW_BASE_US / 1e6 + ttl_s)
        ok_before = REGISTRY.get_sample_value("jetstream_log_ttl_trims_total", {"outcome": "ok"}) or 0

        assert trimmer.trim_once()

        rows = event_log.read_after(0, 10_000, compressed=False)
        assert [row.time_us for row in rows] == [event.time_us for event in new]
        assert [row.payload for row in rows] == [event.json for event in new]
        assert [row.time_us for row in event_log.read_after(0, 10_000, compressed=True)] == [e.time_us for e in new]
        assert event_log.relay_cursor() == 777
        assert event_log.hwm() == new[-1].time_us
        bytes_after = event_log.stored_event_bytes()
        assert bytes_after < bytes_before / 10, (bytes_before, bytes_after)
        assert REGISTRY.get_sample_value("jetstream_log_ttl_trims_total", {"outcome": "ok"}) == ok_before + 1
    with EventLog(str(tmp_path / "log")) as reopened:
        assert reopened.oldest_time_us() == new[0].time_us, "the trim is durable"
        assert reopened.hwm() == new[-1].time_us


def test_a_failing_trim_is_counted_and_does_not_raise(tmp_path):
    event_log = EventLog(str(tmp_path / "log"))
    event_log.close()
    failed_before = REGISTRY.get_sample_value("jetstream_log_ttl_trims_total", {"outcome": "failed"}) or 0
    event_log.oldest_time_us = lambda: OLD_BASE_US  # a closed log that still claims events: trim must fail
    assert TtlTrimmer(event_log, 1.0, 1.0).trim_once() is False
    assert REGISTRY.get_sample_value("jetstream_log_ttl_trims_total", {"outcome": "failed"}) == failed_before + 1


async def test_daemon_with_a_two_second_ttl_forgets_old_events_in_log_ring_and_replay(tmp_path, corpus_dir):
    ttl_s = 2.0
    ring_capacity = 100_000
    relay = RelaySim(FileSource(corpus_dir / "frames.bin.zst", loops=0), rate=60)
    await relay.start("127.0.0.1", 0)
    cfg = parse_serve_args([
        "--ws-url", relay.url, "--listen-addr", "127.0.0.1:0", "--metrics-listen-addr", "",
        "--data-dir", str(tmp_path / "data"), "--override-relay-cursor", str(relay.source.first_seq - 1),
        "--event-ttl", f"{ttl_s}s", "--ttl-trim-interval", "250ms",
        # A ring that holds the whole run: without the trimmer dropping expired events from it,
        # replay from cursor=1 would be served the very first event from memory.
        "--ring-capacity", str(ring_capacity), "--max-sub-rate", "100000",
        # The archive writer holds the trim at the first unsealed event (tests/archive/test_writer_daemon.py);
        # this test is about the TTL alone.
        "--archive", "false",
    ], environ={})
    daemon = Daemon(cfg)
    await daemon.start()
    try:
        _, live = await connect(f"ws://127.0.0.1:{daemon.port}/subscribe")
        first = json.loads((await live.wait_for_count(1, timeout=10))[0])["time_us"]
        await asyncio.sleep(ttl_s * 2.5)
        received_live = len(live.messages)

        connected_at_us = time.time_ns() // 1000
        _, replayer = await connect(f"ws://127.0.0.1:{daemon.port}/subscribe?cursor=1")
        replayed_first = json.loads((await replayer.wait_for_count(1, timeout=10))[0])["time_us"]
        oldest_in_log = daemon.event_log.oldest_time_us()
        oldest_seq, newest_seq = daemon.event_log.oldest_seq(), daemon.event_log.newest_seq()
        ring = daemon.server.ring
        ring_seqs = [ring.seq_at(index) for index in range(len(ring))]
        logged_seqs = [row.seq for row in daemon.event_log.read_after(ring_floor_at_read(ring), len(ring), False)]
        oldest_in_ring = ring.time_us_at(0) if len(ring) else None
        ring_floor, ring_newest = ring.floor_time_us, ring.newest_time_us
    finally:
        await daemon.stop()
        await relay.close()

    # Anything older than ttl + one trim period (+ slack for a loaded machine) must be gone.
    bound_us = connected_at_us - int((ttl_s + 0.25 + 1.0) * 1e6)
    assert received_live > 200, "the relay kept feeding events for the whole test"
    assert received_live < ring_capacity, "the ring never had to evict for capacity"
    assert replayed_first > first and replayed_first >= bound_us
    assert oldest_in_log is not None and oldest_in_log >= bound_us
    assert ring_floor >= first, "the TTL pass moved the ring's floor past the first event"
    assert oldest_in_ring is None or oldest_in_ring >= bound_us
    assert oldest_seq is not None and 1 < oldest_seq <= newest_seq, "the trim raised oldest_seq"
    assert ring_seqs == logged_seqs, "the ring holds each event's logged seq"
    assert ring_newest >= replayed_first


async def test_the_timed_pass_compacts_in_a_worker_thread_while_the_loop_keeps_serving(tmp_path, expected_v1_lines):
    """Compaction takes ~1 s per 500k events; on the loop it would stall every subscriber.

    The compaction below cannot finish until the event loop has run a coroutine that lets
    it: if run() compacted on the loop's own thread, this would deadlock (and time out).
    """
    import threading
    old = make_events(expected_v1_lines, 3000, OLD_BASE_US)
    new = make_events(expected_v1_lines, 10, NEW_BASE_US)
    with EventLog(str(tmp_path / "log")) as event_log:
        event_log.append(old, relay_cursor=1)
        event_log.append(new, relay_cursor=2)
        bytes_before = event_log.stored_event_bytes()
        trimmer = TtlTrimmer(event_log, 60.0, 0.01, clock_s=lambda: NEW_BASE_US / 1e6 + 60.0)
        loop_ran, compaction_threads = threading.Event(), []
        real_compact = event_log.compact_trimmed

        def compact_after_the_loop_ran(trimmed) -> None:
            compaction_threads.append(threading.get_ident())
            assert loop_ran.wait(timeout=10), "the event loop was blocked during compaction"
            real_compact(trimmed)

        event_log.compact_trimmed = compact_after_the_loop_ran
        runner = asyncio.ensure_future(trimmer.run())
        try:
            while not compaction_threads:
                await asyncio.sleep(0.005)
            # deleted before compaction started: readers already no longer see expired events
            assert [row.time_us for row in event_log.read_after(0, 100, compressed=False)] == [e.time_us for e in new]
            loop_ran.set()  # only reachable while the compaction waits in its own thread
        finally:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
            await trimmer.wait_idle()  # what Daemon.stop does before closing the log
        assert compaction_threads[0] != threading.get_ident()
        assert event_log.stored_event_bytes() < bytes_before / 10
