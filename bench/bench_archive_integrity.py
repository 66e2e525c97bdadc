"""What checking served bytes costs (jetstream/archive/integrity.py): first serve vs steady state.

    .venv/bin/python bench/bench_archive_integrity.py [--size-mib 256]

A segment of about --size-mib MiB whose records compress about 2.5x (a random part and a text
part), in blocks of 4,096 events as the daemon writes them, sits in a real archive directory.
In process: the check of the first 8 MiB slice (the SDK's first request) and of the whole segment
(a GET without Range), the scrub's re-read of the whole segment (scrub.py, unthrottled: its CPU
per segment), and the steady-state lookup once everything was checked. Through real
`jetstream serve` processes (page cache warm): time to the first byte of a whole-file GET on a
fresh daemon (every block checked before it), and a sweep in 8 MiB Range slices as the SDK does,
first on a fresh daemon (each slice checks its blocks) then again (everything checked).
"""
from __future__ import annotations

import argparse
import http.client
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jetstream.archive import KIND_CREATE, SegmentEvent, SegmentOptions, SegmentWriter, segment_name  # noqa: E402
from jetstream.archive.integrity import ServedBytes, check_whole  # noqa: E402
from jetstream.archive.manifest import Manifest  # noqa: E402

CHUNK = 8 << 20
WORDS = [f"word{i}" for i in range(2000)]


def build_segment(archive: Path, size_mib: int) -> Path:
    rng = random.Random(24)
    path = archive / segment_name(0)
    writer = SegmentWriter(str(path) + ".tmp", 1, SegmentOptions(block_events=4096, fsync=False))
    seq = 1
    while writer.size_bytes < size_mib << 20:
        text = " ".join(rng.choices(WORDS, k=110)).encode()
        writer.add(SegmentEvent(seq, seq, 0, KIND_CREATE, f"did:plc:{seq % 50000:024x}", "app.bsky.feed.post",
                                f"r{seq}", "rev", rng.randbytes(160) + text))
        seq += 1
    writer.seal()
    return path


def in_process(archive: Path) -> dict:
    manifest = Manifest(str(archive))
    manifest.scan()
    summary = manifest.segments[0]
    blocks = manifest.footer(summary).blocks
    out = {"size_mib": summary.size / 2**20, "blocks": len(blocks),
           "uncompressed_mib": sum(b.uncompressed_size for b in blocks) / 2**20}
    fd = os.open(summary.path, os.O_RDONLY)
    try:
        served = ServedBytes()
        start = time.perf_counter()
        served.run(served.plan(summary, blocks, 0, CHUNK), fd, summary)
        out["first_slice_ms"] = (time.perf_counter() - start) * 1000
        served = ServedBytes()
        start = time.perf_counter()
        served.run(served.plan(summary, blocks, 0, summary.size), fd, summary)
        out["whole_ms"] = (time.perf_counter() - start) * 1000
        # The scrub (scrub.py) reads the same version again whole, unthrottled here: its CPU per segment.
        start, cpu = time.perf_counter(), time.process_time()
        check_whole(fd, summary, blocks)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        out["scrub_whole_ms"] = wall * 1000
        out["scrub_cpu_ms"] = cpu * 1000
        out["scrub_mib_per_cpu_s"] = summary.size / 2**20 / max(1e-9, cpu)
        runs = 100_000
        start = time.perf_counter()
        for _ in range(runs):
            served.complete(summary)
        out["steady_lookup_ns"] = (time.perf_counter() - start) / runs * 1e9
    finally:
        os.close(fd)
    return out


def _get(port: int, headers: dict) -> tuple[int, float, int]:
    """(status, seconds to the first body byte, body bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    start = time.perf_counter()
    conn.request("GET", f"/xrpc/network.bsky.jetstream.getSegment?name={segment_name(0)}", headers=headers)
    response = conn.getresponse()
    first = response.read(1)
    ttfb = time.perf_counter() - start
    rest = len(first)
    while chunk := response.read(1 << 20):
        rest += len(chunk)
    conn.close()
    return response.status, ttfb, rest


def sweep(port: int, size: int) -> tuple[float, float]:
    """(MiB/s over the sweep in 8 MiB slices, the first slice's time to first byte in ms)."""
    start = time.perf_counter()
    offset = 0
    first_ms = 0.0
    while offset < size:
        status, ttfb, got = _get(port, {"Range": f"bytes={offset}-{offset + CHUNK - 1}"})
        assert status == 206, status
        if offset == 0:
            first_ms = ttfb * 1000
        offset += got
    return size / 2**20 / (time.perf_counter() - start), first_ms


def through_daemon(root: Path, archive: Path, size: int) -> dict:
    from tests.archive.serve_helpers import Serve

    out = {}
    server = Serve(root / "whole", "--archive-dir", str(archive), log_path=root / "whole.log")
    try:
        server.wait_ready()
        status, ttfb, got = _get(server.port, {})
        assert status == 200 and got == size
        out["whole_get_first_byte_ms"] = ttfb * 1000
        status, ttfb, _ = _get(server.port, {})
        out["whole_get_first_byte_checked_ms"] = ttfb * 1000
    finally:
        server.stop()
    server = Serve(root / "sweep", "--archive-dir", str(archive), log_path=root / "sweep.log")
    try:
        server.wait_ready()
        out["sweep_first_mib_s"], out["sweep_first_slice_ms"] = sweep(server.port, size)
        samples = [sweep(server.port, size) for _ in range(3)]
        out["sweep_checked_mib_s"] = max(s[0] for s in samples)
        out["sweep_checked_first_slice_ms"] = min(s[1] for s in samples)
    finally:
        server.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=256)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-archive-integrity-"))
    try:
        archive = root / "archive"
        archive.mkdir()
        path = build_segment(archive, args.size_mib)
        os.pread(os.open(path, os.O_RDONLY), 1, 0)
        result = in_process(archive)
        result.update(through_daemon(root, archive, path.stat().st_size))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for key, value in result.items():
        print(f"{key}: {value:.1f}" if isinstance(value, float) else f"{key}: {value}")


if __name__ == "__main__":
    main()
