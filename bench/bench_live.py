"""Bench stage `live`: daemon CPU per delivered event under live traffic, measured from outside.

Owns: the live-load numbers (issue 13): a relay in its own process publishing the real
corpus frames (tests/data/frames.bin.zst) at 2,000 frames/s, the daemon (`jetstream serve`,
default flags except a rate limit high enough for one loopback IP to take the whole
firehose on every connection, and pings off as the byte-counting clients cannot answer
them) in its own process, subscribers in loadgen processes, and
the daemon's CPU read from /proc over a window after warm-up, summed over its whole
process tree (so it stays right once the daemon runs several processes). Beside it, in
the same run: the daemon with `--live-fastpath=false` (every reader its own Python step,
i.e. the path before the fast path existed), and a raw picows broadcaster (this file's
`--raw-serve`) fed the same relay frames with the same group-commit cadence, sending the
same pre-encoded payloads to the same clients. It must never assert: it returns numbers.

Clients: bulk connections count bytes only (`loadgen --bytes-only`: no per-message Python
work, so two shared cores can absorb millions of messages/s); deliveries are the
server's own counters (the daemon's jetstream_events_delivered_total; the raw
broadcaster's count). LATENCY_CONNECTIONS of the plain ones are picows clients that record
arrival (wall clock) minus each event's time_us, i.e. from the daemon's sequencing of the
event to the client; the relay -> daemon hop adds the group-commit wait (<= 2 ms).

Run alone: `.venv/bin/python bench/bench_live.py [--quick] [--loads 1000plain ...]`;
in the suite: `bench/suite.py --only live` (stage_live).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

CORPUS_FRAMES = REPO_ROOT / "tests" / "data" / "frames.bin.zst"
FRAMES_PER_S = float(os.environ.get("BENCH_RATE", "2000"))
FILTERED_COLLECTIONS = ("app.bsky.feed.post", "app.bsky.feed.like")
LATENCY_CONNECTIONS = 4
GROUP_COMMIT_S = 0.002  # the daemon's default --group-commit-ms, used by the raw broadcaster too
MAX_SUB_RATE = "1000000000"  # all clients share 127.0.0.1's bucket; the default 5000/s would pace them


@dataclass(frozen=True)
class Load:
    key: str
    plain: int
    filtered: int = 0
    compressed: int = 0

    @property
    def total(self) -> int:
        return self.plain + self.filtered + self.compressed

    @property
    def label(self) -> str:
        if not (self.filtered or self.compressed):
            return f"{self.plain} plain subs"
        return f"{self.total} subs ({self.plain} plain, {self.filtered} filtered, {self.compressed} zstd)"


LOADS = {load.key: load for load in (
    Load("200mixed", 100, 50, 50), Load("100plain", 100), Load("400plain", 400), Load("1000plain", 1000),
    Load("1000mixed", 500, 250, 250))}
SERVERS = ("fastpath", "python_path", "raw")


# --- processes ------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def spawn(args: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=REPO_ROOT, **kwargs)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"process {process.args[:4]} did not listen on {port}") from None
            time.sleep(0.1)


def tree_cpu_seconds(root_pid: int) -> float:
    """user+system CPU of `root_pid` and every live descendant, from /proc (clock ticks)."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry)
        stats[pid] = fields
        children.setdefault(int(fields[1]), []).append(pid)  # fields[1] is ppid
    ticks, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        if pid in stats:
            ticks += int(stats[pid][11]) + int(stats[pid][12])  # utime, stime
        stack += children.get(pid, [])
    return ticks / os.sysconf("SC_CLK_TCK")


def start_relay() -> tuple[subprocess.Popen, str]:
    port = free_port()
    relay = spawn([sys.executable, "-m", "jetstream.cli", "relay-sim", "--frames-file", str(CORPUS_FRAMES),
                   "--rate", str(FRAMES_PER_S), "--listen-addr", f"127.0.0.1:{port}", "--log-level", "warning"])
    wait_for_port(port, relay)
    return relay, f"ws://127.0.0.1:{port}/xrpc/com.atproto.sync.subscribeRepos"


class Server:
    """The daemon (fast path on or off) or the raw broadcaster, in its own process."""

    def __init__(self, kind: str, relay_url: str, data_dir: str) -> None:
        self.kind = kind
        self.port = free_port()
        if kind == "raw":
            self.metrics_port = 0
            args = [sys.executable, str(Path(__file__).resolve()), "--raw-serve", "--relay", relay_url,
                    "--port", str(self.port)]
            self.process = spawn(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        else:
            self.metrics_port = free_port()
            args = [sys.executable, "-m", "jetstream.cli", "serve", "--ws-url", relay_url,
                    "--listen-addr", f"127.0.0.1:{self.port}",
                    "--metrics-listen-addr", f"127.0.0.1:{self.metrics_port}",
                    "--data-dir", data_dir, "--max-sub-rate", MAX_SUB_RATE, "--log-level", "warning",
                    "--ping-interval", "0",  # the byte-counting clients cannot answer pings
                    "--live-fastpath", "true" if kind == "fastpath" else "false"]
            env = {name: value for name, value in os.environ.items() if name != "JETSTREAM_LIVE_FASTPATH"}
            self.process = spawn(args, env=env)
        wait_for_port(self.port, self.process)

    def delivered(self) -> int:
        if self.kind == "raw":
            self.process.stdin.write("?\n")
            self.process.stdin.flush()
            return json.loads(self.process.stdout.readline())["delivered"]
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as response:
            text = response.read().decode()
        return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith("jetstream_events_delivered_total{")))

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.process.pid)

    def stop(self) -> None:
        stop(self.process)


class Clients:
    """Bulk byte-counting connections per mode, plus a few latency-recording plain ones."""

    def __init__(self, port: int, load: Load) -> None:
        base = f"ws://127.0.0.1:{port}/subscribe"
        filtered = base + "?" + "&".join(f"wantedCollections={c}" for c in FILTERED_COLLECTIONS)
        urls = [(base, load.plain - LATENCY_CONNECTIONS), (filtered, load.filtered),
                (base + "?compress=true", load.compressed)]
        loadgen = [sys.executable, "-m", "jetstream.benchtools.loadgen", "--expect", "0", "--timeout", "600"]
        self.probe = spawn(loadgen + ["--url", base, "--connections", str(LATENCY_CONNECTIONS),
                                      "--latency-sample", str(LATENCY_CONNECTIONS)],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.bulk = []
        self._connected(self.probe)  # the probe first, while the daemon has no subscriber to feed
        self.bulk = [spawn(loadgen + ["--url", url, "--connections", str(count), "--bytes-only"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                     for url, count in urls if count > 0]
        for process in self.bulk:
            self._connected(process)

    def _connected(self, process: subprocess.Popen) -> None:
        if not process.stdout.readline():
            self.finish()
            raise RuntimeError("loadgen exited before connecting")

    def finish(self) -> list[int]:
        """Close every connection; the probe's latencies (ms)."""
        reports = []
        for process in self.bulk + [self.probe]:
            try:
                process.stdin.write("\n")
                process.stdin.flush()
                reports.append(json.loads(process.stdout.readline() or "{}"))
            except (BrokenPipeError, ValueError):
                reports.append({})
        for process in self.bulk + [self.probe]:
            stop(process)
        return reports[-1].get("ages_ms", [])


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    """The fraction-th of sorted latencies in ms, None when there are none."""
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


def live_run(load: Load, kind: str, warmup_s: float, window_s: float) -> dict:
    """One server under one load: deliveries/s, CPU cores and µs per delivered event, latency."""
    relay, relay_url = start_relay()
    try:
        with tempfile.TemporaryDirectory() as data_dir:
            server = Server(kind, relay_url, data_dir)
            try:
                clients = Clients(server.port, load)
                try:
                    time.sleep(warmup_s)
                    delivered0, cpu0, at0 = server.delivered(), server.cpu_seconds(), time.monotonic()
                    time.sleep(window_s)
                    delivered1, cpu1, at1 = server.delivered(), server.cpu_seconds(), time.monotonic()
                finally:
                    latencies = sorted(clients.finish())
            finally:
                server.stop()
    finally:
        stop(relay)
    seconds, deliveries, cpu = at1 - at0, delivered1 - delivered0, cpu1 - cpu0
    measured = kind != "raw"  # the raw broadcaster's payloads carry stale time_us
    return {"load": load.key, "server": kind, "subscribers": load.total, "seconds": seconds,
            "deliveries_per_s": deliveries / seconds, "cpu_cores": cpu / seconds,
            "us_per_event": cpu / max(deliveries, 1) * 1e6,
            "p50_ms": percentile(latencies, 0.5) if measured else None,
            "p99_ms": percentile(latencies, 0.99) if measured else None, "latency_samples": len(latencies)}


def run_loads(load_keys: list[str], quick: bool, servers=SERVERS) -> list[dict]:
    warmup_s, window_s = (3.0, 6.0) if quick else (5.0, 15.0)
    results = []
    for key in load_keys:
        for kind in servers:
            result = live_run(LOADS[key], kind, warmup_s, window_s)
            print(f"    live {key:<10} {kind:<12} {result['deliveries_per_s']:>10,.0f} deliveries/s "
                  f"{result['cpu_cores']:.2f} cores {result['us_per_event']:.2f} µs/event "
                  f"p50 {result['p50_ms']} ms p99 {result['p99_ms']} ms", flush=True)
            results.append(result)
    return results


# --- in-process A/B (--inproc) ------------------------------------------------------------------

def corpus_events(count: int):
    """`count` sequenced Events cycling over the corpus frames (real v1 JSON and zstd payloads)."""
    from jetstream.compression import EventCompressor
    from jetstream.dictionary import active_dictionary
    from jetstream.framefile import read_frames
    from jetstream.ingest.decode import decode_frame
    from jetstream.ingest.sequencer import Sequencer

    pending = [event for frame in read_frames(CORPUS_FRAMES) for event in decode_frame(frame).events]
    clock = iter(range(1_800_000_000_000_000, 1_800_000_000_000_000 + 10 * count))
    sequencer = Sequencer(0, lambda: next(clock))
    return sequencer.sequence([pending[i % len(pending)] for i in range(count)], EventCompressor(active_dictionary("")))


async def inproc_once(events, load: Load, fastpath: bool, batch: int, interval_s: float) -> dict:
    """The SubscribeServer in this process, fed `batch` events every `interval_s` (a live
    cadence without relay or ingest); byte-counting clients in a loadgen process. CPU is
    this process's (getrusage), so it is the fan-out's cost plus the feeding loop."""
    import resource

    from jetstream.implementation import LiveRing
    from jetstream.log.store import EventLog
    from jetstream.server.app import SubscribeServer
    from jetstream.server.settings import ServerSettings

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory() as directory:
        event_log = EventLog(directory)
        ring = LiveRing(len(events) + 1, floor_time_us=events[0].time_us - 1)
        settings = ServerSettings(max_sub_rate=1e9, ping_interval_s=0, live_fastpath=fastpath)
        server = SubscribeServer(event_log, ring, settings)
        await server.start("127.0.0.1", 0)
        base = f"ws://127.0.0.1:{server.port}/subscribe"
        filtered = base + "?" + "&".join(f"wantedCollections={c}" for c in FILTERED_COLLECTIONS)
        loadgen = [sys.executable, "-m", "jetstream.benchtools.loadgen", "--expect", "0", "--timeout", "600",
                   "--bytes-only"]
        clients = [spawn(loadgen + ["--url", url, "--connections", str(count)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
                   for url, count in ((base, load.plain), (filtered, load.filtered),
                                      (base + "?compress=true", load.compressed))
                   if count]
        try:
            for client in clients:
                await loop.run_in_executor(None, client.stdout.readline)
            while server.connected_count < load.total:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)
            sent0 = sum(s.sent_events for s in server.subscribers)
            cpu0, at0 = cpu(), time.monotonic()
            for start in range(0, len(events), batch):
                for event in events[start:start + batch]:
                    ring.append(event)
                server.notify_new_events()
                await asyncio.sleep(interval_s)
            await asyncio.sleep(0.05)
            cpu1, at1 = cpu(), time.monotonic()
            sent1 = sum(s.sent_events for s in server.subscribers)
        finally:
            for client in clients:
                client.stdin.close()
                stop(client)
            await server.close(grace_s=0.2)
            event_log.close()
    deliveries = sent1 - sent0
    return {"load": load.key, "server": "fastpath" if fastpath else "python_path", "deliveries": deliveries,
            "deliveries_per_s": deliveries / (at1 - at0), "cpu_cores": (cpu1 - cpu0) / (at1 - at0),
            "us_per_event": (cpu1 - cpu0) / max(deliveries, 1) * 1e6, "passes": server.live.passes}


def run_inproc(load_keys: list[str], seconds: float, rounds: int, batch: int = 4,
               interval_s: float = 0.002) -> list[dict]:
    """Fast path on and off, interleaved `rounds` times per load (a shared machine drifts)."""
    import uvloop

    events = corpus_events(int(seconds * batch / interval_s))
    results = []
    for key in load_keys:
        for _ in range(rounds):
            for fastpath in (True, False):
                result = uvloop.run(inproc_once(events, LOADS[key], fastpath, batch, interval_s))
                print(f"    inproc {key:<10} {result['server']:<12} {result['deliveries_per_s']:>10,.0f} deliveries/s "
                      f"{result['cpu_cores']:.2f} cores {result['us_per_event']:.2f} µs/event", flush=True)
                results.append(result)
    return results


# --- the raw broadcaster (--raw-serve) -----------------------------------------------------------

def payload_table():
    """Per corpus frame (by seq offset): its events' JSON, filtered JSON and zstd payloads."""
    from jetstream.compression import EventCompressor
    from jetstream.dictionary import active_dictionary
    from jetstream.framefile import read_frames
    from jetstream.implementation import EventFilter
    from jetstream.ingest.decode import decode_frame
    from jetstream.ingest.sequencer import Sequencer
    from jetstream.relaysim.filesource import FileSource

    source = FileSource(read_frames(CORPUS_FRAMES), loops=0)
    sequencer, compressor = Sequencer(0), EventCompressor(active_dictionary(""))
    wanted = EventFilter(list(FILTERED_COLLECTIONS), None)
    table = []
    for offset in range(source.period):
        events = sequencer.sequence(decode_frame(source.frame(source.first_seq + offset)).events, compressor)
        table.append(([e.json for e in events], [e.json for e in events if wanted.matches(e.did, e.collection)],
                      [e.zstd for e in events]))
    return source.first_seq, table


async def raw_serve(relay_url: str, port: int) -> None:
    """A minimal picows broadcaster: relay frames in, group-committed batches out to every client."""
    from picows import WSListener, ws_connect, ws_create_server

    from jetstream.implementation import encode_frames
    from jetstream.relaysim.seqpatch import find_seq_slot

    first_seq, table = payload_table()
    modes: dict[int, list] = {0: [], 1: [], 2: []}  # plain, filtered, zstd
    pending: list[int] = []
    state = {"delivered": 0, "flush": None}
    loop = asyncio.get_running_loop()

    class Subscriber(WSListener):
        def __init__(self, mode: int) -> None:
            self.mode = mode

        def on_ws_connected(self, transport) -> None:
            self.write = transport.underlying_transport.write
            modes[self.mode].append(self)

        def on_ws_disconnected(self, transport) -> None:
            modes[self.mode].remove(self)

    def route(request):
        query = request.path.decode() if isinstance(request.path, bytes) else str(request.path)
        return Subscriber(2 if "compress=true" in query else 1 if "wantedCollections" in query else 0)

    def flush() -> None:
        state["flush"] = None
        frames = [table[(seq - first_seq) % len(table)] for seq in pending]
        pending.clear()
        for mode, listeners in modes.items():
            payloads = [payload for frame in frames for payload in frame[mode]]
            if not payloads or not listeners:
                continue
            data = encode_frames(payloads, mode == 2)
            for listener in listeners:
                listener.write(data)
            state["delivered"] += len(payloads) * len(listeners)

    class RelayListener(WSListener):
        def on_ws_frame(self, transport, frame) -> None:
            pending.append(find_seq_slot(frame.get_payload_as_bytes()).seq)
            if state["flush"] is None:
                state["flush"] = loop.call_later(GROUP_COMMIT_S, flush)

    server = await ws_create_server(route, "127.0.0.1", port)
    await ws_connect(RelayListener, relay_url)
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        sys.stdout.write(json.dumps({"delivered": state["delivered"]}) + "\n")
        sys.stdout.flush()
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--loads", nargs="*", choices=sorted(LOADS),
                        default=["200mixed", "100plain", "400plain", "1000plain"])
    parser.add_argument("--servers", nargs="*", choices=SERVERS, default=list(SERVERS))
    parser.add_argument("--output", help="write the results as JSON here")
    parser.add_argument("--inproc", action="store_true",
                        help="the in-process A/B instead: fast path on/off interleaved, no relay or ingest")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--raw-serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--relay", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_serve:
        import uvloop
        uvloop.run(raw_serve(args.relay, args.port))
        return
    if args.inproc:
        results = run_inproc(args.loads, 3.0 if args.quick else 8.0, args.rounds)
    else:
        results = run_loads(args.loads, args.quick, args.servers)
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
