"""The writer and reader round trip any events; the writer refuses what the format cannot hold.

Also the daemon-facing writer contract: blocks cut by count or by the caller, size_bytes growing
with each cut block, seal publishing atomically under the final name, abort publishing nothing.
"""
from __future__ import annotations

import os
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jetstream.archive import (
    KIND_ACCOUNT,
    KIND_CREATE,
    KIND_CREATE_RESYNC,
    KIND_DELETE,
    KIND_IDENTITY,
    KIND_SYNC,
    KIND_UPDATE,
    InvalidEvent,
    SegmentError,
    SegmentEvent,
    SegmentOptions,
    SegmentReader,
    SegmentWriter,
    parse_segment_name,
    segment_name,
    verify,
)
from tests.archive.archive_helpers import corpus_car_events, read_all, write_segment

KINDS = [KIND_CREATE, KIND_UPDATE, KIND_DELETE, KIND_IDENTITY, KIND_ACCOUNT, KIND_SYNC, KIND_CREATE_RESYNC]
text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)
did = st.one_of(st.just(""), st.sampled_from([f"did:plc:{c * 24}" for c in "abcdef"]), text.map(lambda s: "did:web:" + s))


@st.composite
def event_lists(draw):
    n = draw(st.integers(0, 60))
    seq = draw(st.integers(0, 2**40))
    time_us = draw(st.integers(-(2**40), 2**50))
    events = []
    for _ in range(n):
        seq += draw(st.integers(1, 1000))
        time_us += draw(st.integers(-5, 1_000_000))  # witnessed_at need not be monotonic
        events.append(SegmentEvent(
            seq, time_us, draw(st.sampled_from([0, time_us - 7])), draw(st.sampled_from(KINDS)), draw(did),
            draw(st.one_of(st.just(""), st.sampled_from(["app.bsky.feed.post", "app.bsky.feed.like", "x.y.z"]), text)),
            draw(text), draw(text), draw(st.binary(max_size=300))))
    return events


@settings(max_examples=60, deadline=None)
@given(events=event_lists(), block_events=st.integers(1, 9), cut_every=st.integers(2, 20))
def test_any_events_round_trip_and_verify(events, block_events, cut_every):
    with tempfile.TemporaryDirectory() as directory:
        path = write_segment(directory, events, block_events=block_events, cuts=range(0, len(events), cut_every))
        check_round_trip(path, events, block_events)


def check_round_trip(path, events, block_events):
    assert read_all(path) == events
    report = verify(path)
    assert report.events == len(events)
    with SegmentReader.open(path) as reader:
        assert all(b.event_count <= block_events for b in reader.blocks)
        for event in events:
            blocks = [i for i in range(len(reader.blocks)) if event in reader.read_block(i)]
            if event.did:
                assert set(blocks) <= set(reader.blocks_for_did(event.did))  # no false negatives
            names = [event.collection] if event.collection else []
            names += {KIND_IDENTITY: ["$identity"], KIND_ACCOUNT: ["$account"], KIND_SYNC: ["$sync"]}.get(event.kind, [])
            if names:
                assert set(blocks) <= set(reader.blocks_for_collections(names))


def test_blocks_are_cut_by_count_and_by_the_caller_and_size_grows(tmp_path):
    events = corpus_car_events()
    writer = SegmentWriter(str(tmp_path / "s.jss.tmp"), 1, SegmentOptions(block_events=10))
    sizes = [writer.size_bytes]
    for event in events[:12]:
        writer.add(event)
        sizes.append(writer.size_bytes)
    assert sizes[0] == 256 and sizes[9] == 256 and sizes[10] > 256  # the 10th add cut block 0
    assert (writer.block_count, writer.pending_events, writer.event_count) == (1, 2, 12)
    assert os.path.getsize(tmp_path / "s.jss.tmp") == writer.size_bytes  # cut blocks are on disk
    info = writer.cut_block()  # a time-based cut, decided by the caller
    assert (info.event_count, info.min_seq, info.max_seq) == (2, 11, 12)
    assert writer.cut_block() is None
    for event in events[12:]:
        writer.add(event)
    result = writer.seal()
    assert result.path == str(tmp_path / "s.jss")
    assert os.listdir(tmp_path) == ["s.jss"]
    assert result.size_bytes == os.path.getsize(result.path)
    with SegmentReader.open(result.path) as reader:
        assert [b.event_count for b in reader.blocks] == [10, 2, 10, 1]
    assert read_all(result.path) == events


@pytest.mark.parametrize("bad, reason", [
    (dict(kind=0), "kind"), (dict(kind=8), "kind"), (dict(rkey="k" * 256), "rkey"),
    (dict(collection="c" * 256), "collection"), (dict(rev="r" * 256), "rev"), (dict(did="d" * 65536), "did"),
    (dict(seq=5), "seq"), (dict(seq=4), "seq"), (dict(seq=-1), "seq"), (dict(witnessed_at=2**63), "witnessed_at"),
])
def test_the_writer_refuses_what_does_not_fit_and_keeps_going(tmp_path, bad, reason):
    good = SegmentEvent(5, 1, 0, KIND_CREATE, "did:plc:a", "app.bsky.feed.post", "k", "r", b"x")
    writer = SegmentWriter(str(tmp_path / "s.jss.tmp"), 5)
    writer.add(good)
    with pytest.raises(InvalidEvent, match=reason):
        writer.add(good._replace(**bad))
    writer.add(good._replace(seq=6))  # a refused event changes nothing
    writer.seal()
    assert [e.seq for e in read_all(tmp_path / "s.jss")] == [5, 6]


def test_the_first_seq_bounds_the_first_event(tmp_path):
    writer = SegmentWriter(str(tmp_path / "s.jss.tmp"), 100)
    with pytest.raises(InvalidEvent):
        writer.add(SegmentEvent(99, 1, 0, KIND_DELETE, "did:plc:a", "c.d.e", "k", "r", b""))
    writer.abort()


def test_abort_and_an_exception_publish_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with SegmentWriter(str(tmp_path / "s.jss.tmp"), 1) as writer:
            writer.add(corpus_car_events()[0])
            writer.cut_block()
            raise RuntimeError("the daemon stops mid-segment")
    assert os.listdir(tmp_path) == []
    with pytest.raises(SegmentError):
        writer.add(corpus_car_events()[1])


def test_an_empty_segment_seals_and_verifies(tmp_path):
    writer = SegmentWriter(str(tmp_path / "e.jss.tmp"), 1)
    path = writer.seal().path
    assert verify(path).events == 0
    assert read_all(path) == []


def test_seal_refuses_to_guess_a_name(tmp_path):
    writer = SegmentWriter(str(tmp_path / "active"), 1)
    with pytest.raises(ValueError):
        writer.seal()
    assert writer.seal(str(tmp_path / segment_name(7))).path.endswith("seg_0000000007.jss")


@pytest.mark.parametrize("index, name", [(0, "seg_0000000000.jss"), (35, "seg_000000000z.jss"),
                                         (36, "seg_0000000010.jss"), (36**10 - 1, "seg_zzzzzzzzzz.jss")])
def test_segment_names_are_v2s(index, name):
    assert segment_name(index) == name
    assert parse_segment_name(name) == index


@pytest.mark.parametrize("name", ["seg_000000000.jss", "seg_00000000000.jss", "seg_000000000Z.jss",
                                  "seg_0000000000.jss.tmp", "xseg_0000000000.jss", "seg_-000000001.jss"])
def test_other_names_are_not_segments(name):
    assert parse_segment_name(name) is None


def test_names_sort_in_creation_order():
    names = [segment_name(i) for i in (0, 9, 10, 35, 36, 1295, 1296, 10**9)]
    assert sorted(names) == names
