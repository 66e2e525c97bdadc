"""Websocket load generator: N client connections in one process, counting what arrives.

Owns: the client side of the fan-out, replay, latency and idle-memory benchmarks, run as
a separate process so the server's CPU time and RSS are its own. It must never judge a
result: it only reports counts and timestamps as one JSON line on stdout.

Protocol (stdout, one line each): `{"connected": N}` once every connection is open, then
`{"done": ...}` when every connection has received --expect messages (or --timeout passed).
With --expect 0 it holds the connections open until stdin closes or sends a line (a line
on stdin also ends a run with --expect early).
With --timestamps it also reports, per connection, perf_counter() of each arrival
(CLOCK_MONOTONIC is system-wide on Linux, so the server process can compare them).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time

import uvloop
from picows import WSListener, WSMsgType, ws_connect


def raise_nofile_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Tally:
    """Shared counters for all connections: totals, first/last arrival, done signal."""

    def __init__(self, connections: int, expect: int) -> None:
        self.target = connections * expect
        self.received = 0
        self.received_bytes = 0
        self.first = 0.0
        self.last = 0.0
        self.done = asyncio.get_running_loop().create_future()


class CountingListener(WSListener):
    def __init__(self, tally: Tally, stamps: list[float] | None) -> None:
        self.tally, self.stamps, self.count = tally, stamps, 0

    def on_ws_frame(self, transport, frame) -> None:
        if frame.msg_type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            return
        now = time.perf_counter()
        tally = self.tally
        if tally.received == 0:
            tally.first = now
        tally.last = now
        tally.received += 1
        tally.received_bytes += len(frame.get_payload_as_memoryview())
        self.count += 1
        if self.stamps is not None:
            self.stamps.append(now)
        if tally.received >= tally.target and tally.target and not tally.done.done():
            tally.done.set_result(None)


async def open_connections(url: str, count: int, tally: Tally, timestamps: bool) -> list:
    connections, listeners = [], []
    for _ in range(count):
        stamps = [] if timestamps else None
        transport, listener = await ws_connect(lambda stamps=stamps: CountingListener(tally, stamps), url)
        connections.append(transport)
        listeners.append(listener)
    return connections, listeners


def emit(record: dict) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


async def run(args) -> None:
    tally = Tally(args.connections, args.expect)
    transports, listeners = await open_connections(args.url, args.connections, tally, args.timestamps)
    emit({"connected": len(transports), "at": time.perf_counter()})
    # Stop at: every message expected arrived, a line (or EOF) on stdin, or the timeout.
    stdin_line = asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    waits = [stdin_line] if args.expect == 0 else [stdin_line, tally.done]
    await asyncio.wait(waits, timeout=args.timeout, return_when=asyncio.FIRST_COMPLETED)
    report = {"done": tally.received >= tally.target, "received": tally.received,
              "bytes": tally.received_bytes, "first": tally.first, "last": tally.last,
              "per_connection_min": min((l.count for l in listeners), default=0)}
    if args.timestamps:
        report["stamps"] = [l.stamps for l in listeners]
    emit(report)
    for transport in transports:
        transport.disconnect()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--expect", type=int, default=0, help="messages per connection; 0 = hold idle")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--timestamps", action="store_true")
    args = parser.parse_args(argv)
    raise_nofile_limit()
    uvloop.run(run(args))


if __name__ == "__main__":
    main()
