"""Sequencer: strictly increasing time_us under bad clocks and restarts; render + compress once."""
from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jetstream.compression import EventCompressor, decompress
from jetstream.events import KIND_ACCOUNT, KIND_COMMIT, KIND_IDENTITY, Event, PendingEvent
from jetstream.ingest.sequencer import Sequencer, wall_clock_us
from jetstream.log.store import EventLog

_V1_LINE = re.compile(rb'^(\{"did":"[^"]*","time_us":)(\d+)(,.*)$', re.S)
_KINDS = {"commit": KIND_COMMIT, "identity": KIND_IDENTITY, "account": KIND_ACCOUNT}


def pending_from_v1_line(line: bytes) -> PendingEvent:
    head, _time_us, tail = _V1_LINE.match(line).groups()
    decoded = json.loads(line)
    collection = decoded["commit"]["collection"] if decoded["kind"] == "commit" else ""
    return PendingEvent(decoded["did"], _KINDS[decoded["kind"]], collection, head, tail)


def scripted_clock(readings):
    values = iter(readings)
    return lambda: next(values)


class CountingCompressor:
    """Wraps the real compressor to count how often each event is compressed."""

    def __init__(self) -> None:
        self.inner = EventCompressor()
        self.calls = 0

    def compress(self, json_bytes: bytes) -> bytes:
        self.calls += 1
        return self.inner.compress(json_bytes)


def test_clock_going_backwards_or_repeating_still_yields_strictly_increasing_values():
    sequencer = Sequencer(0, scripted_clock([100, 50, 50, 200, 199, 201, 201]))
    assert [sequencer.next_time_us() for _ in range(7)] == [100, 101, 102, 200, 201, 202, 203]


def test_values_follow_the_clock_when_it_moves_forward():
    sequencer = Sequencer(0, scripted_clock([10, 20, 35]))
    assert [sequencer.next_time_us() for _ in range(3)] == [10, 20, 35]


def test_restart_from_a_hwm_ahead_of_the_clock_keeps_increasing_above_it():
    future_hwm = wall_clock_us() + 3_600_000_000  # an hour ahead: the clock was reset since
    sequencer = Sequencer(future_hwm)
    first, second = sequencer.next_time_us(), sequencer.next_time_us()
    assert future_hwm < first < second


@given(hwm=st.integers(0, 2**62), readings=st.lists(st.integers(0, 2**62), min_size=1, max_size=200))
def test_property_values_strictly_increase_above_hwm_and_never_trail_the_clock(hwm, readings):
    sequencer = Sequencer(hwm, scripted_clock(readings))
    values = [sequencer.next_time_us() for _ in readings]
    assert all(later > earlier for earlier, later in zip([hwm] + values, values))
    assert all(value >= reading for value, reading in zip(values, readings))
    assert sequencer.last_time_us == values[-1]


def test_sequence_renders_v1_json_with_the_assigned_time_us_and_compresses_once(expected_v1_lines):
    pending = [pending_from_v1_line(line) for line in expected_v1_lines]
    compressor = CountingCompressor()
    events = Sequencer(0, scripted_clock(range(1000, 2000, 5))).sequence(pending, compressor)
    assert len(events) == len(expected_v1_lines) == compressor.calls
    for event, line, source in zip(events, expected_v1_lines, pending):
        head, _v1_time_us, tail = _V1_LINE.match(line).groups()
        assert event.json == head + str(event.time_us).encode() + tail
        assert json.loads(event.json)["time_us"] == event.time_us
        assert decompress(event.zstd) == event.json
        assert (event.did, event.kind, event.collection) == (source.did, source.kind, source.collection)
    assert [event.time_us for event in events] == list(range(1000, 1000 + 5 * len(events), 5))


def test_sequence_of_nothing_hands_out_nothing():
    sequencer = Sequencer(42, scripted_clock([]))
    assert sequencer.sequence([], EventCompressor()) == []
    assert sequencer.last_time_us == 42


def test_sequencer_started_from_a_reopened_log_appends_after_the_clock_went_back(tmp_path, expected_v1_lines):
    pending = [pending_from_v1_line(line) for line in expected_v1_lines]
    path = str(tmp_path / "log")
    compressor = EventCompressor()
    with EventLog(path) as event_log:
        event_log.append(Sequencer(event_log.hwm(), scripted_clock(range(5_000, 6_000))).sequence(pending[:50], compressor), 1)
    with EventLog(path) as event_log:
        # The wall clock now reads far less than before the restart.
        sequencer = Sequencer(event_log.hwm(), scripted_clock(range(10, 1_000)), last_seq=event_log.newest_seq())
        events: list[Event] = sequencer.sequence(pending[50:], compressor)
        event_log.append(events, 2)  # would raise LogError if time_us went back
        rows = event_log.read_after(-1, 1000, compressed=False)
        times = [row.time_us for row in rows]
    assert len(times) == len(pending)
    assert times == sorted(set(times))
    assert [row.seq for row in rows] == list(range(1, len(pending) + 1)), "seq continues across the restart"


def test_default_clock_is_wall_clock_microseconds():
    import time

    before = time.time_ns() // 1000
    value = Sequencer(0).next_time_us()
    after = time.time_ns() // 1000
    assert before <= value <= after


@pytest.mark.parametrize("hwm", [0, 1_783_175_888_085_434])
def test_last_time_us_starts_at_the_hwm(hwm):
    assert Sequencer(hwm).last_time_us == hwm


def test_sequencer_numbers_events_after_its_last_seq_and_rewinds_when_told():
    pending = [pending_from_v1_line(b'{"did":"did:plc:a","time_us":1,"kind":"identity","identity":{}}')] * 3
    sequencer = Sequencer(0, scripted_clock(range(100, 200)), last_seq=41)
    assert [event.seq for event in sequencer.sequence(pending, EventCompressor())] == [42, 43, 44]
    sequencer.rewind_seq(42)  # the batch 43..44 was not stored: its seqs are handed out again
    assert [event.seq for event in sequencer.sequence(pending, EventCompressor())] == [43, 44, 45]
    sequencer.resume_seq(10)  # never backwards
    assert sequencer.last_seq == 45
