"""Damage and gap reports without a daemon: the close reasons' size, inspect and repair on edge cases."""
from __future__ import annotations

import subprocess
import sys

from rocksdict import Options, Rdict, WriteBatch

from jetstream.log.damage import corruption_close_reason, gap_close_reason
from jetstream.log.repair import repair_data_dir
from jetstream.log.rows import MAX_TIME_US
from jetstream.log.store import CF_META, META_FORMAT_VERSION, EventLog, LogGap
from tests.log.test_log_store import synthetic_event

CLOSE_REASON_LIMIT = 123  # RFC 6455 5.5: a control frame's payload is at most 125 bytes, 2 are the code


def test_close_reasons_fit_a_close_frame_with_the_largest_time_us():
    damage = {"from_time_us": MAX_TIME_US, "to_time_us": MAX_TIME_US - 1, "column_family": "events_zstd"}
    gap = {"from_time_us": MAX_TIME_US - 2, "to_time_us": MAX_TIME_US - 1}
    for reason in (corruption_close_reason(damage), gap_close_reason(gap)):
        assert str(MAX_TIME_US - 1) in reason
        assert len(reason.encode()) <= CLOSE_REASON_LIMIT, reason


def test_inspect_refuses_a_log_of_a_newer_format_with_one_line_and_exit_1(tmp_path):
    data_dir = str(tmp_path / "data")
    EventLog(data_dir).close()
    families = {name: Options(raw_mode=True) for name in Rdict.list_cf(data_dir, Options(raw_mode=True))
                if name != "default"}
    db = Rdict(data_dir, Options(raw_mode=True), column_families=families)
    batch = WriteBatch(raw_mode=True)
    batch.put(META_FORMAT_VERSION, b"3", db.get_column_family_handle(CF_META))
    db.write(batch)
    db.close()
    result = subprocess.run([sys.executable, "-m", "jetstream.cli", "inspect", data_dir],
                            capture_output=True, timeout=60)
    assert result.returncode == 1 and result.stdout == b""
    assert b"format version 3" in result.stderr and b"cannot read it" in result.stderr, result.stderr


def test_repair_of_a_sound_log_changes_nothing_and_records_no_gap(tmp_path):
    data_dir = str(tmp_path / "data")
    with EventLog(data_dir) as event_log:
        event_log.append([synthetic_event(t) for t in range(1, 101)], relay_cursor=7)
        event_log.flush()
    outcome = repair_data_dir(data_dir)
    assert outcome.damages == [] and outcome.gaps == []
    with EventLog(data_dir, create=False) as event_log:
        assert [row.time_us for row in event_log.read_after(0, 1000, False)] == list(range(1, 101))
        assert event_log.gaps() == [] and event_log.relay_cursor() == 7
    assert not (tmp_path / "data" / "repair-work").exists()


def test_a_recorded_gap_stops_a_replay_until_the_ttl_trim_has_passed_it(tmp_path):
    data_dir = str(tmp_path / "data")
    with EventLog(data_dir) as event_log:
        event_log.append([synthetic_event(t) for t in range(1, 101) if not 40 <= t <= 49], relay_cursor=1)
        event_log.record_gaps([{"from_time_us": 40, "to_time_us": 49, "events_lost": 10, "repaired_at": "now"}])
        assert [row.time_us for row in event_log.read_after(0, 1000, False)] == list(range(1, 40))
        for position in (39, 44):
            try:
                event_log.read_after(position, 1000, False)
            except LogGap as exc:
                assert (exc.gap["from_time_us"], exc.gap["to_time_us"]) == (40, 49)
            else:
                raise AssertionError(f"a replay from {position} crossed the gap silently")
        assert [row.time_us for row in event_log.read_after(49, 1000, True)] == list(range(50, 101))
        event_log.trim_older_than(60)
        assert event_log.gaps() == []
        assert [row.time_us for row in event_log.read_after(0, 1000, False)] == list(range(60, 101))
    with EventLog(data_dir, create=False) as event_log:
        assert event_log.gaps() == []
