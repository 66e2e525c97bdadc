"""Benchmark: the reader's write path, replay rate to one client, memory per idle subscriber.

Owns: the numbers the issue-5 closing note reports. Run:
`.venv/bin/python bench/bench_fanout.py [--events N] [--idle 1000]`.
It must never be part of the test suite's pass/fail; it only prints. Clients run in a
child process so the server process's CPU time and RSS are its own.

1. write path: the same N corpus lines to one client, (a) picows send() per message
   (one send(2) each) vs (b) encode_frames batches of 512 + one transport write;
   server CPU seconds per delivered event, as a ratio measured in the same run.
2. replay: a real EventLog of N events, a real SubscribeServer, one client with cursor=0
   (all from RocksDB, the ring empty): delivered events/s.
3. idle memory: RSS of the server process before/after `--idle` live subscribers that
   receive nothing; KiB per subscriber.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop
from picows import WSListener, WSMsgType, ws_create_server

from jetstream.compression import EventCompressor
from jetstream.events import KIND_COMMIT, Event
from jetstream.implementation import LiveRing, encode_frames
from jetstream.log.store import EventLog
from jetstream.server.app import SubscribeServer
from jetstream.server.settings import ServerSettings

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "expected_v1.jsonl"
BATCH = 512

CLIENT = r"""
import asyncio, sys, time, uvloop
from picows import ws_connect, WSListener, WSMsgType
url, connections, expect = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
class Counter(WSListener):
    count = 0
    first = None
    def on_ws_frame(self, transport, frame):
        if frame.msg_type in (WSMsgType.TEXT, WSMsgType.BINARY):
            if Counter.first is None:
                Counter.first = time.perf_counter()
            Counter.count += 1
async def main():
    conns = [await ws_connect(Counter, url) for _ in range(connections)]
    print("connected", flush=True)
    while Counter.count < expect:
        await asyncio.sleep(0.001)
    # from the first event received to the last: the replay, not the handshake
    print("done", Counter.count, time.perf_counter() - (Counter.first or time.perf_counter()), flush=True)
    if expect == 0:
        sys.stdin.readline()
uvloop.run(main())
"""


def spawn_client(url: str, connections: int, expect: int) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", CLIENT, url, str(connections), str(expect)],
                               stdout=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
    return process


async def read_line(process: subprocess.Popen) -> str:
    return await asyncio.get_running_loop().run_in_executor(None, process.stdout.readline)


def rss_kib() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


# --- 1. write path --------------------------------------------------------------------------

class Pusher(WSListener):
    """Sends `payloads` in steps of BATCH, pausing at the high-water mark like the reader."""

    def __init__(self, payloads: list[bytes], batched: bool, done: asyncio.Future) -> None:
        self.payloads, self.batched, self.done = payloads, batched, done
        self.index, self.paused, self.transport = 0, False, None

    def on_ws_connected(self, transport) -> None:
        self.transport = transport
        self.pump()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.pump()

    def pump(self) -> None:
        while not self.paused and self.index < len(self.payloads):
            step = self.payloads[self.index:self.index + BATCH]
            self.index += len(step)
            if self.batched:
                self.transport.underlying_transport.write(encode_frames(step, False))
            else:
                for payload in step:
                    self.transport.send(WSMsgType.TEXT, payload)
        if self.index >= len(self.payloads) and not self.done.done():
            self.done.set_result(None)


async def write_path(payloads: list[bytes], batched: bool) -> tuple[float, float]:
    done = asyncio.get_running_loop().create_future()
    server = await ws_create_server(lambda request: Pusher(payloads, batched, done), "127.0.0.1", 0)
    url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    client = spawn_client(url, 1, len(payloads))
    await read_line(client)
    line = await read_line(client)
    cpu, wall = time.process_time() - cpu_start, time.perf_counter() - wall_start
    client.wait()
    server.close()
    assert line.startswith("done"), line
    return cpu, wall


# --- 2. replay ------------------------------------------------------------------------------

def build_log(path: str, lines: list[bytes], count: int) -> EventLog:
    event_log = EventLog(path)
    compressor = EventCompressor()
    time_us = 1_700_000_000_000_000
    for start in range(0, count, 5000):
        batch = []
        for index in range(start, min(count, start + 5000)):
            time_us += 1
            line = lines[index % len(lines)]
            batch.append(Event(time_us, "did:plc:bench", KIND_COMMIT, "app.bsky.feed.post", line, line[:64]))
        event_log.append(batch, relay_cursor=None)
    del compressor
    return event_log


async def replay(event_log: EventLog, count: int) -> float:
    server = SubscribeServer(event_log, LiveRing(1024, floor_time_us=event_log.hwm()),
                             ServerSettings(max_sub_rate=1e9, ping_interval_s=0))
    await server.start("127.0.0.1", 0)
    client = spawn_client(f"ws://127.0.0.1:{server.port}/subscribe?cursor=0", 1, count)
    await read_line(client)
    line = await read_line(client)
    client.wait()
    await server.close()
    return float(line.split()[2])


# --- 3. idle memory -------------------------------------------------------------------------

async def idle_memory(event_log: EventLog, subscribers: int) -> float:
    server = SubscribeServer(event_log, LiveRing(1024, floor_time_us=event_log.hwm()),
                             ServerSettings(max_sub_rate=5000, ping_interval_s=0))
    await server.start("127.0.0.1", 0)
    await asyncio.sleep(0.2)
    before = rss_kib()
    client = spawn_client(f"ws://127.0.0.1:{server.port}/subscribe", subscribers, 0)
    await read_line(client)
    while server.connected_count < subscribers:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    after = rss_kib()
    client.stdin.write("\n")
    client.stdin.flush()
    client.wait()
    await server.close()
    return (after - before) / subscribers


async def main(args) -> None:
    lines = CORPUS.read_bytes().splitlines()
    payloads = [lines[i % len(lines)] for i in range(args.events)]
    print(f"write path, {args.events} events of the corpus to one client (server CPU s, wall s):")
    results = {}
    for batched in (False, True, False, True):
        cpu, wall = await write_path(payloads, batched)
        name = "batched" if batched else "send"
        results[name] = min(results.get(name, (1e9, 1e9)), (cpu, wall))
    for name, (cpu, wall) in results.items():
        print(f"  {name:8s} cpu {cpu:.3f}s ({cpu / args.events * 1e6:.2f} us/event) wall {wall:.3f}s")
    print(f"  ratio send/batched CPU per event: {results['send'][0] / results['batched'][0]:.2f}x")
    with tempfile.TemporaryDirectory() as directory:
        event_log = build_log(directory + "/log", lines, args.events)
        seconds = await replay(event_log, args.events)
        print(f"replay to one client from RocksDB: {args.events / seconds:,.0f} events/s ({seconds:.2f}s)")
        per_subscriber = await idle_memory(event_log, args.idle)
        print(f"idle subscribers: {args.idle}, RSS delta {per_subscriber:.1f} KiB per subscriber")
        event_log.close()
    print(json.dumps({"send_cpu_s": results["send"][0], "batched_cpu_s": results["batched"][0],
                      "replay_events_per_s": args.events / seconds, "idle_kib_per_subscriber": per_subscriber}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--idle", type=int, default=1000)
    uvloop.run(main(parser.parse_args()))
