"""The hand-written DAG-CBOR pieces and the byte-level seq rewrite of recorded frames."""
from __future__ import annotations

import hashlib

import libipld
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jetstream.relaysim.cbor import Link, cid_for_block, encode, encode_uint, skip_item
from jetstream.relaysim.seqpatch import find_seq_slot, patch_seq

cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text() | st.binary(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(cbor_values)
def test_encoder_matches_libipld_for_values_without_links(value):
    assert encode(value) == libipld.encode_dag_cbor(value)


@settings(max_examples=300, deadline=None)
@given(cbor_values)
def test_skip_item_measures_exactly_one_encoded_item(value):
    encoded = encode(value)
    assert skip_item(encoded + b"\xf6trailing", 0) == len(encoded)


def test_links_encode_as_tag_42_that_libipld_decodes_back_to_the_cid():
    cid = cid_for_block(b"some block")
    encoded = encode({"link": Link(cid)})
    assert b"\xd8\x2a\x58\x25\x00" + cid in encoded  # tag 42, bytes(37), identity multibase prefix
    assert libipld.decode_dag_cbor(encoded) == {"link": cid}
    assert cid == b"\x01\x71\x12\x20" + hashlib.sha256(b"some block").digest()


@pytest.mark.parametrize("value", [0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1])
def test_uint_encoding_is_canonical_at_every_width_boundary(value):
    assert encode_uint(value) == libipld.encode_dag_cbor(value)


def test_every_corpus_frame_is_cut_around_its_seq_without_losing_bytes(corpus_frames):
    for frame in corpus_frames:
        slot = find_seq_slot(frame)
        assert slot.seq == libipld.decode_dag_cbor_multi(frame)[1]["seq"]
        assert slot.with_seq(slot.seq) == frame


@settings(max_examples=60, deadline=None)
@given(index=st.integers(0, 149), new_seq=st.integers(0, 2**64 - 1))
def test_patched_frame_differs_only_in_seq(corpus_frames, index, new_seq):
    original = corpus_frames[index]
    patched = patch_seq(original, new_seq)
    header, body = libipld.decode_dag_cbor_multi(original)
    patched_header, patched_body = libipld.decode_dag_cbor_multi(patched)
    assert patched_header == header
    assert patched_body == {**body, "seq": new_seq}
    assert patch_seq(patched, body["seq"]) == original


def test_frame_without_seq_is_rejected():
    frame = encode({"op": -1}) + encode({"error": "FutureCursor", "message": "nope"})
    with pytest.raises(ValueError, match="no seq"):
        find_seq_slot(frame)


def test_key_that_merely_contains_seq_is_not_taken_for_seq():
    frame = encode({"op": 1, "t": "#x"}) + encode({"seqs": 5, "seq": 7, "aseq": 9})
    assert find_seq_slot(frame).seq == 7
    assert libipld.decode_dag_cbor_multi(patch_seq(frame, 1000))[1] == {"seqs": 5, "seq": 1000, "aseq": 9}


def test_seq_and_time_splice_by_search_matches_the_cbor_walk(corpus_frames):
    """patch_seq_and_time (byte search) is a faster twin of patch_time(patch_seq(...)) (CBOR walk)."""
    from jetstream.relaysim.seqpatch import find_seq_slot, patch_seq, patch_seq_and_time, patch_time
    from jetstream.relaysim.synthetic import SyntheticSource

    synthetic = SyntheticSource(seed=4, dids=20)
    frames = list(corpus_frames) + [synthetic.frame(seq) for seq in range(1, 200)]
    for frame in frames:
        old = find_seq_slot(frame).seq
        for new in (old + 1, old + 10**12, 5):
            fast = patch_seq_and_time(frame, old, new, "2030-01-02T03:04:05.123456Z")
            assert fast == patch_time(patch_seq(frame, new), "2030-01-02T03:04:05.123456Z")


def test_clock_source_restarts_above_earlier_seqs_and_stamps_times():
    import libipld

    from jetstream.relaysim.clocksource import ClockSource
    from jetstream.relaysim.synthetic import SyntheticSource

    first = ClockSource(SyntheticSource(seed=4, dids=20), rate=50, wall_now=1_800_000_000.0)
    issued = first.next_seq_after(first.first_seq + 500)  # ten seconds of frames
    later = ClockSource(SyntheticSource(seed=4, dids=20), rate=50, wall_now=1_800_000_011.0)
    assert later.first_seq > issued
    _, body = libipld.decode_dag_cbor_multi(first.frame(first.first_seq + 100))
    assert body["seq"] == first.first_seq + 100
    assert body["time"] == "2027-01-15T08:00:02.000000Z"  # 100 frames at 50/s after the start
