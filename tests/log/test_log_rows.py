"""Row layout: keys sort numerically, values carry kind/seq/did/collection before the payload."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jetstream.log.rows import (
    MAX_TIME_US,
    LogRow,
    RowError,
    decode_header,
    decode_key,
    decode_row,
    decode_rows,
    decode_seq,
    encode_key,
    encode_value,
    encode_value_v1,
    has_seq,
    upgrade_value,
)

time_us_values = st.integers(0, MAX_TIME_US)
seqs = st.integers(1, (1 << 64) - 1)
kinds = st.integers(0, 127)  # the high bit of the first byte says "format 2"
texts = st.text(max_size=300)


@given(st.lists(time_us_values, min_size=2, max_size=50))
def test_property_key_byte_order_equals_numeric_order(values):
    assert sorted(values, key=encode_key) == sorted(values)
    assert all(decode_key(encode_key(value)) == value for value in values)


@given(time_us_values, kinds, texts, texts, st.binary(max_size=200), seqs)
def test_property_value_round_trips_and_both_decoders_agree(time_us, kind, did, collection, payload, seq):
    key, value = encode_key(time_us), encode_value(kind, did, collection, payload, seq)
    expected = LogRow(time_us, did, kind, collection, payload, seq)
    assert decode_row(key, value) == expected
    assert decode_rows([(key, value)], 1) == [expected]
    assert decode_header(value)[:3] == (kind, did, collection)
    assert decode_seq(value) == seq and has_seq(value)


@given(time_us_values, kinds, texts, texts, st.binary(max_size=200), seqs)
def test_property_format_1_row_upgrades_to_the_format_2_row(time_us, kind, did, collection, payload, seq):
    key, old = encode_key(time_us), encode_value_v1(kind, did, collection, payload)
    assert not has_seq(old)
    assert decode_row(key, old) == LogRow(time_us, did, kind, collection, payload, 0)  # inspect, repair read it
    with pytest.raises(RowError):
        decode_rows([(key, old)], 1)  # the replay path refuses a row without seq
    assert upgrade_value(old, seq) == encode_value(kind, did, collection, payload, seq)
    with pytest.raises(RowError):
        upgrade_value(upgrade_value(old, seq), seq + 1)  # never numbered twice


def test_decode_rows_consumes_no_pair_beyond_the_limit():
    pairs = iter([(encode_key(t), encode_value(0, "did:plc:a", "c", b"{}", t + 1)) for t in range(5)])
    assert [row.time_us for row in decode_rows(pairs, 2)] == [0, 1]
    assert decode_key(next(pairs)[0]) == 2
    assert decode_rows(pairs, 0) == []


@pytest.mark.parametrize("key, value", [
    (encode_key(1), b"\x00\x00"),  # shorter than the fixed header
    (encode_key(1), b"\x00\x00\x09\x00\x00abc"),  # did length beyond the value
    (b"\x01\x02", encode_value(0, "did:plc:a", "", b"{}", 1)),  # key of the wrong size
    (encode_key(1), b"\x00\x00\x02\x00\x00\xff\xfe"),  # did is not UTF-8
    (encode_key(1), b"\x80\x00\x00"),  # format 2: shorter than the fixed header
    (encode_key(1), b"\x80" + bytes(7) + b"\x01\x00\x09\x00\x00abc"),  # format 2: did beyond the value
], ids=["short_header", "truncated_did", "short_key", "bad_utf8", "v2_short_header", "v2_truncated_did"])
def test_malformed_rows_raise_row_error(key, value):
    with pytest.raises(RowError):
        decode_rows([(key, value)], 10)
    with pytest.raises(RowError):
        decode_row(key, value)
