"""The archive's read side (issue 24): planSnapshot latency over 1,000 segments, getSegment throughput.

    .venv/bin/python bench/bench_archive_serve.py [--segments 1000] [--runs 300] [--skip-plan] [--skip-serve]

planSnapshot: 1,000 sealed segments (8 blocks of 128 events each, DIDs drawn from a pool of
200,000), planned for one DID that is in ~2% of the segments (a typical account) and for one
that is in every segment (the worst case: every block bloom consulted), with the footer cache
warm (every footer resident) and cold (--archive-footer-cache-bytes 0: one 64-byte read of the
segment bloom per segment, footers read for the segments that may hold the DID). p50/p99 of the
plan call, in milliseconds of wall time on the shared 2-core machine.

getSegment: a 64 MiB segment of incompressible payloads fetched from a real `jetstream serve` as
the SDK does (Range slices of 8 MiB, one connection each) vs reading the same file in 8 MiB
preads, both from the page cache: wall MiB/s (client and server share the machine, so the
Python client's own receive cost is in it), and MiB per CPU-second of the server process (what
one server core can send when the clients are elsewhere). Both for the sendfile threads (the
default) and the streamed path (--archive-send-threads 0), in the same run.
"""
from __future__ import annotations

import argparse
import http.client
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jetstream.archive import KIND_CREATE, SegmentEvent, SegmentOptions, SegmentWriter, segment_name  # noqa: E402
from jetstream.archive.manifest import Manifest  # noqa: E402
from jetstream.archive.planner import PlanRequest, plan_snapshot  # noqa: E402

POOL = 200_000
RARE_DID = "did:plc:rarerarerarerarerarerare"
EVERYWHERE_DID = "did:plc:everywhereeverywhereever"
CHUNK = 8 * 1024 * 1024


def pool_did(i: int) -> str:
    return f"did:plc:{i:024x}"


def build_segments(directory: str, segments: int, blocks: int = 8, block_events: int = 128, seed: int = 7) -> None:
    rng = random.Random(seed)
    seq = 1
    rare_in = set(rng.sample(range(segments), max(1, segments // 50)))
    for index in range(segments):
        path = os.path.join(directory, segment_name(index))
        writer = SegmentWriter(path + ".tmp", seq, SegmentOptions(block_events=block_events, fsync=False))
        for j in range(blocks * block_events):
            if j == 5:
                did = EVERYWHERE_DID
            elif j == 77 and index in rare_in:
                did = RARE_DID
            else:
                did = pool_did(rng.randrange(POOL))
            writer.add(SegmentEvent(seq, 1_783_000_000_000_000 + seq, 0, KIND_CREATE, did, "app.bsky.feed.post",
                                    f"3l{seq:011x}", "3mrev", b"\xa1ddtextdhello"))
            seq += 1
        writer.seal()


def time_plans(manifest: Manifest, did: str, runs: int) -> tuple[float, float, int]:
    request = PlanRequest(dids=(did,))
    samples = []
    plan = None
    for _ in range(runs):
        start = time.perf_counter()
        plan = plan_snapshot(manifest, request)
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1], plan.segments_matched


def bench_planner(segments: int, runs: int) -> dict:
    directory = tempfile.mkdtemp(prefix="bench-archive-plan-")
    try:
        start = time.perf_counter()
        build_segments(directory, segments)
        print(f"built {segments} segments in {time.perf_counter() - start:.1f}s", flush=True)
        results = {}
        for cache, label in ((1 << 30, "warm"), (0, "cold")):
            manifest = Manifest(directory, footer_cache_bytes=cache)
            manifest.scan()
            for did, which in ((RARE_DID, "rare"), (EVERYWHERE_DID, "everywhere")):
                p50, p99, matched = time_plans(manifest, did, runs if which == "rare" or label == "warm" else runs // 5)
                results[f"{label}_{which}"] = (p50, p99, matched)
                print(f"planSnapshot 1 DID ({which}, in {matched} segments), {label} footer cache, "
                      f"{segments} segments: p50 {p50:.2f} ms, p99 {p99:.2f} ms", flush=True)
        return results
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def build_big_segment(archive: Path, size_mib: int) -> Path:
    path = archive / segment_name(0)
    writer = SegmentWriter(str(path) + ".tmp", 1, SegmentOptions(block_events=256, fsync=False))
    for seq in range(1, size_mib * 1024 + 1):
        writer.add(SegmentEvent(seq, seq, 0, KIND_CREATE, pool_did(seq % 1000), "app.bsky.feed.post", f"r{seq}",
                                "rev", os.urandom(1024)))
    writer.seal()
    return path


def bench_get_segment(size_mib: int = 64, rounds: int = 8) -> dict:
    """getSegment sent by sendfile threads (the default) and streamed (--archive-send-threads 0, the path
    before them), each from its own real `jetstream serve` on the same file, rounds interleaved with the
    raw read. Best wall MiB/s of each, and MiB per CPU-second of the server process (all its threads)
    and of the raw-reading thread."""
    from tests.archive.serve_helpers import Serve  # the same subprocess harness the tests use

    root = Path(tempfile.mkdtemp(prefix="bench-archive-serve-"))
    archive = root / "archive"
    archive.mkdir()
    path = build_big_segment(archive, size_mib)
    size = path.stat().st_size
    servers = {mode: Serve(root / mode, "--archive-dir", str(archive), "--archive-send-threads", threads,
                           log_path=root / f"{mode}.log")
               for mode, threads in (("sendfile", "8"), ("streamed", "0"))}
    wall = {"raw": [], **{mode: [] for mode in servers}}
    cpu = {"raw": 0.0, **{mode: 0.0 for mode in servers}}
    try:
        for server in servers.values():
            server.wait_ready()
            # one unmeasured sweep: the first serve of each block checks it (integrity.py), once per
            # segment version; the rounds measure the steady state (bench_archive_integrity.py the first)
            _served_read(server.port, segment_name(0), size, rounds=1)
        for _ in range(rounds):
            cpu_before = time.thread_time()
            wall["raw"].append(_raw_read(path, size, rounds=1))
            cpu["raw"] += time.thread_time() - cpu_before
            for mode, server in servers.items():
                cpu_before = process_cpu_s(server.process.pid)
                wall[mode].append(_served_read(server.port, segment_name(0), size, rounds=1))
                cpu[mode] += process_cpu_s(server.process.pid) - cpu_before
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
    mib = size / 2**20 * rounds
    result = {mode: {"wall_mib_s": max(samples), "wall_median_mib_s": statistics.median(samples),
                     "mib_per_cpu_s": mib / cpu[mode]} for mode, samples in wall.items()}
    for mode in ("sendfile", "streamed"):
        print(f"getSegment {size / 2**20:.0f} MiB in 8 MiB Range slices, {mode}: "
              f"{result[mode]['wall_mib_s']:.0f} MiB/s "
              f"(ratio {result[mode]['wall_mib_s'] / result['raw']['wall_mib_s']:.2f} of raw), "
              f"{result[mode]['mib_per_cpu_s']:.0f} MiB per server CPU-second "
              f"(ratio {result[mode]['mib_per_cpu_s'] / result['raw']['mib_per_cpu_s']:.2f} of raw)", flush=True)
    print(f"raw 8 MiB preads: {result['raw']['wall_mib_s']:.0f} MiB/s, {result['raw']['mib_per_cpu_s']:.0f} MiB per "
          f"CPU-second", flush=True)
    return result


def process_cpu_s(pid: int) -> float:
    """CPU time of every live thread of `pid`, in seconds (schedstat: nanoseconds, not clock ticks)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as stat:
                total += int(stat.read().split()[0])
        except (OSError, ValueError):
            pass  # a thread that ended meanwhile
    return total / 1e9


def _raw_read(path: Path, size: int, rounds: int = 5) -> float:
    best = 0.0
    fd = os.open(path, os.O_RDONLY)
    try:
        for _ in range(rounds):
            start = time.perf_counter()
            offset = 0
            while offset < size:
                offset += len(os.pread(fd, CHUNK, offset))
            best = max(best, size / 2**20 / (time.perf_counter() - start))
    finally:
        os.close(fd)
    return best


def _served_read(port: int, name: str, size: int, rounds: int = 5) -> float:
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        offset = 0
        while offset < size:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", f"/xrpc/network.bsky.jetstream.getSegment?name={name}",
                         headers={"Range": f"bytes={offset}-{offset + CHUNK - 1}", "Authorization": "Bearer x"})
            response = conn.getresponse()
            body = response.read()
            assert response.status == 206, response.status
            conn.close()
            offset += len(body)
        best = max(best, size / 2**20 / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--segments", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--skip-serve", action="store_true")
    parser.add_argument("--skip-plan", action="store_true")
    args = parser.parse_args()
    if not args.skip_plan:
        bench_planner(args.segments, args.runs)
    if not args.skip_serve:
        bench_get_segment()


if __name__ == "__main__":
    main()
