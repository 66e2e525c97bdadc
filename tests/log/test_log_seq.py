"""Every stored event has a seq: 1..N in time_us order, no gap, kept across reopen and trim;
a format 1 log (rows without seq) is upgraded in place at open, once, and an interrupted
upgrade resumes.

Old logs are built with `make_format_1_log`: a log written by today's code, then rewritten
row by row into the format 1 layout (no seq flag, no seq) with format_version 1 and no
newest_seq, which is byte for byte what the code before seq wrote.
"""
from __future__ import annotations

import random
import subprocess
import sys
import textwrap

import pytest
from rocksdict import Options, Rdict, WriteBatch

from jetstream.compression import EventCompressor
from jetstream.events import KIND_COMMIT, Event
from jetstream.log.rows import RowError, decode_row, encode_value_v1, has_seq
from jetstream.log.store import (
    CF_EVENTS,
    CF_EVENTS_ZSTD,
    CF_META,
    META_FORMAT_VERSION,
    META_SEQ,
    META_SEQ_UPGRADE,
    EventLog,
    SeqError,
)

BASE_US = 1_700_000_000_000_000
COMPRESSOR = EventCompressor()


def make_events(times: list[int], first_seq: int = 0) -> list[Event]:
    """Events at these time_us; numbered from first_seq (0: unnumbered, the log numbers them)."""
    return [Event(time_us, f"did:plc:{time_us % 13}", KIND_COMMIT, "app.bsky.feed.post",
                  b'{"time_us":%d}' % time_us, COMPRESSOR.compress(b'{"time_us":%d}' % time_us),
                  first_seq + index if first_seq else 0)
            for index, time_us in enumerate(times)]


def spaced_times(count: int, seed: int = 1) -> list[int]:
    """Strictly increasing time_us with irregular spacing (1 µs to 5 s): seq is not time_us arithmetic."""
    rng, time_us, times = random.Random(seed), BASE_US, []
    for _ in range(count):
        time_us += rng.choice((1, 2, 17, 1_000, 250_000, 5_000_000))
        times.append(time_us)
    return times


def open_raw(path: str) -> Rdict:
    names = [name for name in Rdict.list_cf(path, Options(raw_mode=True)) if name != "default"]
    return Rdict(path, Options(raw_mode=True), column_families={name: Options(raw_mode=True) for name in names})


def make_format_1_log(path: str, times: list[int]) -> None:
    """A log as the code before seq left it: rows without seq, format_version 1, no newest_seq."""
    with EventLog(path) as event_log:
        for start in range(0, len(times), 1000):
            event_log.append(make_events(times[start:start + 1000]), relay_cursor=start + 1)
    db = open_raw(path)
    try:
        batch = WriteBatch(raw_mode=True)
        for name in (CF_EVENTS, CF_EVENTS_ZSTD):
            family, handle = db.get_column_family(name), db.get_column_family_handle(name)
            for key, value in family.items():
                row = decode_row(key, value)
                batch.put(key, encode_value_v1(row.kind, row.did, row.collection, row.payload), handle)
            family.close()
        meta = db.get_column_family_handle(CF_META)
        batch.put(META_FORMAT_VERSION, b"1", meta)
        batch.delete(META_SEQ, meta)
        db.write(batch)
    finally:
        db.close()


def raw_meta(path: str, key: bytes) -> bytes | None:
    db = open_raw(path)
    try:
        meta = db.get_column_family(CF_META)
        value = meta.get(key)
        meta.close()
        return value
    finally:
        db.close()


def every_row(event_log: EventLog, compressed: bool = False):
    return event_log.read_after(-1, 10_000_000, compressed)


# -- seq in a log of today's format -----------------------------------------------------------

def test_seqs_continue_without_gap_across_batches_and_reopen(tmp_path):
    path = str(tmp_path / "log")
    times = spaced_times(300)
    with EventLog(path) as event_log:
        assert (event_log.newest_seq(), event_log.oldest_seq()) == (0, None)
        event_log.append(make_events(times[:100], first_seq=1), relay_cursor=1)
        event_log.append([], relay_cursor=2)  # a cursor-only batch uses no seq
        event_log.append(make_events(times[100:200]), relay_cursor=3)  # unnumbered: the log numbers them
        assert event_log.newest_seq() == 200
    with EventLog(path) as event_log:
        assert event_log.newest_seq() == 200, "recovered at open"
        event_log.append(make_events(times[200:], first_seq=201), relay_cursor=4)
        json_rows, zstd_rows = every_row(event_log), every_row(event_log, compressed=True)
        assert (event_log.oldest_seq(), event_log.newest_seq()) == (1, 300)
    assert [row.seq for row in json_rows] == list(range(1, 301))
    assert [row.seq for row in zstd_rows] == list(range(1, 301)), "both rows of an event carry its seq"
    assert [row.time_us for row in json_rows] == times


@pytest.mark.parametrize("first_seq, why", [(2, "a gap"), (1, "a repeat")])
def test_an_append_that_would_leave_a_gap_or_repeat_a_seq_is_refused_and_writes_nothing(tmp_path, first_seq, why):
    times = spaced_times(20)
    with EventLog(str(tmp_path / "log")) as event_log:
        event_log.append(make_events(times[:10], first_seq=1), relay_cursor=1)
        bad = make_events(times[10:], first_seq=first_seq + (10 if why == "a gap" else 0))
        with pytest.raises(SeqError):
            event_log.append(bad, relay_cursor=2)
        with pytest.raises(SeqError):  # a hole inside the batch
            event_log.append(make_events(times[10:12], 11)[:1] + make_events(times[12:13], 13), relay_cursor=2)
        assert (event_log.newest_seq(), event_log.relay_cursor(), len(every_row(event_log))) == (10, 1, 10)
        event_log.append(bad[:0] + make_events(times[10:], first_seq=5000), relay_cursor=2, seq_jump=True)
        assert event_log.newest_seq() == 5009, "cluster mode: a jump over expired stream messages"


def test_seq_and_time_us_map_to_each_other_like_a_scan_says(tmp_path):
    times = spaced_times(2000, seed=7)
    with EventLog(str(tmp_path / "log")) as event_log:
        assert event_log.time_us_of_seq(1) is None and event_log.seq_at_or_after(0) is None
        event_log.append(make_events(times), relay_cursor=1)
        event_log.trim_older_than(times[500])  # the first held event is seq 501
        rows = every_row(event_log)
        rng = random.Random(3)
        for seq in [1, 500, 501, 502, 1999, 2000, 2001] + [rng.randrange(1, 2100) for _ in range(200)]:
            expected = next((row.time_us for row in rows if row.seq >= seq), None)
            assert event_log.time_us_of_seq(seq) == expected, seq
        for time_us in [0, times[0], times[500] - 1, times[500], times[-1], times[-1] + 1] + \
                [rng.randrange(times[0], times[-1] + 10) for _ in range(200)]:
            expected = next((row.seq for row in rows if row.time_us >= time_us), None)
            assert event_log.seq_at_or_after(time_us) == expected, time_us


def test_ttl_trim_raises_oldest_seq_and_keeps_newest_seq(tmp_path):
    times = spaced_times(100)
    path = str(tmp_path / "log")
    with EventLog(path) as event_log:
        event_log.append(make_events(times), relay_cursor=1)
        event_log.trim_older_than(times[40])
        assert (event_log.oldest_seq(), event_log.newest_seq()) == (41, 100)
        event_log.trim_older_than(times[-1] + 1)  # everything
        assert (event_log.oldest_seq(), event_log.newest_seq()) == (None, 100)
    with EventLog(path) as event_log:
        event_log.append(make_events([times[-1] + 5]), relay_cursor=2)
        assert (event_log.oldest_seq(), event_log.newest_seq()) == (101, 101), "seq survives an emptied log"


# -- the upgrade of a format 1 log ------------------------------------------------------------

def test_a_format_1_log_gets_seqs_in_time_us_order_once_at_open(tmp_path):
    path = str(tmp_path / "log")
    times = spaced_times(2500)
    make_format_1_log(path, times)
    with EventLog(path, upgrade=False) as unupgraded:  # as jetstream repair opens it
        assert unupgraded.format_version() == 1
        with pytest.raises(RowError):  # the replay path refuses rows without seq
            unupgraded.read_after(-1, 10, False)
    with EventLog(path) as event_log:
        assert event_log.format_version() == 2
        json_rows, zstd_rows = every_row(event_log), every_row(event_log, compressed=True)
        assert event_log.newest_seq() == 2500 and event_log.hwm() == times[-1]
        event_log.append(make_events([times[-1] + 1], first_seq=2501), relay_cursor=9)  # ingest continues
    assert [row.seq for row in json_rows] == list(range(1, 2501))
    assert [row.seq for row in zstd_rows] == list(range(1, 2501))
    assert [row.time_us for row in json_rows] == times
    assert [row.payload for row in json_rows] == [b'{"time_us":%d}' % t for t in times], "bytes kept"
    assert [row.payload for row in zstd_rows] == [COMPRESSOR.compress(b'{"time_us":%d}' % t) for t in times]
    assert raw_meta(path, META_SEQ_UPGRADE) is None and raw_meta(path, META_FORMAT_VERSION) == b"2"
    with EventLog(path) as event_log:  # once: a second open renumbers nothing
        assert [row.seq for row in every_row(event_log)] == list(range(1, 2502))


CRASHING_UPGRADE = textwrap.dedent(
    """
    import os, sys
    from jetstream.log import store

    store.SEQ_UPGRADE_CHUNK = 100
    chunks = {"written": 0}
    upgrade_chunk = store.EventLog._upgrade_chunk

    def crash_after_three(self, keys, values, seq):
        if chunks["written"] == 3:
            os._exit(9)  # like kill -9: no close, no flush; the WAL holds what was written
        chunks["written"] += 1
        return upgrade_chunk(self, keys, values, seq)

    store.EventLog._upgrade_chunk = crash_after_three
    store.EventLog(sys.argv[1])
    """
)


def test_an_interrupted_upgrade_resumes_where_it_stopped(tmp_path):
    path = str(tmp_path / "log")
    times = spaced_times(1000, seed=5)
    make_format_1_log(path, times)
    crashed = subprocess.run([sys.executable, "-c", CRASHING_UPGRADE, path], capture_output=True, timeout=120)
    assert crashed.returncode == 9, crashed.stderr.decode()[-2000:]
    assert raw_meta(path, META_FORMAT_VERSION) == b"1", "not finished: still format 1"
    assert raw_meta(path, META_SEQ_UPGRADE) is not None, "the progress of the 3 chunks written"
    # jetstream inspect reads the half-upgraded log (rows of both layouts) and says so.
    inspected = subprocess.run([sys.executable, "-m", "jetstream.cli", "inspect", path], capture_output=True,
                               timeout=120)
    assert inspected.returncode == 0, inspected.stderr
    assert b"seq upgrade:" in inspected.stdout and b"interrupted" in inspected.stdout
    db = open_raw(path)
    events = db.get_column_family(CF_EVENTS)
    upgraded = [has_seq(value) for _, value in events.items()]
    events.close()
    db.close()
    assert upgraded == [True] * 300 + [False] * 700, "three whole chunks, each with its progress"
    with EventLog(path) as event_log:
        rows = every_row(event_log)
        assert event_log.newest_seq() == 1000
    assert [row.seq for row in rows] == list(range(1, 1001))
    assert [row.time_us for row in rows] == times


def test_inspect_reads_a_format_1_log_and_shows_seqs_after_the_upgrade(tmp_path):
    path = str(tmp_path / "log")
    times = spaced_times(50)
    make_format_1_log(path, times)
    before = subprocess.run([sys.executable, "-m", "jetstream.cli", "inspect", "--json", path],
                            capture_output=True, timeout=120)
    assert before.returncode == 0, before.stderr
    import json
    summary = json.loads(before.stdout)
    assert summary["format"].endswith("v1") and summary["oldest_seq"] is None and summary["newest_seq"] is None
    assert summary["newest_time_us"] == times[-1]
    EventLog(path).close()
    after = json.loads(subprocess.run([sys.executable, "-m", "jetstream.cli", "inspect", "--json", path],
                                      capture_output=True, timeout=120).stdout)
    assert after["format"].endswith("v2") and (after["oldest_seq"], after["newest_seq"]) == (1, 50)


def test_a_long_upgrade_asks_systemd_for_more_start_up_time_after_each_chunk(tmp_path, monkeypatch):
    """TimeoutStartSec must not kill an upgrade that is making progress: each chunk sends
    EXTEND_TIMEOUT_USEC (and a STATUS) over $NOTIFY_SOCKET, as the daemon opens the log."""
    import socket

    from jetstream.daemon import UpgradeProgress

    path = str(tmp_path / "log")
    make_format_1_log(path, spaced_times(350, seed=7))
    notify_path = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(notify_path)
    listener.settimeout(0)
    monkeypatch.setenv("NOTIFY_SOCKET", notify_path)
    monkeypatch.setattr("jetstream.log.store.SEQ_UPGRADE_CHUNK", 100)
    try:
        with EventLog(path, on_upgrade_progress=UpgradeProgress()) as event_log:
            assert event_log.newest_seq() == 350
        datagrams = []
        while True:
            try:
                datagrams.append(listener.recv(4096).decode())
            except BlockingIOError:
                break
    finally:
        listener.close()
    assert len(datagrams) == 4, datagrams  # chunks of 100, 100, 100, 50
    assert all(d.startswith("EXTEND_TIMEOUT_USEC=") for d in datagrams)
    assert datagrams[-1].endswith("STATUS=upgrading the event log: 350 rows")
