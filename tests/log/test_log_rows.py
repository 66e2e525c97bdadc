"""Row layout: keys sort numerically, values carry kind/did/collection before the payload."""
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
    encode_key,
    encode_value,
)

time_us_values = st.integers(0, MAX_TIME_US)
texts = st.text(max_size=300)


@given(st.lists(time_us_values, min_size=2, max_size=50))
def test_property_key_byte_order_equals_numeric_order(values):
    assert sorted(values, key=encode_key) == sorted(values)
    assert all(decode_key(encode_key(value)) == value for value in values)


@given(time_us_values, st.integers(0, 255), texts, texts, st.binary(max_size=200))
def test_property_value_round_trips_and_both_decoders_agree(time_us, kind, did, collection, payload):
    key, value = encode_key(time_us), encode_value(kind, did, collection, payload)
    expected = LogRow(time_us, did, kind, collection, payload)
    assert decode_row(key, value) == expected
    assert decode_rows([(key, value)], 1) == [expected]
    assert decode_header(value)[:3] == (kind, did, collection)


def test_decode_rows_consumes_no_pair_beyond_the_limit():
    pairs = iter([(encode_key(t), encode_value(0, "did:plc:a", "c", b"{}")) for t in range(5)])
    assert [row.time_us for row in decode_rows(pairs, 2)] == [0, 1]
    assert decode_key(next(pairs)[0]) == 2
    assert decode_rows(pairs, 0) == []


@pytest.mark.parametrize("key, value", [
    (encode_key(1), b"\x00\x00"),  # shorter than the fixed header
    (encode_key(1), b"\x00\x00\x09\x00\x00abc"),  # did length beyond the value
    (b"\x01\x02", encode_value(0, "did:plc:a", "", b"{}")),  # key of the wrong size
    (encode_key(1), b"\x00\x00\x02\x00\x00\xff\xfe"),  # did is not UTF-8
], ids=["short_header", "truncated_did", "short_key", "bad_utf8"])
def test_malformed_rows_raise_row_error(key, value):
    with pytest.raises(RowError):
        decode_rows([(key, value)], 10)
    with pytest.raises(RowError):
        decode_row(key, value)
