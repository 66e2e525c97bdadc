"""Benchmark: filtered ring scans, ns per scanned event, Cython core vs its _py twin.

Owns: the numbers behind docs/architecture.md §4.7's "a filtered subscriber scanning 10k events costs
microseconds". Run: `.venv/bin/python bench/bench_core.py [--events N] [--repeats R]`.
It must never be part of the test suite's pass/fail; it only prints.

Each scenario fills a ring with a synthetic but production-shaped mix (likes dominate,
~1% identity/account, 20k distinct DIDs), then times one reader draining it from the
floor with read_after (scan_limit 65,536, unbounded events/bytes), best of R runs.
"""
from __future__ import annotations

import argparse
import random
import time

from jetstream._core import filter as cy_filter
from jetstream._core import ring as cy_ring
from jetstream._py import filter as py_filter
from jetstream._py import ring as py_ring
from jetstream.events import KIND_COMMIT, KIND_IDENTITY, Event

COLLECTION_MIX = [
    ("app.bsky.feed.like", 45), ("app.bsky.graph.follow", 15), ("app.bsky.feed.repost", 12),
    ("app.bsky.feed.post", 10), ("app.bsky.graph.block", 3), ("app.bsky.actor.profile", 2),
    ("app.bsky.graph.listitem", 2), ("chat.bsky.actor.declaration", 1), ("", 1),
] + [(f"com.example{i}.app.record", 1) for i in range(9)]


def synthetic_events(count: int, seed: int = 1) -> tuple[list[Event], list[str]]:
    rng = random.Random(seed)
    dids = [f"did:plc:{rng.getrandbits(120):024x}"[:32] for _ in range(20_000)]
    names, weights = zip(*COLLECTION_MIX)
    collections = rng.choices(names, weights, k=count)
    payload = b"x" * 300
    events = [
        Event(1_700_000_000_000_000 + i, rng.choice(dids), KIND_COMMIT if c else KIND_IDENTITY, c, payload,
              payload[:120])
        for i, c in enumerate(collections)
    ]
    return events, dids


def scenarios(dids: list[str]) -> dict[str, tuple]:
    rng = random.Random(2)
    hundred = [f"org.example{i}.feed.thing" for i in range(85)] + ["app.bsky.feed.post", "app.bsky.graph.block"]
    hundred += [f"net.example{i}.*" for i in range(12)] + ["app.bsky.graph.*"]
    wanted_dids = rng.sample(dids, 5_000) + [f"did:plc:{i:024d}" for i in range(5_000)]
    return {
        "unfiltered": (None, None),
        "1 collection": (["app.bsky.feed.post"], None),
        "100 collections+prefixes": (hundred, None),
        "10,000 DIDs": (None, wanted_dids),
    }


def drain_ns_per_event(ring, event_filter, repeats: int) -> tuple[float, int]:
    best, delivered = float("inf"), 0
    for _ in range(repeats):
        position, delivered = ring.floor_time_us, 0
        started = time.perf_counter_ns()
        while position < ring.newest_time_us:
            payloads, position = ring.read_after(position, event_filter, False, 1 << 30, 1 << 40)
            delivered += len(payloads)
        best = min(best, time.perf_counter_ns() - started)
    return best / len(ring), delivered


def append_ns_per_event(LiveRing, events, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        ring = LiveRing(len(events))
        started = time.perf_counter_ns()
        for event in events:
            ring.append(event)
        best = min(best, time.perf_counter_ns() - started)
    return best / len(events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    events, dids = synthetic_events(args.events)
    twins = {"cython": (cy_ring.LiveRing, cy_filter.EventFilter), "py": (py_ring.LiveRing, py_filter.EventFilter)}
    rings = {}
    for name, (LiveRing, _) in twins.items():
        rings[name] = LiveRing(len(events))
        for event in events:
            rings[name].append(event)
    print(f"ring of {len(events):,} events; ns per scanned event (best of {args.repeats})")
    print(f"{'scenario':<28}{'cython':>10}{'py':>10}{'py/cy':>8}{'delivered':>11}{'10k-scan µs (cy)':>18}")
    for label, (wanted, wanted_dids) in scenarios(dids).items():
        results = {}
        for name, (_, EventFilter) in twins.items():
            event_filter = EventFilter(wanted, wanted_dids) if (wanted or wanted_dids) else None
            results[name] = drain_ns_per_event(rings[name], event_filter, args.repeats)
        (cy_ns, cy_count), (py_ns, py_count) = results["cython"], results["py"]
        assert cy_count == py_count, (label, cy_count, py_count)
        print(f"{label:<28}{cy_ns:>10.1f}{py_ns:>10.1f}{py_ns / cy_ns:>8.1f}{cy_count:>11,}"
              f"{cy_ns * 10_000 / 1000:>18.1f}")
    cy_append = append_ns_per_event(twins["cython"][0], events, 3)
    py_append = append_ns_per_event(twins["py"][0], events, 3)
    print(f"{'append (per event)':<28}{cy_append:>10.1f}{py_append:>10.1f}{py_append / cy_append:>8.1f}")


if __name__ == "__main__":
    main()
