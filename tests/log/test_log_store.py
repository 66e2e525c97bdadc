"""EventLog: append/read round trips, cursor + hwm atomicity, ordering, trim, foreign dirs.

Events are the corpus's real v1 lines, sequenced by the real Sequencer and
compressed by the real EventCompressor, written to a real RocksDB in tmp_path.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from rocksdict import Options, Rdict

from jetstream.compression import EventCompressor, decompress
from jetstream.events import KIND_ACCOUNT, KIND_COMMIT, KIND_IDENTITY, Event, PendingEvent
from jetstream.ingest.sequencer import Sequencer
from jetstream.log.store import CF_META, META_FORMAT_VERSION, EventLog, LogError

_V1_LINE = re.compile(rb'^(\{"did":"[^"]*","time_us":)\d+(,.*)$', re.S)
_KINDS = {"commit": KIND_COMMIT, "identity": KIND_IDENTITY, "account": KIND_ACCOUNT}


def pending_from_v1_line(line: bytes) -> PendingEvent:
    head, tail = _V1_LINE.match(line).groups()
    decoded = json.loads(line)
    collection = decoded["commit"]["collection"] if decoded["kind"] == "commit" else ""
    return PendingEvent(decoded["did"], _KINDS[decoded["kind"]], collection, head, tail)


class StepClock:
    """A deterministic µs clock: starts at `start`, advances `step` per reading."""

    def __init__(self, start: int = 1_700_000_000_000_000, step: int = 3) -> None:
        self.now, self.step = start, step

    def __call__(self) -> int:
        self.now += self.step
        return self.now


@pytest.fixture(scope="module")
def corpus_events(expected_v1_lines) -> list[Event]:
    pending = [pending_from_v1_line(line) for line in expected_v1_lines]
    return Sequencer(0, StepClock()).sequence(pending, EventCompressor())


@pytest.fixture
def log_path(tmp_path: Path) -> str:
    return str(tmp_path / "log")


def synthetic_event(time_us: int) -> Event:
    body = b'{"time_us":%d}' % time_us
    return Event(time_us, "did:plc:synthetic", KIND_COMMIT, "app.bsky.feed.like", body, b"zstd-%d" % time_us)


def test_corpus_events_read_back_in_order_with_header_fields_and_json(log_path, corpus_events):
    assert len(corpus_events) == 152  # anti-vacuity: every v1 line became an event
    with EventLog(log_path) as event_log:
        for start in range(0, len(corpus_events), 40):
            event_log.append(corpus_events[start:start + 40], relay_cursor=start)
        rows = event_log.read_after(-1, 10_000, compressed=False)
    assert [row.time_us for row in rows] == [event.time_us for event in corpus_events]
    assert [(row.did, row.kind, row.collection) for row in rows] == [
        (event.did, event.kind, event.collection) for event in corpus_events]
    assert [row.payload for row in rows] == [event.json for event in corpus_events]
    assert {row.kind for row in rows} == {KIND_COMMIT, KIND_IDENTITY, KIND_ACCOUNT}


def test_compressed_read_returns_the_stored_zstd_frames_that_decode_to_the_json(log_path, corpus_events):
    with EventLog(log_path) as event_log:
        event_log.append(corpus_events, relay_cursor=1)
        rows = event_log.read_after(-1, 10_000, compressed=True)
    assert [row.payload for row in rows] == [event.zstd for event in corpus_events]
    assert [decompress(row.payload) for row in rows] == [event.json for event in corpus_events]


def test_read_after_excludes_the_given_time_us_and_respects_limit(log_path, corpus_events):
    with EventLog(log_path) as event_log:
        event_log.append(corpus_events, relay_cursor=1)
        cursor_event = corpus_events[10]
        rows = event_log.read_after(cursor_event.time_us, 5, compressed=False)
        assert [row.time_us for row in rows] == [event.time_us for event in corpus_events[11:16]]
        # A cursor between two events starts at the next one.
        between = event_log.read_after(cursor_event.time_us - 1, 1, compressed=False)
        assert between[0].time_us == cursor_event.time_us
        assert event_log.read_after(corpus_events[-1].time_us, 10, compressed=False) == []
        assert event_log.read_after(-1, 0, compressed=False) == []


def test_paging_with_read_after_visits_every_event_exactly_once(log_path, corpus_events):
    with EventLog(log_path) as event_log:
        event_log.append(corpus_events, relay_cursor=1)
        seen, position = [], -1
        while page := event_log.read_after(position, 7, compressed=False):
            seen.extend(row.time_us for row in page)
            position = page[-1].time_us
    assert seen == [event.time_us for event in corpus_events]


def test_negative_after_reads_from_the_start(log_path):
    with EventLog(log_path) as event_log:
        event_log.append([synthetic_event(1), synthetic_event(2)], relay_cursor=None)
        assert [row.time_us for row in event_log.read_after(-10**18, 10, compressed=False)] == [1, 2]
        assert [row.time_us for row in event_log.read_after(0, 10, compressed=False)] == [1, 2]


def test_keys_sort_numerically_across_digit_and_byte_boundaries(log_path):
    # v1's decimal keys put "10" before "9"; big-endian keys must not.
    times = [9, 10, 99, 100, 255, 256, 65_535, 65_536, 999_999_999_999_999, 1_000_000_000_000_000]
    with EventLog(log_path) as event_log:
        event_log.append([synthetic_event(t) for t in times], relay_cursor=None)
        assert [row.time_us for row in event_log.read_after(-1, 100, compressed=False)] == times
        assert [row.time_us for row in event_log.read_after(99, 2, compressed=False)] == [100, 255]


def test_empty_log_reports_no_cursor_zero_hwm_and_no_edges(log_path):
    with EventLog(log_path) as event_log:
        assert event_log.relay_cursor() is None
        assert event_log.hwm() == 0
        assert event_log.oldest_time_us() is None
        assert event_log.newest_time_us() is None
        assert event_log.read_after(-1, 10, compressed=True) == []


def test_cursor_hwm_and_events_survive_close_and_reopen(log_path, corpus_events):
    with EventLog(log_path) as event_log:
        event_log.append(corpus_events[:100], relay_cursor=31527015400)
        event_log.append(corpus_events[100:], relay_cursor=31527015471)
    with EventLog(log_path, create=False) as reopened:
        assert reopened.relay_cursor() == 31527015471
        assert reopened.hwm() == corpus_events[-1].time_us
        assert reopened.oldest_time_us() == corpus_events[0].time_us
        assert reopened.newest_time_us() == corpus_events[-1].time_us
        assert len(reopened.read_after(-1, 10_000, compressed=False)) == len(corpus_events)
        assert reopened.count_estimate() > 0


def test_append_without_events_moves_only_the_cursor(log_path):
    with EventLog(log_path) as event_log:
        event_log.append([synthetic_event(5)], relay_cursor=100)
        event_log.append([], relay_cursor=101)
        event_log.append([], relay_cursor=None)
    with EventLog(log_path) as reopened:
        assert reopened.relay_cursor() == 101
        assert reopened.hwm() == 5
        assert [row.time_us for row in reopened.read_after(-1, 10, compressed=False)] == [5]


@pytest.mark.parametrize("bad_batch", [[5], [4], [7, 6], [7, 7]], ids=["equal_hwm", "below_hwm", "descending", "repeat"])
def test_append_rejects_time_us_not_strictly_above_hwm_and_writes_nothing(log_path, bad_batch):
    with EventLog(log_path) as event_log:
        event_log.append([synthetic_event(5)], relay_cursor=1)
        with pytest.raises(LogError, match="strictly increase"):
            event_log.append([synthetic_event(t) for t in bad_batch], relay_cursor=2)
        assert event_log.hwm() == 5
        assert event_log.relay_cursor() == 1
        assert [row.time_us for row in event_log.read_after(-1, 10, compressed=False)] == [5]
        event_log.append([synthetic_event(6)], relay_cursor=3)  # the log stays usable


def test_hwm_is_enforced_after_reopen(log_path):
    with EventLog(log_path) as event_log:
        event_log.append([synthetic_event(50)], relay_cursor=None)
    with EventLog(log_path) as reopened, pytest.raises(LogError):
        reopened.append([synthetic_event(50)], relay_cursor=None)


def test_trim_removes_only_older_rows_in_both_column_families_and_keeps_hwm(log_path):
    times = list(range(10, 30))
    with EventLog(log_path) as event_log:
        event_log.append([synthetic_event(t) for t in times], relay_cursor=77)
        event_log.trim_older_than(20)
        for compressed in (False, True):
            assert [row.time_us for row in event_log.read_after(-1, 100, compressed)] == list(range(20, 30))
        assert event_log.oldest_time_us() == 20
        event_log.trim_older_than(20)  # nothing older left: a no-op
        assert event_log.oldest_time_us() == 20
        event_log.trim_older_than(10**12)
        assert event_log.oldest_time_us() is None
        assert event_log.read_after(-1, 100, compressed=True) == []
    with EventLog(log_path) as reopened:
        assert reopened.hwm() == 29  # invariant 2 outlives the data
        assert reopened.relay_cursor() == 77
        with pytest.raises(LogError):
            reopened.append([synthetic_event(25)], relay_cursor=None)


def test_non_empty_foreign_directory_is_refused_and_left_untouched(tmp_path):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"not a database")
    with pytest.raises(LogError, match="without a RocksDB database"):
        EventLog(str(foreign))
    assert sorted(p.name for p in foreign.iterdir()) == ["cat.jpg"]


def test_a_plain_file_is_refused(tmp_path):
    path = tmp_path / "file"
    path.write_bytes(b"garbage")
    with pytest.raises(LogError, match="not a directory"):
        EventLog(str(path))


def test_rocksdb_of_another_application_is_refused(tmp_path):
    other = tmp_path / "other"
    db = Rdict(str(other))
    db["key"] = "value"
    db.close()
    with pytest.raises(LogError, match="not a jetstream event log"):
        EventLog(str(other))
    reopened = Rdict(str(other))  # not re-created: its data is intact
    assert reopened["key"] == "value"
    reopened.close()


def test_log_with_another_format_version_is_refused(log_path):
    EventLog(log_path).close()
    options = Options(raw_mode=True)
    column_families = {name: Options(raw_mode=True) for name in Rdict.list_cf(log_path, options) if name != "default"}
    db = Rdict(log_path, options, column_families=column_families)
    meta = db.get_column_family(CF_META)
    meta.put(META_FORMAT_VERSION, b"999")
    meta.close()
    db.close()
    with pytest.raises(LogError, match="format version"):
        EventLog(log_path)


def test_missing_log_with_create_false_is_an_error(tmp_path):
    with pytest.raises(LogError, match="no event log"):
        EventLog(str(tmp_path / "absent"), create=False)
    assert not (tmp_path / "absent").exists()


def test_a_second_open_of_a_log_in_use_raises_log_error(log_path):
    with EventLog(log_path):
        with pytest.raises(LogError, match="cannot open"):
            EventLog(log_path)


def test_fsync_log_round_trips(log_path):
    with EventLog(log_path, fsync=True) as event_log:
        event_log.append([synthetic_event(1)], relay_cursor=9)
    with EventLog(log_path) as reopened:
        assert reopened.relay_cursor() == 9
        assert reopened.read_after(0, 1, compressed=True)[0].payload == b"zstd-1"
