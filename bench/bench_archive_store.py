"""getSegment from an object store: a cache miss (fetched from S3) vs a hit (from the local cache).

A real moto S3 server on loopback holds one sealed segment (random, incompressible payloads); a
real `jetstream serve --archive-url s3://...` answers getSegment in 8 MiB Range slices (a
connection each, as the atproto SDK reads). Pass 1 misses (every slice fetched from the store),
pass 2 hits. For reference: the same slices read straight from moto through obstore, and from
`jetstream serve --archive-dir` on the same file.

    .venv/bin/python bench/bench_archive_store.py [--mib 64]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jetstream.archive import KIND_CREATE, SegmentEvent  # noqa: E402
from jetstream.archive.store import ObjectStore  # noqa: E402
from tests.archive.archive_helpers import write_segment  # noqa: E402
from tests.archive.s3_helpers import moto_server  # noqa: E402
from tests.archive.serve_helpers import Serve  # noqa: E402

SLICE = 8 << 20


def build(directory: str, mib: int) -> str:
    payload_bytes = 4096
    count = (mib << 20) // payload_bytes
    events = [SegmentEvent(i + 1, 1_783_000_000_000_000 + i, 0, KIND_CREATE, f"did:plc:bench{i % 5000:06d}",
                           "app.bsky.feed.post", f"r{i}", "rev1", os.urandom(payload_bytes)) for i in range(count)]
    return write_segment(directory, events, block_events=1024)


def sweep(server: Serve, name: str, size: int) -> float:
    started = time.perf_counter()
    got = 0
    for start in range(0, size, SLICE):
        status, _, body = server.get(f"/xrpc/network.bsky.jetstream.getSegment?name={name}",
                                     {"Range": f"bytes={start}-{start + SLICE - 1}"})
        assert status == 206, status
        got += len(body)
    assert got == size
    return size / (time.perf_counter() - started) / (1 << 20)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = os.path.join(tmp, "segments")
        os.makedirs(directory)
        path = build(directory, args.mib)
        name, size = os.path.basename(path), os.path.getsize(path)
        s3 = moto_server(os.path.join(tmp, "moto.log"))
        try:
            s3.apply()
            store = ObjectStore(s3.url + "/bench")
            store.put(name, Path(path).read_bytes())
            started = time.perf_counter()
            for start in range(0, size, SLICE):
                store.read_range(name, start, min(SLICE, size - start))
            direct = size / (time.perf_counter() - started) / (1 << 20)
            remote = Serve(os.path.join(tmp, "remote"), "--archive-url", s3.url + "/bench", env=s3.env)
            local = Serve(os.path.join(tmp, "local"), "--archive-dir", directory)
            try:
                remote.wait_ready()
                local.wait_ready()
                miss = sweep(remote, name, size)
                hit = sweep(remote, name, size)
                hit2 = sweep(remote, name, size)
                from_dir = sweep(local, name, size)
            finally:
                remote.stop()
                local.stop()
        finally:
            s3.stop()
    print(f"segment {size / (1 << 20):.1f} MiB in {SLICE >> 20} MiB Range slices")
    print(f"obstore ranged GETs straight from moto: {direct:8.1f} MiB/s")
    print(f"getSegment, cache miss (from moto):     {miss:8.1f} MiB/s")
    print(f"getSegment, cache hit:                  {max(hit, hit2):8.1f} MiB/s")
    print(f"getSegment, --archive-dir (same file):  {from_dir:8.1f} MiB/s")


if __name__ == "__main__":
    main()
