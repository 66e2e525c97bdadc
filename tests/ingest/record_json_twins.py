"""Test-side helpers shared by the record emitter's v1 and v2 tests (test_ingest_record_json.py,
test_ingest_record_json_v2.py): one mode's outcome from both twins (Cython and Python) with
the check that they agree, the corpus's record blocks, a crafted-record builder and a link to
put in records, and the property tests both modes run on arbitrary and damaged bytes.

A mode is the name of the emitter function: "record_to_json" (v1) or "record_to_json_v2".
"""
from __future__ import annotations

import libipld
from hypothesis import given, settings
from hypothesis import strategies as st

from jetstream._core import record_json as cy
from jetstream._py import record_json as py
from jetstream._py.record_json import RecordError
from jetstream.ingest.car import read_car
from tests.ingest.test_ingest_helpers import Raw, cid_for, dag_cbor

LINK = cid_for(b"x")
LINK_TEXT = libipld.encode_cid(bytes(LINK))


def outcome(emit, block):
    """emit(block), or ("error", reason) for the RecordError it raises."""
    try:
        return emit(block)
    except RecordError as err:
        return ("error", err.reason)


def both(mode: str, block: bytes):
    """The shared outcome of both twins in `mode` (asserting they agree, the Cython twin also
    on a memoryview of the block)."""
    result = outcome(getattr(py, mode), block)
    assert outcome(getattr(cy, mode), block) == result
    assert outcome(getattr(cy, mode), memoryview(block)) == result
    return result


def corpus_record_blocks(frames) -> list[bytes]:
    """Every record block the corpus's #commit frames carry."""
    blocks = []
    for raw in frames:
        header, body = libipld.decode_dag_cbor_multi(raw)
        if header["t"] != "#commit":
            continue
        car = read_car(body["blocks"])
        blocks += [bytes(car.blocks[op["cid"]]) for op in body["ops"] if op["cid"] is not None]
    return blocks


def m(**fields) -> bytes:
    """A record map of `fields` (a Raw value is spliced in as pre-encoded CBOR)."""
    return dag_cbor({k: Raw(v) if isinstance(v, Raw) else v for k, v in fields.items()})


# Blocks both modes refuse for the same reason (each mode's tests add their own).
SHARED_INVALID_CASES = [
    (b"", "truncated"),
    (m(a=1)[:-1], "truncated"),
    (b"\xa1\x61a\x9f\xff", "indefinite_length"),
    (b"\xa1\x61a\x1c", "malformed_cbor"),
    (m(u=Raw(b"\xf7")), "unsupported_simple"),
    (m(u=Raw(b"\xf8\x20")), "unsupported_simple"),
    (m(t=Raw(b"\xc1\x01")), "unsupported_tag"),
    (m(c=Raw(b"\xd8\x2a\x61a")), "bad_cid"),
    (m(c=Raw(b"\xd8\x2a" + bytes([0x58, 36]) + bytes(LINK))), "bad_cid"),  # no 0x00 prefix
    (b"\xa1\x01\x02", "map_key_not_string"),
    (b"\xa2\x61a\x01\x61a\x02", "duplicate_key"),
    (b"\xa1\x61a\x7a\x00\x10\x00\x01", "string_too_long"),  # claims 1 MiB + 1 bytes
]


def agreement_tests(mode: str, records, encode):
    """The property tests every mode runs, for its test module to bind to test_* names:
    the twins agree on arbitrary bytes (alone and as a one-key map's value), and a valid
    block (`encode` of a `records` example) cut short is "truncated" and, with one byte
    replaced, still gets the same outcome from both twins."""

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=40))
    def arbitrary_bytes(garbage):
        both(mode, b"\xa1\x61k" + garbage)
        both(mode, garbage)

    @settings(max_examples=200, deadline=None)
    @given(records, st.integers(0, 10_000), st.integers(0, 255))
    def truncated_and_corrupted(record, where, byte):
        block = encode(record)
        cut = where % len(block)
        assert both(mode, block[:cut]) == ("error", "truncated")
        both(mode, block[:cut] + bytes([byte]) + block[cut + 1:])

    return arbitrary_bytes, truncated_and_corrupted
