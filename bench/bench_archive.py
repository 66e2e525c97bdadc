"""Benchmark of the archive segment writer (jetstream/archive/) on corpus-like events.

Run: `.venv/bin/python bench/bench_archive.py [--events N]` (prints rates and ratios), or
`.venv/bin/python -m pytest bench/bench_archive.py --benchmark-enable`.
Events are the corpus's 152 v1 events turned back into what a segment stores (the record as
DAG-CBOR, the identity/account body as DAG-CBOR), cycled with fresh seqs and times; each round
gets its own DIDs, rkeys, revs and record createdAt, so zstd cannot just find the previous
round (bytes/event is still optimistic: a real block has 4096 different records).
Each rate is printed beside a baseline measured in the same run:
- write: SegmentWriter.add + seal (blocks of 4096, footer, fsync, rename) vs the floor of the same
  work: building the same block bodies and zstd-compressing them, nothing else;
- read: SegmentReader.iter_events over the sealed file vs zstd-decompressing its frames;
- bytes/event in the sealed segment.
Times are this process's CPU seconds (time.process_time), not wall time: the machine is shared,
and the one fsync at seal is not CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from itertools import cycle, islice
from pathlib import Path

import libipld
import pytest

if __name__ == "__main__":  # run as a script: the checkout may not be on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jetstream.archive import (
    KIND_ACCOUNT,
    KIND_CREATE,
    KIND_DELETE,
    KIND_IDENTITY,
    KIND_UPDATE,
    SegmentEvent,
    SegmentReader,
    SegmentWriter,
)
from jetstream.archive.format import decompress_frame, encode_block, new_compressor

REPO_ROOT = Path(__file__).resolve().parents[1]
CORPUS = REPO_ROOT / "tests" / "data" / "expected_v1.jsonl"
_OPERATIONS = {"create": KIND_CREATE, "update": KIND_UPDATE, "delete": KIND_DELETE}


def report(name: str, value: float, unit: str, baseline: float | None = None) -> None:
    ratio = f"  ratio_vs_baseline={value / baseline:.2f}" if baseline else ""
    print(f"\nbench={name} value={value:,.1f} unit={unit}{ratio}", flush=True)


def corpus_templates() -> list[tuple[SegmentEvent, dict | None]]:
    """(event, record or body to re-encode per round) for each corpus line."""
    out = []
    for line in CORPUS.read_bytes().splitlines():
        event = json.loads(line)
        did = event["did"]
        if event["kind"] == "commit":
            commit = event["commit"]
            record = commit.get("record")
            out.append((SegmentEvent(0, 0, 0, _OPERATIONS[commit["operation"]], did, commit["collection"],
                                     commit["rkey"], commit["rev"], b""), record))
        else:
            body = event[event["kind"]]
            kind = KIND_IDENTITY if event["kind"] == "identity" else KIND_ACCOUNT
            out.append((SegmentEvent(0, 0, 0, kind, did, "", "", "", b""), body))
    return out


def corpus_like(n: int) -> list[SegmentEvent]:
    base = 1_783_175_888_000_000
    templates = corpus_templates()
    events = []
    for i, (template, value) in enumerate(islice(cycle(templates), n)):
        round_tag = f"{i // len(templates):07x}"
        payload = b""
        if value is not None:
            value = dict(value)
            if "createdAt" in value:
                value["createdAt"] = f"2026-07-04T14:{i // 60000 % 60:02d}:{i // 1000 % 60:02d}.{i % 1000:03d}Z"
            payload = libipld.encode_dag_cbor(value)
        events.append(template._replace(
            seq=i + 1, witnessed_at=base + i * 20, did=template.did[:-7] + round_tag,
            rkey=template.rkey[:-7] + round_tag if len(template.rkey) == 13 else template.rkey,
            rev=template.rev[:-7] + round_tag if template.rev else "", payload=payload))
    return events


def write(events: list[SegmentEvent], directory: str) -> tuple[float, str]:
    path = os.path.join(directory, "seg_0000000000.jss")
    start = time.process_time()
    writer = SegmentWriter(path + ".tmp", events[0].seq)
    for event in events:
        writer.add(event)
    writer.seal()
    return time.process_time() - start, path


def compress_floor(events: list[SegmentEvent], block_events: int = 4096) -> float:
    compressor = new_compressor()
    start = time.process_time()
    for i in range(0, len(events), block_events):
        compressor.compress(encode_block(events[i:i + block_events]))
    return time.process_time() - start


def read(path: str) -> tuple[float, float, int]:
    start = time.process_time()
    with SegmentReader.open(path) as reader:
        count = sum(1 for _ in reader.iter_events())
    ours = time.process_time() - start
    with SegmentReader.open(path) as reader:
        frames = [reader.read_block_frame(i) for i in range(len(reader.blocks))]
    start = time.process_time()
    for frame in frames:
        decompress_frame(frame)
    return ours, time.process_time() - start, count


def run(n: int) -> dict:
    events = corpus_like(n)
    with tempfile.TemporaryDirectory() as directory:
        write_s, path = write(events, directory)
        floor_s = compress_floor(events)
        read_s, decompress_s, count = read(path)
        size = os.path.getsize(path)
    assert count == n
    results = {"write_events_per_s": n / write_s, "compress_floor_events_per_s": n / floor_s,
               "read_events_per_s": n / read_s, "decompress_floor_events_per_s": n / decompress_s,
               "bytes_per_event": size / n, "payload_bytes_per_event": sum(len(e.payload) for e in events) / n}
    report("archive_write", results["write_events_per_s"], "events/s", results["compress_floor_events_per_s"])
    report("archive_read", results["read_events_per_s"], "events/s", results["decompress_floor_events_per_s"])
    report("archive_bytes_per_event", results["bytes_per_event"], "bytes")
    report("archive_payload_bytes_per_event", results["payload_bytes_per_event"], "bytes")
    return results


def test_archive_writer_rate(benchmark):
    events = corpus_like(20_000)
    with tempfile.TemporaryDirectory() as directory:
        def once():
            for name in os.listdir(directory):
                os.unlink(os.path.join(directory, name))
            return write(events, directory)
        seconds, path = benchmark(once)
        assert SegmentReader.open(path).header.event_count == 20_000


@pytest.mark.parametrize("n", [5_000])
def test_archive_bench_runs(n):
    results = run(n)
    assert results["write_events_per_s"] > 0 and results["bytes_per_event"] > 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    run(parser.parse_args().events)
