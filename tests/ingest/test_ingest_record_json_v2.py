"""The v2 record emitter (`record_to_json_v2`): Jetstream v2's record JSON.

v2 decodes a record with atmos's streaming DAG-CBOR decoder and renders it with Go's
encoding/json (rules in jetstream/_py/record_json.py's v2 section). Checked here:
- the Cython and Python twins give the same bytes or the same RecordError reason on
  every input (corpus records, generated records, crafted and arbitrary bytes);
- the bytes equal an independent reference renderer in this file (Python's json.dumps
  plus Go's extra escapes, Decimal for Go's float format, libipld.encode_cid for links)
  applied to libipld's own decoding of the same block;
- the atproto interop data-model fixtures (tests/data/atproto_data_model_fixtures.json)
  and the DASL DAG-CBOR vectors (tests/data/dasl_cbor/) come out as they specify.
"""
from __future__ import annotations

import base64
import json
import math
import struct
from decimal import Decimal
from pathlib import Path

import libipld
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jetstream._py import record_json as py
from tests.ingest import record_json_twins as twins
from tests.ingest.record_json_twins import LINK, LINK_TEXT, corpus_record_blocks, m
from tests.ingest.test_ingest_helpers import CID, Raw, cid_for, dag_cbor, from_record_json

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
MODE = "record_to_json_v2"


def both(block: bytes):
    """The shared outcome of both twins (asserting they agree)."""
    return twins.both(MODE, block)


# ---------------------------------------------------------------------------
# the reference renderer: Go encoding/json of atmos's decoded value, written independently
# ---------------------------------------------------------------------------

def go_string(text: str) -> bytes:
    """encoding/json's string: Python's escapes (\\b \\f \\n \\r \\t \\" \\\\, \\u00xx) plus Go's HTML/JS ones."""
    out = json.dumps(text, ensure_ascii=False)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        out = out.replace(char, escape)
    return out.encode("utf-8")


def go_float(value: float) -> bytes:
    """encoding/json floatEncoder (64-bit): shortest digits; 'e' form below 1e-6 or from 1e21."""
    if value == 0:
        return b"-0" if math.copysign(1, value) < 0 else b"0"
    exact = Decimal(repr(value)).normalize()
    if abs(value) < 1e-6 or abs(value) >= 1e21:
        return format(exact, "e").encode()
    return format(exact, "f").encode()


def reference(value) -> bytes:
    """atproto JSON of a data-model value (CID for links, bytes for byte strings)."""
    if value is None or isinstance(value, bool):
        return json.dumps(value).encode()
    if isinstance(value, CID):
        return b'{"$link":' + go_string(libipld.encode_cid(bytes(value))) + b"}"
    if isinstance(value, bytes):
        return b'{"$bytes":"' + base64.b64encode(value).rstrip(b"=") + b'"}'
    if isinstance(value, int):
        return b"%d" % value
    if isinstance(value, float):
        return go_float(value)
    if isinstance(value, str):
        return go_string(value)
    if isinstance(value, list):
        return b"[" + b",".join(reference(item) for item in value) + b"]"
    keys = sorted(value, key=lambda key: key.encode("utf-8"))
    return b"{" + b",".join(go_string(key) + b":" + reference(value[key]) for key in keys) + b"}"


def with_links(ipld_value, emitted):
    """libipld's decoding with each byte string typed as our output says (CID or bytes).

    libipld returns links and byte strings alike as bytes; the emitted JSON names which
    it wrote, and this checks that what it wrote decodes to the very bytes libipld saw.
    """
    if isinstance(ipld_value, bytes):
        (marker, text), = emitted.items()
        if marker == "$link":
            parsed = libipld.decode_cid(text)
            digest = parsed["hash"]["digest"]
            assert bytes([parsed["version"], parsed["codec"], parsed["hash"]["code"], len(digest)]) + digest == ipld_value
            return CID(ipld_value)
        assert marker == "$bytes" and base64.b64decode(text + "=" * (-len(text) % 4)) == ipld_value
        return ipld_value
    if isinstance(ipld_value, dict):
        assert sorted(ipld_value) == sorted(emitted)
        return {key: with_links(item, emitted[key]) for key, item in ipld_value.items()}
    if isinstance(ipld_value, list):
        assert len(ipld_value) == len(emitted)
        return [with_links(item, json_item) for item, json_item in zip(ipld_value, emitted)]
    return ipld_value


def assert_matches_libipld(block: bytes) -> bytes:
    out = both(block)
    assert not isinstance(out, tuple), out
    assert out == reference(with_links(libipld.decode_dag_cbor(block), json.loads(out)))
    return out


# ---------------------------------------------------------------------------
# corpus records, interop fixtures, DASL vectors
# ---------------------------------------------------------------------------

def test_every_corpus_record_matches_the_reference_over_libipld(corpus_frames):
    blocks = corpus_record_blocks(corpus_frames)
    assert len(blocks) == 146
    links = 0
    for block in blocks:
        out = assert_matches_libipld(block)
        # Same data as v1 serves; only key order (v1's fixed blob order) may differ.
        assert json.loads(out) == json.loads(py.record_to_json(block))
        links += out.count(b'"$link"')
    assert links > 0, "the corpus carries blob links: the $link path must be exercised"


def interop_fixtures() -> list[dict]:
    return json.loads((DATA_DIR / "atproto_data_model_fixtures.json").read_text())


@pytest.mark.parametrize("fixture", interop_fixtures(), ids=lambda fixture: fixture["cid"][-8:])
def test_atproto_interop_fixture_cbor_renders_as_its_json(fixture):
    text = fixture["cbor_base64"]
    block = base64.b64decode(text + "=" * (-len(text) % 4))
    assert libipld.encode_cid(bytes(cid_for(block))) == fixture["cid"]  # the fixture is what it says
    out = assert_matches_libipld(block)
    assert json.loads(out) == fixture["json"]
    assert out == reference(from_record_json(fixture["json"]))


def dasl_vectors(kind: str) -> list:
    vectors = []
    for path in sorted((DATA_DIR / "dasl_cbor").glob("*.json")):
        for vector in json.loads(path.read_text()):
            if vector["type"] == kind:
                vectors.append(pytest.param(bytes.fromhex(vector["data"]), id=f"{path.stem}: {vector['name']}"))
    return vectors


# libipld refuses negative zero; atmos (and so v2) takes it and Go writes it as -0.
NEGATIVE_ZERO = b"\xfb\x80" + bytes(7)
LIBIPLD_REFUSES = {NEGATIVE_ZERO: b"-0"}


@pytest.mark.parametrize("block", dasl_vectors("roundtrip"))
def test_dasl_valid_dag_cbor_is_accepted_and_matches_libipld(block):
    if block in LIBIPLD_REFUSES:
        assert both(block) == LIBIPLD_REFUSES[block]
    else:
        assert_matches_libipld(block)


# v2 reads one value with a streaming decoder and never looks past it (encoder.go v2Commit),
# so the DASL "CBOR sequence" vector, invalid as a DAG-CBOR document, renders its first value.
STREAMING_ACCEPTS = {bytes.fromhex("0000"): b"0"}


@pytest.mark.parametrize("block", dasl_vectors("invalid_in"))
def test_dasl_invalid_dag_cbor_is_rejected_as_v2_rejects_it(block):
    if block in STREAMING_ACCEPTS:
        assert both(block) == STREAMING_ACCEPTS[block]
    else:
        assert isinstance(both(block), tuple)


# ---------------------------------------------------------------------------
# generated records
# ---------------------------------------------------------------------------

TEXT = st.text(alphabet=st.sampled_from(
    list("ab<>&\"\\\n\r\t\b\f\x00\x01\x1f\x7f/é$") + ["\u2028", "\u2029", "\U0001F600", "\ufffd"]), max_size=12)
KEYS = st.one_of(TEXT, st.sampled_from(["$type", "$link", "$bytes", "ref", "cid", "mimeType", "size"]))
CIDS = st.builds(cid_for, st.binary(max_size=8), st.sampled_from([0x71, 0x55]))
FLOATS = st.one_of(st.floats(allow_nan=False, allow_infinity=False),
                   st.sampled_from([1e21, 1e-6, 9.99e20, 1e-7, 5e-324, -0.0, 0.1, 1e20]))
SCALARS = st.one_of(st.none(), st.booleans(), TEXT, st.text(max_size=20),
                    st.integers(-(1 << 63), (1 << 63) - 1), FLOATS, CIDS, st.binary(max_size=20))
VALUES = st.recursive(SCALARS, lambda children: st.one_of(
    st.lists(children, max_size=5), st.dictionaries(KEYS, children, max_size=5)), max_leaves=25)
RECORDS = st.dictionaries(KEYS, VALUES, max_size=6)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(RECORDS)
def test_generated_records_match_the_reference_and_libipld(record):
    block = dag_cbor(record)
    out = both(block)
    assert out == reference(record)
    if NEGATIVE_ZERO not in block:  # libipld refuses it (see LIBIPLD_REFUSES)
        assert assert_matches_libipld(block) == out


@settings(max_examples=200, deadline=None)
@given(VALUES)
def test_any_top_level_value_renders_as_v2_renders_it(value):
    # v2 takes whatever single value the block holds; the atproto "record is a map" rule is
    # not checked on its wire (ingest decides what is stored).
    assert both(dag_cbor(value)) == reference(value)


test_twins_agree_on_arbitrary_bytes, test_twins_agree_on_truncated_and_corrupted_records = \
    twins.agreement_tests(MODE, RECORDS, dag_cbor)


# ---------------------------------------------------------------------------
# crafted inputs, expectations written from atmos's decoder and Go's encoding/json
# ---------------------------------------------------------------------------

VALID_CASES = [
    # canonical input order (length first) comes out sorted bytewise, as Go sorts map keys
    (m(b=1, a=2, aa=3, B=4), b'{"B":4,"a":2,"aa":3,"b":1}'),
    (m(text="hi", **{"$type": "app.x"}, createdAt="t"), b'{"$type":"app.x","createdAt":"t","text":"hi"}'),
    # blobs, $link and $bytes maps are plain objects (no v1 special shapes, no fixed blob order)
    (m(img={"$type": "blob", "ref": LINK, "mimeType": "image/png", "size": 12}),
     b'{"img":{"$type":"blob","mimeType":"image/png","ref":{"$link":"' + LINK_TEXT.encode() + b'"},"size":12}}'),
    (m(l={"$link": "not-a-cid", "x": 1}), b'{"l":{"$link":"not-a-cid","x":1}}'),
    (m(b={"$bytes": "a==="}), b'{"b":{"$bytes":"a==="}}'),
    (m(old={"cid": "nope", "mimeType": 1}), b'{"old":{"cid":"nope","mimeType":1}}'),
    (m(**{"$type": ""}), b'{"$type":""}'),
    (m(n=(1 << 63) - 1, o=-(1 << 63)), b'{"n":9223372036854775807,"o":-9223372036854775808}'),
    (m(b=b"hello", e=b""), b'{"b":{"$bytes":"aGVsbG8"},"e":{"$bytes":""}}'),
    (m(l=LINK, r=cid_for(b"x", 0x55)),
     b'{"l":{"$link":"' + LINK_TEXT.encode() + b'"},"r":{"$link":"' + libipld.encode_cid(bytes(cid_for(b"x", 0x55))).encode() + b'"}}'),
    (m(s="\b\f\n\r\t\x00\x1f\x7f<>&\u2028\u2029\"\\é"),
     b'{"s":"\\b\\f\\n\\r\\t\\u0000\\u001f\x7f\\u003c\\u003e\\u0026\\u2028\\u2029\\"\\\\\xc3\xa9"}'),
    (m(k=["x", None, True, False, {}, []]), b'{"k":["x",null,true,false,{},[]]}'),
    # Go's float format (values as Go 1.26 encoding/json writes them)
    (m(a=1.0, b=-0.0, c=0.1, d=1.5, e=100.0), b'{"a":1,"b":-0,"c":0.1,"d":1.5,"e":100}'),
    (m(a=1e20, b=1e21, c=1e-6, d=1e-7, e=1.5e-10), b'{"a":100000000000000000000,"b":1e+21,"c":0.000001,"d":1e-7,"e":1.5e-10}'),
    (m(a=5e-324, b=1.7976931348623157e308, c=123456789.125, d=-2.5e-300),
     b'{"a":5e-324,"b":1.7976931348623157e+308,"c":123456789.125,"d":-2.5e-300}'),
    # one value is read; whatever follows it is never looked at
    (m(a=1) + b"\xff\xff", b'{"a":1}'),
    (dag_cbor(["not", "a", "map"]), b'["not","a","map"]'),
    (dag_cbor("text"), b'"text"'),
]


@pytest.mark.parametrize("block,expected", VALID_CASES)
def test_valid_blocks_emit_v2_bytes_from_both_twins(block, expected):
    assert both(block) == expected


def nested_arrays(values: int) -> bytes:
    """A map holding arrays nested so that the innermost value is the `values`-th value deep."""
    return b"\xa1\x61k" + b"\x81" * (values - 2) + b"\x00"


INVALID_CASES = twins.SHARED_INVALID_CASES + [
    (m(n=Raw(b"\x18\x05")), "non_minimal"),
    (m(n=Raw(b"\x19\x00\xff")), "non_minimal"),
    (m(n=Raw(b"\x3a\x00\x00\xff\xff")), "non_minimal"),
    (m(n=Raw(b"\x1b\x00\x00\x00\x00\xff\xff\xff\xff")), "non_minimal"),
    (b"\xb8\x01\x61a\x01", "non_minimal"),  # a map count in a needless extra byte
    (m(n=Raw(b"\x1b\x80" + bytes(7))), "int_out_of_range"),
    (m(n=Raw(b"\x3b\x80" + bytes(7))), "int_out_of_range"),
    (m(h=Raw(b"\xf9\x40\x00")), "short_float"),
    (m(s=Raw(b"\xfa\x40\x40\x00\x00")), "short_float"),
    (m(f=float("nan")), "non_finite_float"),
    (m(f=float("-inf")), "non_finite_float"),
    (m(t=Raw(b"\xd9\x00\x2a\x41\x00")), "non_minimal"),  # tag 42 in a long head
    (m(c=Raw(b"\xd8\x2a\x40")), "bad_cid"),
    (m(c=CID(b"\x12\x20" + bytes(32))), "bad_cid"),  # CIDv0
    (m(c=CID(bytes([1, 0x70, 0x12, 0x20]) + bytes(32))), "bad_cid"),  # dag-pb codec
    (m(c=CID(bytes([1, 0x71, 0x13, 0x20]) + bytes(32))), "bad_cid"),  # sha2-512 code
    (m(c=CID(bytes([1, 0x71, 0x12, 0x10]) + bytes(16))), "bad_cid"),  # 16-byte digest
    (m(c=CID(bytes(LINK) + b"\x00")), "bad_cid"),  # trailing byte
    (m(t=Raw(b"\x62\xc3\x28")), "invalid_utf8"),
    (m(t=Raw(b"\x63\xed\xa0\x80")), "invalid_utf8"),  # an encoded surrogate
    (b"\xa1\x62\xc3\x28\x01", "invalid_utf8"),
    (b"\xa2\x61b\x01\x61a\x02", "unsorted_keys"),
    (b"\xa2\x62aa\x01\x61b\x02", "unsorted_keys"),  # bytewise order is not DAG-CBOR order
    (b"\xa1\x61a\x9a\x00\x10\x00\x01", "container_too_long"),  # claims 2**20 + 1 elements
    (b"\xa1\x61a\x5a\x00\x10\x00\x01", "string_too_long"),
    (b"\xa1\x7a\x00\x10\x00\x01", "key_too_long"),
    (nested_arrays(py.V2_MAX_DEPTH + 1), "too_deep"),
    (b"\x81" * 100_000 + b"\x80", "too_deep"),
]


@pytest.mark.parametrize("block,reason", INVALID_CASES)
def test_invalid_blocks_raise_the_same_reason_from_both_twins(block, reason):
    assert both(block) == ("error", reason)


def test_depth_limit_is_atmos_max_depth_counting_every_value():
    deepest = nested_arrays(py.V2_MAX_DEPTH)
    assert both(deepest) == b'{"k":' + b"[" * (py.V2_MAX_DEPTH - 2) + b"0" + b"]" * (py.V2_MAX_DEPTH - 2) + b"}"
    assert both(b"\x81" * (py.V2_MAX_DEPTH - 1) + b"\x80") == b"[" * py.V2_MAX_DEPTH + b"]" * py.V2_MAX_DEPTH


def test_limits_match_atmos_and_a_record_has_no_size_limit():
    assert (py.V2_MAX_ITEM, py.V2_MAX_DEPTH) == (1 << 20, 128)
    big = "x" * py.V2_MAX_ITEM  # the longest string atmos takes; the record is above v1's 1 MiB cap
    assert both(m(big=big, more="y")) == b'{"big":"' + big.encode() + b'","more":"y"}'


def test_float_format_agrees_with_the_decimal_reference_on_edge_values():
    specials = [1e21, 1e-6, 1e-7, 9.999999999999999e20, 9.99999e-7, 2.0 ** 70, 2.0 ** -30, 0.3, 1 / 3]
    for value in specials + [-v for v in specials]:
        assert py.go_float_json(value) == go_float(value), value
        assert both(b"\xfb" + struct.pack(">d", value)) == go_float(value)
