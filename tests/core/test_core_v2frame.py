"""frame_of_record / wire_time (both twins): the Cython v2 frame writes the pure-Python twin's bytes.

The pure-Python twin is jetstream/wire_v2.py's reference (tested against v2's own shapes in
tests/server/test_wire_v2.py); here the Cython twin must give the same bytes, or raise the
same exception type, for every corpus event's stored record and for generated records,
seqs and times (day, year and int64 edges, truncated and foreign records included).
"""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jetstream import wire_v2
from jetstream._py import v2frame as py_v2frame
from jetstream.ingest.decode import decode_frame

try:
    from jetstream._core import v2frame as cy_v2frame
except ImportError:  # pragma: no cover - only when the extensions are not built
    cy_v2frame = None

needs_cython = pytest.mark.skipif(cy_v2frame is None, reason="Cython extensions not built (make build)")
MAX_INT64 = (1 << 63) - 1
US_PER_DAY = 86_400_000_000
TIMES = st.one_of(
    st.integers(0, MAX_INT64),
    st.integers(0, 4_102_444_800_000_000),  # 1970..2100, where real events live
    st.integers(0, 400 * 366).map(lambda day: day * US_PER_DAY + 86_399_999_999),  # the last µs of a day
    st.integers(0, 400 * 366).map(lambda day: 946_684_800_000_000 + day * US_PER_DAY),  # midnights from 2000
    st.sampled_from([0, 1, 253_402_300_799_999_999, 253_402_300_800_000_000, MAX_INT64]),  # years 9999/10000
)


def outcome(function, *args):
    """What a call gives: ("ok", bytes) or ("raises", the exception type)."""
    try:
        return "ok", function(*args)
    except Exception as exc:  # noqa: BLE001 - the type is what both twins must agree on
        return "raises", type(exc)


def test_the_python_twin_is_the_wire_v2_reference():
    assert py_v2frame.frame_of_record is wire_v2.frame_of_record and py_v2frame.wire_time is wire_v2.wire_time


@needs_cython
def test_every_corpus_events_frame_is_the_same_from_both_twins(corpus_frames):
    records = []
    for raw in corpus_frames:
        try:
            records += [pending.v2_record for pending in decode_frame(raw).events]
        except Exception:  # noqa: BLE001 - frames the decoder refuses yield nothing, as in the pipeline
            pass
    assert len(records) > 100 and any(wire_v2.unpack_record(record).parts for record in records)
    for index, record in enumerate(records):
        seq, time_us = 1 + index * 7919, 1_735_689_600_000_000 + index * 1_234_567
        frame = cy_v2frame.frame_of_record(record, seq, time_us)
        assert frame == wire_v2.frame_of_record(record, seq, time_us)
        assert (frame == b"") == (wire_v2.unpack_record(record).parts is None)


@needs_cython
@settings(max_examples=500, deadline=None)
@given(TIMES)
def test_wire_time_is_the_same_from_both_twins(time_us):
    assert cy_v2frame.wire_time(time_us) == wire_v2.wire_time(time_us)


@needs_cython
@settings(max_examples=200, deadline=None)
@given(st.lists(TIMES, min_size=2, max_size=8))
def test_the_date_memo_never_leaks_a_previous_day(times):
    # Alternating days through one process-wide memo: every call must still give its own date.
    for time_us in times + times[::-1]:
        assert cy_v2frame.wire_time(time_us) == wire_v2.wire_time(time_us)


@needs_cython
@settings(max_examples=300, deadline=None)
@given(st.integers(-(1 << 70), 1 << 70) | st.sampled_from([-1, MAX_INT64 + 1]) | st.floats(allow_nan=False))
def test_times_outside_int64_go_the_python_twins_way(time_us):
    assert outcome(cy_v2frame.wire_time, time_us) == outcome(wire_v2.wire_time, time_us)


RECORDS = st.builds(
    lambda head, tail, cid, payload, framed: wire_v2.pack_record(
        wire_v2.V2Parts(head, tail) if framed and head else None, cid, payload),
    st.binary(max_size=300), st.binary(max_size=80), st.binary(max_size=36), st.binary(max_size=200), st.booleans())


def damaged(record: bytes, cut: int, version: int) -> bytes:
    """A stored record cut short and/or with another version byte (what a damaged row could hold)."""
    return bytes((version,)) + record[1:max(1, len(record) - cut)] if record else record


@needs_cython
@settings(max_examples=600, deadline=None)
@given(RECORDS, st.integers(0, (1 << 64) - 1) | st.integers(0, 10 ** 6), TIMES)
def test_generated_records_render_the_same_from_both_twins(record, seq, time_us):
    assert cy_v2frame.frame_of_record(record, seq, time_us) == wire_v2.frame_of_record(record, seq, time_us)


@needs_cython
@settings(max_examples=600, deadline=None)
@given(RECORDS | st.binary(max_size=40), st.integers(0, 60), st.integers(0, 255),
       st.integers(-(1 << 65), 1 << 65), st.integers(-(1 << 64), 1 << 64) | TIMES,
       st.sampled_from([bytes, bytearray, memoryview]))
def test_damaged_records_and_odd_arguments_behave_as_in_the_python_twin(record, cut, version, seq, time_us, kind):
    stored = kind(damaged(record, cut, version))
    assert outcome(cy_v2frame.frame_of_record, stored, seq, time_us) == \
        outcome(wire_v2.frame_of_record, stored, seq, time_us)


@needs_cython
def test_a_record_shorter_than_its_header_raises_like_the_python_twin():
    with pytest.raises(struct.error):
        cy_v2frame.frame_of_record(b"\x01\x00\x00", 1, 1)
    assert cy_v2frame.frame_of_record(b"", 1, 1) == b"" == cy_v2frame.frame_of_record(wire_v2.NO_FRAME_RECORD, 1, -1)


STRINGS = st.one_of(
    st.text(max_size=40),  # any code point, lone surrogates included
    st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=40),  # ASCII: the fast path and its escapes
    st.sampled_from(["did:plc:abcdefghijklmnopqrstuvwx", "3kabcdefghij2", "a<b>&c", 'q"\\', "\x7f\x1f", ""]),
)


@needs_cython
@settings(max_examples=1000, deadline=None)
@given(STRINGS | STRINGS.map(lambda text: text.encode("utf-8", "surrogatepass")) | st.binary(max_size=40))
def test_json_string_is_the_same_from_both_twins(value):
    assert outcome(cy_v2frame.json_string, value) == outcome(wire_v2.json_string, value)


@needs_cython
@settings(max_examples=500, deadline=None)
@given(st.one_of(st.none(), st.tuples(st.binary(max_size=60), st.binary(max_size=30)),
                 st.builds(wire_v2.V2Parts, st.binary(max_size=60), st.binary(max_size=30)),
                 st.lists(st.binary(max_size=8), max_size=3)),
       st.binary(max_size=300) | st.sampled_from([b"\x01\x71\x12\x20" + bytes(32)]),
       st.binary(max_size=200) | st.sampled_from([bytearray(b"abc")]))
def test_pack_record_is_the_same_from_both_twins(parts, cid, payload):
    assert outcome(cy_v2frame.pack_record, parts, cid, payload) == outcome(wire_v2.pack_record, parts, cid, payload)
    if parts is None or len(parts) == 2:
        assert outcome(cy_v2frame.pack_record, parts) == outcome(wire_v2.pack_record, parts)
