"""Test helpers for the server: a real EventLog + LiveRing + SubscribeServer, raw HTTP, event makers.

Events are built from the corpus' v1 JSON lines (their bytes, with a fresh time_us), so
what the tests compare is real v1 output, not strings the code under test produced.
"""
from __future__ import annotations

import asyncio

from jetstream.events import Event
from jetstream.implementation import LiveRing
from jetstream.log.store import EventLog
from jetstream.server.app import SubscribeServer
from jetstream.server.settings import ServerSettings
from tests.corpus_events import event_from_line, time_us_of  # noqa: F401 - the server tests import them from here


class Stack:
    """Log, ring and server wired the way the daemon wires them (log -> ring -> notify)."""

    def __init__(self, tmp_path, *, ring_capacity: int = 10_000, max_sub_rate: float = 1_000_000.0,
                 **settings) -> None:
        self.event_log = EventLog(str(tmp_path / "log"))
        self.ring = LiveRing(ring_capacity, floor_time_us=self.event_log.hwm())
        self.server = SubscribeServer(self.event_log, self.ring, ServerSettings(max_sub_rate=max_sub_rate, **settings))
        self.next_time_us = 1_700_000_000_000_000

    async def start(self) -> "Stack":
        await self.server.start("127.0.0.1", 0)
        return self

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}/subscribe"

    def publish(self, lines: list[bytes]) -> list[Event]:
        events = []
        for line in lines:
            self.next_time_us += 7
            events.append(event_from_line(line, self.next_time_us))
        self.event_log.append(events, relay_cursor=None)
        for event in events:
            self.ring.append(event)
        self.server.notify_new_events()
        return events

    async def stop(self) -> None:
        await self.server.close()
        self.event_log.close()


async def http_get(port: int, target: str, headers: dict[str, str] | None = None,
                   method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """A raw HTTP/1.1 request; returns (status, headers with lower-cased names, body).

    A header sent more than once is returned joined with ", " (as Go's Values would be read).
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), timeout=5)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        parsed[name] = f"{parsed[name]}, {value.strip()}" if name in parsed else value.strip()
    return int(status_line.split()[1]), parsed, body


async def settle(predicate, timeout: float = 5.0) -> None:
    """Wait until predicate() holds (server-side state seen from the test)."""
    async def _wait():
        while not predicate():
            await asyncio.sleep(0.005)
    await asyncio.wait_for(_wait(), timeout)
