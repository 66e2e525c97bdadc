"""Stage `workers` of bench/suite.py: `jetstream serve --workers 1` against `--workers 2`, same run.

Owns: running the daemon as its own process tree (main process + workers) behind relay-sim
(synthetic, pre-rendered, paced) with plain subscribers from the load generator spread over
eight loopback source addresses (so both workers get clients), and reporting:
  - daemon CPU per delivered event (every process of the daemon, from /proc), 2 vs 1 workers;
  - each process's share of the daemon's CPU with 2 workers (target: none above 60%);
  - event age at the client (wall clock minus time_us: sequencing -> write -> wake-up ->
    catch-up -> ring -> socket), p50/p99, 1 vs 2 workers;
  - the workers' mean catch-up time (from the daemon's /metrics).
It must never assert speeds itself: suite.py gates the ratios against bench/thresholds.json.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SOURCE_IPS = ",".join(f"127.0.0.{last}" for last in range(2, 10))
SUBSCRIBERS = 300
EVENTS_PER_S = 200  # x 300 subscribers = 60k deliveries/s: the one load generator process keeps up
LATENCY_SUBSCRIBERS = 20  # a separate, light run: event ages measure the daemon, not a saturated client
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def process_cpu_s(pid: int) -> float:
    """utime + stime of one process (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as children:
            return [int(child) for child in children.read().split()]
    except OSError:
        return []


def progress(text: str) -> None:
    print(f"  (workers: {text})", file=sys.stderr, flush=True)


def get_json(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - http://127.0.0.1 built here
            return json.loads(response.read())
    except (OSError, ValueError):
        return None


def scrape(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - http://127.0.0.1 built here
        text = response.read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line and not line.startswith("#")}


def spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", *args], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stdin=subprocess.PIPE, text=True)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def run_once(workers: int, seconds: float, subscribers: int = SUBSCRIBERS, latency_sample: int = 0) -> dict:
    """One daemon life under load: CPU per process, delivered events, event ages, catch-ups.

    Subscribers connect before the relay starts (the daemon re-dials it every 0.2 s until then),
    so the measured window is steady streaming, not handshakes.
    """
    relay_port, port, metrics_port = free_port(), free_port(), free_port()
    loadgen = daemon = relay = None
    with tempfile.TemporaryDirectory() as data_dir:
        try:
            daemon = spawn("jetstream.cli", "serve", "--workers", str(workers),
                           "--ws-url", f"ws://127.0.0.1:{relay_port}/xrpc/com.atproto.sync.subscribeRepos",
                           "--listen-addr", f"127.0.0.1:{port}", "--metrics-listen-addr", f"127.0.0.1:{metrics_port}",
                           "--data-dir", data_dir, "--max-sub-rate", "1000000000", "--log-level", "error",
                           "--relay-backoff-initial", "0.2",  # live from the first frame: no backlog burst
                           "--relay-backoff-max", "0.2")
            deadline = time.monotonic() + 60
            while not ((get_json(f"http://127.0.0.1:{port}/healthz") or {}).get("status") == "ok"):
                if time.monotonic() > deadline or daemon.poll() is not None:
                    raise RuntimeError("daemon did not start")
                await asyncio.sleep(0.2)
            loadgen = spawn("jetstream.benchtools.loadgen", "--url", f"ws://127.0.0.1:{port}/subscribe",
                            "--connections", str(subscribers), "--expect", "0", "--source-ips", SOURCE_IPS,
                            "--latency-sample", str(latency_sample), "--timeout", str(seconds + 180))
            connected = json.loads(await asyncio.to_thread(loadgen.stdout.readline))
            progress(f"--workers {workers}: {connected['connected']} subscribers connected")
            relay = spawn("jetstream.cli", "relay-sim", "--synthetic", "--seed", "3", "--prerender", "12000",
                          "--rate", str(EVENTS_PER_S / 1.05), "--listen-addr", f"127.0.0.1:{relay_port}",
                          "--log-level", "warning")
            # CPU from here to the end, like the delivered count: every event delivered is in both.
            pids = [daemon.pid] + children_of(daemon.pid)
            cpu_before = {pid: process_cpu_s(pid) for pid in pids}
            await wait_for_port(relay_port, relay)  # pre-rendering takes a few seconds
            await asyncio.sleep(seconds)
            cpu = {pid: process_cpu_s(pid) - cpu_before[pid] for pid in pids}
            loadgen.stdin.write("\n")
            loadgen.stdin.flush()
            report = json.loads(await asyncio.to_thread(loadgen.stdout.readline))
            progress(f"--workers {workers}: {report['received']:,} events delivered")
            metrics = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
        finally:
            for process in (loadgen, daemon, relay):
                if process is not None:
                    stop(process)
    catch_ups = sum(value for name, value in metrics.items() if name.startswith("jetstream_worker_catch_ups_total"))
    catch_up_s = sum(value for name, value in metrics.items()
                     if name.startswith("jetstream_worker_catch_up_seconds_total"))
    catch_up_cpu_s = sum(value for name, value in metrics.items()
                         if name.startswith("jetstream_worker_catch_up_cpu_seconds_total"))
    return {"connected": connected["connected"], "cpu": cpu, "main_pid": daemon.pid, "received": report["received"],
            "ages_ms": sorted(report.get("ages_ms", [])), "catch_ups": catch_ups, "catch_up_s": catch_up_s,
            "catch_up_cpu_s": catch_up_cpu_s,
            "seconds": seconds}


async def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"nothing listens on port {port}") from None
            await asyncio.sleep(0.1)


def percentile(values: list[float], fraction: float) -> float:
    return values[min(len(values) - 1, int(fraction * len(values)))] if values else float("nan")


def stage_workers(table, quick: bool) -> None:
    seconds = 4.0 if quick else 10.0
    runs = {workers: asyncio.run(run_once(workers, seconds)) for workers in (1, 2)}
    per_event = {}
    for workers, run in runs.items():
        if not run["received"]:
            raise RuntimeError(f"--workers {workers}: no events delivered")
        per_event[workers] = sum(run["cpu"].values()) / run["received"] * 1e6
    label = f"{SUBSCRIBERS} subs @ {EVENTS_PER_S} ev/s"
    table.add("workers", f"--workers 1, {label}: daemon CPU", per_event[1], "µs/event")
    table.add("workers", f"--workers 2, {label}: daemon CPU", per_event[2], "µs/event", per_event[1],
              "--workers 1", ratio_key="workers_2_vs_1_cpu_per_event", target="within 1.2x of one worker",
              higher_is_better=False)
    two = runs[2]
    total = sum(two["cpu"].values())
    shares = {("main" if pid == two["main_pid"] else f"worker pid {pid}"): cpu / total * 100
              for pid, cpu in two["cpu"].items()}
    for name, share in sorted(shares.items()):
        table.add("workers", f"--workers 2: {name} share of daemon CPU", share, "%")
    table.add("workers", "--workers 2: largest process share", max(shares.values()), "%", 60.0,
              "the 60% target", ratio_key="workers_2_max_share", target="no process above 60%",
              higher_is_better=False)
    for workers in (1, 2):
        ages = asyncio.run(run_once(workers, seconds, LATENCY_SUBSCRIBERS, LATENCY_SUBSCRIBERS))["ages_ms"]
        label = f"--workers {workers}: event age at client, {LATENCY_SUBSCRIBERS} subs @ {EVENTS_PER_S} ev/s"
        table.add("workers", f"{label} p50 (n={len(ages):,})", percentile(ages, 0.5), "ms")
        table.add("workers", f"--workers {workers}: event age at client p99", percentile(ages, 0.99), "ms")
    if two["catch_ups"]:
        table.add("workers", f"--workers 2: worker catch-up, wall (n={two['catch_ups']:,.0f})",
                  two["catch_up_s"] / two["catch_ups"] * 1e6, "µs")
        table.add("workers", "--workers 2: worker catch-up, CPU", two["catch_up_cpu_s"] / two["catch_ups"] * 1e6, "µs")


if __name__ == "__main__":  # a quick look without the suite: python bench/bench_workers.py
    class _Print:
        def add(self, stage, metric, ours, unit, *rest, **kwargs):
            print(f"{stage:<8} {metric:<60} {ours:10.2f} {unit}")

    stage_workers(_Print(), quick="--quick" in sys.argv)
