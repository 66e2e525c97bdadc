"""Fuzzing the relay frame decoder: decode_frame only ever returns or raises FrameError.

Inputs: real frames (corpus, relay-sim synthetic, relay-sim faults) with byte-level
edits; commits whose record block is replaced by an edited one with a matching CID (so
the bytes get past the hash check into the record emitter); frames built from random
field values; plain random bytes. Whatever comes out must be usable: every event renders
to JSON that parses and names the frame's DID.
"""
from __future__ import annotations

import json

import libipld
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jetstream.events import render_json
from jetstream.ingest.decode import DecodedFrame, decode_frame
from jetstream.ingest.frames import FrameError
from jetstream.relaysim.cbor import Link, encode
from tests.fuzz.test_fuzz_strategies import (
    commit_frames_with_records,
    fuzz_settings,
    mutated,
    record_blocks,
    seed_frames,
    with_record_block,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def seeds(corpus_frames):
    return seed_frames(corpus_frames)


@pytest.fixture(scope="module")
def record_seeds(corpus_frames):
    return commit_frames_with_records(corpus_frames)[:20], record_blocks(corpus_frames)


def decode_safely(frame: bytes, verify_all_blocks: bool = False) -> DecodedFrame | None:
    """decode_frame's result, None for FrameError; anything else propagates and fails the test."""
    try:
        decoded = decode_frame(frame, verify_all_blocks=verify_all_blocks)
    except FrameError as err:
        assert err.reason  # a countable reason token
        return None
    assert isinstance(decoded, DecodedFrame)
    for event in decoded.events:
        parsed = json.loads(render_json(event, 1_700_000_000_000_000))
        assert parsed["did"] == event.did and parsed["time_us"] == 1_700_000_000_000_000
    for reason, detail in decoded.drops:
        assert isinstance(reason, str) and reason and isinstance(detail, str)
    return decoded


@fuzz_settings(1500)
@given(st.data(), st.booleans())
def test_edited_seed_frames_decode_or_raise_frame_error(seeds, data, verify_all_blocks):
    seed = data.draw(st.sampled_from(seeds))
    decode_safely(data.draw(mutated(seed)), verify_all_blocks)


@fuzz_settings(800)
@given(st.data(), st.integers(0, 3))
def test_edited_records_behind_valid_cids_are_emitted_or_dropped_per_op(record_seeds, data, op_index):
    frames, blocks = record_seeds
    frame = data.draw(st.sampled_from(frames))
    block = data.draw(mutated(data.draw(st.sampled_from(blocks)), max_edits=3))
    decoded = decode_safely(with_record_block(frame, op_index, block))
    assert decoded is not None, "only the record changed: the frame itself stays decodable"
    ops = libipld.decode_dag_cbor_multi(frame)[1]["ops"]
    assert len(decoded.events) + len(decoded.drops) == len(ops), "every op is either emitted or dropped"
    assert all(reason == "bad_record" for reason, _ in decoded.drops)


FIELD_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**64 + 1, 2**64 - 1) | st.text(max_size=40)
    | st.binary(max_size=60) | st.builds(Link, st.binary(min_size=1, max_size=40)),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
FIELD_NAMES = st.sampled_from(("seq", "repo", "did", "rev", "time", "ops", "blocks", "tooBig", "handle",
                               "active", "status", "commit", "since", "error", "message"))
ACTIONS = st.sampled_from(("create", "update", "delete", "x")) | FIELD_VALUES
PATHS = st.sampled_from(("app.bsky.feed.post/3k", "a/b/c", "nope", "")) | FIELD_VALUES
OPS = st.lists(st.fixed_dictionaries({"action": ACTIONS, "path": PATHS, "cid": FIELD_VALUES}), max_size=3)
FRAME_TYPES = (st.sampled_from(("#commit", "#identity", "#account", "#sync", "#info", "#labels", ""))
               | st.text(max_size=10) | st.integers(-2**63, 2**63))


@fuzz_settings(300)
@given(FRAME_TYPES, st.sampled_from((1, -1, 0, 2)), st.dictionaries(FIELD_NAMES, FIELD_VALUES, max_size=8), OPS)
def test_frames_with_random_field_values_decode_or_raise_frame_error(frame_type, op, body, ops):
    if frame_type == "#commit" and "ops" not in body:
        body["ops"] = ops
    decode_safely(encode({"op": op, "t": frame_type}) + encode(body))


@fuzz_settings(1000)
@given(st.binary(max_size=300))
def test_random_bytes_decode_or_raise_frame_error(raw):
    decode_safely(raw)
