"""LiveRing: bounded window of the newest events and the readers' read_after step, both twins.

The property tests drive a reader the way docs/architecture.md §4 describes (position -> ring if it covers
the position, else a log read -> advance by compare-and-set) and check the concatenation of
everything delivered against a longhand model of the filtered event list.
"""
from __future__ import annotations

import json
from itertools import accumulate

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from jetstream._py import filter as py_filter
from jetstream._py import position as py_position
from jetstream._py import ring as py_ring
from jetstream.events import KIND_ACCOUNT, KIND_COMMIT, KIND_IDENTITY, KIND_NAMES, Event
from tests.core.test_core_filter import COLLECTIONS, DIDS, dids_strategy, model_wants, wanted_strategy

try:
    from jetstream._core import filter as cy_filter
    from jetstream._core import position as cy_position
    from jetstream._core import ring as cy_ring
except ImportError:  # pragma: no cover - only when the extensions are not built
    cy_filter = cy_position = cy_ring = None

TWINS = {
    "py": (py_ring.LiveRing, py_filter.EventFilter, py_position.Position),
    "cython": (getattr(cy_ring, "LiveRing", None), getattr(cy_filter, "EventFilter", None), getattr(cy_position, "Position", None)),
}


@pytest.fixture(scope="module", params=sorted(TWINS))
def twin(request):
    if TWINS[request.param][0] is None:
        pytest.skip("Cython core not built")
    return TWINS[request.param]


def make_event(time_us: int, did: str = "did:plc:aaaa", collection: str = "app.bsky.feed.post", size: int = 10) -> Event:
    kind = KIND_COMMIT if collection else KIND_IDENTITY
    body = b"%d|" % time_us
    payload = body + b"j" * max(0, size - len(body))
    return Event(time_us, did, kind, collection, payload, b"z" + payload[: size // 2])


def filled_ring(LiveRing, times, capacity=None, **kwargs):
    ring = LiveRing(capacity or len(times), **kwargs)
    for time_us in times:
        ring.append(make_event(time_us))
    return ring


# ---- append, eviction, floor ---------------------------------------------------------

def test_empty_ring_has_newest_equal_to_floor(twin):
    LiveRing = twin[0]
    ring = LiveRing(4, floor_time_us=100)
    assert (len(ring), ring.capacity, ring.floor_time_us, ring.newest_time_us) == (0, 4, 100, 100)
    assert ring.covers(100) and not ring.covers(99)


def test_append_requires_strictly_increasing_time_us(twin):
    ring = filled_ring(twin[0], [5, 7], capacity=4)
    with pytest.raises(ValueError):
        ring.append(make_event(7))
    with pytest.raises(ValueError):
        ring.append(make_event(6))
    assert [event.time_us for event in ring] == [5, 7]


def test_append_at_or_below_initial_floor_is_rejected(twin):
    ring = twin[0](4, floor_time_us=50)
    with pytest.raises(ValueError):
        ring.append(make_event(50))


def test_append_rejects_non_bytes_payloads(twin):
    ring = twin[0](4)
    with pytest.raises(TypeError):
        ring.append(Event(1, "did:plc:aaaa", KIND_COMMIT, "app.x", "not bytes", b""))
    assert len(ring) == 0


def test_full_ring_evicts_oldest_and_raises_floor_to_its_time_us(twin):
    ring = filled_ring(twin[0], [10, 20, 30, 40, 50], capacity=3)
    assert [ring.time_us_at(i) for i in range(len(ring))] == [30, 40, 50]
    assert ring.floor_time_us == 20 and ring.newest_time_us == 50
    assert ring.covers(20) and not ring.covers(19)
    assert ring.event_at(0).time_us == 30
    with pytest.raises(IndexError):
        ring.time_us_at(3)


def test_capacity_must_be_positive(twin):
    with pytest.raises(ValueError):
        twin[0](0)


# ---- drop_before (TTL) ---------------------------------------------------------------

def test_drop_before_evicts_older_entries_and_raises_floor_like_capacity_eviction(twin):
    ring = filled_ring(twin[0], [10, 20, 30, 40, 50], capacity=8)
    assert ring.drop_before(35) == 3
    assert [event.time_us for event in ring] == [40, 50]
    assert ring.floor_time_us == 30 and ring.newest_time_us == 50
    assert ring.covers(30) and not ring.covers(29)
    assert ring.read_after(30, None, False, 10, 1_000) == ([ring.event_at(0).json, ring.event_at(1).json], 50)
    with pytest.raises(LookupError):
        ring.read_after(20, None, False, 10, 1_000)
    assert ring.count_after(0) == 2


def test_drop_before_keeps_an_entry_exactly_at_the_cutoff(twin):
    ring = filled_ring(twin[0], [10, 20, 30], capacity=4)
    assert ring.drop_before(20) == 1
    assert [event.time_us for event in ring] == [20, 30] and ring.floor_time_us == 10


def test_drop_before_with_nothing_older_is_a_no_op(twin):
    ring = filled_ring(twin[0], [10, 20], capacity=4, floor_time_us=5)
    assert ring.drop_before(10) == 0 and ring.drop_before(-1) == 0
    assert [event.time_us for event in ring] == [10, 20] and ring.floor_time_us == 5
    empty = twin[0](4, floor_time_us=7)
    assert empty.drop_before(1_000) == 0
    assert (empty.floor_time_us, empty.newest_time_us) == (7, 7), "an empty ring's floor stays put"


def test_drop_before_everything_leaves_an_empty_ring_that_still_takes_appends(twin):
    ring = filled_ring(twin[0], [10, 20, 30], capacity=3)
    assert ring.drop_before(1_000) == 3
    assert len(ring) == 0 and ring.floor_time_us == ring.newest_time_us == 30
    assert ring.read_after(30, None, False, 10, 1_000) == ([], 30)
    ring.append(make_event(40))
    assert [event.time_us for event in ring] == [40] and ring.floor_time_us == 30


def test_drop_before_on_a_wrapped_ring_then_capacity_eviction_continues(twin):
    ring = filled_ring(twin[0], [10, 20, 30, 40, 50, 60], capacity=4)  # head has wrapped
    assert ring.drop_before(55) == 3
    assert [event.time_us for event in ring] == [60] and ring.floor_time_us == 50
    for time_us in (70, 80, 90, 100):
        ring.append(make_event(time_us))
    assert [event.time_us for event in ring] == [70, 80, 90, 100] and ring.floor_time_us == 60


# ---- read_after ----------------------------------------------------------------------

def test_read_after_below_floor_raises_lookup_error(twin):
    ring = filled_ring(twin[0], [10, 20, 30], capacity=2)
    with pytest.raises(LookupError):
        ring.read_after(5, None, False, 10, 1_000)


def test_read_after_is_exclusive_of_the_position(twin):
    ring = filled_ring(twin[0], [10, 20, 30])
    payloads, position = ring.read_after(10, None, False, 10, 1_000)
    assert payloads == [ring.event_at(1).json, ring.event_at(2).json]
    assert position == 30


def test_read_after_between_entries_starts_at_next_entry(twin):
    ring = filled_ring(twin[0], [10, 20, 30])
    assert ring.read_after(15, None, False, 10, 1_000) == ([ring.event_at(1).json, ring.event_at(2).json], 30)


def test_read_after_at_or_beyond_newest_returns_nothing_and_keeps_position(twin):
    ring = filled_ring(twin[0], [10, 20, 30])
    assert ring.read_after(30, None, False, 10, 1_000) == ([], 30)
    assert ring.read_after(99, None, False, 10, 1_000) == ([], 99)


def test_read_after_returns_the_same_bytes_objects_appended(twin):
    ring = filled_ring(twin[0], [10, 20])
    payloads, _ = ring.read_after(0, None, True, 10, 1_000)
    assert payloads[0] is ring.event_at(0).zstd and payloads[1] is ring.event_at(1).zstd


def test_read_after_stops_at_max_events_with_position_at_last_returned(twin):
    ring = filled_ring(twin[0], [10, 20, 30, 40])
    payloads, position = ring.read_after(0, None, False, 2, 1_000)
    assert len(payloads) == 2 and position == 20


def test_read_after_stops_once_collected_bytes_reach_max_bytes(twin):
    ring = filled_ring(twin[0], [10, 20, 30, 40])  # 10-byte payloads
    assert len(ring.read_after(0, None, False, 10, 20)[0]) == 2
    assert len(ring.read_after(0, None, False, 10, 21)[0]) == 3
    # one payload larger than max_bytes still goes out alone: progress is always possible
    assert ring.read_after(0, None, False, 10, 1) == ([ring.event_at(0).json], 10)


def test_read_after_rejects_non_positive_limits(twin):
    ring = filled_ring(twin[0], [10])
    with pytest.raises(ValueError):
        ring.read_after(0, None, False, 0, 100)
    with pytest.raises(ValueError):
        ring.read_after(0, None, False, 1, 0)


def test_filtered_out_entries_still_advance_the_position(twin):
    LiveRing, EventFilter, _ = twin
    ring = LiveRing(8)
    ring.append(make_event(10, collection="app.bsky.feed.like"))
    ring.append(make_event(20, collection="app.bsky.feed.post"))
    ring.append(make_event(30, collection="app.bsky.feed.like"))
    payloads, position = ring.read_after(0, EventFilter(["app.bsky.feed.post"]), False, 10, 1_000)
    assert payloads == [ring.event_at(1).json] and position == 30


def test_oversized_payloads_are_dropped_but_scanned(twin):
    LiveRing = twin[0]
    ring = LiveRing(8)
    for time_us, size in [(10, 10), (20, 50), (30, 10)]:
        ring.append(make_event(time_us, size=size))
    payloads, position = ring.read_after(0, None, False, 10, 1_000, max_message_size=10)
    assert payloads == [ring.event_at(0).json, ring.event_at(2).json] and position == 30
    # compressed subscribers are measured on the zstd bytes they would receive (v1 quirk)
    # (zstd sizes 6, 26, 6 vs json 10, 50, 10)
    assert ring.read_after(0, None, True, 10, 1_000, max_message_size=26)[0] == [event.zstd for event in ring]
    assert len(ring.read_after(0, None, False, 10, 1_000, max_message_size=26)[0]) == 2


def test_scan_limit_bounds_one_call_and_position_says_where_it_stopped(twin):
    LiveRing, EventFilter, _ = twin
    ring = LiveRing(100, scan_limit=7)
    for time_us in range(1, 51):
        ring.append(make_event(time_us, collection="app.bsky.feed.like"))
    ring.append(make_event(51, collection="app.bsky.feed.post"))
    rare = EventFilter(["app.bsky.feed.post"])
    position, calls, delivered = 0, 0, []
    while position < ring.newest_time_us:
        payloads, position = ring.read_after(position, rare, False, 10, 1_000)
        delivered += payloads
        calls += 1
    assert delivered == [ring.event_at(50).json]
    assert calls == 8  # ceil(51 / 7): each call scanned at most 7 entries
    assert ring.read_after(0, rare, False, 10, 1_000) == ([], 7)


# ---- property tests against a model --------------------------------------------------

event_spec = st.tuples(
    st.integers(1, 3),  # gap to the previous time_us
    st.sampled_from(DIDS[:-1]),
    st.sampled_from(COLLECTIONS) | st.text(alphabet="ab.", max_size=4),
    st.integers(1, 30),  # payload size
)


def build_events(specs, first_time_us=1):
    times = accumulate((gap for gap, *_ in specs), initial=first_time_us - 1)
    next(times)
    return [make_event(t, did, collection, size) for t, (_, did, collection, size) in zip(times, specs)]


def model_payloads(events, after, wanted, dids, compressed, max_message_size):
    out = []
    for event in events:
        payload = event.zstd if compressed else event.json
        if event.time_us <= after or not model_wants(wanted, dids, event.did, event.collection):
            continue
        if 0 < max_message_size < len(payload):
            continue
        out.append(payload)
    return out


@settings(max_examples=150, deadline=None)
@given(
    specs=st.lists(event_spec, max_size=60),
    capacity=st.integers(1, 25),
    scan_limit=st.integers(1, 9),
    wanted=wanted_strategy,
    dids=dids_strategy,
    compressed=st.booleans(),
    max_events=st.integers(1, 5),
    max_bytes=st.integers(1, 80),
    max_message_size=st.sampled_from([0, 0, 8, 15, 25]),
    start_choice=st.integers(0, 1_000),
)
def test_draining_from_any_covered_position_yields_the_model_list(
    twin, specs, capacity, scan_limit, wanted, dids, compressed, max_events, max_bytes, max_message_size, start_choice
):
    LiveRing, EventFilter, _ = twin
    events = build_events(specs)
    ring = LiveRing(capacity, scan_limit=scan_limit)
    for event in events:
        ring.append(event)
    start = ring.floor_time_us + start_choice % (ring.newest_time_us - ring.floor_time_us + 2)
    event_filter = EventFilter(wanted, dids)
    position, delivered = start, []
    while position < ring.newest_time_us:
        payloads, new_position = ring.read_after(position, event_filter, compressed, max_events, max_bytes, max_message_size)
        assert new_position > position  # every call makes progress while entries remain
        assert len(payloads) <= max_events
        assert sum(map(len, payloads[:-1])) < max_bytes
        delivered += payloads
        position = new_position
    assert delivered == model_payloads(events, start, wanted, dids, compressed, max_message_size)


@settings(max_examples=150, deadline=None)
@given(
    times_gaps=st.lists(st.integers(1, 3), max_size=40),
    capacity=st.integers(1, 12),
    cutoffs=st.lists(st.integers(-2, 130), max_size=4),
)
def test_drop_before_keeps_exactly_the_entries_at_or_after_the_cutoff_and_twins_agree(times_gaps, capacity, cutoffs):
    """Model: the ring holds the last `capacity` appended time_us at or above every cutoff so far;
    the floor is the newest time_us that left it (or the initial floor)."""
    twins = [TWINS[name][0] for name in sorted(TWINS) if TWINS[name][0] is not None]
    rings = [LiveRing(capacity) for LiveRing in twins]
    times = list(accumulate(times_gaps))
    held, floor = [], 0
    for index, time_us in enumerate(times):
        for ring in rings:
            ring.append(make_event(time_us))
        held.append(time_us)
        if len(held) > capacity:
            floor = held.pop(0)
        if cutoffs and index % 10 == 9:  # a trim now and then, between appends
            cutoff = cutoffs.pop(0)
            gone = [t for t in held if t < cutoff]
            held, floor = held[len(gone):], (gone[-1] if gone else floor)
            assert [ring.drop_before(cutoff) for ring in rings] == [len(gone)] * len(rings)
    for ring in rings:
        assert [event.time_us for event in ring] == held
        assert ring.floor_time_us == floor and ring.newest_time_us == (times[-1] if times else 0)
        assert ring.covers(floor) and not ring.covers(floor - 1)


operation = st.one_of(
    st.tuples(st.just("append"), st.lists(event_spec, min_size=1, max_size=8)),
    st.tuples(st.just("read"), st.integers(1, 4), st.integers(1, 40)),
    st.tuples(st.just("trim"), st.integers(0, 30)),  # TTL: drop all but the newest N time_us
)


class ModelLog:
    """Stands in for the RocksDB log: every event appended and not yet trimmed, in time_us order."""

    def __init__(self):
        self.events: list[Event] = []

    def read_after(self, after, wanted, dids, compressed, max_events):
        chunk = [event for event in self.events if event.time_us > after][:max_events]
        payloads = model_payloads(chunk, after, wanted, dids, compressed, 0)
        return payloads, (chunk[-1].time_us if chunk else after)

    def trim_older_than(self, cutoff):
        self.events = [event for event in self.events if event.time_us >= cutoff]


@settings(max_examples=150, deadline=None)
@given(
    operations=st.lists(operation, max_size=25),
    capacity=st.integers(1, 12),
    scan_limit=st.integers(1, 6),
    wanted=wanted_strategy,
    dids=dids_strategy,
    compressed=st.booleans(),
)
def test_reader_interleaved_with_appends_and_trims_delivers_each_wanted_event_once_in_order_and_twins_agree(
    operations, capacity, scan_limit, wanted, dids, compressed
):
    """docs/architecture.md §4 loop, Cython and _py in lockstep: ring when it covers, else log; CAS advance.

    A trim is the TTL trimmer's pass: log first, then ring.drop_before at the same cutoff.
    Events it removes before the reader reached them are legitimately gone; every other
    wanted event is delivered exactly once, in order.
    """
    twins = [TWINS[name] for name in sorted(TWINS) if TWINS[name][0] is not None]
    rings = [LiveRing(capacity, scan_limit=scan_limit) for LiveRing, _, _ in twins]
    filters = [EventFilter(wanted, dids) for _, EventFilter, _ in twins]
    positions = [Position(0) for _, _, Position in twins]
    log, delivered, next_time_us = ModelLog(), [], 1
    appended: list[Event] = []
    expired_unread: set[int] = set()  # time_us trimmed while still ahead of the reader

    def step(max_events, max_bytes):
        results = []
        for ring, event_filter, position in zip(rings, filters, positions):
            start = position.value
            if ring.covers(start):
                payloads, new = ring.read_after(start, event_filter, compressed, max_events, max_bytes)
            else:  # fell behind the ring: read the next chunk from the log instead
                payloads, new = log.read_after(start, wanted, dids, compressed, max_events)
                if new == start:  # the log holds nothing after start (trimmed): resume at the floor
                    new = ring.floor_time_us
            position.advance(start, new)
            results.append((payloads, new))
        assert all(result == results[0] for result in results[1:])
        delivered.extend(results[0][0])

    def trim(cutoff):
        expired_unread.update(e.time_us for e in log.events if positions[0].value < e.time_us < cutoff)
        log.trim_older_than(cutoff)
        dropped = [ring.drop_before(cutoff) for ring in rings]
        assert all(count == dropped[0] for count in dropped)
        assert all(ring.floor_time_us == rings[0].floor_time_us for ring in rings)

    for op in operations:
        if op[0] == "append":
            for event in build_events(op[1], next_time_us):
                log.events.append(event)
                appended.append(event)
                for ring in rings:
                    ring.append(event)
                next_time_us = event.time_us + 1
        elif op[0] == "trim":
            trim(next_time_us - op[1])
        else:
            step(op[1], op[2])
    while positions[0].value < next_time_us - 1:
        step(3, 40)
    kept = [event for event in appended if event.time_us not in expired_unread]
    assert delivered == model_payloads(kept, 0, wanted, dids, compressed, 0)


# ---- real events from the corpus -----------------------------------------------------

def corpus_events(expected_v1_lines):
    compressor = zstandard.ZstdCompressor()
    events = []
    for index, line in enumerate(expected_v1_lines):
        doc = json.loads(line)
        kind = KIND_NAMES.index(doc["kind"])
        collection = doc["commit"]["collection"] if kind == KIND_COMMIT else ""
        events.append(Event(index + 1, doc["did"], kind, collection, line, compressor.compress(line)))
    return events


@pytest.mark.parametrize(
    "wanted, wanted_dids_count",
    [(None, 0), (["app.bsky.feed.like"], 0), (["app.bsky.graph.*", "app.bsky.feed.post"], 0), (None, 5), (["app.bsky.feed.repost"], 30)],
)
def test_corpus_events_filtered_through_ring_match_their_json(twin, expected_v1_lines, wanted, wanted_dids_count):
    LiveRing, EventFilter, _ = twin
    events = corpus_events(expected_v1_lines)
    kinds = {event.kind for event in events}
    assert {KIND_COMMIT, KIND_IDENTITY, KIND_ACCOUNT} <= kinds  # the corpus exercises the bypass
    dids = sorted({event.did for event in events})[:wanted_dids_count] or None
    ring = LiveRing(64)
    for event in events:
        ring.append(event)
    event_filter = EventFilter(wanted, dids)
    position, delivered = ring.floor_time_us, []
    while position < ring.newest_time_us:
        payloads, position = ring.read_after(position, event_filter, False, 16, 4_096)
        delivered += payloads
    expected = [
        line for line in expected_v1_lines[-64:]
        if model_wants(wanted, dids, json.loads(line)["did"], json.loads(line).get("commit", {}).get("collection", ""))
    ]
    assert delivered == expected
    assert expected or wanted_dids_count  # a filter that matches nothing here would prove little


def test_constructors_accept_the_documented_keywords(twin):
    LiveRing, EventFilter, Position = twin
    ring = LiveRing(capacity=4, floor_time_us=7, scan_limit=3)
    assert (ring.capacity, ring.floor_time_us, ring.scan_limit) == (4, 7, 3)
    event_filter = EventFilter(wanted_collections=["app.*"], wanted_dids=["did:plc:aaaa"])
    assert event_filter.matches("did:plc:aaaa", "app.x") and not event_filter.matches("did:plc:bbbb", "app.x")
    assert Position(time_us=5).value == 5


# --- Cython ring: what it holds is invisible to the garbage collector --------------------------

def _fresh_event(time_us: int) -> Event:
    # fresh objects per event (not interned constants), like the sequencer produces
    return Event(time_us, f"did:plc:{time_us:024d}", KIND_COMMIT, "app.bsky.feed.like",
                 b'{"time_us":%d}' % time_us, b"zstd-%d" % time_us)


@pytest.mark.skipif(cy_ring is None, reason="Cython core not built")
def test_cython_ring_adds_no_gc_tracked_objects_per_event():
    """A full ring of Event tuples made every full collection walk them (~60 ms at 200k)."""
    import gc
    ring = cy_ring.LiveRing(20_000)
    gc.collect()
    tracked_before = len(gc.get_objects())
    for time_us in range(1, 20_001):
        ring.append(_fresh_event(time_us))
    gc.collect()
    assert len(gc.get_objects()) - tracked_before < 100
    assert ring.event_at(0) == _fresh_event(1)  # the fields are all still there


@pytest.mark.skipif(cy_ring is None, reason="Cython core not built")
def test_cython_ring_releases_payloads_on_eviction_drop_and_dealloc():
    import sys
    ring = cy_ring.LiveRing(2)
    events = [_fresh_event(time_us) for time_us in (1, 2, 3, 4)]
    baseline = [sys.getrefcount(event.json) for event in events]
    for event in events[:3]:
        ring.append(event)  # the third evicts the first
    held = [sys.getrefcount(event.json) - before for event, before in zip(events, baseline)]
    assert held == [0, 1, 1, 0]
    ring.drop_before(3)
    assert [sys.getrefcount(event.json) - before for event, before in zip(events, baseline)] == [0, 0, 1, 0]
    del ring
    assert [sys.getrefcount(event.json) for event in events] == baseline


@pytest.mark.skipif(cy_ring is None, reason="Cython core not built")
@pytest.mark.parametrize("bad", [
    _fresh_event(1)._replace(json=bytearray(b"{}")),
    _fresh_event(1)._replace(did=None),
    _fresh_event(1)._replace(collection=type("NSID", (str,), {})("app.bsky.feed.like")),
])
def test_cython_ring_refuses_fields_it_could_not_hold_untracked(bad):
    with pytest.raises(TypeError):
        cy_ring.LiveRing(4).append(bad)


# ---- sync events (includeSync) -------------------------------------------------------

def test_sync_events_are_scanned_past_but_returned_only_with_include_sync(twin):
    from jetstream.events import KIND_SYNC

    LiveRing, EventFilter, _ = twin
    ring = LiveRing(16)
    kinds = [KIND_COMMIT, KIND_SYNC, KIND_IDENTITY, KIND_SYNC, KIND_COMMIT]
    for index, kind in enumerate(kinds):
        collection = "app.bsky.feed.post" if kind == KIND_COMMIT else ""
        ring.append(Event(10 + index, "did:plc:aaaa", kind, collection, b"e%d" % index, b"z%d" % index))
    for event_filter in (None, EventFilter(None, frozenset()), EventFilter(("app.bsky.feed.like",), frozenset())):
        hidden, position = ring.read_after(9, event_filter, False, 100, 1 << 20)
        shown, shown_position = ring.read_after(9, event_filter, False, 100, 1 << 20, 0, True)
        assert position == shown_position == 14  # sync events move the position either way
        want_commits = event_filter is None or event_filter.wants_all
        assert hidden == ([b"e0", b"e2", b"e4"] if want_commits else [b"e2"])
        assert shown == ([b"e0", b"e1", b"e2", b"e3", b"e4"] if want_commits else [b"e1", b"e2", b"e3"])
    # a batch of only sync events, hidden: nothing sent, the position still reaches them
    assert ring.read_after(10, None, True, 100, 1 << 20) == ([b"z2", b"z4"], 14)
    assert ring.read_after(10, None, False, 1, 1 << 20) == ([b"e2"], 12)


# ---- seq per entry ---------------------------------------------------------------------

@given(st.lists(st.integers(1, 50), min_size=1, max_size=60), st.integers(1, 20))
@settings(max_examples=50, deadline=None)
def test_property_both_twins_hold_each_events_seq_in_lockstep_through_eviction(steps, capacity):
    """seq_at and event_at(...).seq give the appended Event's seq in both twins, as entries are evicted."""
    if TWINS["cython"][0] is None:
        pytest.skip("Cython core not built")
    rings = [TWINS[name][0](capacity) for name in ("py", "cython")]
    times = list(accumulate(steps))
    for index, time_us in enumerate(times):
        event = make_event(time_us)._replace(seq=1000 + index)
        for ring in rings:
            ring.append(event)
        held = [[ring.seq_at(i) for i in range(len(ring))] for ring in rings]
        assert held[0] == held[1] == list(range(1000 + index + 1 - len(rings[0]), 1000 + index + 1))
        assert [ring.event_at(len(ring) - 1) for ring in rings] == [event, event]


def test_an_event_appended_without_seq_reads_back_seq_0(twin):
    LiveRing = twin[0]
    ring = LiveRing(4)
    ring.append(tuple(make_event(5))[:6] if LiveRing is not py_ring.LiveRing else make_event(5))
    assert ring.seq_at(0) == 0


# ---- the v2 wire: v2 frames, the kinds axis -------------------------------------------

def v2_event(event: Event, kind: int, has_frame: bool) -> Event:
    """`event` as kind `kind` (collection only for commits) with a v2 frame of its own size, or none."""
    v2 = b"v2|%d|" % event.time_us + b"f" * (len(event.json) % 7) if has_frame else b""
    return Event(event.time_us, event.did, kind, event.collection if kind == KIND_COMMIT else "", event.json,
                 event.zstd, event.time_us, v2, b"Z" + v2[:3] if v2 else b"")


@settings(max_examples=150, deadline=None)
@given(
    specs=st.lists(event_spec, max_size=60),
    kinds_of=st.lists(st.sampled_from([KIND_COMMIT, KIND_COMMIT, KIND_IDENTITY, KIND_ACCOUNT, 3]), min_size=60,
                      max_size=60),
    frames_of=st.lists(st.booleans(), min_size=60, max_size=60),
    capacity=st.integers(1, 25),
    scan_limit=st.integers(1, 9),
    wanted=wanted_strategy,
    dids=dids_strategy,
    kinds=st.sampled_from([None, frozenset({KIND_COMMIT}), frozenset({KIND_IDENTITY, 3}), frozenset({KIND_ACCOUNT})]),
    compressed=st.booleans(),
    max_events=st.integers(1, 5),
    max_message_size=st.sampled_from([0, 0, 12, 16]),
)
def test_v2_readers_get_the_v2_frames_of_the_wanted_kinds_and_twins_agree(
    specs, kinds_of, frames_of, capacity, scan_limit, wanted, dids, kinds, compressed, max_events, max_message_size
):
    events = [v2_event(event, kind, frames_of[index] or index % 5 != 0)
              for index, (event, kind) in enumerate(zip(build_events(specs), kinds_of))]
    deliveries = []
    for name in sorted(TWINS):
        LiveRing, EventFilter, _ = TWINS[name]
        if LiveRing is None:
            continue
        ring = LiveRing(capacity, scan_limit=scan_limit)
        for event in events:
            ring.append(event)
        event_filter = EventFilter(wanted, dids, kinds)
        start, delivered = ring.floor_time_us, []
        position = start
        while position < ring.newest_time_us:
            payloads, position = ring.read_after(position, event_filter, compressed, max_events, 1 << 20,
                                                 max_message_size, True, True)
            delivered += payloads
        expected = [(e.v2_zstd if compressed else e.v2) for e in events
                    if e.time_us > start and e.v2 and (kinds is None or e.kind in kinds)
                    and model_wants(wanted, dids, e.did, e.collection)
                    and not (0 < max_message_size < len(e.v2))]
        assert delivered == expected, name
        deliveries.append(delivered)
        # the ring keeps the frames it was given (not the stored v2 record) and gives them back
        assert [(e.v2, e.v2_zstd) for e in ring] == [(e.v2, e.v2_zstd) for e in events[len(events) - len(ring):]]
    assert all(delivered == deliveries[0] for delivered in deliveries)
