"""An archived event renders to the bytes the log holds for it (jetstream/archive/render.py).

Real relay frames (the corpus) and synthetic traffic go through the real ingest pipeline into a
real RocksDB log; the real sealer seals them into segments; each segment row read back with our
reader is rendered to v1 JSON and to the v2 frame and compared byte for byte with the log's v1
JSON and the v2 frame the log renders for the same event. Both sides come from separate paths
(the log from relay frames, the segment from the sealer's row conversion), so a field the
segment loses or a renderer that drifts fails here.
"""
from __future__ import annotations

import os

import pytest

from jetstream import wire_v2
from jetstream.archive import SegmentReader
from jetstream.archive.format import KIND_CREATE, KIND_DELETE, SegmentEvent
from jetstream.archive.render import log_kind, pending_of, v1_json, v2_frame
from jetstream.compression import EventCompressor
from jetstream.dictionary import active_dictionary, active_v2_dictionary
from jetstream.events import KIND_COMMIT
from jetstream.implementation import LiveRing
from jetstream.ingest.pipeline import IngestPipeline
from jetstream.ingest.sequencer import Sequencer
from jetstream.log.store import EventLog
from tests.archive.test_sealer import ingest, seal_all, sealer_for


def _ingest_frames(event_log: EventLog, frames: list[bytes]) -> int:
    pipeline = IngestPipeline(event_log, LiveRing(10_000), Sequencer(event_log.hwm()),
                              EventCompressor(active_dictionary(), active_v2_dictionary()), lambda: None,
                              socket_url="test")
    return sum(pipeline.process(frames[i:i + 64]) for i in range(0, len(frames), 64))


def _seal_everything(event_log: EventLog, directory) -> None:
    sealer = sealer_for(event_log, directory)
    sealer.recover()
    seal_all(sealer)


def _archived(directory) -> list[SegmentEvent]:
    events: list[SegmentEvent] = []
    for name in sorted(os.listdir(directory)):
        if name.endswith(".jss"):
            with SegmentReader.open(os.path.join(directory, name)) as reader:
                events += list(reader.iter_events())
    return events


def _compare_every_event(event_log: EventLog, directory) -> dict[int, int]:
    """Assert each log event's archived row renders to its exact bytes; count events per log kind."""
    v1_rows = event_log.read_after(0, 1_000_000, compressed=False)
    v2_rows = {row.seq: row for row in event_log.read_after(0, 1_000_000, compressed=False, v2=True)}
    archived = {event.seq: event for event in _archived(directory)}
    assert len(archived) == len(v1_rows) > 0, "the sealer archived every event of this log"
    kinds: dict[int, int] = {}
    for row in v1_rows:
        event = archived[row.seq]
        assert event.witnessed_at == row.time_us
        assert log_kind(event) == row.kind
        assert v1_json(event) == bytes(row.payload), f"v1 bytes differ for seq {row.seq}"
        stored = v2_rows[row.seq]
        assert v2_frame(event) == wire_v2.frame_of_record(bytes(stored.payload), row.seq, row.time_us), \
            f"v2 frame differs for seq {row.seq}"
        kinds[row.kind] = kinds.get(row.kind, 0) + 1
    return kinds


def test_every_corpus_event_renders_from_the_archive_to_the_logs_exact_v1_and_v2_bytes(tmp_path, corpus_frames):
    with EventLog(str(tmp_path / "log")) as event_log:
        count = _ingest_frames(event_log, corpus_frames)
        assert count > 100
        _seal_everything(event_log, tmp_path / "archive")
        kinds = _compare_every_event(event_log, tmp_path / "archive")
    assert kinds.get(KIND_COMMIT, 0) > 100 and len(kinds) >= 3, kinds  # commits, identities, accounts at least


def test_synthetic_traffic_renders_from_the_archive_to_the_logs_exact_bytes(tmp_path):
    with EventLog(str(tmp_path / "log")) as event_log:
        ingest(event_log, frames=600, seed=11)
        _seal_everything(event_log, tmp_path / "archive")
        _compare_every_event(event_log, tmp_path / "archive")


@pytest.mark.parametrize("event", [
    SegmentEvent(1, 10, 0, 99, "did:plc:a", "", "", "", b""),  # a kind no writer makes
    SegmentEvent(2, 10, 0, 4, "did:plc:a", "", "", "", b"\xff\x00"),  # an identity body that is not CBOR
    SegmentEvent(3, 10, 0, 5, "did:plc:a", "", "", "", b"\xa0"),  # an account body without its fields
    SegmentEvent(4, 10, 0, KIND_CREATE, "did:plc:a", "app.bsky.feed.post", "3k", "rev", b"\xff"),  # not a record
])
def test_rows_no_relay_could_have_made_render_to_nothing(event):
    assert pending_of(event) is None
    assert v1_json(event) is None
    assert v2_frame(event) == b""


def test_a_delete_renders_without_record_or_cid_on_both_wires():
    event = SegmentEvent(7, 1_750_000_000_000_001, 0, KIND_DELETE, "did:plc:x", "app.bsky.feed.like", "3kabc",
                         "3krev", b"")
    assert v1_json(event) == (b'{"did":"did:plc:x","time_us":1750000000000001,"kind":"commit","commit":'
                              b'{"rev":"3krev","operation":"delete","collection":"app.bsky.feed.like",'
                              b'"rkey":"3kabc"}}')
    assert v2_frame(event) == wire_v2.render(
        wire_v2.commit_parts("did:plc:x", "3krev", "delete", "app.bsky.feed.like", "3kabc"), 7, 1_750_000_000_000_001)
