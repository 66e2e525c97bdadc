"""The fake relay's websocket server: com.atproto.sync.subscribeRepos over picows.

Owns: accepting connections on /xrpc/com.atproto.sync.subscribeRepos (404 elsewhere,
400 for a bad cursor), one reader position per connection, pacing every connection
against the shared Timeline, backpressure through picows pause_writing/resume_writing,
and carrying out the faults a FaultInjector plans (extra frames, closing connections).
It must never queue frames per connection: a connection pulls its next frame only while
its transport is below the write-buffer high-water mark, so a slow reader costs at most
one high-water mark plus one frame of memory.
"""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from picows import (
    WSCloseCode,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)

from jetstream.config import parse_listen_addr
from jetstream.framefile import read_frames
from jetstream.relaysim.cbor import encode
from jetstream.relaysim.clocksource import ClockSource
from jetstream.relaysim.faults import FaultInjector, Faults
from jetstream.relaysim.filesource import FileSource
from jetstream.relaysim.synthetic import SyntheticSource, prerendered
from jetstream.relaysim.timeline import FrameSource, Timeline

__all__ = ["RelaySim", "FileSource", "SyntheticSource", "Faults", "prerendered", "run_from_config", "build_source",
           "outdated_cursor_frame"]

log = logging.getLogger(__name__)

SUBSCRIBE_REPOS_PATH = "/xrpc/com.atproto.sync.subscribeRepos"
# Explicit so the memory bound of a slow reader is a known number, whatever the loop's default.
WRITE_BUFFER_HIGH = 64 * 1024
WRITE_BUFFER_LOW = 16 * 1024
# Frames one connection sends before yielding to the loop, so fast readers cannot starve others.
FRAMES_PER_TURN = 64
TIMER_SLACK_S = 0.002
# How long close() lets clients drain their buffers and see the close frame before aborting.
CLOSE_GRACE_S = 1.0
ERROR_CLOSE_CODE = WSCloseCode.INTERNAL_ERROR


def future_cursor_frame() -> bytes:
    """The error frame a real relay answers a cursor beyond its newest seq with (then it closes)."""
    return encode({"op": -1}) + encode({"error": "FutureCursor", "message": "Cursor in the future."})


def outdated_cursor_frame() -> bytes:
    """The #info frame real relays send before serving a cursor older than they hold."""
    header = encode({"op": 1, "t": "#info"})
    body = encode({"name": "OutdatedCursor", "message": "Requested cursor exceeded limit. Possibly missing events"})
    return header + body


class _Connection(WSListener):
    """One subscriber: reads forward from its own position, never ahead of the timeline."""

    def __init__(self, sim: "RelaySim", cursor: int | None) -> None:
        self.sim = sim
        self.cursor = cursor
        self.after_seq = 0  # last seq sent (or the start position)
        self.frames_sent = 0
        self.paused = False
        self.closed = False
        self.transport: WSTransport | None = None
        self.peer = None
        self._pump_scheduled = False

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        underlying = transport.underlying_transport
        underlying.set_write_buffer_limits(high=WRITE_BUFFER_HIGH, low=WRITE_BUFFER_LOW)
        self.peer = underlying.get_extra_info("peername")
        if self.sim.clock and self.cursor is not None and self.cursor > self.sim.head_seq:
            # Seqs come from the clock, so a cursor ahead of the head was never issued here:
            # answer as a real relay does instead of waiting for the clock to get there.
            log.info("event=relay_sim_future_cursor peer=%s cursor=%d head_seq=%d",
                     _peer_text(self.peer), self.cursor, self.sim.head_seq)
            transport.send(WSMsgType.BINARY, future_cursor_frame())
            transport.send_close(ERROR_CLOSE_CODE, b"FutureCursor")
            transport.disconnect()
            self.closed = True
            return
        start = self.sim.timeline.start_position(self.cursor, self.sim.now())
        self.after_seq = start.after_seq
        self.sim._connected(self)
        log.info("event=relay_sim_client_connected peer=%s cursor=%s start_after_seq=%d outdated=%s",
                 _peer_text(self.peer), self.cursor, start.after_seq, start.outdated_cursor)
        if start.outdated_cursor:
            transport.send(WSMsgType.BINARY, outdated_cursor_frame())
        self.schedule_pump()

    def on_ws_frame(self, transport: WSTransport, frame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()
        # Anything else a client sends to a relay is meaningless; pings are auto-ponged.

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed = True
        self.sim._disconnected(self)
        log.info("event=relay_sim_client_disconnected peer=%s frames_sent=%d last_seq=%d",
                 _peer_text(self.peer), self.frames_sent, self.after_seq)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.schedule_pump()

    def write_buffer_size(self) -> int:
        return self.transport.underlying_transport.get_write_buffer_size() if self.transport else 0

    def schedule_pump(self) -> None:
        if not self._pump_scheduled and not self.closed:
            self._pump_scheduled = True
            self.sim.loop.call_soon(self._pump)

    def _pump(self) -> None:
        """Send available frames until paused, caught up, or this turn's budget is spent."""
        self._pump_scheduled = False
        timeline, now = self.sim.timeline, self.sim.now()
        for _ in range(FRAMES_PER_TURN):
            if self.paused or self.closed:
                return
            next_seq = timeline.source.next_seq_after(self.after_seq)
            if next_seq is None:
                return  # a finite recording is exhausted: stay connected and idle, like a quiet relay
            if not timeline.is_available(next_seq, now):
                self.sim._wait_for(self, next_seq)
                return
            step = self.sim.injector.step_at(next_seq) if self.sim.injector is not None else None
            if step is None:
                self._send(timeline.pull(next_seq))
                self.after_seq = next_seq
                continue
            for frame in self.sim.injector.frames_for(step, next_seq, timeline.pull):
                self._send(frame)
            self.after_seq = next_seq
            if step.connection is not None:
                self._end_by_fault(step.connection, next_seq)
                return
        self.schedule_pump()

    def _send(self, frame: bytes) -> None:
        self.transport.send(WSMsgType.BINARY, frame)
        self.frames_sent += 1
        self.sim.frames_sent += 1
        self.sim.bytes_sent += len(frame)

    def _end_by_fault(self, kind: str, seq: int) -> None:
        """After an error frame, a close frame; for `disconnect`, TCP closes with none."""
        log.info("event=relay_sim_fault_close kind=%s peer=%s seq=%d", kind, _peer_text(self.peer), seq)
        if kind == "error":
            self.transport.send_close(ERROR_CLOSE_CODE, b"relay-sim injected error")
        # Graceful: the frames already written still reach the client before the FIN.
        self.transport.disconnect()
        self.closed = True


class RelaySim:
    """A broadcast relay over `source` at `rate` frames/s (0 = as fast as each client reads).

    `retention`: how many of the newest seqs the relay holds for cursors (None = all).
    `burst`: the first `burst` seqs are available at once, then `rate` applies.
    `faults`: bad frames and connection faults to inject (see faults.py); None = none.
    `clock`: seqs and frame times from the wall clock (clocksource.py), as a real relay's;
    False keeps the source's own seqs and times (tests that pin exact seqs).
    """

    def __init__(self, source: FrameSource, rate: float, *, retention: int | None = None, burst: int = 0,
                 faults: Faults | None = None, clock: bool = False) -> None:
        self.clock = clock
        if clock:
            source = ClockSource(source, rate, burst)
        self.timeline = Timeline(source, rate, retention=retention, burst=burst)
        self.injector = FaultInjector(faults, source) if faults is not None and faults.enabled else None
        self.host = "127.0.0.1"
        self.port = 0
        self.frames_sent = 0
        self.bytes_sent = 0
        self.connections_total = 0
        self.connections: set[_Connection] = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._waiting: dict[_Connection, int] = {}
        self._wake_handle: asyncio.TimerHandle | None = None

    @property
    def source(self) -> FrameSource:
        return self.timeline.source

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}{SUBSCRIBE_REPOS_PATH}"

    @property
    def head_seq(self) -> int:
        return self.timeline.head_seq(self.now())

    def now(self) -> float:
        # Loops fire timers up to a clock tick early; the slack keeps an early wake-up from
        # finding its frame "not yet available" and spinning until the due time.
        return self.loop.time() + TIMER_SLACK_S

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.loop = asyncio.get_running_loop()
        self._server = await ws_create_server(self._listener_for, host, port,
                                              enable_auto_ping=False, logger_name="jetstream.relaysim.ws")
        self.host, self.port = host, self._server.sockets[0].getsockname()[1]
        self.timeline.start(self.now())
        log.info("event=relay_sim_listening url=%s rate=%s first_seq=%d",
                 self.url, self.timeline.rate, self.source.first_seq)

    async def close(self) -> None:
        """Stop accepting, close every client with 1001 (going away), release the port."""
        if self._wake_handle is not None:
            self._wake_handle.cancel()
            self._wake_handle = None
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            if connection.transport is not None and not connection.closed:
                connection.transport.send_close(WSCloseCode.GOING_AWAY, b"relay shutting down")
                connection.transport.disconnect()
        if self._server is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._server.wait_closed()), CLOSE_GRACE_S)
            except asyncio.TimeoutError:
                # A graceful disconnect waits for the write buffer to drain, which a stalled
                # reader never allows; abort those so close() always finishes.
                for connection in list(self.connections):
                    if connection.transport is not None:
                        connection.transport.disconnect(graceful=False)
                await self._server.wait_closed()
            self._server = None
        log.info("event=relay_sim_closed frames_sent=%d connections_total=%d", self.frames_sent, self.connections_total)

    def _listener_for(self, request: WSUpgradeRequest):
        url = urlsplit(request.path.decode("latin-1"))
        if url.path != SUBSCRIBE_REPOS_PATH:
            return None  # picows answers 404
        try:
            cursor = _cursor_of(url.query)
        except ValueError as exc:
            log.info("event=relay_sim_bad_request reason=invalid_cursor query=%s", url.query)
            return WSUpgradeResponseWithListener(
                WSUpgradeResponse.create_error_response(400, str(exc).encode()), None)
        return _Connection(self, cursor)

    def _connected(self, connection: _Connection) -> None:
        self.connections.add(connection)
        self.connections_total += 1

    def _disconnected(self, connection: _Connection) -> None:
        self.connections.discard(connection)
        self._waiting.pop(connection, None)

    def _wait_for(self, connection: _Connection, seq: int) -> None:
        """Park a caught-up connection until `seq` becomes available (one timer for all)."""
        self._waiting[connection] = seq
        self._arm_wake()

    def _arm_wake(self) -> None:
        if self._wake_handle is not None or not self._waiting:
            return
        due = self.timeline.available_at(min(self._waiting.values()))
        self._wake_handle = self.loop.call_at(due, self._wake)

    def _wake(self) -> None:
        self._wake_handle = None
        now = self.now()
        ready = [conn for conn, seq in self._waiting.items() if self.timeline.is_available(seq, now)]
        for connection in ready:
            del self._waiting[connection]
            connection.schedule_pump()
        self._arm_wake()


def _cursor_of(query: str) -> int | None:
    values = parse_qs(query).get("cursor")
    if not values or values[-1] == "":
        return None
    try:
        cursor = int(values[-1])
    except ValueError:
        raise ValueError(f"invalid cursor {values[-1]!r}: must be an integer") from None
    if cursor < 0:
        raise ValueError(f"invalid cursor {cursor}: must be >= 0")
    return cursor


def _peer_text(peer) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


def build_source(cfg) -> FrameSource:
    """A file source for --frames-file, else (or with --synthetic) the synthetic generator,
    pre-rendered and looped when --prerender N > 0."""
    if cfg.synthetic or not cfg.frames_file:
        source = SyntheticSource(seed=cfg.seed, dids=cfg.dids)
        return prerendered(source, cfg.prerender) if cfg.prerender > 0 else source
    return FileSource(read_frames(Path(cfg.frames_file)), loops=cfg.loops)


async def run_from_config(cfg, started: asyncio.Future | None = None) -> None:
    """Serve the relay described by RELAY_SIM_FLAGS until cancelled.

    `started`, if given, receives the running RelaySim (its port, url and counters).
    """
    logging.getLogger("jetstream.relaysim").setLevel(str(cfg.log_level).upper())
    host, port = parse_listen_addr(cfg.listen_addr)
    faults = Faults.from_config(cfg)
    sim = RelaySim(build_source(cfg), rate=cfg.rate, burst=cfg.burst, faults=faults, clock=cfg.clock)
    if faults.enabled:
        log.info("event=relay_sim_faults %s", " ".join(f"{kind}={getattr(faults, kind)}" for kind in faults.enabled))
    await sim.start(host, port)
    if started is not None and not started.done():
        started.set_result(sim)
    try:
        await asyncio.Future()
    finally:
        await sim.close()
