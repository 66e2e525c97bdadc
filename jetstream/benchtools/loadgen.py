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
--source-ips A,B,... spreads the connections over those local addresses (round robin): a
`--workers` daemon keeps one client IP on one worker. --latency-sample K: the first K
connections report, per event, wall clock at arrival minus the event's time_us (ms), which
is the time from sequencing in the daemon to the client, whatever process served it.
With --query, a line "?" on stdin is answered with `{"received": N, "at": t}` and the run
goes on (any other line ends it): a live benchmark counts deliveries over a window.
With --bytes-only, connections do the websocket upgrade by hand and then only count the
bytes they read (no frame parsing, no Python call per message), so one process can absorb
millions of messages per second; the server's own counters give the message counts.
They never answer a ping, so the server under test should run with pings off.
"""
from __future__ import annotations

import argparse
import asyncio
import functools
import json
import re
import resource
import sys
import time
from urllib.parse import urlsplit

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


_TIME_US = re.compile(rb'"time_us":(\d+)')


class CountingListener(WSListener):
    def __init__(self, tally: Tally, stamps: list[float] | None, ages_ms: list[float] | None = None) -> None:
        self.tally, self.stamps, self.count = tally, stamps, 0
        self.ages_ms = ages_ms

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
        if self.ages_ms is not None:
            found = _TIME_US.search(frame.get_payload_as_bytes()[:200])
            if found:
                self.ages_ms.append(time.time() * 1e3 - int(found.group(1)) / 1e3)
        if tally.received >= tally.target and tally.target and not tally.done.done():
            tally.done.set_result(None)


async def open_connections(url: str, count: int, tally: Tally, timestamps: bool,
                           source_ips: list[str] | None = None, latency_sample: int = 0) -> list:
    connections, listeners = [], []
    if source_ips:  # many at once: one by one, 300 handshakes take tens of seconds behind a busy stream
        async def connect(index: int):
            ages = [] if index < latency_sample else None
            stamps = [] if timestamps else None
            return await ws_connect(functools.partial(CountingListener, tally, stamps, ages), url,
                                    local_addr=(source_ips[index % len(source_ips)], 0))
        for start in range(0, count, 50):
            batch = range(start, min(count, start + 50))
            for transport, listener in await asyncio.gather(*(connect(i) for i in batch)):
                connections.append(transport)
                listeners.append(listener)
        return connections, listeners
    for index in range(count):
        stamps = [] if timestamps else None
        ages = [] if index < latency_sample else None
        # partial, not a lambda with defaults: picows calls a two-parameter factory with
        # (request, response), which would land in stamps and ages.
        transport, listener = await ws_connect(functools.partial(CountingListener, tally, stamps, ages), url,
                                               websocket_handshake_timeout=60)  # a loaded server may answer late
        connections.append(transport)
        listeners.append(listener)
    return connections, listeners


class ByteCounter(asyncio.BufferedProtocol):
    """A websocket client that upgrades, then reads and counts bytes without parsing frames."""

    def __init__(self, host: str, target: str, tally: Tally, opened: asyncio.Future) -> None:
        self.host, self.target, self.tally, self.opened = host, target, tally, opened
        self.buffer = bytearray(256 * 1024)
        self.head = b""

    def connection_made(self, transport) -> None:
        transport.write((f"GET {self.target} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
                         "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                         "Sec-WebSocket-Version: 13\r\n\r\n").encode())

    def get_buffer(self, sizehint: int):
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        if self.opened.done():
            self.tally.received_bytes += nbytes
            return
        self.head += bytes(self.buffer[:nbytes])
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            return
        if not self.head.startswith(b"HTTP/1.1 101"):
            self.opened.set_exception(ConnectionError(self.head[:end].decode(errors="replace")))
            return
        self.tally.received_bytes += len(self.head) - end - 4
        self.opened.set_result(None)

    def connection_lost(self, exc) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("closed during the upgrade"))


async def open_byte_counters(url: str, count: int, tally: Tally) -> list:
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    loop = asyncio.get_running_loop()

    async def open_one():
        opened = loop.create_future()
        transport, _ = await loop.create_connection(
            lambda: ByteCounter(parts.netloc, target, tally, opened), parts.hostname, parts.port)
        await opened
        return transport

    transports = []
    for start in range(0, count, 50):  # 50 upgrades in flight at a time
        transports += await asyncio.gather(*(open_one() for _ in range(min(50, count - start))))
    return transports


def emit(record: dict) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


async def run(args) -> None:
    tally = Tally(args.connections, args.expect)
    source_ips = [ip for ip in args.source_ips.split(",") if ip] if args.source_ips else None
    if args.bytes_only:
        transports, listeners = await open_byte_counters(args.url, args.connections, tally), []
    else:
        transports, listeners = await open_connections(args.url, args.connections, tally, args.timestamps,
                                                       source_ips, args.latency_sample)
    emit({"connected": len(transports), "at": time.perf_counter()})
    # Stop at: every message expected arrived, a line (or EOF) on stdin, or the timeout.
    deadline = time.monotonic() + args.timeout
    while True:
        stdin_line = asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        waits = [stdin_line] if args.expect == 0 else [stdin_line, tally.done]
        await asyncio.wait(waits, timeout=max(0.0, deadline - time.monotonic()), return_when=asyncio.FIRST_COMPLETED)
        if not (args.query and stdin_line.done() and stdin_line.result().strip() == "?"):
            break
        emit({"received": tally.received, "bytes": tally.received_bytes, "at": time.perf_counter()})
    report = {"done": tally.received >= tally.target, "received": tally.received,
              "bytes": tally.received_bytes, "first": tally.first, "last": tally.last,
              "per_connection_min": min((l.count for l in listeners), default=0)}
    if args.timestamps:
        report["stamps"] = [l.stamps for l in listeners]
    if args.latency_sample:
        report["ages_ms"] = [age for l in listeners if l.ages_ms for age in l.ages_ms]
    emit(report)
    for transport in transports:
        transport.close() if args.bytes_only else transport.disconnect()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--expect", type=int, default=0, help="messages per connection; 0 = hold idle")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--timestamps", action="store_true")
    parser.add_argument("--source-ips", default="", help="comma-separated local addresses to connect from")
    parser.add_argument("--bytes-only", action="store_true", help="count bytes, do not parse frames")
    parser.add_argument("--query", action="store_true", help='answer "?" lines on stdin with the counts so far')
    parser.add_argument("--latency-sample", type=int, default=0, help="connections reporting event age (ms)")
    args = parser.parse_args(argv)
    raise_nofile_limit()
    uvloop.run(run(args))


if __name__ == "__main__":
    main()
