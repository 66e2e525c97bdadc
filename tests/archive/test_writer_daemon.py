"""The daemon writes the archive (issue 24, jetstream/archive/sealer.py), tested end to end.

A relay-sim process streams synthetic frames; `jetstream serve` runs as its own process with
small thresholds (blocks of 64 events or 1 s, sealed after 2 s). The sealed segments must verify,
hold exactly the log's events in seq order (no gap, no duplicate across segments), and the atproto
SDK's snapshot() against the running daemon must return them. kill -9 at random moments must
leave every event exactly once across archive and log, with the TTL trim running; the trim never
drops an event no segment holds; a disk the sealer cannot write to degrades /healthz until it can.
"""
from __future__ import annotations

import random
import signal
import time

import pytest

from jetstream.archive import verify
from jetstream.log.store import EventLog
from tests.archive.writer_helpers import (
    SMALL,
    RelaySim,
    archive_report,
    as_sdk_rows,
    log_rows,
    seal_then_snapshot,
    segment_paths,
    segment_rows,
    serve,
    snapshot_rows,
    wait_all_sealed,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_sealed_segments_hold_exactly_the_logs_events_and_the_sdk_reads_them(tmp_path):
    data_dir = tmp_path / "data"
    relay = RelaySim(tmp_path / "relay.log", rate=300)
    server = serve(data_dir, relay, *SMALL)
    report, snapshot = seal_then_snapshot(server, relay, segments=3)

    paths = segment_paths(data_dir / "archive")
    assert len(paths) >= 3
    for path in paths:
        verify(str(path))
    archived = [row for path in paths for row in segment_rows(path)]
    logged = log_rows(data_dir)
    assert report["sealed_tip_seq"] == len(logged) == archived[-1][0]
    assert [row[0] for row in archived] == list(range(1, len(logged) + 1)), "no gap, no duplicate across segments"
    assert archived == logged, "seq, time_us, did, kind, collection, rkey and record CID of every event"
    assert {row[3] for row in archived} >= {"create", "delete"}
    assert not report["skipped"] and report["missing"] == 0
    assert snapshot == as_sdk_rows(archived)


def test_kill9_during_ingest_and_sealing_keeps_every_event_exactly_once(tmp_path):
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    data_dir = tmp_path / "data"
    logs = tmp_path / "serve.log"
    relay = RelaySim(tmp_path / "relay.log", rate=400)
    # A short TTL runs the trim throughout: it may drop sealed events only.
    flags = (*SMALL, "--event-ttl", "4s", "--ttl-trim-interval", "500ms")
    try:
        for _ in range(6):
            server = serve(data_dir, relay, *flags, log_path=logs)
            try:
                server.wait_ready()
                time.sleep(rng.uniform(1.0, 5.0))
            finally:
                server.process.send_signal(signal.SIGKILL)
                server.process.wait(10)
        server = serve(data_dir, relay, *flags, log_path=logs)
        server.wait_ready()
        time.sleep(3)
        relay.stop()
        wait_all_sealed(server)
        server.stop()
    finally:
        relay.stop()
    text = logs.read_text()
    print(f"archive kill9: seed={seed} staged_removed={text.count('archive_staged_segment_removed')}")
    assert "archive_staged_segment_removed" in text, "some kill left a half-written segment, removed at start"
    archived = [row for path in segment_paths(data_dir / "archive") for row in segment_rows(path)]
    logged = log_rows(data_dir)
    seqs = [row[0] for row in archived]
    assert seqs == list(range(1, len(seqs) + 1)), "the archive: seq 1..tip, none twice, none missing"
    assert logged and logged[0][0] > 1, "the TTL trim did run"
    assert logged[0][0] <= seqs[-1] + 1, "the log keeps every event above the sealed tip"
    by_seq = {row[0]: row for row in logged}
    assert all(by_seq[row[0]] == row for row in archived if row[0] in by_seq), "archive and log agree where both hold"
    assert seqs[-1] == logged[-1][0], "everything ingested is sealed at the end"


def test_ttl_trim_never_drops_an_unsealed_event(tmp_path):
    data_dir = tmp_path / "data"
    relay = RelaySim(tmp_path / "relay.log", rate=300)
    # Never sealed while it runs (an hour, a GiB), TTL 1 s: without the hold the log would keep ~1 s.
    server = serve(data_dir, relay, "--archive-seal-after", "1h", "--archive-segment-bytes", str(1 << 30),
                   "--event-ttl", "1s", "--ttl-trim-interval", "200ms")
    try:
        server.wait_ready()
        wait_until(lambda: (archive_report(server).get("active_events") or 0) > 1000, "events past the TTL", 60, server)
        time.sleep(2)
    finally:
        relay.stop()
        server.stop()
    assert not segment_paths(data_dir / "archive")
    logged = log_rows(data_dir)
    assert logged[0][0] == 1 and [row[0] for row in logged] == list(range(1, len(logged) + 1))
    assert logged[-1][1] - logged[0][1] > 3_000_000, "held for longer than the TTL"


def test_archive_off_trims_by_ttl_alone(tmp_path):
    """The control for the test above: the same flags with --archive=false trim the log."""
    data_dir = tmp_path / "data"
    relay = RelaySim(tmp_path / "relay.log", rate=300)
    server = serve(data_dir, relay, "--archive", "false", "--event-ttl", "1s", "--ttl-trim-interval", "200ms")
    try:
        server.wait_ready()  # --archive=false: the archive paths answer 404 once it listens
        time.sleep(4)
    finally:
        relay.stop()
        server.stop()
    with EventLog(str(data_dir), create=False) as event_log:
        assert event_log.oldest_seq() > 1


def test_unwritable_archive_raises_archive_seal_failed_keeps_the_log_and_recovers(tmp_path):
    from tests.small_disk import fill, mounted_tmpfs

    data_dir = tmp_path / "data"
    relay = RelaySim(tmp_path / "relay.log", rate=300)
    with mounted_tmpfs(tmp_path / "disk", "2m") as disk:
        filler = fill(disk, left_free=0)
        server = serve(data_dir, relay, *SMALL, "--archive-dir", str(disk), "--event-ttl", "2s",
                       "--ttl-trim-interval", "200ms")
        try:
            server.wait_ready()

            def degraded() -> bool:
                health = server.healthz()
                return any(p["kind"] == "archive_seal_failed" for p in health.get("problems", []))

            wait_until(degraded, "archive_seal_failed on /healthz", 60, server)
            assert archive_report(server)["sealed_segments"] == 0
            time.sleep(3)  # past the TTL: the events must stay in the log
            filler.unlink()
            wait_until(lambda: archive_report(server).get("sealed_segments", 0) >= 1, "a seal after space came back",
                       60, server)
            wait_until(lambda: not degraded(), "archive_seal_failed cleared", 30, server)
            relay.stop()
            wait_all_sealed(server)
        finally:
            relay.stop()
            server.stop()
        archived = [row for path in segment_paths(disk) for row in segment_rows(path)]
    assert [row[0] for row in archived] == list(range(1, len(archived) + 1)), "nothing lost while it failed"
    assert "event=health_degraded problem=archive_seal_failed" in server.logs()


def test_workers_main_process_seals(tmp_path):
    data_dir = tmp_path / "data"
    relay = RelaySim(tmp_path / "relay.log", rate=300)
    server = serve(data_dir, relay, *SMALL, "--workers", "2")
    try:
        server.wait_ready()
        wait_until(lambda: len(segment_paths(data_dir / "archive")) >= 2, "two sealed segments", 90, server)
        relay.stop()
        wait_all_sealed(server)
        time.sleep(6)  # workers rescan the directory every 5 s
        snapshot = snapshot_rows(server)
    finally:
        relay.stop()
        server.stop()
    archived = [row for path in segment_paths(data_dir / "archive") for row in segment_rows(path)]
    assert archived == log_rows(data_dir)
    assert [row[0] for row in snapshot] == [row[0] for row in archived]
