"""Shared pieces of the cutover scenarios: relay-sim -> daemon, clients, and the checks.

The checks compare what each client received with the daemon's own RocksDB log, filtered
by the test's own matcher (never the project's filter), so they would catch a gap, a
duplicate, a reordering or a wrong filter switch anywhere in the reader.
"""
from __future__ import annotations

import asyncio
import json
import socket
import time
from dataclasses import dataclass, field

from picows import WSListener, WSMsgType, ws_connect

from jetstream.config import parse_serve_args
from jetstream.daemon import Daemon
from jetstream.relaysim.filesource import FileSource
from jetstream.relaysim.server import RelaySim

# Filters the stress suites give their clients: (wantedCollections, wantedDids).
SPECS = [
    ((), ()),
    (("app.bsky.feed.post",), ()),
    (("app.bsky.feed.like", "app.bsky.graph.*"), ()),
    (("app.bsky.*",), ()),
    (("com.example.nothing",), ()),  # only identity/account events pass
]


def now_us() -> int:
    return time.time_ns() // 1000


def wanted(spec, did: str, collection: str) -> bool:
    """v1 filter rules written independently: OR of exact / '.*' prefix; '' bypasses collections."""
    collections, dids = spec
    if dids and did not in dids:
        return False
    if not collections or collection == "":
        return True
    return any(collection.startswith(entry[:-1]) if entry.endswith(".*") else collection == entry
               for entry in collections)


def subscribe_query(spec, cursor: int | None, compress: bool = False) -> str:
    collections, dids = spec
    parts = [f"wantedCollections={c}" for c in collections] + [f"wantedDids={d}" for d in dids]
    if cursor is not None:
        parts.append(f"cursor={cursor}")
    if compress:
        parts.append("compress=true")
    return "?" + "&".join(parts) if parts else ""


def options_update(spec) -> bytes:
    collections, dids = spec
    return json.dumps({"type": "options_update",
                       "payload": {"wantedCollections": list(collections), "wantedDids": list(dids)}}).encode()


class StreamClient(WSListener):
    """Records every payload; optionally sends one options_update after `update_after` messages."""

    def __init__(self, update_after: int = 0, update: bytes = b"") -> None:
        self.payloads: list[bytes] = []
        self.close_code = None
        self.close_reason = None
        self.transport = None
        self.disconnected = asyncio.Event()
        self._update_after, self._update = update_after, update
        self.update_sent = False

    def on_ws_connected(self, transport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport, frame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            self.close_code, self.close_reason = frame.get_close_code(), frame.get_close_reason()
            transport.disconnect()
        elif frame.msg_type in (WSMsgType.TEXT, WSMsgType.BINARY):
            self.payloads.append(frame.get_payload_as_bytes())
            if self._update and not self.update_sent and len(self.payloads) >= self._update_after:
                transport.send(WSMsgType.TEXT, self._update)
                self.update_sent = True

    def on_ws_disconnected(self, transport) -> None:
        self.disconnected.set()

    def hang_up(self) -> None:
        if not self.disconnected.is_set():
            self.transport.send_close()
            self.transport.disconnect()

    @property
    def local_port(self) -> int:
        return self.transport.underlying_transport.get_extra_info("sockname")[1]


async def play_role(client, plan: dict, stop: asyncio.Event) -> None:
    """What a stress client does once connected: a slow one reads in bursts until `stop`, pausing
    for twice what the ring spans (its reader must fall back to the log and resume); an early one
    hangs up after its session."""
    if plan["role"] == "slow":
        reading = client.transport.underlying_transport
        while not stop.is_set() and not client.disconnected.is_set():
            await asyncio.sleep(0.3)  # read at full speed: the replay reaches the ring
            reading.pause_reading()
            await asyncio.sleep(2.0)
            reading.resume_reading()
    elif plan["session_s"] is not None:
        await asyncio.sleep(plan["session_s"])
        plan["hung_up_early"] = True
        client.hang_up()


async def connect_client(url: str, *, receive_buffer: int = 0, **kwargs) -> StreamClient:
    """Connect a StreamClient; receive_buffer > 0 sets SO_RCVBUF before connecting.

    (Shrinking SO_RCVBUF on an established connection shrinks the advertised window under
    the sender, and Linux then stalls on zero-window probes: it must be set up front.)
    """
    factory = None
    if receive_buffer:
        async def factory(parsed_url):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            await asyncio.get_running_loop().sock_connect(sock, (parsed_url.host, parsed_url.port))
            return sock
    _, client = await ws_connect(lambda: StreamClient(**kwargs), url, socket_factory=factory)
    return client


@dataclass
class LogView:
    """Every logged event after the run: (time_us, did, collection, json, zstd) in order."""

    rows: list[tuple[int, str, str, bytes, bytes]]
    time_of: dict[bytes, int] = field(default_factory=dict)

    @classmethod
    def read(cls, event_log) -> "LogView":
        rows, after = [], 0
        while True:
            json_rows = event_log.read_after(after, 4096, False)
            if not json_rows:
                break
            zstd_rows = event_log.read_after(after, len(json_rows), True)
            rows += [(j.time_us, j.did, j.collection, j.payload, z.payload) for j, z in zip(json_rows, zstd_rows)]
            after = json_rows[-1].time_us
        view = cls(rows)
        for time_us, _, _, json_payload, zstd_payload in rows:
            view.time_of[json_payload] = time_us
            view.time_of[zstd_payload] = time_us
        return view


def violations_of(received: list[bytes], log: LogView, cursor: int, spec_before, spec_after=None, *,
                  compressed: bool = False, whole_session: bool = True) -> list[str]:
    """What is wrong with one client's stream (empty when nothing is).

    Expected: the log's events with time_us >= cursor (inclusive), filtered by spec_before
    and, from some event boundary on, by spec_after (an options_update); up to the log's end
    for a client that stayed to the end, else up to the last event it received.
    """
    problems = []
    times = []
    for payload in received:
        if payload not in log.time_of:
            return [f"received a payload that is not in the log: {payload[:80]!r}"]
        times.append(log.time_of[payload])
    if any(later <= earlier for earlier, later in zip(times, times[1:])):
        problems.append("time_us not strictly increasing (duplicate or reordering)")
    rows = [row for row in log.rows if row[0] >= cursor]
    if not whole_session:
        rows = [row for row in rows if times and row[0] <= times[-1]]
    payload_of = (lambda row: row[4]) if compressed else (lambda row: row[3])
    if spec_after is None:
        expected = [payload_of(row) for row in rows if wanted(spec_before, row[1], row[2])]
        if received != expected:
            problems.append(f"stream differs from the log: got {len(received)}, expected {len(expected)}, "
                            f"first difference at {_first_difference(received, expected)}")
    elif not _tiles(received, rows, spec_before, spec_after, payload_of):
        problems.append("no event boundary splits the stream into the old filter's events then the new one's")
    return problems


def _first_difference(left: list, right: list) -> int:
    for index, (a, b) in enumerate(zip(left, right)):
        if a != b:
            return index
    return min(len(left), len(right))


def _tiles(received, rows, spec_a, spec_b, payload_of) -> bool:
    """Is received == A-filtered rows[:j] + B-filtered rows[j:] for some boundary j?"""
    n = len(rows)
    a_prefix = [0] * (n + 1)  # A-matches in rows[:j], valid while they equal received's start
    a_ok = [True] * (n + 1)
    for j, row in enumerate(rows):
        take = wanted(spec_a, row[1], row[2])
        a_prefix[j + 1] = a_prefix[j] + take
        a_ok[j + 1] = a_ok[j] and (not take or (a_prefix[j] < len(received) and received[a_prefix[j]] == payload_of(row)))
    b_suffix = [0] * (n + 1)  # B-matches in rows[j:], valid while they equal received's end
    b_ok = [True] * (n + 1)
    for j in range(n - 1, -1, -1):
        row = rows[j]
        take = wanted(spec_b, row[1], row[2])
        b_suffix[j] = b_suffix[j + 1] + take
        index = len(received) - b_suffix[j]
        b_ok[j] = b_ok[j + 1] and (not take or (index >= 0 and received[index] == payload_of(row)))
    return any(a_ok[j] and b_ok[j] and a_prefix[j] + b_suffix[j] == len(received) for j in range(n + 1))


async def start_relay(corpus_dir, rate: float) -> RelaySim:
    relay = RelaySim(FileSource(corpus_dir / "frames.bin.zst", loops=0), rate=rate)
    await relay.start("127.0.0.1", 0)
    return relay


def daemon_for(tmp_path, relay: RelaySim, *extra: str) -> Daemon:
    cfg = parse_serve_args(
        ["--ws-url", relay.url, "--listen-addr", "127.0.0.1:0", "--metrics-listen-addr", "",
         "--data-dir", str(tmp_path / "data"), "--override-relay-cursor", str(relay.source.first_seq - 1),
         *extra],
        environ={},
    )
    return Daemon(cfg)


async def stop_ingest(daemon: Daemon, relay: RelaySim) -> None:
    """No more events: stop reading the relay and write what is pending."""
    daemon.relay.stop()
    await asyncio.sleep(0.1)
    daemon.pipeline.flush()
    daemon.server.notify_new_events()
    await relay.close()


async def wait_all_delivered(daemon: Daemon, timeout: float) -> None:
    """Every connected reader is at the log's end and its socket buffer is empty."""
    newest = daemon.event_log.hwm()

    def done() -> bool:
        return all(sub.position >= newest and sub.transport is not None
                   and sub.transport.underlying_transport.get_write_buffer_size() == 0
                   for sub in daemon.server.subscribers)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not done():
        if loop.time() > deadline:
            lagging = [describe_reader(sub, newest) for sub in daemon.server.subscribers
                       if sub.position < newest or sub.transport.underlying_transport.get_write_buffer_size()]
            raise AssertionError(f"readers did not reach the log's end: {lagging[:5]}")
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # the last bytes cross loopback into the clients


def describe_reader(sub, newest: int) -> dict:
    """A stuck reader's state, for the failure message."""
    return {"port": sub.transport.underlying_transport.get_extra_info("peername")[1],
            "behind_us": newest - sub.position, "paused": sub._paused, "closed": sub._closed,
            "scheduled": sub._wakeup is not None, "waiting": sub in sub._server._waiting,
            "buffered": sub.transport.underlying_transport.get_write_buffer_size(),
            "sent": sub.sent_events, "log_steps": sub.log_steps, "ring_steps": sub.ring_steps,
            "pauses": sub.pauses}
