"""LiveFanout / LiveSlot: the live fan-out step, Cython against its pure-Python twin, and a model.

Lockstep: the same ring contents, slots (filters, zstd, max message size, token buckets on
a manual clock, positions inside, at the end of and below the ring) and the same sequence
of batches and passes through both twins must write the same bytes, reach the same
positions and hand back the same readers. The model check parses every frame written
and compares the events each slot received with the filtered event list written out
longhand here: per slot, in order, nothing missing, nothing twice.
"""
from __future__ import annotations

import random

import pytest

from jetstream._py import fanout as py_fanout
from jetstream._py import filter as py_filter
from jetstream._py import position as py_position
from jetstream._py import ring as py_ring
from jetstream.events import KIND_ACCOUNT, KIND_COMMIT, KIND_SYNC, Event
from jetstream.server.ratelimit import TokenBucket
from tests.core.test_core_filter import COLLECTIONS, DIDS, model_wants
from tests.core.test_core_frames import parse_frames

try:
    from jetstream._core import fanout as cy_fanout
    from jetstream._core import filter as cy_filter
    from jetstream._core import position as cy_position
    from jetstream._core import ring as cy_ring
except ImportError:  # pragma: no cover - only when the extensions are not built
    cy_fanout = cy_filter = cy_position = cy_ring = None

PY = (py_fanout, py_filter, py_position, py_ring)
CY = (cy_fanout, cy_filter, cy_position, cy_ring)
needs_cython = pytest.mark.skipif(cy_fanout is None, reason="Cython extensions not built (make build)")


def test_step_bounds_match_the_readers_own_step():
    from jetstream.server import subscriber

    assert (py_fanout.STEP_MAX_EVENTS, py_fanout.STEP_MAX_BYTES) == (subscriber.STEP_MAX_EVENTS,
                                                                     subscriber.STEP_MAX_BYTES)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Owner:
    """Stands in for the SubscriberListener: records what the fan-out asks of it."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.conflicts: list[tuple[int, int]] = []

    def position_conflict(self, start: int, new: int) -> None:
        self.conflicts.append((start, new))


def make_events(rng: random.Random, first_time_us: int, count: int) -> list[Event]:
    events, time_us = [], first_time_us
    for _ in range(count):
        time_us += rng.randint(1, 5)
        kind = rng.choice((KIND_COMMIT, KIND_COMMIT, KIND_COMMIT, KIND_ACCOUNT, KIND_SYNC))
        collection = rng.choice(COLLECTIONS[:-3]) if kind == KIND_COMMIT else ""
        size = rng.choice((5, 40, 130, 300, 70_000)) if rng.random() < 0.05 else rng.randint(5, 200)
        json = b'{"t":%d,"pad":"%s"}' % (time_us, b"x" * size)
        # The v2 frame (sized apart from the JSON, so v2's size cap is checked on its own) or none.
        v2 = b"" if rng.random() < 0.1 else b'{"v2":%d,"p":"%s"}' % (time_us, b"y" * rng.randint(5, 300))
        v2_zstd = b"V%d" % time_us + b"v" * (len(v2) // 4) if v2 else b""
        events.append(Event(time_us, rng.choice(DIDS[:-1]), kind, collection, json, b"Z%d" % time_us + b"z" * (size // 3),
                            0, v2, v2_zstd))
    return events


def slot_configs(rng: random.Random, count: int) -> list[dict]:
    configs = []
    for _ in range(count):
        configs.append(dict(
            wanted=rng.choice([None, ["app.bsky.feed.post"], ["app.bsky.*"], ["com.example.thing", "a.b"]]),
            dids=rng.choice([None, None, [DIDS[0]], DIDS[1:3]]),
            compressed=rng.random() < 0.3,
            max_message_size=rng.choice([0, 0, 0, 100, 250]),
            rate=rng.choice([None, None, 50.0, 400.0]),
            start=rng.choice(["newest", "behind", "floor"]),
            include_sync=rng.random() < 0.3,
            v2=rng.random() < 0.4,  # the v2 wire: v2 frames, every kind (sync too), the kinds axis
            kinds=rng.choice([None, None, {KIND_COMMIT}, {KIND_ACCOUNT, KIND_SYNC}]),
        ))
        if configs[-1]["v2"]:
            configs[-1]["include_sync"] = True
        else:
            configs[-1]["kinds"] = None
    return configs


class Side:
    """One twin's ring, fan-out and slots, driven by the test."""

    def __init__(self, twin, configs: list[dict], capacity: int, floor_time_us: int) -> None:
        fanout, filters, positions, rings = twin
        self.ring = rings.LiveRing(capacity, floor_time_us=floor_time_us)
        self.fanout = fanout.LiveFanout(max_events=64, max_bytes=16 * 1024)
        self.filters, self.positions, self.configs = filters, positions, configs
        self.clock = Clock()
        self.written: list[list[bytes]] = [[] for _ in configs]
        self.owners = [Owner(i) for i in range(len(configs))]
        self.slots = []
        self.events: list[Event] = []  # everything appended, also what the ring has evicted since
        self.starts: list[int] = []
        self.handed_back: list[list[int]] = []

    def append(self, events: list[Event]) -> None:
        self.events += events
        for event in events:
            self.ring.append(event)

    def join_all(self) -> None:
        for index, config in enumerate(self.configs):
            start = {"newest": self.ring.newest_time_us, "floor": self.ring.floor_time_us,
                     "behind": (self.ring.floor_time_us + self.ring.newest_time_us) // 2}[config["start"]]
            bucket = None if config["rate"] is None else TokenBucket(config["rate"], config["rate"], self.clock)
            self.starts.append(start)
            slot = self._slot_class()(
                self.owners[index], self.positions.Position(start), self.written[index].append, bucket,
                config["compressed"], config["v2"])
            wants_filter = config["wanted"] or config["dids"] or config["kinds"]
            event_filter = self.filters.EventFilter(config["wanted"], config["dids"], config["kinds"])
            slot.set_options(event_filter if wants_filter else None, config["max_message_size"],
                             config["include_sync"])
            self.slots.append(slot)
            self.fanout.join(slot)

    def _slot_class(self):
        import importlib
        return importlib.import_module(type(self.fanout).__module__).LiveSlot

    def step(self) -> None:
        self.handed_back.append(sorted(owner.index for owner in self.fanout.step(self.ring)))

    def rejoin(self, indices: list[int]) -> None:
        for index in indices:
            self.fanout.join(self.slots[index])

    def state(self):
        return ([slot.position for slot in self.slots], [slot.live for slot in self.slots],
                [(slot.sent_events, slot.sent_bytes, slot.steps) for slot in self.slots],
                [b"".join(chunks) for chunks in self.written], self.handed_back, self.fanout.passes)


def drive(twin, seed: int) -> Side:
    rng = random.Random(seed)
    configs = slot_configs(rng, 12)
    first = make_events(rng, 1_000, 150)
    side = Side(twin, configs, capacity=400, floor_time_us=first[0].time_us - 1)
    side.append(first)
    side.join_all()
    time_us = first[-1].time_us
    for _ in range(25):
        batch = make_events(rng, time_us, rng.choice((0, 1, 3, 8, 40)))
        time_us = batch[-1].time_us if batch else time_us
        side.append(batch)
        side.clock.now += rng.choice((0.0, 0.01, 0.5))
        side.step()
        # The owner's own reader would catch up a handed-back slot; here it simply rejoins,
        # sometimes at once, sometimes a pass later, so both paths of `join` are exercised.
        if rng.random() < 0.7:
            side.rejoin(side.handed_back[-1])
        if rng.random() < 0.1:
            side.slots[rng.randrange(len(side.slots))].leave()
    return side


@needs_cython
@pytest.mark.parametrize("seed", range(30))
def test_cython_and_python_twins_step_in_lockstep(seed):
    assert drive(CY, seed).state() == drive(PY, seed).state()


@pytest.mark.parametrize("twin", [PY, pytest.param(CY, marks=needs_cython)], ids=["py", "cy"])
@pytest.mark.parametrize("seed", range(10))
def test_each_slot_gets_its_filtered_events_in_order_without_gap_or_duplicate(twin, seed):
    side = drive(twin, seed)
    for index, (config, slot) in enumerate(zip(side.configs, side.slots)):
        frames = parse_frames(b"".join(side.written[index]))
        opcodes = {opcode for opcode, _, _ in frames}
        assert opcodes <= {0x2 if config["compressed"] else 0x1}
        field = 5 if config["compressed"] else 4
        size_field = field
        if config["v2"]:
            field, size_field = (8 if config["compressed"] else 7), 7
        got = [payload for _, _, payload in frames]
        assert len(got) == slot.sent_events
        # What the slot was owed: events after its start up to its final position, filtered longhand.
        expected = [event[field] for event in side.events
                    if side.starts[index] < event.time_us <= slot.position
                    and model_wants(config["wanted"], config["dids"], event.did, event.collection)
                    and (config["kinds"] is None or event.kind in config["kinds"])
                    and not (config["v2"] and not event.v2)
                    and not (0 < config["max_message_size"] < len(event[size_field]))
                    and (event.kind != KIND_SYNC or config["include_sync"])]
        assert got == expected, f"slot {index} {config}"


def test_an_advance_the_slot_did_not_start_from_is_refused_and_reported_to_the_owner():
    twin = PY if cy_fanout is None else CY
    fanout, filters, positions, rings = twin
    ring = rings.LiveRing(10, floor_time_us=0)
    for time_us in (1, 2, 3):
        ring.append(Event(time_us, "did:plc:aaaa", KIND_COMMIT, "app.x", b"{}", b"z"))
    owner, written = Owner(0), []

    class SecondWriter:
        """A sink whose write moves the shared position, as a second reader of it would."""

        def __call__(self, data: bytes) -> None:
            written.append(data)
            position.advance(position.value, 2)

    position = positions.Position(0)
    slot = fanout.LiveSlot(owner, position, SecondWriter())
    fan = fanout.LiveFanout()
    fan.join(slot)
    assert fan.step(ring) == []
    assert owner.conflicts == [(0, 3)]
    assert position.value == 2 and not slot.live


@pytest.mark.parametrize("twin", [PY, pytest.param(CY, marks=needs_cython)], ids=["py", "cy"])
def test_a_slot_below_the_ring_or_out_of_tokens_is_handed_back_and_one_left_is_dropped(twin):
    fanout, filters, positions, rings = twin
    ring = rings.LiveRing(3, floor_time_us=0)
    for time_us in range(1, 7):  # capacity 3: floor rises to 3
        ring.append(Event(time_us, "did:plc:aaaa", KIND_COMMIT, "app.x", b"{}", b"z"))
    clock = Clock()
    below, broke, gone, fine = Owner(0), Owner(1), Owner(2), Owner(3)
    slots = [fanout.LiveSlot(below, positions.Position(1), lambda data: None),
             fanout.LiveSlot(broke, positions.Position(4), lambda data: None, TokenBucket(1, 1, clock)),
             fanout.LiveSlot(gone, positions.Position(4), lambda data: None),
             fanout.LiveSlot(fine, positions.Position(4), lambda data: None)]
    fan = fanout.LiveFanout()
    for slot in slots:
        fan.join(slot)
    slots[2].leave()
    assert fan.step(ring) == [below, broke]
    assert [slot.position for slot in slots] == [1, 5, 4, 6]  # one token: one event for `broke`
    assert [slot.live for slot in slots] == [False, False, False, True]
    assert fan.listed == 1


def test_a_sink_that_is_neither_a_transport_nor_callable_is_refused():
    for fanout in [py_fanout] + ([cy_fanout] if cy_fanout else []):
        with pytest.raises(TypeError):
            fanout.LiveSlot(Owner(0), py_position.Position(0) if fanout is py_fanout else cy_position.Position(0),
                            b"not a sink")


@pytest.mark.parametrize("twin", [PY, pytest.param(CY, marks=needs_cython)], ids=["py", "cy"])
def test_a_turn_that_raises_forgets_no_slot_and_the_next_pass_serves_them_all(twin):
    fanout, filters, positions, rings = twin
    ring = rings.LiveRing(10, floor_time_us=0)
    ring.append(Event(1, "did:plc:aaaa", KIND_COMMIT, "app.x", b"{}", b"z"))
    written: list[list[bytes]] = [[], [], []]
    failures = [1]

    def failing_once(data: bytes) -> None:
        if failures:
            failures.pop()
            raise OSError("socket went away mid-write")
        written[1].append(data)

    out_of_tokens = Owner(0)
    slots = [fanout.LiveSlot(out_of_tokens, positions.Position(0), written[0].append, TokenBucket(1, 1, Clock())),
             fanout.LiveSlot(Owner(1), positions.Position(0), failing_once),
             fanout.LiveSlot(Owner(2), positions.Position(0), written[2].append)]
    ring.append(Event(2, "did:plc:aaaa", KIND_COMMIT, "app.x", b"{}", b"z"))  # two events: one token is short
    fan = fanout.LiveFanout()
    for slot in slots:
        fan.join(slot)
    with pytest.raises(OSError):
        fan.step(ring)
    assert fan.listed == 3 and all(slot.live for slot in slots)
    assert fan.step(ring) == [out_of_tokens]
    assert [slot.position for slot in slots] == [1, 2, 2]
    assert [len(chunks) for chunks in written] == [1, 1, 1]
