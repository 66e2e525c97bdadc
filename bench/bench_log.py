"""Benchmarks for the event log, the sequencer and event compression.

Run: `.venv/bin/python bench/bench_log.py` (prints rates and ratios), or
`.venv/bin/python -m pytest bench/bench_log.py --benchmark-enable`.
Each rate is printed beside a baseline measured in the same run:
- append: our EventLog.append vs a raw rocksdict WriteBatch of the same bytes
  (the cost of headers, order checks and meta keys);
- read_after: ours (decoded LogRows) vs a raw iterator walk over the same column family;
- compression: µs/event with the corpus dictionary vs without.
Events are the corpus's v1 JSON lines with fresh time_us values, cycled.
"""
from __future__ import annotations

import re
import sys
import time
from itertools import cycle, islice
from pathlib import Path

import pytest
from rocksdict import WriteBatch

if __name__ == "__main__":  # run as a script: the checkout may not be on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jetstream.compression import EventCompressor
from jetstream.events import Event, PendingEvent
from jetstream.ingest.sequencer import Sequencer
from jetstream.log.rows import encode_key
from jetstream.log.store import EventLog

REPO_ROOT = Path(__file__).resolve().parents[1]
CORPUS_DIR = REPO_ROOT / "tests" / "data"
_V1_LINE = re.compile(rb'^(\{"did":"([^"]*)","time_us":)\d+(,"kind":"(\w+)".*?)$', re.S)
_COLLECTION = re.compile(rb'"collection":"([^"]*)"')
_KINDS = {b"commit": 0, b"identity": 1, b"account": 2}


def report(name: str, value: float, unit: str, baseline: float | None = None) -> None:
    ratio = f"  ratio_vs_baseline={value / baseline:.2f}" if baseline else ""
    print(f"\nbench={name} value={value:,.1f} unit={unit}{ratio}", flush=True)


@pytest.fixture(scope="module")
def corpus_lines() -> list[bytes]:
    path = CORPUS_DIR / "expected_v1.jsonl"
    if not path.exists():
        pytest.skip(f"corpus not found at {CORPUS_DIR}")
    return path.read_bytes().splitlines()


@pytest.fixture(scope="module")
def corpus_pending(corpus_lines) -> list[PendingEvent]:
    pending = []
    for line in corpus_lines:
        head, did, tail, kind = _V1_LINE.match(line).groups()
        collection = _COLLECTION.search(tail)
        collection_name = collection.group(1).decode() if kind == b"commit" else ""
        pending.append(PendingEvent(did.decode(), _KINDS[kind], collection_name, head, tail))
    return pending


def make_events(pending: list[PendingEvent], count: int, start_time_us: int) -> list[Event]:
    clock = iter(range(start_time_us, start_time_us + 2 * count + 2))
    return Sequencer(start_time_us - 1, lambda: next(clock)).sequence(list(islice(cycle(pending), count)),
                                                                        EventCompressor())


def raw_batch_seconds(event_log: EventLog, events: list[Event]) -> float:
    """Time to write the same key/value bytes with a bare WriteBatch (no header, no checks)."""
    started = time.perf_counter()
    batch = WriteBatch(raw_mode=True)
    for event in events:
        key = encode_key(event.time_us)
        batch.put(key, event.json, event_log._events_handle)
        batch.put(key, event.zstd, event_log._events_zstd_handle)
    event_log._db.write(batch, event_log._write_options)
    return time.perf_counter() - started


@pytest.mark.parametrize("batch_size", [1, 64, 512])
def test_append_throughput(benchmark, tmp_path, corpus_pending, batch_size):
    rounds = max(20, 20_000 // batch_size)
    events = make_events(corpus_pending, batch_size * (rounds + 2) * 2, 1_000_000)
    batches = iter([events[i:i + batch_size] for i in range(0, len(events), batch_size)])
    with EventLog(str(tmp_path / "log")) as event_log, EventLog(str(tmp_path / "raw")) as raw_log:
        relay_cursor = iter(range(10**9))
        if benchmark.disabled:
            benchmark(lambda: event_log.append(next(batches), next(relay_cursor)))
            return
        benchmark.pedantic(lambda batch: event_log.append(batch, next(relay_cursor)),
                           setup=lambda: ((next(batches),), {}), rounds=rounds, iterations=1)
        ours = batch_size / benchmark.stats.stats.median
        raw_seconds = sorted(raw_batch_seconds(raw_log, next(batches)) for _ in range(rounds))
        raw = batch_size / raw_seconds[len(raw_seconds) // 2]
    benchmark.extra_info.update(events_per_s=ours, raw_events_per_s=raw)
    report(f"append_batch_{batch_size}", ours, "events/s", baseline=raw)


@pytest.mark.parametrize("compressed", [False, True], ids=["json", "zstd"])
def test_read_after_throughput(benchmark, tmp_path, corpus_pending, compressed):
    chunk = 10_000
    with EventLog(str(tmp_path / "log")) as event_log:
        events = make_events(corpus_pending, 3 * chunk, 1_000_000)
        for i in range(0, len(events), 512):
            event_log.append(events[i:i + 512], relay_cursor=i)
        after = events[chunk].time_us
        rows = benchmark(event_log.read_after, after, chunk, compressed)
        assert len(rows) == chunk
        if benchmark.disabled:
            return
        ours = chunk / benchmark.stats.stats.median
        column_family = event_log._events_zstd if compressed else event_log._events
        raw_times = []
        for _ in range(10):
            started = time.perf_counter()
            iterator = column_family.iter()
            iterator.seek(encode_key(after + 1))
            for _ in range(chunk):
                iterator.key(), iterator.value()
                iterator.next()
            raw_times.append(time.perf_counter() - started)
        raw = chunk / sorted(raw_times)[5]
    benchmark.extra_info.update(events_per_s=ours, raw_events_per_s=raw)
    report(f"read_after_{'zstd' if compressed else 'json'}", ours, "events/s", baseline=raw)


@pytest.mark.parametrize("use_dictionary", [False, True], ids=["no_dict", "legacy_dict"])
def test_compress_per_event(benchmark, corpus_lines, use_dictionary):
    dictionary = (CORPUS_DIR / "legacy_subscribe.zdict").read_bytes() if use_dictionary else None
    compressor = EventCompressor(dictionary)
    benchmark(lambda: [compressor.compress(line) for line in corpus_lines])
    if benchmark.disabled:
        return
    per_event_us = benchmark.stats.stats.median / len(corpus_lines) * 1e6
    ratio = sum(len(compressor.compress(line)) for line in corpus_lines) / sum(map(len, corpus_lines))
    benchmark.extra_info.update(us_per_event=per_event_us, size_ratio=ratio)
    report(f"compress_{'legacy_dict' if use_dictionary else 'no_dict'}", per_event_us, "us/event")
    report(f"compress_{'legacy_dict' if use_dictionary else 'no_dict'}_size_ratio", ratio * 100, "%_of_json")


def test_sequence_per_event(benchmark, corpus_pending):
    """time_us + render + compress (no dictionary), the sequencer's whole per-event cost."""
    sequencer, compressor = Sequencer(0), EventCompressor()
    benchmark(sequencer.sequence, corpus_pending, compressor)
    if not benchmark.disabled:
        report("sequence", benchmark.stats.stats.median / len(corpus_pending) * 1e6, "us/event")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-s", "--benchmark-enable", "-p", "no:cacheprovider",
                          "--benchmark-columns=median,ops,rounds"]))
