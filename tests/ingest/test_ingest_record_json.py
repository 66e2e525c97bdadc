"""The record emitter: Cython and Python twins give the same bytes or the same
RecordError reason, and both follow v1's rules (docs/protocol.md §4.5)."""
from __future__ import annotations

import base64
import json
import math
import threading

import libipld
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jetstream._core import record_json as cy
from jetstream._py import record_json as py
from tests.ingest import record_json_twins as twins
from tests.ingest.record_json_twins import LINK, LINK_TEXT, corpus_record_blocks, m, outcome
from tests.ingest.test_ingest_helpers import CID, Raw, cid_for, dag_cbor

IMPLEMENTATIONS = [pytest.param(py, id="python"), pytest.param(cy, id="cython")]
MODE = "record_to_json"


def both(block: bytes):
    """The shared outcome of both twins (asserting they agree)."""
    return twins.both(MODE, block)


# ---------------------------------------------------------------------------
# string escaping
# ---------------------------------------------------------------------------

GO_STRING_CASES = [
    ("plain", b'"plain"'),
    ("<a&b>", b'"\\u003ca\\u0026b\\u003e"'),
    ("\u2028x\u2029", b'"\\u2028x\\u2029"'),
    ("\n\r\t", b'"\\n\\r\\t"'),
    ("\x00\x08\x0c\x1f", b'"\\u0000\\u0008\\u000c\\u001f"'),
    ('q"b\\', b'"q\\"b\\\\"'),
    ("\x7f", b'"\x7f"'),
    ("caf\u00e9 \U0001F600", '"caf\u00e9 \U0001F600"'.encode()),
    (b"\xff", b'"\\ufffd"'),
    (b"a\xe2\x82b", b'"a\\ufffd\\ufffdb"'),  # truncated 3-byte sequence: one per byte
    (b"\xed\xa0\x80", b'"\\ufffd\\ufffd\\ufffd"'),  # encoded surrogate
    (b"\xc0\x80", b'"\\ufffd\\ufffd"'),  # overlong NUL
    (b"\xf4\x90\x80\x80", b'"\\ufffd\\ufffd\\ufffd\\ufffd"'),  # above U+10FFFF
    (b"\xef\xbf\xbd", b'"\xef\xbf\xbd"'),  # a real U+FFFD stays raw
    (b"\xe2\x80\xa8", b'"\\u2028"'),
    ("\ud800", b'"\\ufffd\\ufffd\\ufffd"'),  # lone surrogate in a str = its invalid bytes
]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("value,expected", GO_STRING_CASES)
def test_go_json_string_escapes_like_goccy_with_html_escaping(impl, value, expected):
    assert impl.go_json_string(value) == expected


@given(st.binary(max_size=64))
def test_go_json_string_twins_agree_and_decode_to_per_byte_replacement(raw):
    out = py.go_json_string(raw)
    assert cy.go_json_string(raw) == out
    per_byte = "".join("\ufffd" if 0xDC80 <= ord(c) <= 0xDCFF else c
                       for c in raw.decode("utf-8", "surrogateescape"))
    assert json.loads(out) == per_byte


# ---------------------------------------------------------------------------
# corpus records
# ---------------------------------------------------------------------------

def test_twins_agree_on_every_corpus_record_and_match_libipld_data(corpus_frames):
    blocks = corpus_record_blocks(corpus_frames)
    assert len(blocks) == 146
    for block in blocks:
        out = py.record_to_json(block)
        assert cy.record_to_json(block) == out
        assert cy.record_to_json(memoryview(block)) == out
        keys = list(json.loads(out, object_pairs_hook=lambda pairs: pairs))
        assert [k for k, _ in keys] == sorted(k for k, _ in keys)


# ---------------------------------------------------------------------------
# generated data-model values
# ---------------------------------------------------------------------------

class BadText(bytes):
    """A CBOR text string whose bytes may be invalid UTF-8."""


def encode(value) -> bytes:
    if isinstance(value, BadText):
        return bytes([0x78, len(value)]) + bytes(value) if len(value) >= 24 else bytes([0x60 | len(value)]) + bytes(value)
    if isinstance(value, dict):
        return dag_cbor({k: Raw(encode(v)) for k, v in value.items()})
    if isinstance(value, list):
        return dag_cbor([Raw(encode(v)) for v in value])
    return dag_cbor(value)


def expected_json(value):
    """What the emitted JSON must decode to (semantics, from the data model rules)."""
    if isinstance(value, BadText):
        return "".join("\ufffd" if 0xDC80 <= ord(c) <= 0xDCFF else c
                       for c in bytes(value).decode("utf-8", "surrogateescape"))
    if isinstance(value, CID):
        return {"$link": libipld.encode_cid(bytes(value))}
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode().rstrip("=")}
    if isinstance(value, float):
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value - (1 << 64) if value >= 1 << 63 else value
    if isinstance(value, dict):
        if value.get("$type") == "blob":
            return {"$type": "blob", "ref": expected_json(value["ref"]),
                    "mimeType": value["mimeType"], "size": value["size"]}
        return {k: expected_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expected_json(v) for v in value]
    return value


TRICKY_TEXT = st.text(alphabet=st.sampled_from(
    list("ab<>&\"\\\n\r\t\x00\x01\x1f\x7f/é") + ["\u2028", "\u2029", "\U0001F600", "\ufffd"]), max_size=12)
KEYS = st.one_of(TRICKY_TEXT, st.text(max_size=8)).filter(
    lambda k: k not in ("$link", "$bytes", "$type", "cid", "mimeType"))
CIDS = st.builds(lambda data, codec: cid_for(data, codec), st.binary(max_size=8), st.sampled_from([0x71, 0x55]))
BLOBS = st.fixed_dictionaries({"$type": st.just("blob"), "ref": CIDS, "mimeType": TRICKY_TEXT,
                               "size": st.integers(0, 1 << 40)})
SCALARS = st.one_of(
    st.none(), st.booleans(), TRICKY_TEXT, st.text(max_size=20),
    st.builds(BadText, st.binary(max_size=30)),
    st.integers(-(1 << 64), (1 << 64) - 1).filter(lambda n: n >= -(1 << 63)),
    st.integers(-(1 << 53), 1 << 53).map(float), CIDS, st.binary(max_size=20), BLOBS,
)
VALUES = st.recursive(SCALARS, lambda children: st.one_of(
    st.lists(children, max_size=5), st.dictionaries(KEYS, children, max_size=5)), max_leaves=25)
RECORDS = st.dictionaries(KEYS, VALUES, max_size=6)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(RECORDS)
def test_twins_agree_on_generated_records_and_emit_their_data_model(record):
    block = encode(record)
    out = both(block)
    assert not isinstance(out, tuple), out
    assert json.loads(out) == expected_json(record)
    # every plain object's keys are in bytewise order
    def check_order(pairs):
        keys = [k for k, _ in pairs]
        if keys[:1] != ["$type"] or keys[1:2] != ["ref"]:  # blob order is fixed, not sorted
            raw = [k.encode("utf-8", "surrogatepass") for k in keys]
            assert raw == sorted(raw)
        return dict(pairs)
    json.loads(out, object_pairs_hook=check_order)


test_twins_agree_on_arbitrary_bytes, test_twins_agree_on_truncated_and_corrupted_records = \
    twins.agreement_tests(MODE, RECORDS, encode)


# ---------------------------------------------------------------------------
# crafted inputs, expectations written from the v1 rules
# ---------------------------------------------------------------------------

VALID_CASES = [
    (m(b=1, a=2, aa=3, B=4), b'{"B":4,"a":2,"aa":3,"b":1}'),
    (m(n=Raw(b"\x1b" + b"\xff" * 8)), b'{"n":-1}'),  # uint64 max wraps like a Go int
    (m(n=Raw(b"\x3b" + b"\x7f" + b"\xff" * 7)), b'{"n":-9223372036854775808}'),
    (m(n=-(1 << 63)), b'{"n":-9223372036854775808}'),
    (m(n=Raw(b"\x18\x05")), b'{"n":5}'),  # non-minimal head accepted
    (m(f=1.0, g=-0.0), b'{"f":1,"g":0}'),
    (m(h=Raw(b"\xf9\x40\x00"), s=Raw(b"\xfa\x40\x40\x00\x00")), b'{"h":2,"s":3}'),
    (m(f=-9223372036854775808.0), b'{"f":-9223372036854775808}'),
    (m(t=Raw(b"\x62\xc3\x28")), b'{"t":"\\ufffd("}'),
    (m(b=b"hello"), b'{"b":{"$bytes":"aGVsbG8"}}'),
    (m(l=LINK), b'{"l":{"$link":"' + LINK_TEXT.encode() + b'"}}'),
    (m(l={"$link": LINK_TEXT}), b'{"l":{"$link":"' + LINK_TEXT.encode() + b'"}}'),
    (m(b={"$bytes": "aGVsbG8"}), b'{"b":{"$bytes":"aGVsbG8"}}'),
    (m(v0=CID(b"\x12\x20" + bytes(32))), b'{"v0":{"$link":"QmNLei78zWmzUdbeRB3CiUfAizWUrbeeZh5K1rhAQKCh51"}}'),
    (m(img={"$type": "blob", "ref": LINK, "mimeType": "image/png", "size": 12}),
     b'{"img":{"$type":"blob","ref":{"$link":"' + LINK_TEXT.encode() + b'"},"mimeType":"image/png","size":12}}'),
    (m(old={"cid": LINK_TEXT, "mimeType": "image/jpeg"}),
     b'{"old":{"cid":"' + LINK_TEXT.encode() + b'","mimeType":"image/jpeg"}}'),
    (m(old={"cid": LINK, "mimeType": "a<b"}),
     b'{"old":{"cid":"' + LINK_TEXT.encode() + b'","mimeType":"a\\u003cb"}}'),
    (m(**{"$type": "app.x", "e": {}, "l": []}), b'{"$type":"app.x","e":{},"l":[]}'),
    (m(k=["x", None, True, False]), b'{"k":["x",null,true,false]}'),
]


@pytest.mark.parametrize("block,expected", VALID_CASES)
def test_valid_records_emit_v1_bytes_from_both_twins(block, expected):
    assert both(block) == expected


def nested_arrays(depth: int) -> bytes:
    return b"\xa1\x61k" + b"\x81" * (depth - 1) + b"\x80"


INVALID_CASES = twins.SHARED_INVALID_CASES + [
    (m(a=1) + b"\x00", "trailing_bytes"),
    (m(f=1.5), "non_integral_float"),
    (m(f=float("nan")), "non_integral_float"),
    (m(f=float("inf")), "non_integral_float"),
    (m(f=9223372036854775808.0), "non_integral_float"),
    (m(c=Raw(b"\xd8\x2a\x45\x01\x71\x12\x20\x00")), "bad_cid"),  # digest shorter than declared
    (m(c=Raw(b"\xd8\x2a\x42\x01\x71")), "bad_cid"),
    (dag_cbor(["not", "a", "map"]), "top_level_not_object"),
    (dag_cbor("text"), "top_level_not_object"),
    (m(**{"$type": "blob", "ref": LINK, "mimeType": "a", "size": 1}), "top_level_not_object"),
    (m(**{"$link": LINK_TEXT}), "top_level_not_object"),
    (m(**{"$type": 1}), "bad_type"),
    (m(**{"$type": ""}), "bad_type"),
    (m(b={"$type": "blob", "ref": LINK, "mimeType": "a"}), "bad_blob"),
    (m(b={"$type": "blob", "ref": LINK_TEXT, "mimeType": "a", "size": 1}), "bad_blob"),
    (m(b={"$type": "blob", "ref": LINK, "mimeType": 5, "size": 1}), "bad_blob"),
    (m(b={"$type": "blob", "ref": LINK, "mimeType": "a", "size": "1"}), "bad_blob"),
    (m(l={"$link": LINK_TEXT, "x": 1}), "bad_link"),
    (m(l={"$link": "not-a-cid"}), "bad_link"),
    (m(l={"$link": 5}), "bad_link"),
    (m(b={"$bytes": "a==="}), "bad_bytes"),
    (m(b={"$bytes": "aGVsbG8="}), "bad_bytes"),  # padding is not allowed (RawStdEncoding)
    (m(old={"cid": "nope", "mimeType": "a"}), "bad_legacy_blob"),
    (m(old={"cid": LINK_TEXT, "mimeType": 1}), "bad_legacy_blob"),
    (m(**{"k" * 8193: 1}), "key_too_long"),
    (b"\xa1\x61a\x9a\x00\x02\x00\x01", "container_too_long"),  # claims 131,073 elements
    (m(big="x" * (1 << 20)), "record_too_large"),
    (nested_arrays(py.MAX_DEPTH), "too_deep"),
    (b"\xa1\x61a" + b"\x81" * 100_000 + b"\x80", "too_deep"),
]


@pytest.mark.parametrize("block,reason", INVALID_CASES)
def test_invalid_records_raise_the_same_reason_from_both_twins(block, reason):
    assert both(block) == ("error", reason)


def test_key_of_exactly_8192_bytes_and_max_depth_are_accepted():
    assert both(m(**{"k" * 8192: 1})) == b'{"' + b"k" * 8192 + b'":1}'
    deepest = nested_arrays(py.MAX_DEPTH - 1)
    assert both(deepest) == b'{"k":' + b"[" * (py.MAX_DEPTH - 1) + b"]" * (py.MAX_DEPTH - 1) + b"}"


def test_cython_emitter_handles_max_depth_on_a_small_thread_stack():
    results = []
    previous = threading.stack_size(1 << 20)
    try:
        worker = threading.Thread(target=lambda: results.append(outcome(cy.record_to_json, nested_arrays(py.MAX_DEPTH - 1))))
        worker.start()
        worker.join()
    finally:
        threading.stack_size(previous)
    assert results == [py.record_to_json(nested_arrays(py.MAX_DEPTH - 1))]


def test_float_integral_check_matches_a_float64_int64_round_trip():
    for value in (0.5, -1.25, 1e300, 4503599627370497.5, 2.0 ** 62, -(2.0 ** 63)):
        block = m(f=value)
        survives = math.isfinite(value) and float(int(value)) == value and -(2 ** 63) <= int(value) < 2 ** 63
        expected = b'{"f":%d}' % int(value) if survives else ("error", "non_integral_float")
        assert both(block) == expected
