"""ArchiveSealer on a real RocksDB log written by the real ingest pipeline (jetstream/archive/sealer.py).

Row conversion against the v1 JSON of the same events; restart recovery (staged files removed,
the newest verified segment adopted, a corrupt one quarantined and rebuilt from the log); the
no-clobber publish between two sealers; events the format cannot hold are skipped and counted.
"""
from __future__ import annotations

import json
import os

import pytest

from jetstream import wire_v2
from jetstream._py.segment import commit_record_fields
from jetstream.archive import SegmentReader, verify
from jetstream.archive.sealer import ArchiveSealer, SealerSettings, segment_event
from jetstream.compression import EventCompressor
from jetstream.dictionary import active_dictionary, active_v2_dictionary
from jetstream.events import KIND_COMMIT, Event
from jetstream.implementation import LiveRing
from jetstream.ingest.pipeline import IngestPipeline
from jetstream.ingest.sequencer import Sequencer
from jetstream.log.store import EventLog
from jetstream.relaysim.synthetic import SyntheticSource

OPERATION_KINDS = {"create": 1, "update": 2, "delete": 3}


def ingest(event_log: EventLog, frames: int = 400, seed: int = 3) -> int:
    source = SyntheticSource(seed=seed, dids=200)
    seq, batch = max(source.first_seq - 1, event_log.relay_cursor() or 0), []  # frames the log has not had
    for _ in range(frames):
        seq = source.next_seq_after(seq)
        batch.append(source.frame(seq))
    pipeline = IngestPipeline(event_log, LiveRing(10_000), Sequencer(event_log.hwm()),
                              EventCompressor(active_dictionary(), active_v2_dictionary()), lambda: None,
                              socket_url="test")
    return sum(pipeline.process(batch[i:i + 64]) for i in range(0, len(batch), 64))


def sealer_for(event_log, directory, **overrides) -> ArchiveSealer:
    fields = {"block_events": 32, "block_seconds": 1e9, "segment_bytes": 1 << 40, "seal_after_s": 1e9}
    settings = SealerSettings(str(directory), **(fields | overrides))
    return ArchiveSealer(event_log, settings)


def seal_all(sealer: ArchiveSealer) -> None:
    sealer.step()
    if sealer.writer is not None and sealer.writer.event_count:
        sealer._seal()  # noqa: SLF001 - seal now, without waiting for the clocks


def archived_seqs(directory) -> list[int]:
    seqs = []
    for name in sorted(os.listdir(directory)):
        if name.endswith(".jss"):
            with SegmentReader.open(os.path.join(directory, name)) as reader:
                seqs += [e.seq for e in reader.iter_events()]
    return seqs


def test_segment_rows_agree_with_the_v1_json_of_every_event(tmp_path):
    with EventLog(str(tmp_path / "log")) as event_log:
        count = ingest(event_log)
        rows = event_log.read_after(0, 100_000, compressed=False, v2=True)
        assert len(rows) == count > 400
        for row in rows:
            event = segment_event(row, event_log.json_payload_at)
            document = json.loads(event_log.json_payload_at(row.time_us))
            assert (event.seq, event.witnessed_at, event.did) == (row.seq, row.time_us, document["did"])
            if row.kind == KIND_COMMIT:
                commit = document["commit"]
                assert event.kind == OPERATION_KINDS[commit["operation"]]
                assert (event.collection, event.rkey, event.rev) == (commit["collection"], commit["rkey"],
                                                                     commit["rev"])
                if event.kind != 3:
                    assert wire_v2.record_cid(event.payload) == commit["cid"]


def test_head_parser_reads_escaped_fields_and_ignores_lookalikes_inside_the_record():
    parts = wire_v2.commit_parts('did:plc:a"b', "3k\\rev", "create", 'col,"operation":"delete"', 'r"k',
                                 "bafy", b'{"x":",\\"rkey\\":\\"no\\",\\"rev\\":\\"no\\""}')
    assert commit_record_fields(wire_v2.pack_record(parts, b"", b"blk")) == (1, "3k\\rev", 'r"k', b"blk")


def test_restart_removes_staged_adopts_verified_and_rebuilds_a_quarantined_segment(tmp_path):
    archive = tmp_path / "archive"
    with EventLog(str(tmp_path / "log")) as event_log:
        ingest(event_log, 200)
        first = sealer_for(event_log, archive)
        first.recover()
        seal_all(first)
        assert ingest(event_log, 200, seed=4) > 200
        seal_all(first)
        assert sorted(os.listdir(archive)) == ["seg_0000000000.jss", "seg_0000000001.jss"]
        sealed = archived_seqs(archive)
        assert sealed == list(range(1, event_log.newest_seq() + 1))

        (archive / "seg_0000000002.jss.tmp").write_bytes(b"jss0" + bytes(300))  # a kill mid-segment
        again = sealer_for(event_log, archive)
        tip = again.recover()
        assert tip.seq == sealed[-1] and tip.next_index == 2
        assert not (archive / "seg_0000000002.jss.tmp").exists()

        second = archive / "seg_0000000001.jss"
        data = bytearray(second.read_bytes())
        data[-3] ^= 0xFF  # a footer byte: the header checksum no longer matches
        second.write_bytes(bytes(data))
        rebuilt = sealer_for(event_log, archive)
        tip = rebuilt.recover()
        assert (archive / "seg_0000000001.jss.corrupt").exists()
        assert tip.next_index == 2 and tip.seq < sealed[-1]
        seal_all(rebuilt)
        assert archived_seqs(archive) == sealed, "the quarantined span is sealed again from the log, once"
        verify(str(archive / "seg_0000000002.jss"))


def test_a_second_sealer_cannot_publish_over_the_first_and_continues_above_it(tmp_path):
    archive = tmp_path / "archive"
    with EventLog(str(tmp_path / "log")) as event_log:
        ingest(event_log, 200)
        leader, late = sealer_for(event_log, archive), sealer_for(event_log, archive)
        leader.recover()
        late.recover()  # both see an empty archive: both will try seg_0
        seal_all(leader)
        assert ingest(event_log, 100, seed=5) > 100
        seal_all(late)  # conflict on seg_0: re-reads the directory, rebuilds above the leader's segment
        seal_all(late)
        assert archived_seqs(archive) == list(range(1, event_log.newest_seq() + 1))


@pytest.mark.parametrize("leader_sealed", ["below", "above"])
def test_a_conflict_met_while_feeding_reads_again_from_the_adopted_tip(tmp_path, leader_sealed):
    """The late sealer's segment fills up mid-chunk and its seal meets the leader's segment: the tip it
    adopts lies below the row being fed (the leader sealed little) or above it (the leader sealed all).
    Either way it must read the log again from that tip: going on with the chunk lost every seq between
    the tip and the row (141 here) from the archive."""
    archive = tmp_path / "archive"
    with EventLog(str(tmp_path / "log")) as event_log:
        ingest(event_log, 20)
        leader = sealer_for(event_log, archive)
        late = sealer_for(event_log, archive, segment_bytes=20_000)  # fills after ~150 of the 400 frames
        leader.recover()
        late.recover()  # both see an empty archive
        if leader_sealed == "below":
            seal_all(leader)
        ingest(event_log, 400, seed=6)
        if leader_sealed == "above":
            seal_all(leader)
        late.step()
        seal_all(late)
        assert archived_seqs(archive) == list(range(1, event_log.newest_seq() + 1))
        assert late.missing == 0, "no seq is reported missing that the log holds"
        assert late.tip.seq == event_log.newest_seq()
        assert (late.sealed_segments >= 2) if leader_sealed == "below" else (late.sealed_segments == 0)


def test_events_the_format_cannot_hold_are_skipped_and_counted(tmp_path):
    archive = tmp_path / "archive"
    with EventLog(str(tmp_path / "log")) as event_log:
        time_us = 1_700_000_000_000_000
        long_rkey = "r" * 300
        record = wire_v2.pack_record(wire_v2.commit_parts("did:plc:x", "3kaaa", "delete", "app.bsky.feed.like",
                                                          long_rkey))
        event_log.append([
            Event(time_us, "did:plc:x", KIND_COMMIT, "app.bsky.feed.like", b'{"did":"did:plc:x"}', b"", 1,
                  v2_record=record),
            Event(time_us + 1, "did:plc:x", KIND_COMMIT, "app.bsky.feed.like", b'{"did":"did:plc:x"}', b"", 2,
                  v2_record=b""),  # no v2 record: no payload
        ], None)
        ingest(event_log, 50)
        sealer = sealer_for(event_log, archive)
        sealer.recover()
        seal_all(sealer)
        assert sealer.skipped == {"too_long": 1, "bad_record": 1}
        seqs = archived_seqs(archive)
        assert seqs == list(range(3, event_log.newest_seq() + 1))
