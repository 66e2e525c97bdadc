"""The reader's decision function (subscriber.read_next_batch) against a model.

The model is a sorted list of the events appended so far and the filter in force; the
expected stream is computed here with the test's own matcher (not the project's filter),
from the positions the reader reports. Hypothesis interleaves appends (a burst of appends
between reads is a slow drain: the small ring evicts and the reader must fall back to the
real RocksDB log), reads with random budgets, options updates (filter and
maxMessageSizeBytes), and TTL trim passes (log, then ring, at one cutoff: the expired events
leave the model too). Both core twins run: Cython ring+filter and the _py ones; and the
--workers arrangement ("cython-worker"): the ring is fed from a RocksDB secondary of the log by
a worker's RingFeeder after each durable batch, and the reader reads that secondary.
"""
from __future__ import annotations

import itertools
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jetstream.implementation as core
from jetstream._py.filter import EventFilter as PyEventFilter
from jetstream._py.ring import LiveRing as PyLiveRing
from jetstream.events import KIND_COMMIT, KIND_IDENTITY, Event
from jetstream.log.store import EventLog
from jetstream.log.ttl import TtlTrimmer
from jetstream.server.subscriber import read_next_batch
from jetstream.workers.secondary import RingFeeder, SecondaryEventLog
from tests.cutover.cutover_helpers import wanted

pytestmark = pytest.mark.timeout(120)

TWINS = {"cython": (core.LiveRing, core.EventFilter), "python": (PyLiveRing, PyEventFilter),
         "cython-worker": (core.LiveRing, core.EventFilter)}
COLLECTIONS = ("app.bsky.feed.post", "app.bsky.feed.like", "app.bsky.graph.follow", "com.example.thing", "")
DIDS = ("did:plc:aaa", "did:plc:bbb", "did:plc:ccc")
RING_CAPACITY = 16
SCAN_LIMIT = 7  # below the ring size, so a sparse filter needs several steps to cross it


filter_specs = st.tuples(
    st.lists(st.sampled_from(("app.bsky.feed.post", "app.bsky.graph.follow", "app.bsky.*", "app.bsky.feed.*",
                              "com.example.*", "nothing.matches")), max_size=3),
    st.lists(st.sampled_from(DIDS), max_size=2),
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 40)),
        st.tuples(st.just("read"), st.integers(1, 600)),
        st.tuples(st.just("update"), filter_specs, st.sampled_from((0, 0, 40))),
        st.tuples(st.just("trim"), st.integers(0, 50)),  # TTL pass keeping about the newest N events
    ),
    max_size=40,
)


class Model:
    """The appended events in order; what the log and ring were fed."""

    def __init__(self, event_log: EventLog, ring, clock, feeder: RingFeeder | None = None) -> None:
        self.event_log, self.ring, self.clock = event_log, ring, clock
        self.feeder = feeder  # a worker's: the ring is fed from the log's secondary, not by append
        self.events: list[Event] = []

    def append(self, count: int, rng) -> None:
        batch = []
        for _ in range(count):
            time_us = next(self.clock)
            collection = COLLECTIONS[rng.randrange(len(COLLECTIONS))]
            body = b'{"time_us":%d,"pad":"%s"}' % (time_us, b"x" * rng.randrange(60))
            batch.append(Event(time_us, DIDS[rng.randrange(len(DIDS))], KIND_COMMIT if collection else KIND_IDENTITY,
                               collection, body, b"z" + body))
        self.event_log.append(batch, relay_cursor=None)  # durable before visible, as the pipeline does
        if self.feeder is not None:
            self.feeder.wake(batch[-1].time_us)  # the main process's wake-up after the durable batch
        else:
            for event in batch:
                self.ring.append(event)
        self.events.extend(batch)

    def trim(self, keep: int) -> None:
        """One TtlTrimmer pass whose cutoff leaves about the newest `keep` events (the clock
        is a float, so the cutoff is read back from the trimmer rather than assumed)."""
        if not self.events:
            return
        cutoff_us = self.events[-keep].time_us if 0 < keep <= len(self.events) else self.events[-1].time_us + 1
        trimmer = TtlTrimmer(self.event_log, 1.0, 1.0, clock_s=lambda: cutoff_us / 1e6 + 1.0,
                             ring=None if self.feeder else self.ring)
        cutoff_us = trimmer.cutoff_time_us()
        if self.feeder is None:
            assert trimmer.trim_once()
        else:  # the --workers order: delete, every worker's view catches up, compact; a worker's timer drops its ring
            passed, trimmed = trimmer._delete_expired()
            assert passed
            self.feeder.wake(None)
            if trimmed is not None:
                trimmer._compact(trimmed)
            self.ring.drop_before(cutoff_us)
        self.events = [event for event in self.events if event.time_us >= cutoff_us]
        assert all(event.time_us >= cutoff_us for event in self.ring)

    def expected(self, after: int, up_to: int, spec, max_size: int, compressed: bool) -> list[bytes]:
        payloads = []
        for event in self.events:
            if after < event.time_us <= up_to and wanted(spec, event.did, event.collection):
                payload = event.zstd if compressed else event.json
                if not 0 < max_size < len(payload):
                    payloads.append(payload)
        return payloads


@pytest.fixture(scope="module")
def shared_log():
    # One real RocksDB log for every example: each example appends above the last one's
    # events, and starts its reader at or after its own first event.
    with tempfile.TemporaryDirectory() as directory:
        event_log = EventLog(directory + "/log")
        yield event_log, itertools.count(1_700_000_000_000_000, 3)
        event_log.close()


@pytest.fixture(scope="module")
def shared_secondary(shared_log):
    with tempfile.TemporaryDirectory() as directory:
        secondary = SecondaryEventLog(shared_log[0].path, directory)
        yield secondary
        secondary.close()


@pytest.mark.parametrize("twin", sorted(TWINS))
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations, initial=st.integers(0, 60), cursor_back=st.integers(0, 80), compressed=st.booleans(),
       first_spec=filter_specs, seed=st.integers(0, 2**32 - 1))
def test_reader_delivers_exactly_the_models_filtered_events(shared_log, shared_secondary, twin, ops, initial,
                                                            cursor_back, compressed, first_spec, seed):
    import random

    rng = random.Random(seed)
    ring_class, filter_class = TWINS[twin]
    event_log, clock = shared_log
    base = event_log.hwm()
    ring = ring_class(RING_CAPACITY, floor_time_us=base, scan_limit=SCAN_LIMIT)
    feeder = None
    reader_log = event_log
    if twin.endswith("-worker"):
        shared_secondary.catch_up()
        feeder = RingFeeder(shared_secondary, ring, lambda: None)
        reader_log = shared_secondary
    model = Model(event_log, ring, clock, feeder)
    model.append(initial, rng) if initial else None
    # A cursor somewhere in this example's history (or at its very start): replay, then live.
    back_index = max(0, len(model.events) - cursor_back)
    position = model.events[back_index - 1].time_us if back_index > 0 else base

    spec, max_size = first_spec, 0
    event_filter = filter_class(spec[0], spec[1])
    delivered: list[bytes] = []
    expected: list[bytes] = []

    def step(max_events: int) -> bool:
        nonlocal position
        batch = read_next_batch(position, model.ring, reader_log, event_filter, compressed, max_events, max_size)
        assert len(batch.payloads) <= max_events
        newest = model.ring.newest_time_us  # kept through trims, like the log's high-water mark
        assert position <= batch.position <= newest, "the position never moves back or past the newest event"
        assert batch.caught_up == (batch.position == newest and position == newest)
        expected.extend(model.expected(position, batch.position, spec, max_size, compressed))
        delivered.extend(batch.payloads)
        position = batch.position
        return batch.caught_up

    for op in ops:
        if op[0] == "append":
            model.append(op[1], rng)
        elif op[0] == "read":
            step(op[1])
        elif op[0] == "trim":
            model.trim(op[1])
        else:  # options_update: lands between two steps, position untouched
            spec, max_size = op[1], op[2]
            event_filter = filter_class(spec[0], spec[1])
    for _ in range(10_000):  # drain to the end: the reader must reach the newest event
        if step(rng.randrange(1, 600)):
            break
    else:
        pytest.fail("reader never caught up")
    assert delivered == expected
    assert position == model.ring.newest_time_us
