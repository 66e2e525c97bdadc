"""The archive's read side (issue 24): planSnapshot latency over 1,000 segments, getSegment throughput.

    .venv/bin/python bench/bench_archive_serve.py [--segments 1000] [--runs 300] [--skip-plan] [--skip-serve]

planSnapshot: 1,000 sealed segments (8 blocks of 128 events each, DIDs drawn from a pool of
200,000), planned for one DID that is in ~2% of the segments (a typical account) and for one
that is in every segment (the worst case: every block bloom consulted), with the footer cache
warm (every footer resident) and cold (--archive-footer-cache-bytes 0: one 64-byte read of the
segment bloom per segment, footers read for the segments that may hold the DID). p50/p99 of the
plan call, in milliseconds of wall time on the shared 2-core machine.

getSegment: a 64 MiB segment of incompressible payloads fetched from a real `jetstream serve` as
the SDK does (Range slices of 8 MiB, one connection each), with the page cache warm, against
reading the same file raw, in the same run, rounds interleaved. The client must not be the
limit, so it is its own process receiving with recv_into a reused buffer (C speed per syscall;
`--client`), and the raw read is its own process reading into a reused buffer (`--raw`); `curl
-o /dev/null` and `cat FILE > /dev/null` are measured beside them as cross-checks. Wall MiB/s
(best of the rounds), and MiB per CPU-second of the server process (what one server core can
send when the clients are elsewhere). Both for the sendfile threads (the default) and the
streamed path (--archive-send-threads 0), in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
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


def time_plans(manifest: Manifest, did: str, runs: int) -> tuple[float, float, int, float, float]:
    """(p50 ms, p99 ms, segments matched, CPU p50 ms, CPU p99 ms): the plan and its JSON answer, as the
    endpoint makes them; wall time, and this thread's CPU time (what the plan costs the server, without
    the time other work on a shared machine holds the core)."""
    request = PlanRequest(dids=(did,))
    samples, cpu_samples = [], []
    plan = None
    for _ in range(runs):
        cpu_start, start = time.thread_time(), time.perf_counter()
        plan = plan_snapshot(manifest, request)
        plan.to_json()
        samples.append((time.perf_counter() - start) * 1000)
        cpu_samples.append((time.thread_time() - cpu_start) * 1000)
    samples.sort()
    cpu_samples.sort()
    p99 = int(len(samples) * 0.99) - 1
    return (statistics.median(samples), samples[p99], plan.segments_matched, statistics.median(cpu_samples),
            cpu_samples[p99])


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
                timing = time_plans(manifest, did, runs if which == "rare" or label == "warm" else runs // 4)
                results[f"{label}_{which}"] = timing
                p50, p99, matched, cpu_p50, cpu_p99 = timing
                print(f"planSnapshot+JSON 1 DID ({which}, in {matched} segments), {label} footer cache, "
                      f"{segments} segments: p50 {p50:.2f} ms, p99 {p99:.2f} ms; CPU p50 {cpu_p50:.2f} ms, "
                      f"p99 {cpu_p99:.2f} ms", flush=True)
        return results
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def bench_sdk_snapshot(events: int = 100_000, segments: int = 4, rounds: int = 3) -> dict:
    """The atproto SDK's `JetstreamClient.snapshot()` against a real `jetstream serve` (events/s, best of
    `rounds`), beside the SDK's own pipeline over the same segment files read from disk (its block
    decoder, row matcher and message models: everything snapshot() does but the planning and the HTTP
    downloads), and our SegmentReader over them: the ratio is what serving costs the SDK's reader."""
    from atproto_jetstream import JetstreamClient
    from atproto_jetstream.archive.downloader import iter_block_frames
    from atproto_jetstream.archive.events import to_messages
    from atproto_jetstream.archive.matcher import RowMatcher
    from atproto_jetstream.archive.segment import decode_block
    from bench_archive import corpus_like

    from jetstream.archive import SegmentReader
    from tests.archive.serve_helpers import Serve, build_archive

    root = Path(tempfile.mkdtemp(prefix="bench-archive-sdk-"))
    try:
        archive = root / "data" / "archive"
        paths = build_archive(archive, corpus_like(events), segments=segments, block_events=4096)
        server = Serve(root / "data", log_path=root / "serve.log")
        try:
            server.wait_ready()
            client = JetstreamClient(base_uri=f"ws://127.0.0.1:{server.port}/xrpc", api_key="bench")
            sdk = []
            for _ in range(rounds):
                start = time.perf_counter()
                count = sum(1 for _ in client.snapshot())
                sdk.append(count / (time.perf_counter() - start))
                assert count == events, count
        finally:
            server.stop()
        local, ours = [], []
        for _ in range(rounds):
            start = time.perf_counter()
            count = 0
            for path in paths:
                frames = iter_block_frames(Path(path).read_bytes())
                count += sum(1 for frame in frames for _ in to_messages(RowMatcher().filter(decode_block(frame))))
            local.append(count / (time.perf_counter() - start))
            start = time.perf_counter()
            for path in paths:
                with SegmentReader.open(path) as reader:
                    for _ in reader.iter_events():
                        pass
            ours.append(events / (time.perf_counter() - start))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result = {"sdk_snapshot_eps": max(sdk), "sdk_local_eps": max(local), "our_reader_eps": max(ours)}
    print(f"SDK snapshot() of {events:,} events in {segments} segments: {result['sdk_snapshot_eps']:,.0f} events/s; "
          f"the SDK's decoder over the same files: {result['sdk_local_eps']:,.0f} events/s "
          f"(ratio {result['sdk_snapshot_eps'] / result['sdk_local_eps']:.2f}); our SegmentReader: "
          f"{result['our_reader_eps']:,.0f} events/s", flush=True)
    return result


def build_big_segment(archive: Path, size_mib: int) -> Path:
    path = archive / segment_name(0)
    writer = SegmentWriter(str(path) + ".tmp", 1, SegmentOptions(block_events=256, fsync=False))
    for seq in range(1, size_mib * 1024 + 1):
        writer.add(SegmentEvent(seq, seq, 0, KIND_CREATE, pool_did(seq % 1000), "app.bsky.feed.post", f"r{seq}",
                                "rev", os.urandom(1024)))
    writer.seal()
    return path


def bench_get_segment(size_mib: int = 64, rounds: int = 8) -> dict:
    """getSegment sent by sendfile threads (the default) and streamed (--archive-send-threads 0), each from
    its own real `jetstream serve` on the same file, rounds interleaved with the raw reads. Best wall MiB/s
    of each (the socket client and the raw reader are child processes that time themselves), and MiB per
    CPU-second of the server process (all its threads) and of the raw-reading process."""
    from tests.archive.serve_helpers import Serve  # the same subprocess harness the tests use

    root = Path(tempfile.mkdtemp(prefix="bench-archive-serve-"))
    archive = root / "archive"
    archive.mkdir()
    path = build_big_segment(archive, size_mib)
    size = path.stat().st_size
    servers = {mode: Serve(root / mode, "--archive-dir", str(archive), "--archive-send-threads", threads,
                           log_path=root / f"{mode}.log")
               for mode, threads in (("sendfile", "8"), ("streamed", "0"))}
    ideal = subprocess.Popen([sys.executable, __file__, "--ideal-server", str(path)], stdout=subprocess.PIPE, text=True)
    wall = {"raw": [], "cat": [], "curl": [], "ideal": [], **{mode: [] for mode in servers}}
    cpu = {"raw": 0.0, "ideal": 0.0, **{mode: 0.0 for mode in servers}}
    try:
        ideal_port = int(ideal.stdout.readline())
        for server in servers.values():
            server.wait_ready()
            # one unmeasured sweep: the first serve of each block checks it (integrity.py), once per
            # segment version; the rounds measure the steady state (bench_archive_integrity.py the first)
            _client_in_child(server.port, segment_name(0), size)
        _raw_read_in_child(path)  # the page cache is warm before the first timed round
        for _ in range(rounds):
            mib_s, cpu_s = _raw_read_in_child(path)
            wall["raw"].append(mib_s)
            cpu["raw"] += cpu_s
            wall["cat"].append(_cat(path, size))
            for mode, server in servers.items():
                cpu_before = process_cpu_s(server.process.pid)
                wall[mode].append(_client_in_child(server.port, segment_name(0), size))
                cpu[mode] += process_cpu_s(server.process.pid) - cpu_before
            wall["curl"].append(_curl(servers["sendfile"].port, segment_name(0), size))
            cpu_before = process_cpu_s(ideal.pid)
            wall["ideal"].append(_client_in_child(ideal_port, segment_name(0), size))
            cpu["ideal"] += process_cpu_s(ideal.pid) - cpu_before
    finally:
        ideal.kill()
        ideal.wait()
        for server in servers.values():
            server.stop()
        shutil.rmtree(root, ignore_errors=True)
    mib = size / 2**20 * rounds
    result = {mode: {"wall_mib_s": max(samples), "wall_median_mib_s": statistics.median(samples),
                     "mib_per_cpu_s": mib / cpu[mode] if mode in cpu else None} for mode, samples in wall.items()}
    raw = result["raw"]
    for mode in ("sendfile", "streamed"):
        print(f"getSegment {size / 2**20:.0f} MiB in 8 MiB Range slices, {mode}, socket client: "
              f"{result[mode]['wall_mib_s']:.0f} MiB/s (ratio {result[mode]['wall_mib_s'] / raw['wall_mib_s']:.2f} "
              f"of raw), {result[mode]['mib_per_cpu_s']:.0f} MiB per server CPU-second "
              f"(ratio {result[mode]['mib_per_cpu_s'] / raw['mib_per_cpu_s']:.2f} of raw)", flush=True)
    print(f"bare sendfile server (the loopback's ceiling), socket client: {result['ideal']['wall_mib_s']:.0f} MiB/s "
          f"(ratio {result['ideal']['wall_mib_s'] / raw['wall_mib_s']:.2f} of raw; ours is "
          f"{result['sendfile']['wall_mib_s'] / result['ideal']['wall_mib_s']:.2f} of it)", flush=True)
    print(f"getSegment sendfile, curl -o /dev/null: {result['curl']['wall_mib_s']:.0f} MiB/s "
          f"(ratio {result['curl']['wall_mib_s'] / result['cat']['wall_mib_s']:.2f} of cat)", flush=True)
    print(f"raw 8 MiB reads: {raw['wall_mib_s']:.0f} MiB/s, {raw['mib_per_cpu_s']:.0f} MiB per CPU-second; "
          f"cat > /dev/null: {result['cat']['wall_mib_s']:.0f} MiB/s", flush=True)
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


def _child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True, check=True,
                         timeout=120).stdout
    return json.loads(out.strip().splitlines()[-1])


def _raw_read_in_child(path: Path) -> tuple[float, float]:
    """(MiB/s, CPU seconds) of one pass of 8 MiB reads into a reused buffer, in a fresh process."""
    got = _child("--raw", str(path))
    return got["mib_s"], got["cpu_s"]


def _client_in_child(port: int, name: str, size: int) -> float:
    return _child("--client", str(port), name, str(size))["mib_s"]


def raw_read(path: str) -> dict:
    """One pass over the file in CHUNK reads into one reused buffer (no allocation per read)."""
    buffer = bytearray(CHUNK)
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        cpu_start, start = time.process_time(), time.perf_counter()
        offset = 0
        while offset < size:
            got = os.preadv(fd, [buffer], offset)
            if not got:
                break
            offset += got
        wall, cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    finally:
        os.close(fd)
    return {"mib_s": size / 2**20 / wall, "cpu_s": cpu_s}


def socket_client(port: int, name: str, size: int) -> dict:
    """getSegment in CHUNK Range slices, a connection each (as the SDK), received with recv_into one reused
    buffer: the receive is a syscall per up-to-CHUNK bytes, so the client is not what limits the rate."""
    buffer = bytearray(CHUNK + 65536)
    view = memoryview(buffer)
    start = time.perf_counter()
    offset = 0
    while offset < size:
        request = (f"GET /xrpc/network.bsky.jetstream.getSegment?name={name} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   f"Range: bytes={offset}-{offset + CHUNK - 1}\r\nAuthorization: Bearer x\r\n"
                   "Connection: close\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(request)
            got = 0
            head_end = -1
            expected = None
            while expected is None or got < expected:
                n = sock.recv_into(view[got:])
                if not n:
                    break
                got += n
                if head_end < 0:
                    head_end = buffer.find(b"\r\n\r\n", 0, got)
                    if head_end >= 0:
                        head = bytes(buffer[:head_end]).decode("latin-1").lower()
                        assert head.startswith("http/1.1 206"), head[:40]
                        length = int(head.split("content-length:", 1)[1].split("\r\n", 1)[0])
                        expected = head_end + 4 + length
            assert expected is not None and got == expected, (got, expected)
            offset += expected - head_end - 4
    return {"mib_s": size / 2**20 / (time.perf_counter() - start)}


def ideal_server(path: str) -> None:
    """(child) The loopback's ceiling: a bare server that reads a request, writes a minimal 206 head and
    sendfile()s the Range in one blocking call sequence, nothing else (no routing, checks or event loop).
    Prints its port, serves until killed."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    print(srv.getsockname()[1], flush=True)
    fd = os.open(path, os.O_RDONLY)
    size = os.fstat(fd).st_size
    while True:
        conn, _ = srv.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                request += chunk
            first, last = request.lower().split(b"range: bytes=", 1)[1].split(b"\r\n", 1)[0].split(b"-")
            start, end = int(first), min(int(last), size - 1)
            length = end - start + 1
            conn.sendall(f"HTTP/1.1 206 Partial Content\r\nContent-Length: {length}\r\n\r\n".encode())
            sent = 0
            while sent < length:
                sent += os.sendfile(conn.fileno(), fd, start + sent, length - sent)


def _cat(path: Path, size: int) -> float:
    start = time.perf_counter()
    with open(os.devnull, "wb") as devnull:
        subprocess.run(["cat", str(path)], stdout=devnull, check=True)
    return size / 2**20 / (time.perf_counter() - start)


def _curl(port: int, name: str, size: int) -> float:
    """curl fetching the CHUNK slices (one process, a connection each): the sum of its per-transfer times."""
    args = ["curl", "-sS", "-H", "Authorization: Bearer x", "-w", "%{time_total}\n"]
    url = f"http://127.0.0.1:{port}/xrpc/network.bsky.jetstream.getSegment?name={name}"
    for offset in range(0, size, CHUNK):
        if offset:
            args.append("--next")
            args += ["-H", "Authorization: Bearer x", "-w", "%{time_total}\n"]
        args += ["-r", f"{offset}-{offset + CHUNK - 1}", "-o", os.devnull, url]
    out = subprocess.run(args, stdout=subprocess.PIPE, text=True, check=True, timeout=120).stdout
    return size / 2**20 / sum(float(line) for line in out.split())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--segments", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--skip-serve", action="store_true")
    parser.add_argument("--skip-plan", action="store_true")
    parser.add_argument("--raw", metavar="PATH", help="(child) one raw read pass; prints JSON")
    parser.add_argument("--ideal-server", metavar="PATH", help="(child) a bare sendfile server on PATH")
    parser.add_argument("--client", nargs=3, metavar=("PORT", "NAME", "SIZE"), help="(child) one getSegment pass")
    args = parser.parse_args()
    if args.raw:
        print(json.dumps(raw_read(args.raw)))
        return
    if args.ideal_server:
        ideal_server(args.ideal_server)
        return
    if args.client:
        print(json.dumps(socket_client(int(args.client[0]), args.client[1], int(args.client[2]))))
        return
    if not args.skip_plan:
        bench_planner(args.segments, args.runs)
    if not args.skip_serve:
        bench_get_segment()


if __name__ == "__main__":
    main()
