"""The log's secondary index: filtered replay through it returns exactly what a full scan
plus the subscriber filter returns, reads far fewer rows for a rare collection, survives
TTL trims, and is added (complete from then on) to a log written before it existed."""
from __future__ import annotations

from collections import Counter

import pytest
from rocksdict import Options, Rdict

from jetstream.compression import EventCompressor
from jetstream.implementation import EventFilter
from jetstream.ingest.decode import decode_frame
from jetstream.ingest.sequencer import Sequencer
from jetstream.log.rows import INDEX_BUCKET_SHIFT, decode_index_time_us, index_bucket
from jetstream.log.store import (
    CF_EVENTS_INDEX,
    MAX_INDEX_NAMES,
    META_INDEX_FROM,
    EventLog,
    IndexQuery,
    index_query_for,
)
from jetstream.relaysim.synthetic import SyntheticSource

BUCKET_US = 1 << INDEX_BUCKET_SHIFT
BASE_US = 1_700_000_000_000_000


def _pending_events(corpus_frames, synthetic_count: int = 600):
    source = SyntheticSource(seed=7, dids=50)
    frames = list(corpus_frames) + [source.frame(seq) for seq in range(1, synthetic_count + 1)]
    return [event for frame in frames for event in decode_frame(frame).events]


class _SteppedClock:
    """time_us that crosses many index buckets, with a few long gaps (empty buckets)."""

    def __init__(self) -> None:
        self.now = BASE_US
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        self.now += BUCKET_US * 40 if self.calls % 250 == 0 else BUCKET_US // 16
        return self.now


@pytest.fixture
def filled_log(tmp_path, corpus_frames):
    events = Sequencer(0, _SteppedClock()).sequence(_pending_events(corpus_frames), EventCompressor())
    with EventLog(tmp_path / "log") as event_log:
        for start in range(0, len(events), 100):
            event_log.append(events[start:start + 100], start)
        yield event_log, events


def _scan(event_log, after: int, compressed: bool, event_filter) -> list:
    rows, position = [], after
    while True:
        chunk = event_log.read_after(position, 97, compressed)
        if not chunk:
            return rows
        rows += [row for row in chunk if event_filter.matches(row.did, row.collection)]
        position = chunk[-1].time_us


def _indexed(event_log, after: int, compressed: bool, event_filter, query) -> list:
    rows, position = [], after
    while True:
        chunk = event_log.read_matching_after(position, 13, compressed, query)
        assert chunk is not None
        if not chunk:
            return rows
        assert [row.time_us for row in chunk] == sorted({row.time_us for row in chunk})
        assert chunk[0].time_us > position
        rows += [row for row in chunk if event_filter.matches(row.did, row.collection)]
        position = chunk[-1].time_us


def _filters(events):
    by_collection = Counter(event.collection for event in events if event.collection)
    rare = min(by_collection, key=by_collection.get)
    common = max(by_collection, key=by_collection.get)
    dids = Counter(event.did for event in events)
    some_dids = [did for did, _ in dids.most_common()[3:6]]
    return {
        "rare collection": ([rare], None),
        "common collection": ([common], None),
        "two collections and a missing one": ([rare, common, "com.example.nothing"], None),
        "three dids": (None, some_dids),
        "dids and a collection": ([common], some_dids),
        "unknown did": (None, ["did:plc:nobodyhere"]),
    }


@pytest.mark.parametrize("compressed", [False, True])
def test_indexed_replay_returns_exactly_the_rows_of_scan_plus_filter(filled_log, compressed):
    event_log, events = filled_log
    middle = events[len(events) // 3].time_us
    for name, (collections, dids) in _filters(events).items():
        event_filter = EventFilter(collections, dids)
        query = index_query_for(collections, dids)
        assert query is not None, name
        for after in (0, middle, events[-1].time_us):
            expected = _scan(event_log, after, compressed, event_filter)
            assert _indexed(event_log, after, compressed, event_filter, query) == expected, name
    assert _scan(event_log, 0, compressed, EventFilter(*_filters(events)["rare collection"]))  # not vacuous


def test_rare_collection_replay_reads_only_the_rows_it_can_want(filled_log):
    event_log, events = filled_log
    collections, _ = _filters(events)["rare collection"]
    event_filter = EventFilter(collections, None)
    before = event_log.values_read
    delivered = _indexed(event_log, 0, True, event_filter, index_query_for(collections, None))
    index_reads = event_log.values_read - before
    before = event_log.values_read
    _scan(event_log, 0, True, event_filter)
    scan_reads = event_log.values_read - before
    # Rows of that collection plus every identity/account row (they pass collection filters).
    wanted = sum(1 for event in events if event.collection in ("", collections[0]))
    assert index_reads == wanted == len(delivered)
    assert scan_reads == len(events)
    assert index_reads * 10 < scan_reads


def test_ttl_trim_trims_the_index_and_replay_stays_exact(filled_log, tmp_path):
    event_log, events = filled_log
    cutoff = events[len(events) // 2].time_us + 5
    event_log.trim_older_than(cutoff)
    collections, dids = _filters(events)["common collection"]
    event_filter = EventFilter(collections, dids)
    query = index_query_for(collections, dids)
    expected = _scan(event_log, 0, False, event_filter)
    assert expected and expected[0].time_us >= cutoff
    assert _indexed(event_log, 0, False, event_filter, query) == expected
    event_log.close()
    db = Rdict(str(tmp_path / "log"), Options(raw_mode=True),
               column_families={name: Options(raw_mode=True) for name in Rdict.list_cf(str(tmp_path / "log"))
                                if name != "default"})
    try:
        indexed_times = [decode_index_time_us(key) for key in db.get_column_family(CF_EVENTS_INDEX).keys()]
    finally:
        db.close()
    kept = [event.time_us for event in events if event.time_us >= cutoff]
    # Two keys per kept event; below the cutoff's own bucket nothing is left.
    assert Counter(time_us for time_us in indexed_times if time_us >= cutoff) == Counter(kept * 2)
    assert min(indexed_times) >= index_bucket(cutoff) * BUCKET_US
    assert len(indexed_times) < len(events) * 2


def test_log_written_before_the_index_gets_one_complete_from_its_next_event(tmp_path, corpus_frames):
    pending = _pending_events(corpus_frames, synthetic_count=50)
    events = Sequencer(0, _SteppedClock()).sequence(pending, EventCompressor())
    old, new = events[:80], events[80:]
    path = tmp_path / "log"
    with EventLog(path) as event_log:
        event_log.append(old, 1)
    # Make it a log of the format before the index: no index column family, no index meta.
    names = [name for name in Rdict.list_cf(str(path)) if name != "default"]
    db = Rdict(str(path), Options(raw_mode=True), column_families={name: Options(raw_mode=True) for name in names})
    db.get_column_family("meta").delete(META_INDEX_FROM)
    db.drop_column_family(CF_EVENTS_INDEX)
    db.close()
    del db
    with EventLog(path, create=False) as event_log:
        assert event_log.index_from_time_us() == old[-1].time_us + 1
        event_log.append(new, 2)
        query = IndexQuery(*index_query_for(None, [new[0].did]))
        assert event_log.read_matching_after(0, 10, False, query) is None  # below the index: scan
        event_filter = EventFilter(None, [new[0].did])
        after = old[-1].time_us
        assert _indexed(event_log, after, False, event_filter, query) == _scan(event_log, after, False, event_filter)


def test_only_narrow_exact_filters_use_the_index():
    assert index_query_for(None, None) is None
    assert index_query_for([], []) is None
    assert index_query_for(["app.bsky.*"], None) is None
    assert index_query_for(["app.bsky.feed.post", "app.bsky.graph.*"], None) is None
    assert index_query_for([f"c.{n}" for n in range(MAX_INDEX_NAMES + 1)], None) is None
    assert index_query_for(None, [f"did:plc:{n}" for n in range(MAX_INDEX_NAMES + 1)]) is None
    by_collection = index_query_for(["app.bsky.feed.post"], None)
    assert len(by_collection.hashes) == 2  # the collection and "" (identity/account)
    # dids are the narrower dimension, and prefixes in wantedCollections don't matter then
    assert index_query_for(["app.bsky.*"], ["did:plc:a"]).tag != by_collection.tag
