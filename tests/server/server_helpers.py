"""Test helpers for the server: a real EventLog + LiveRing + SubscribeServer (both wires), raw HTTP, event makers.

Events are built from the corpus' v1 JSON lines (their bytes, with a fresh time_us), so
what the tests compare is real v1 output, not strings the code under test produced; or, for
the v2 wire, from decoded relay frames through our real Sequencer (their v2 frames made there).
"""
from __future__ import annotations

import asyncio
from collections.abc import Sequence

from jetstream.compression import EventCompressor
from jetstream.dictionary import active_v2_dictionary
from jetstream.events import Event, PendingEvent
from jetstream.implementation import LiveRing
from jetstream.ingest.sequencer import Sequencer
from jetstream.log.store import EventLog
from jetstream.server.app import SubscribeServer
from jetstream.server.settings import ServerSettings
from tests.corpus_events import event_from_line, time_us_of  # noqa: F401 - the server tests import them from here

V2_PATH = "/xrpc/network.bsky.jetstream.subscribeEvents"


class Stack:
    """Log, ring and server wired the way the daemon wires them (log -> ring -> notify).

    Two ways to publish: `publish(lines)` stores corpus v1 JSON lines as they are (no v2 record);
    `publish_sequenced(count)` runs the next `count` of `relay_events` (decoded relay events, cycled)
    through our own Sequencer, as ingest does, so each event carries its v2 frame as well.
    """

    def __init__(self, tmp_path, *, ring_capacity: int = 10_000, max_sub_rate: float = 1_000_000.0,
                 relay_events: Sequence[PendingEvent] = (), **settings) -> None:
        self.event_log = EventLog(str(tmp_path / "log"))
        self.ring = LiveRing(ring_capacity, floor_time_us=self.event_log.hwm())
        self.server = SubscribeServer(self.event_log, self.ring, ServerSettings(max_sub_rate=max_sub_rate, **settings))
        self.next_time_us = 1_700_000_000_000_000
        self.relay_events = list(relay_events)
        self.sequenced = 0
        self._sequencer: Sequencer | None = None  # made on the first publish_sequenced
        self._compressor: EventCompressor | None = None

    async def start(self) -> "Stack":
        await self.server.start("127.0.0.1", 0)
        return self

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}/subscribe"

    def v2_url(self, query: str = "") -> str:
        return f"ws://127.0.0.1:{self.server.port}{V2_PATH}" + (f"?{query}" if query else "")

    def publish(self, lines: list[bytes]) -> list[Event]:
        events = []
        for line in lines:
            self.next_time_us += 7
            events.append(event_from_line(line, self.next_time_us))
        return self._store(events)

    def publish_sequenced(self, count: int) -> list[Event]:
        if self._sequencer is None:
            self._sequencer = Sequencer(self.event_log.hwm(), last_seq=self.event_log.newest_seq())
            self._compressor = EventCompressor(None, active_v2_dictionary())
        batch = [self.relay_events[(self.sequenced + i) % len(self.relay_events)] for i in range(count)]
        self.sequenced += count
        return self._store(self._sequencer.sequence(batch, self._compressor))

    def _store(self, events: list[Event]) -> list[Event]:
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
