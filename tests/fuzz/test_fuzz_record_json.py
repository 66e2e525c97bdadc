"""Fuzzing the record -> JSON converter in both modes (v1 `record_to_json`, v2
`record_to_json_v2`): the Cython emitter and its pure-Python twin agree on every input (same bytes, or the same RecordError reason), neither raises anything
else, and what they emit is JSON that parses.

Inputs: real record blocks (corpus and relay-sim synthetic) with byte-level edits, and
"token soup": sequences of random CBOR item heads (every major type, tags, floats,
indefinite lengths, huge declared lengths) that reach parser states edits rarely do.
"""
from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jetstream._core import record_json as cython_twin
from jetstream._py import record_json as python_twin
from tests.fuzz.test_fuzz_strategies import fuzz_settings, mutated, record_blocks, synthetic_frames

pytestmark = pytest.mark.timeout(120)

# Both modes of the emitter: v1 (a record is a JSON object) and v2 (any single value).
MODES = ["record_to_json", "record_to_json_v2"]


@pytest.fixture(scope="module")
def record_seeds(corpus_frames):
    return record_blocks(corpus_frames) + record_blocks(synthetic_frames())


def convert(twin, mode: str, block: bytes):
    try:
        return ("ok", getattr(twin, mode)(block))
    except twin.RecordError as err:
        return ("error", err.reason)


def assert_twins_agree(block: bytes, mode: str) -> None:
    fast, reference = convert(cython_twin, mode, block), convert(python_twin, mode, block)
    assert fast == reference
    if fast[0] == "ok":
        value = json.loads(fast[1])  # v2 renders any single value it decodes
        assert mode == "record_to_json_v2" or isinstance(value, dict), "a v1 record is always a JSON object"


@pytest.mark.parametrize("mode", MODES)
@fuzz_settings(1500)
@given(st.data())
def test_twins_agree_on_edited_real_records(record_seeds, mode, data):
    seed = data.draw(st.sampled_from(record_seeds))
    assert_twins_agree(data.draw(mutated(seed, max_edits=3)), mode)


def _head(major: int, info: int, argument: int) -> bytes:
    if info < 24:
        return bytes([major << 5 | info])
    size = {24: 1, 25: 2, 26: 4, 27: 8}.get(info)
    if size is None:  # 28-31: reserved, or indefinite length / break
        return bytes([major << 5 | info])
    return bytes([major << 5 | info]) + (argument % (1 << (8 * size))).to_bytes(size, "big")


CBOR_TOKENS = st.one_of(
    st.builds(_head, st.integers(0, 7), st.integers(0, 31), st.integers(0, 2**64 - 1)),
    st.builds(lambda text: _head(3, 24, len(text)) + text if len(text) < 256 else b"",
              st.sampled_from((b"$type", b"$link", b"$bytes", b"blob", b"ref", b"mimeType", b"size", b"cid", b"text"))),
    st.builds(lambda f: b"\xfb" + struct.pack(">d", f), st.floats(allow_nan=True)),
    st.just(b"\xd8\x2a\x58\x25\x00\x01\x71\x12\x20" + bytes(32)),  # a well-formed CID link
    st.binary(min_size=1, max_size=8),
)


@pytest.mark.parametrize("mode", MODES)
@fuzz_settings(1500)
@given(st.lists(CBOR_TOKENS, min_size=1, max_size=40))
def test_twins_agree_on_random_cbor_token_sequences(mode, tokens):
    assert_twins_agree(b"\xa1\x65$type" + b"".join(tokens), mode)
    assert_twins_agree(b"".join(tokens), mode)

