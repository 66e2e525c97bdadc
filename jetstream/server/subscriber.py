"""One subscriber connection: its reader (position -> ring | log -> filter -> pace -> send).

Owns: the per-connection state (position, filter, hello gate, pacing, backpressure)
and DESIGN §4's single reader. Each step starts from the position, asks the ring for
what follows it, or the log when the ring no longer reaches back that far, sends each
wanted payload as its own websocket message, and advances the position by
compare-and-set from the value the step started with. Replay -> live cutover is
nothing more than the position crossing the ring's floor, so there is no second
writer and no overlap window (v1's jl#42 races cannot happen).
It must never queue events per subscriber, block the loop on a socket, or deliver
an event whose time_us is not above the position.
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, NamedTuple

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport

from jetstream.core import EventFilter, Position, PositionConflict
from jetstream.server import params

if TYPE_CHECKING:
    from jetstream.server.app import SubscribeServer
    from jetstream.server.ratelimit import TokenBucket

log = logging.getLogger(__name__)

# One step's bounds: small enough that a step (a ring scan, or one RocksDB read of
# LOG_CHUNK_ROWS) stays well under a millisecond, large enough that the per-step
# loop overhead is noise next to the sends.
STEP_MAX_EVENTS = 512
STEP_MAX_BYTES = 512 * 1024
LOG_CHUNK_ROWS = 512
MAX_CLIENT_MESSAGE_BYTES = 10_000_000  # v1 ignores larger messages (V1-REFERENCE §6.1)

REASON_REPLAY_FAILED = "failed to replay events"  # v1's close reason for a log read error
REASON_INTERNAL = "internal error"


class Batch(NamedTuple):
    """What one reader step yields: payloads to send, and the position they reach."""

    payloads: list[bytes]
    position: int  # time_us of the last entry scanned (sent or filtered out)
    caught_up: bool  # nothing exists after the position right now


def initial_position(cursor: int | None, newest_time_us: int) -> int:
    """The position a connection starts from (the last time_us it has 'seen').

    No cursor (or one later than now): live, from the newest event. A cursor is
    inclusive, so the event at exactly `cursor` is sent again; cursor <= 0 replays
    everything retained (v1's lexicographic quirk, kept because clients use it).
    """
    if cursor is None:
        return newest_time_us
    return max(cursor - 1, 0)


def read_next_batch(start: int, ring, event_log, event_filter, compressed: bool,
                    max_events: int, max_message_size: int) -> Batch:
    """The next batch after `start`, from the ring when it covers `start`, else from the log."""
    if ring.covers(start):
        payloads, position = ring.read_after(start, event_filter, compressed, max_events,
                                             STEP_MAX_BYTES, max_message_size)
        return Batch(payloads, position, position == start)
    return _read_log_batch(start, ring, event_log, event_filter, compressed, max_events, max_message_size)


def _read_log_batch(start: int, ring, event_log, event_filter, compressed: bool,
                    max_events: int, max_message_size: int) -> Batch:
    rows = event_log.read_after(start, LOG_CHUNK_ROWS, compressed)
    if not rows:
        # Nothing retained between the position and the ring's floor (trimmed by TTL):
        # like v1, the stream simply resumes at the oldest event still held.
        log.debug("event=reader_skips_gap from_time_us=%d to_time_us=%d", start, ring.floor_time_us)
        return Batch([], ring.floor_time_us, False)
    payloads: list[bytes] = []
    sent_bytes = 0
    position = start
    for row in rows:
        position = row.time_us
        if not event_filter.matches(row.did, row.collection):
            continue
        if 0 < max_message_size < len(row.payload):
            continue
        payloads.append(row.payload)
        sent_bytes += len(row.payload)
        if len(payloads) >= max_events or sent_bytes >= STEP_MAX_BYTES:
            break
    return Batch(payloads, position, False)


class SubscriberListener(WSListener):
    """picows callbacks for one `/subscribe` connection, and the reader that feeds it."""

    def __init__(self, server: SubscribeServer, options: params.SubscriberOptions) -> None:
        self._server = server
        self._compressed = options.compress
        self._message_type = WSMsgType.BINARY if options.compress else WSMsgType.TEXT
        self._cursor = options.cursor
        self._max_message_size = options.max_message_size_bytes
        self._event_filter = _event_filter_for(options.filters)
        self._awaiting_hello = options.require_hello
        self._transport: WSTransport | None = None
        self._position: Position | None = None
        self._bucket: TokenBucket | None = None
        self.client_ip = ""  # the router sets it (socket peer, or proxy headers when trusted)
        self._paused = False
        self._closed = False
        self._wakeup: asyncio.Handle | None = None
        self.sent_events = 0
        self.sent_bytes = 0
        self.pauses = 0  # times the socket pushed back (pause_writing)

    # --- picows callbacks --------------------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self._transport = transport
        if not self.client_ip:
            peer = transport.underlying_transport.get_extra_info("peername")
            self.client_ip = peer[0] if peer else ""
        self._bucket = self._server.rate_limiters.acquire(self.client_ip)
        self._position = Position(initial_position(self._cursor, self._server.ring.newest_time_us))
        self._server.register(self)
        log.debug("event=subscriber_connected ip=%s position=%d compress=%s hello=%s",
                  self.client_ip, self._position.value, self._compressed, self._awaiting_hello)
        if not self._awaiting_hello:
            self.wake()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self._closed = True
        self._cancel_wakeup()
        if self._bucket is not None:
            self._server.rate_limiters.release(self.client_ip)
            self._bucket = None
        self._server.unregister(self)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type == WSMsgType.TEXT:
            self._on_text(frame)
        elif msg_type == WSMsgType.CLOSE:
            # gorilla's default close handler: echo the code, no reason, then hang up.
            self._closed = True
            transport.send_close(frame.get_close_code())
            transport.disconnect()
        elif msg_type in (WSMsgType.BINARY, WSMsgType.CONTINUATION):
            log.debug("event=client_message_ignored reason=not_text ip=%s", self.client_ip)

    def pause_writing(self) -> None:
        self._paused = True
        self.pauses += 1

    def resume_writing(self) -> None:
        self._paused = False
        # The peer drained our buffer, so it is alive: this stands in for a pong, so an idle
        # ping stuck behind queued events does not get a reading client closed.
        if self._transport is not None:
            self._transport.notify_user_specific_pong_received()
        self.wake()

    # --- client messages ---------------------------------------------------------------

    def _on_text(self, frame: WSFrame) -> None:
        if not frame.fin or frame.payload_size > MAX_CLIENT_MESSAGE_BYTES:
            log.info("event=client_message_ignored reason=too_large_or_fragmented ip=%s size=%d",
                     self.client_ip, frame.payload_size)
            return
        outcome = params.interpret_client_message(frame.get_payload_as_bytes())
        if outcome is None:
            log.info("event=client_message_ignored reason=unexpected_type ip=%s", self.client_ip)
        elif isinstance(outcome, params.CloseConnection):
            self._server.count_disconnect("bad_client_message")
            self.close(WSCloseCode.OK, outcome.reason)
        else:
            self._apply_options_update(outcome)

    def _apply_options_update(self, update: params.OptionsUpdate) -> None:
        # Steps run to completion on the loop thread, so replacing the filter here lands
        # exactly between two steps: the position is untouched, no event is re-read or skipped.
        self._event_filter = _event_filter_for(update.filters)
        self._max_message_size = update.max_message_size_bytes
        self._server.options_updates += 1
        if self._awaiting_hello:
            self._awaiting_hello = False
            self.wake()

    # --- the reader --------------------------------------------------------------------

    def wake(self) -> None:
        """Run a step now unless one is already scheduled (then that one will run)."""
        if self._wakeup is None:
            self.pump()

    def pump(self) -> None:
        """One reader step; then schedule the next, or wait (paused, caught up, out of tokens)."""
        self._wakeup = None
        if self._closed or self._paused or self._awaiting_hello or self._transport is None:
            return
        granted = self._bucket.take(STEP_MAX_EVENTS)
        if granted == 0:
            delay = self._bucket.seconds_until_available()
            self._wakeup = asyncio.get_running_loop().call_later(delay, self.pump)
            return
        start = self._position.value
        try:
            batch = read_next_batch(start, self._server.ring, self._server.event_log, self._event_filter,
                                    self._compressed, granted, self._max_message_size)
        except Exception:
            log.exception("event=reader_failed ip=%s position=%d", self.client_ip, start)
            self._server.count_disconnect("replay_failed")
            self.close(WSCloseCode.OK, REASON_REPLAY_FAILED)
            return
        self._bucket.give_back(granted - len(batch.payloads))
        self._send(batch.payloads)
        if not self._advance(start, batch.position):
            return
        if batch.caught_up:
            self._server.wait_for_events(self)
        elif not self._paused and not self._closed:
            # Yield to the loop between steps so one reader cannot starve the others.
            self._wakeup = asyncio.get_running_loop().call_soon(self.pump)

    def _send(self, payloads: list[bytes]) -> None:
        send = self._transport.send
        message_type = self._message_type
        for payload in payloads:
            send(message_type, payload)
        self.sent_events += len(payloads)
        self.sent_bytes += sum(map(len, payloads))

    def _advance(self, start: int, new_position: int) -> bool:
        try:
            self._position.advance(start, new_position)
        except PositionConflict:
            log.exception("event=position_conflict ip=%s start=%d new=%d", self.client_ip, start, new_position)
            self._server.count_disconnect("position_conflict")
            self.close(WSCloseCode.INTERNAL_ERROR, REASON_INTERNAL)
            return False
        return True

    @property
    def transport(self) -> WSTransport | None:
        return self._transport

    def abort(self) -> None:
        """Drop the connection without waiting for buffered bytes (a stuck peer at shutdown)."""
        self._closed = True
        self._cancel_wakeup()
        if self._transport is not None:
            self._transport.underlying_transport.abort()

    @property
    def awaiting_hello(self) -> bool:
        """requireHello=true and no valid options_update yet."""
        return self._awaiting_hello

    @property
    def position(self) -> int:
        return self._position.value if self._position is not None else 0

    def close(self, code: WSCloseCode, reason: str) -> None:
        """Send a close frame with `reason` (cut to 123 bytes) and hang up."""
        if self._closed or self._transport is None:
            return
        self._closed = True
        self._cancel_wakeup()
        self._transport.send_close(code, params.truncate_close_reason(reason).encode())
        self._transport.disconnect()

    def _cancel_wakeup(self) -> None:
        if self._wakeup is not None:
            self._wakeup.cancel()
            self._wakeup = None


def _event_filter_for(filters: params.SubscriberFilters) -> EventFilter:
    return EventFilter(filters.wanted_collections, filters.wanted_dids)
