"""Soak: relay-sim -> `jetstream serve` -> 200 mixed subscribers for 10 minutes (`make soak`).

Owns: starting relay-sim and the daemon as subprocesses on loopback, driving the
subscribers from this process, sampling the daemon's RSS, checking invariants as events
arrive, and printing a summary table. It must never run in CI or `make test`: it takes
minutes and most of two cores.

Subscriber kinds (defaults for 200):
  plain       live, everything (every plain subscriber must see the same events)
  compressed  live, compress=true (zstd with the server's dictionary, each frame decoded)
  filtered    live, one rare collection or a handful of DIDs (checked against the filter)
  slow        live, stops reading for 2 s out of every 5 (falls back to log reads, never dropped)
  replaying   reconnects every ~20 s with a cursor 5-60 s in the past and catches up
Invariants: time_us strictly increases per connection; each filtered event matches its
filter; plain subscribers agree with each other; no disconnect the client did not ask for.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import zstandard
from picows import WSListener, WSMsgType, ws_connect

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from jetstream.dictionary import active_dictionary  # noqa: E402
from jetstream.relaysim.server import SUBSCRIBE_REPOS_PATH  # noqa: E402

TIME_US = re.compile(rb'"time_us":(\d+)')
COLLECTION = re.compile(rb'"collection":"([^"]+)"')
DID = re.compile(rb'^\{"did":"([^"]+)"')
EVENTS_PER_FRAME = 1.036  # measured on the synthetic mix: frames/s = events/s / this
RARE_COLLECTIONS = ("app.bsky.graph.block", "app.bsky.graph.list", "app.bsky.actor.profile",
                    "app.bsky.feed.threadgate", "app.bsky.graph.listitem")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Stats:
    def __init__(self) -> None:
        self.violations: list[str] = []
        self.unexpected_disconnects = 0
        self.messages = 0

    def violation(self, text: str) -> None:
        if len(self.violations) < 50:
            print(f"VIOLATION {text}", flush=True)
        self.violations.append(text)


class Subscriber(WSListener):
    """One connection; checks every event as it arrives."""

    def __init__(self, soak: "Soak", name: str, kind: str, wanted=None, dids=None) -> None:
        self.soak, self.name, self.kind = soak, name, kind
        self.wanted, self.dids = wanted, dids
        self.last_time_us = 0
        self.received = 0
        self.times: list[int] | None = [] if kind == "plain" else None
        self.transport = None
        self.leaving = False  # the client hangs up on purpose
        self.decompressor = soak.zstd.decompressobj if kind == "compressed" else None

    def on_ws_connected(self, transport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport, frame) -> None:
        msg_type = frame.msg_type
        if msg_type == WSMsgType.CLOSE:
            if not self.leaving and not self.soak.stopping:
                self.soak.stats.unexpected_disconnects += 1
                self.soak.stats.violation(f"{self.name}: server closed {frame.get_close_code()} "
                                          f"{frame.get_close_reason()!r}")
            transport.disconnect()
            return
        payload = frame.get_payload_as_bytes()
        if msg_type == WSMsgType.BINARY:
            payload = self.soak.zstd.decompress(payload)
        self.check(payload)

    def on_ws_disconnected(self, transport) -> None:
        if not self.leaving and not self.soak.stopping:
            self.soak.stats.unexpected_disconnects += 1
            self.soak.stats.violation(f"{self.name}: disconnected without a close frame")

    def check(self, payload: bytes) -> None:
        time_us = int(TIME_US.search(payload, 0, 200).group(1))
        if time_us <= self.last_time_us:
            self.soak.stats.violation(f"{self.name}: time_us {time_us} after {self.last_time_us}")
        self.last_time_us = time_us
        self.received += 1
        self.soak.stats.messages += 1
        if self.times is not None:
            self.times.append(time_us)
        if self.wanted is not None and b'"kind":"commit"' in payload[:200]:
            if COLLECTION.search(payload).group(1).decode() != self.wanted:
                self.soak.stats.violation(f"{self.name}: collection outside {self.wanted}")
        if self.dids is not None and DID.match(payload).group(1).decode() not in self.dids:
            self.soak.stats.violation(f"{self.name}: DID outside its filter")


class Soak:
    def __init__(self, args) -> None:
        self.args = args
        self.stats = Stats()
        self.stopping = False
        self.zstd = zstandard.ZstdDecompressor(dict_data=zstandard.ZstdCompressionDict(active_dictionary("")))
        self.subscribers: list[Subscriber] = []
        self.tasks: list[asyncio.Task] = []
        self.rng = random.Random(args.seed)

    async def connect(self, subscriber: Subscriber, query: str) -> None:
        url = f"ws://127.0.0.1:{self.port}/subscribe" + (f"?{query}" if query else "")
        await ws_connect(lambda: subscriber, url, max_frame_size=16 * 1024 * 1024)

    async def start_subscribers(self) -> None:
        n = self.args.subscribers
        counts = {"plain": max(2, n // 20), "compressed": max(1, n // 40), "slow": max(1, n // 10),
                  "replaying": max(1, n // 13)}
        counts["filtered"] = n - sum(counts.values())
        dids = self.sample_dids()
        for kind, count in counts.items():
            for index in range(count):
                await self.start_one(kind, index, dids)
        self.counts = counts

    def sample_dids(self) -> list[str]:
        from jetstream.relaysim.synthetic import SyntheticSource
        source = SyntheticSource(seed=self.args.seed, dids=self.args.dids)
        return [source.did(index) for index in range(0, self.args.dids, 7)] if hasattr(source, "did") else []

    async def start_one(self, kind: str, index: int, dids: list[str]) -> None:
        name = f"{kind}-{index}"
        if kind == "plain":
            subscriber, query = Subscriber(self, name, kind), ""
        elif kind == "compressed":
            subscriber, query = Subscriber(self, name, kind), "compress=true"
        elif kind == "filtered":
            if index % 3 == 2 and dids:
                chosen = self.rng.sample(dids, min(5, len(dids)))
                subscriber = Subscriber(self, name, kind, dids=set(chosen))
                query = "&".join(f"wantedDids={did}" for did in chosen)
            else:
                wanted = RARE_COLLECTIONS[index % len(RARE_COLLECTIONS)]
                subscriber, query = Subscriber(self, name, kind, wanted=wanted), f"wantedCollections={wanted}"
        elif kind == "slow":
            subscriber, query = Subscriber(self, name, kind), ""
            self.tasks.append(asyncio.ensure_future(self.read_slowly(subscriber)))
        else:
            self.tasks.append(asyncio.ensure_future(self.replay_forever(name)))
            return
        await self.connect(subscriber, query)
        self.subscribers.append(subscriber)

    async def read_slowly(self, subscriber: Subscriber) -> None:
        while not self.stopping:
            await asyncio.sleep(3.0)
            if subscriber.transport is None:
                continue
            subscriber.transport.underlying_transport.pause_reading()
            await asyncio.sleep(2.0)
            subscriber.transport.underlying_transport.resume_reading()

    async def replay_forever(self, name: str) -> None:
        generation = 0
        while not self.stopping:
            back_s = self.rng.uniform(5, 60)
            cursor = int((time.time() - back_s) * 1e6)
            subscriber = Subscriber(self, f"{name}.{generation}", "replaying")
            await self.connect(subscriber, f"cursor={cursor}")
            self.subscribers.append(subscriber)
            await asyncio.sleep(self.rng.uniform(15, 25))
            subscriber.leaving = True
            subscriber.transport.send_close()
            subscriber.transport.disconnect()
            self.subscribers.remove(subscriber)
            self.replayed = getattr(self, "replayed", 0) + subscriber.received
            generation += 1

    def plain_agree(self) -> bool:
        plains = [s.times for s in self.subscribers if s.kind == "plain"]
        start = max(times[0] for times in plains if times)
        end = min(times[-1] for times in plains if times)
        windows = [[t for t in times if start <= t <= end] for times in plains]
        return all(window == windows[0] for window in windows)

    async def run(self) -> int:
        args = self.args
        workdir = Path(tempfile.mkdtemp(prefix="jetstream-soak-"))
        relay_port, self.port = free_port(), free_port()
        logs = open(workdir / "processes.log", "ab")
        python = [sys.executable, "-m", "jetstream.cli"]
        frame_rate = args.events_per_s / EVENTS_PER_FRAME
        relay = await asyncio.create_subprocess_exec(
            *python, "relay-sim", "--synthetic", "true", "--prerender", "20000", "--rate", f"{frame_rate:.0f}",
            "--seed", str(args.seed), "--dids", str(args.dids), "--listen-addr", f"127.0.0.1:{relay_port}",
            "--log-level", "warning", cwd=REPO_ROOT, stdout=logs, stderr=logs)
        daemon = await asyncio.create_subprocess_exec(
            *python, "serve", "--ws-url", f"ws://127.0.0.1:{relay_port}{SUBSCRIBE_REPOS_PATH}",
            "--listen-addr", f"127.0.0.1:{self.port}", "--metrics-listen-addr", "", "--data-dir",
            str(workdir / "data"), "--override-relay-cursor", "0", "--max-sub-rate", "1000000",
            "--event-ttl", "5m", "--log-level", "warning", cwd=REPO_ROOT, stdout=logs, stderr=logs)
        rows = []
        try:
            await self.wait_for_port()
            await self.start_subscribers()
            print(f"soak: {args.subscribers} subscribers {self.counts}, {args.events_per_s} events/s target, "
                  f"{args.duration:.0f} s, data in {workdir}", flush=True)
            started = time.monotonic()
            last_messages, last_cpu, last_t = 0, cpu_seconds(daemon.pid), started
            print(f"{'t_s':>6} {'rss_mib':>8} {'cpu_%':>6} {'deliv/s':>9} {'subs':>5} {'violations':>10} "
                  f"{'unexp_disc':>10}", flush=True)
            while time.monotonic() - started < args.duration:
                await asyncio.sleep(args.sample_s)
                now = time.monotonic()
                cpu = cpu_seconds(daemon.pid)
                row = (now - started, rss_mib(daemon.pid), 100 * (cpu - last_cpu) / (now - last_t),
                       (self.stats.messages - last_messages) / (now - last_t), len(self.subscribers),
                       len(self.stats.violations), self.stats.unexpected_disconnects)
                rows.append(row)
                last_messages, last_cpu, last_t = self.stats.messages, cpu, now
                print(f"{row[0]:6.0f} {row[1]:8.1f} {row[2]:6.0f} {row[3]:9.0f} {row[4]:5d} {row[5]:10d} {row[6]:10d}",
                      flush=True)
                if daemon.returncode is not None:
                    self.stats.violation(f"daemon exited {daemon.returncode}")
                    break
        finally:
            self.stopping = True
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            for process in (daemon, relay):
                if process.returncode is None:
                    process.terminate()
                    await process.wait()
            logs.close()
        if not self.plain_agree():
            self.stats.violation("plain subscribers disagree on the events they saw")
        self.summary(rows, workdir)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        return 0 if not self.stats.violations and self.stats.unexpected_disconnects == 0 else 1

    async def wait_for_port(self) -> None:
        for _ in range(300):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.1)
        raise SystemExit("the daemon never listened")

    def summary(self, rows, workdir: Path) -> None:
        warm = [row for row in rows if row[0] >= self.args.warmup_s] or rows
        by_kind = {}
        for subscriber in self.subscribers:
            by_kind[subscriber.kind] = by_kind.get(subscriber.kind, 0) + subscriber.received
        by_kind["replaying (closed)"] = getattr(self, "replayed", 0)
        print("\nsoak summary")
        print(f"  duration_s            {rows[-1][0]:.0f}" if rows else "  duration_s 0")
        print(f"  rss_mib start/end     {rows[0][1]:.1f} / {rows[-1][1]:.1f} "
              f"(after {self.args.warmup_s:.0f}s warm-up: {warm[0][1]:.1f} -> {warm[-1][1]:.1f}, "
              f"max {max(r[1] for r in warm):.1f})")
        print(f"  daemon cpu_% mean     {sum(r[2] for r in warm) / len(warm):.0f}")
        print(f"  delivered msgs/s mean {sum(r[3] for r in warm) / len(warm):.0f}")
        print(f"  delivered by kind     {by_kind}")
        print(f"  violations            {len(self.stats.violations)}")
        print(f"  unexpected disconnects {self.stats.unexpected_disconnects}")
        print(f"  logs                  {workdir / 'processes.log'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (default 10 minutes)")
    parser.add_argument("--events-per-s", type=float, default=2000.0)
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--dids", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--warmup-s", type=float, default=120.0, help="RSS before this is warm-up (ring filling)")
    parser.add_argument("--keep", action="store_true", help="keep the data dir and process logs")
    args = parser.parse_args()
    try:
        import uvloop
        code = uvloop.run(Soak(args).run())
    except ImportError:
        code = asyncio.run(Soak(args).run())
    raise SystemExit(code)


if __name__ == "__main__":
    main()
