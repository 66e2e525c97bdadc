"""Which seq a played recording serves, when it exists, and where a connection starts."""
from __future__ import annotations

import libipld
import pytest

from jetstream.relaysim.filesource import FileSource
from jetstream.relaysim.seqpatch import patch_seq
from jetstream.relaysim.timeline import StartPosition, Timeline, start_position


def seq_of(frame: bytes) -> int:
    return libipld.decode_dag_cbor_multi(frame)[1]["seq"]


def served_seqs(source: FileSource, after: int, limit: int = 10_000) -> list[int]:
    seqs, seq = [], source.next_seq_after(after)
    while seq is not None and len(seqs) < limit:
        seqs.append(seq)
        seq = source.next_seq_after(seq)
    return seqs


def test_contiguous_recording_continues_seamlessly_across_plays(corpus_frames):
    source = FileSource(corpus_frames, loops=3)
    first = seq_of(corpus_frames[0])
    count = len(corpus_frames)
    assert served_seqs(source, 0) == list(range(first, first + 3 * count))
    assert source.last_seq == first + 3 * count - 1
    # Play 1 of frame 5 is frame 5's bytes with seq first + count + 5.
    assert source.frame(first + count + 5) == patch_seq(corpus_frames[5], first + count + 5)


def test_gappy_recording_keeps_its_gaps_and_repeats_every_span_plus_one():
    base = [patch_seq(frame, seq) for frame, seq in zip(_three_frames(), (100, 103, 104))]
    source = FileSource(base, loops=2)
    assert served_seqs(source, 0) == [100, 103, 104, 105, 108, 109]
    assert source.next_seq_after(100) == 103 and source.next_seq_after(101) == 103
    assert source.last_seq_at_or_before(102) == 100
    assert source.last_seq_at_or_before(107) == 105
    assert source.last_seq_at_or_before(10**9) == 109
    assert source.last_seq_at_or_before(99) is None
    with pytest.raises(KeyError):
        source.frame(101)
    with pytest.raises(KeyError):
        source.frame(110)


def test_endless_recording_never_runs_out(corpus_frames):
    source = FileSource(corpus_frames, loops=0)
    first = seq_of(corpus_frames[0])
    far = first + 1_000_000 * len(corpus_frames)
    assert source.last_seq is None
    assert source.next_seq_after(far) == far + 1
    assert seq_of(source.frame(far)) == far


def test_recording_with_decreasing_seqs_is_refused():
    frames = [patch_seq(frame, seq) for frame, seq in zip(_three_frames(), (5, 4, 6))]
    with pytest.raises(ValueError, match="must increase"):
        FileSource(frames)


def test_start_position_rules():
    assert start_position(None, head_seq=500, oldest_held_seq=100) == StartPosition(500, False)
    assert start_position(250, head_seq=500, oldest_held_seq=100) == StartPosition(250, False)
    assert start_position(99, head_seq=500, oldest_held_seq=100) == StartPosition(99, False)
    assert start_position(98, head_seq=500, oldest_held_seq=100) == StartPosition(99, True)
    assert start_position(0, head_seq=500, oldest_held_seq=100) == StartPosition(99, True)
    assert start_position(900, head_seq=500, oldest_held_seq=100) == StartPosition(900, False)


def test_paced_timeline_releases_seq_s_at_start_plus_offset_over_rate(corpus_frames):
    source = FileSource(corpus_frames, loops=0)
    first = source.first_seq
    timeline = Timeline(source, rate=100.0)
    timeline.start(1000.0)
    assert timeline.head_seq(1000.0) == first
    assert timeline.is_available(first + 50, 1000.5) and not timeline.is_available(first + 51, 1000.5)
    assert timeline.available_at(first + 250) == pytest.approx(1002.5)
    assert timeline.head_seq(1002.5) == first + 250


def test_paced_head_stops_at_the_end_of_a_finite_recording(corpus_frames):
    timeline = Timeline(FileSource(corpus_frames, loops=1), rate=1000.0)
    timeline.start(0.0)
    assert timeline.head_seq(3600.0) == timeline.source.last_seq


def test_unpaced_head_is_the_newest_seq_any_reader_pulled(corpus_frames):
    timeline = Timeline(FileSource(corpus_frames, loops=0), rate=0)
    timeline.start(0.0)
    first = timeline.source.first_seq
    assert timeline.head_seq(0.0) == first - 1
    timeline.pull(first + 7)
    timeline.pull(first + 3)
    assert timeline.head_seq(0.0) == first + 7


def test_retention_window_moves_the_oldest_held_seq(corpus_frames):
    timeline = Timeline(FileSource(corpus_frames, loops=0), rate=10.0, retention=20)
    timeline.start(0.0)
    first = timeline.source.first_seq
    assert timeline.oldest_held_seq(0.5) == first
    assert timeline.oldest_held_seq(10.0) == first + 100 - 20 + 1
    assert timeline.start_position(first, 10.0) == StartPosition(first + 80, True)


def _three_frames() -> list[bytes]:
    from jetstream.relaysim.synthetic import SyntheticSource

    source = SyntheticSource(seed=9, dids=10)
    return [source.frame(seq) for seq in (1, 2, 3)]
