"""Cluster mode figures (issue 14): `python bench/cluster_bench.py [--quick] [--only X] [--breakdown]`.

1. apply: events/s a follower applies from the stream into its local RocksDB log + ring
   (a 3-server NATS cluster, R3 file stream, sync_interval always), beside the raw
   ordered-consumer read of the same messages in the same run. Target >= 50k events/s.
2. latency: time_us -> client receive on a FOLLOWER at ~2k events/s (relay-sim, leader,
   follower, 3 NATS servers, each its own process), beside the same measure on a single
   node in the same run. Target p99 < 25 ms. time_us is stamped on the leader when it
   sequences an event (the wall clock, same machine), so this is ingest -> publish ->
   R3 ack -> apply on the follower -> its socket -> the client.
   --breakdown adds where that time goes, over the measured window: the leader's publish
   wait (a batch queued behind the publish in flight) and publish -> ack, each node's apply
   delay (time_us of a message's first event -> applied there), from their histograms; the
   same delivery to an ordered consumer in this process (a tap of the stream, per event);
   and the CPU each process used. TMPDIR=/dev/shm puts the NATS stores in memory: the
   same run without the disk's fsyncs.
Not part of `make test` (a script, not a bench_*.py module pytest would collect).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from jetstream.cluster.applier import StreamApplier  # noqa: E402
from jetstream.cluster.natsserver import NatsCluster, free_port, stop_process, stop_processes  # noqa: E402
from jetstream.cluster.node import subject_of  # noqa: E402
from jetstream.cluster.wire import encode_batch  # noqa: E402
from jetstream.compression import EventCompressor  # noqa: E402
from jetstream.dictionary import active_dictionary  # noqa: E402
from jetstream.implementation import LiveRing  # noqa: E402
from jetstream.ingest.decode import decode_frame  # noqa: E402
from jetstream.ingest.sequencer import Sequencer  # noqa: E402
from jetstream.log.store import EventLog  # noqa: E402
from jetstream.relaysim.server import SUBSCRIBE_REPOS_PATH  # noqa: E402
from jetstream.relaysim.synthetic import SyntheticSource  # noqa: E402

BATCH_EVENTS = 64
TIME_US = re.compile(rb'"time_us":(\d+)')


def synthetic_batches(messages: int) -> list[bytes]:
    source = SyntheticSource(seed=4, dids=1000)
    sequencer = Sequencer(0)
    compressor = EventCompressor(active_dictionary(""))
    pending, batches, seq = [], [], source.first_seq
    while len(batches) < messages:
        pending += decode_frame(source.frame(seq)).events
        seq += 1
        while len(pending) >= BATCH_EVENTS and len(batches) < messages:
            batches.append(encode_batch(sequencer.sequence(pending[:BATCH_EVENTS], compressor), seq))
            pending = pending[BATCH_EVENTS:]
    return batches


async def apply_bench(urls: list[str], messages: int) -> dict:
    import nats
    from nats.js.api import StorageType, StreamConfig

    batches = synthetic_batches(messages)
    nc = await nats.connect(servers=urls)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="bench", subjects=["bench.batches"], storage=StorageType.FILE,
                                     num_replicas=3))
    started = time.perf_counter()
    for index in range(0, len(batches), 256):
        for data in batches[index:index + 256]:
            await js.publish_async("bench.batches", data)
        await js.publish_async_completed()
    publish_s = time.perf_counter() - started

    # Baseline: the same ordered consumer, reading only.
    sub = await js.subscribe("bench.batches", stream="bench", ordered_consumer=True, idle_heartbeat=1.0,
                             pending_msgs_limit=4096, pending_bytes_limit=256 * 1024 * 1024)
    started = time.perf_counter()
    for _ in range(messages):
        await sub.next_msg(timeout=30)
    read_s = time.perf_counter() - started
    await sub.unsubscribe()

    with tempfile.TemporaryDirectory() as directory:
        event_log = EventLog(directory)
        applier = StreamApplier(js, "bench.batches", "bench", event_log, LiveRing(200_000, floor_time_us=0),
                                lambda: None)
        started = time.perf_counter()
        applier.start()
        await applier.wait_applied(messages, 600)
        apply_s = time.perf_counter() - started
        await applier.stop()
        event_log.close()
    await nc.close()
    events = messages * BATCH_EVENTS
    return {"messages": messages, "events": events, "publish_async_events_per_s": events / publish_s,
            "read_events_per_s": events / read_s, "apply_events_per_s": events / apply_s}


def spawn(args: list[str], log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as log_file:
        return subprocess.Popen([sys.executable, "-m", "jetstream.cli", *args], cwd=REPO_ROOT, stdout=log_file,
                                stderr=subprocess.STDOUT, start_new_session=True)


def healthz(port: int) -> dict:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return json.loads(response.read())
    except (OSError, ValueError):
        return {}


def wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.1)


async def measure_latency(url: str, warmup_s: float, seconds: float,
                          breakdown: "Breakdown | None" = None) -> list[float]:
    """time_us -> receive on a /subscribe client; with `breakdown`, also its tap of the stream
    and its snapshots when the measured window starts and ends."""
    from picows import WSListener, WSMsgType, ws_connect

    latencies: list[float] = []
    measuring = [False]
    stop_tap = await start_stream_tap(breakdown.nats_urls, breakdown.tap, measuring) if breakdown else None

    class Listener(WSListener):
        def on_ws_frame(self, transport, frame) -> None:
            if frame.msg_type == WSMsgType.TEXT and measuring[0]:
                now_us = time.time_ns() // 1000
                latencies.append((now_us - int(TIME_US.search(frame.get_payload_as_bytes()).group(1))) / 1000)

    transport, _ = await ws_connect(Listener, url)
    await asyncio.sleep(warmup_s)
    if breakdown:
        breakdown.start()
    measuring[0] = True
    await asyncio.sleep(seconds)
    measuring[0] = False
    if breakdown:
        breakdown.finish()
    transport.disconnect()
    if stop_tap is not None:
        await stop_tap()
    return latencies


async def start_stream_tap(urls: list[str], tap: list[float], measuring: list[bool]):
    """An ordered consumer from the stream's next message, settings as the applier's."""
    import nats
    from nats.js.api import ConsumerConfig, DeliverPolicy

    from jetstream.cluster.applier import SUBSCRIBE_OPTIONS
    from jetstream.cluster.wire import decode_batch

    nc = await nats.connect(servers=urls)
    js = nc.jetstream()

    async def on_message(msg) -> None:
        if measuring[0]:
            now_ms = time.time() * 1000
            tap.extend(now_ms - event.time_us / 1000 for event in decode_batch(msg.data).events)

    sub = await js.subscribe(subject_of(STREAM), stream=STREAM, ordered_consumer=True, cb=on_message,
                             config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW), **SUBSCRIBE_OPTIONS)

    async def stop() -> None:
        await sub.unsubscribe()
        await nc.close()

    return stop


STREAM = "jetstream_events"  # --cluster-stream's default
HISTOGRAMS = {"leader": ("jetstream_cluster_publish_wait_seconds", "jetstream_cluster_publish_seconds",
                         "jetstream_cluster_apply_delay_seconds"),
              "follower": ("jetstream_cluster_apply_delay_seconds",)}


def scrape_histograms(port: int, names: tuple[str, ...]) -> dict[str, list[tuple[float, float]]]:
    """{name: [(le, cumulative count)]} from a node's /metrics."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for match in re.finditer(r'^(\w+)_bucket\{le="([^"]+)"\} (\S+)$', text, re.M):
        if match.group(1) in out:
            out[match.group(1)].append((float(match.group(2)), float(match.group(3))))
    return out


def bucket_quantile(counts: list[tuple[float, float]], q: float) -> float:
    """The upper bound (ms) of the bucket the q-quantile falls in, from cumulative (le, count)."""
    total = counts[-1][1]
    return next(le for le, count in counts if count >= q * total) * 1000


def histogram_window(before: dict, after: dict) -> dict:
    """p50/p99 (bucket upper bounds, ms) of what was observed between two scrapes."""
    out = {}
    for name, buckets in after.items():
        counts = [(le, count - dict(before.get(name, [])).get(le, 0.0)) for le, count in buckets]
        if not counts or not counts[-1][1]:
            continue
        out[name.removeprefix("jetstream_cluster_")] = {
            "n": int(counts[-1][1]), "p50_le_ms": bucket_quantile(counts, 0.5),
            "p99_le_ms": bucket_quantile(counts, 0.99)}
    return out


def frames_per_s_for(events_per_s: float) -> float:
    source = SyntheticSource(seed=2, dids=1000)
    sample = [len(decode_frame(source.frame(source.first_seq + i)).events) for i in range(500)]
    return events_per_s / (sum(sample) / len(sample))


def percentiles(values: list[float]) -> dict:
    values = sorted(values)
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]  # noqa: E731
    return {"n": len(values), "p50_ms": pick(0.5), "p99_ms": pick(0.99), "max_ms": values[-1]}


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Breakdown:
    """Where the follower's latency goes, over the measured window: the leader's publish wait and
    publish -> ack, each node's apply delay (its histograms), a tap of the stream in this process,
    and the CPU each process used."""

    def __init__(self, nats_urls: list[str], metrics_ports: dict[str, int], pids: dict[str, int]) -> None:
        self.nats_urls = nats_urls
        self.metrics_ports = metrics_ports
        self.pids = pids
        self.tap: list[float] = []
        self._before: dict = {}
        self.result: dict = {}

    def _snapshot(self) -> tuple[float, dict, dict]:
        histograms = {name: scrape_histograms(port, HISTOGRAMS[name]) for name, port in self.metrics_ports.items()}
        return time.monotonic(), histograms, {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def start(self) -> None:
        self._before = self._snapshot()

    def finish(self) -> None:
        (started, histograms, cpu), (ended, histograms_after, cpu_after) = self._before, self._snapshot()
        self.result = {name: histogram_window(histograms[name], histograms_after[name]) for name in histograms}
        self.result["cpu_percent"] = {name: round(100 * (cpu_after[name] - cpu[name]) / (ended - started))
                                      for name in cpu}

    def report(self) -> dict:
        return {**self.result, "stream_tap_delivery": percentiles(self.tap)}


def latency_bench(base: Path, nats: NatsCluster, events_per_s: float, seconds: float,
                  breakdown: bool = False) -> dict:
    relay_port = free_port()
    processes = [spawn(["relay-sim", "--synthetic", "--seed", "2", "--prerender", "12000",
                        "--rate", str(frames_per_s_for(events_per_s)), "--listen-addr", f"127.0.0.1:{relay_port}",
                        "--log-level", "warning", "--clock", "false"], base / "relay.log")]
    relay_url = f"ws://127.0.0.1:{relay_port}{SUBSCRIBE_REPOS_PATH}"
    results = {}
    try:
        time.sleep(1.0)
        common = ["--ws-url", relay_url, "--metrics-listen-addr", "", "--max-sub-rate", "1000000",
                  "--log-level", "warning"]
        single_port = free_port()
        single = spawn(["serve", *common, "--listen-addr", f"127.0.0.1:{single_port}",
                        "--data-dir", str(base / "single")], base / "single.log")
        processes.append(single)
        wait_for(lambda: healthz(single_port).get("relay", {}).get("connected"))
        results["single_node"] = percentiles(asyncio.run(
            measure_latency(f"ws://127.0.0.1:{single_port}/subscribe", 2.0, seconds)))
        stop_process(single, timeout=20)

        ports = {"leader": free_port(), "follower": free_port()}
        metrics_ports = {"leader": free_port(), "follower": free_port()}
        for name in ("leader", "follower"):
            metrics = ["--metrics-listen-addr", f"127.0.0.1:{metrics_ports[name]}"] if breakdown else []
            processes.append(spawn(["serve", *common, *metrics, "--cluster", nats.url_list, "--node-name", name,
                                    "--listen-addr", f"127.0.0.1:{ports[name]}", "--data-dir", str(base / name),
                                    "--lease-ttl", "3s"], base / f"{name}.log"))
            if name == "leader":
                wait_for(lambda: (healthz(ports["leader"]).get("cluster") or {}).get("role") == "leader")
        wait_for(lambda: (healthz(ports["follower"]).get("cluster") or {}).get("applied_stream_seq", 0) > 10)
        probe = None
        if breakdown:
            pids = {"relay_sim": processes[0].pid, "leader": processes[-2].pid, "follower": processes[-1].pid,
                    **{server.name: server.process.pid for server in nats.servers}, "bench": os.getpid()}
            probe = Breakdown(nats.urls, metrics_ports, pids)
        results["cluster_follower"] = percentiles(asyncio.run(
            measure_latency(f"ws://127.0.0.1:{ports['follower']}/subscribe", 2.0, seconds, probe)))
        if probe is not None:
            results["breakdown"] = probe.report()
        results["events_per_s_target"] = events_per_s
    finally:
        stop_processes(processes, timeout=20)
    return results


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=("apply", "latency"))
    parser.add_argument("--breakdown", action="store_true",
                        help="also where the follower's latency goes: the nodes' cluster histograms and a stream tap")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    out: dict = {"machine": f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start"}
    with NatsCluster(base / "nats", size=3) as nats:
        if args.only in (None, "apply"):
            out["apply"] = asyncio.run(apply_bench(nats.urls, 300 if args.quick else 1500))
        if args.only in (None, "latency"):
            out["latency"] = latency_bench(base, nats, 2000, 4.0 if args.quick else 10.0, args.breakdown)
    out["load_average_at_end"] = round(os.getloadavg()[0], 1)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
