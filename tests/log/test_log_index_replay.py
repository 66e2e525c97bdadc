"""The subscriber's reader with a log index: a narrow filter replaying from the log gets
exactly the payloads the scanning reader gets, step by step into the live ring, while
reading only the rows its filter can want."""
from __future__ import annotations

from collections import Counter

from jetstream.compression import EventCompressor
from jetstream.implementation import EventFilter, LiveRing
from jetstream.ingest.decode import decode_frame
from jetstream.ingest.sequencer import Sequencer
from jetstream.log.store import EventLog, index_query_for
from jetstream.relaysim.synthetic import SyntheticSource
from jetstream.server.subscriber import read_next_batch

RING_CAPACITY = 200


def _replay(event_log, ring, event_filter, index_query, compressed: bool, max_events: int) -> list[bytes]:
    """Every payload from cursor 0 until the reader is caught up in the ring."""
    payloads, position = [], 0
    for _ in range(10_000):
        batch = read_next_batch(position, ring, event_log, event_filter, compressed, max_events, 0, index_query)
        payloads += batch.payloads
        assert batch.position >= position
        position = batch.position
        if batch.caught_up:
            return payloads
    raise AssertionError("reader never caught up")


def test_indexed_reader_sends_what_the_scanning_reader_sends(tmp_path, corpus_frames):
    source = SyntheticSource(seed=11, dids=40)
    frames = list(corpus_frames) + [source.frame(seq) for seq in range(1, 1500)]
    pending = [event for frame in frames for event in decode_frame(frame).events]
    events = Sequencer(0).sequence(pending, EventCompressor())
    ring = LiveRing(RING_CAPACITY)
    with EventLog(tmp_path / "log") as event_log:
        for start in range(0, len(events), 50):
            chunk = events[start:start + 50]
            event_log.append(chunk, start)
            for event in chunk:
                ring.append(event)
        collections = Counter(event.collection for event in events if event.collection)
        rare = min(collections, key=collections.get)
        dids = [did for did, _ in Counter(event.did for event in events).most_common(3)]
        for wanted_collections, wanted_dids in (([rare], None), ([rare, "app.bsky.feed.like"], None), (None, dids)):
            event_filter = EventFilter(wanted_collections, wanted_dids)
            query = index_query_for(wanted_collections, wanted_dids)
            for compressed, max_events in ((False, 7), (True, 500)):
                before = event_log.values_read
                scanned = _replay(event_log, ring, event_filter, None, compressed, max_events)
                scan_reads = event_log.values_read - before
                before = event_log.values_read
                indexed = _replay(event_log, ring, event_filter, query, compressed, max_events)
                index_reads = event_log.values_read - before
                assert indexed == scanned and scanned
                assert index_reads < scan_reads
        # The rare collection: far fewer values read than a full scan.
        before = event_log.values_read
        _replay(event_log, ring, EventFilter([rare], None), index_query_for([rare], None), False, 500)
        assert (event_log.values_read - before) * 10 < len(events) - RING_CAPACITY
