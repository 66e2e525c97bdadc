"""One subscriber connection: its single reader (position -> ring | log -> filter -> pace -> send).

Owns: the per-connection state (position, filter, hello gate, token bucket share,
backpressure, lag policy), its two lifecycle log lines (subscriber_connected and
subscriber_disconnected), closing with 1011 and a reason when one of its callbacks fails,
and the single reader of docs/architecture.md §4. A newcomer can follow it as:

1. Position. `position` is the time_us of the last event this connection has *scanned*
   (sent, or skipped by its filter). It starts from the cursor (`initial_position`):
   cursor is inclusive, so position = cursor - 1; no cursor, or one at/after the newest
   event, starts live (position = newest); cursor <= 0 replays everything retained.
   (v1 compared cursors as strings and, for a cursor between the newest logged event and
   now, replayed the whole log: both fixed here on purpose.)

2. One step (`pump`). A step takes tokens for up to STEP_MAX_EVENTS events from the
   connection's token bucket (per IP, `--max-sub-rate`), then `read_next_batch`: if the
   live ring still holds every event after the position, it reads from the ring (one C
   loop, filter on interned ids); otherwise it reads the next LOG_CHUNK_ROWS rows from
   RocksDB with an iterator seeked to position + 1. The batch's payloads are framed into
   ONE buffer and written to the transport in one write (`encode_frames`), and the
   position advances by compare-and-set from the value the step started with.

3. Cutover. Replay ends when the position is inside the ring: the next step simply reads
   the ring. There is no second writer, no live queue filled in parallel, no overlap
   window and no dedupe guard: every event is read exactly once, in time_us order, by
   the one reader that owns the position (the races and cutover drops of v1 issues 42,
   43, 27 and 31, docs/protocol.md §9, have no place to happen).
   Below the log (issue 24, server/history.py, docs/architecture.md §4.9) a third source:
   sealed segments. The seams archive -> log -> ring are decided by seq, never by an
   "oldest retained" read at one moment (the TTL trim may run between any two reads). The
   reader knows the seq of the event at its position (`_seam`: from its last log or archive
   step, or a v2 seq cursor), else asks the log for the last event at or before it (none:
   the log cannot vouch, read the archive). It reads the log, then checks that the log's
   first row after the position still carries the next seq: the trim only removes rows
   from the bottom and appends only add above the newest, so a row still there after the
   read was there, with everything above it, when the read ran. Otherwise the rows are
   dropped and the archive is read from the same position; it holds every event the trim
   removed, because the trim never drops an unsealed one. If the log lacks the next seq
   and the listed segments end before the position, a segment was sealed since the last
   listing or the seqs jump (--cluster): a listing that begins after the reader first saw
   that next seq decides (a trimmed event was published before its trim), and only then,
   with no segment refused, does the reader take the jump. Before the store's first listing
   (start-up) an empty manifest proves nothing: where the log cannot vouch, the reader waits
   for that listing (a store that cannot be listed stops it as damage does). An archive read runs in a
   thread (ARCHIVE_READ); its one decoded block is kept and served step by step, each step
   bounded by ARCHIVE_STEP_BUDGET_S of rendering as well as by events and bytes.

4. Waiting. A step ends the reader's turn when (a) nothing follows the position: the
   reader parks in the server's waiting set and `notify_new_events` wakes it; (b) the
   transport passed its high-water mark (`pause_writing`): it waits for
   `resume_writing`; (c) the bucket is empty: it sleeps until the next token. Otherwise
   it yields to the loop (`call_soon`) so one replaying reader cannot starve the others.
   Nothing is queued per subscriber: a waiting reader holds only its position. Which of
   these the reader is in is its one `ReaderState` (READING, LIVE, PAUSED, RATE_LIMITED,
   plus AWAITING_HELLO and CLOSED), changed only by `_enter`, which logs each transition
   at debug level.

5. Slow clients. A client that reads slower than events arrive fills its socket, the
   reader stops (4b), the ring moves on, and when the reader resumes it reads the log
   instead (2): it degrades to replay, it is not dropped. It is disconnected only by
   policy (`LagPolicy`): while the socket is what holds it back, lag above
   `--max-lag-events` or `--max-lag-seconds` sustained for `--max-lag-grace` without
   catching up (both limits are off by default: a slow reader costs the server one
   socket buffer and a log read per step, nothing that grows) closes it
   with 1008 (policy violation: the client broke the server's declared lag policy; 1013
   "try again later" would blame the server) and a reason saying how far behind it was,
   counted in `SubscribeServer.disconnects` as `lag_events` / `lag_seconds`. Lag caused
   by the server's own pacing (an empty token bucket) never counts: a replay slowed by
   `--max-sub-rate` is the v1 failure we must not repeat (v1 issue 27,
   https://github.com/bluesky-social/jetstream-legacy/issues/27).

6. options_update. Steps run to completion on the loop thread, so a new filter lands
   between two steps, i.e. at an event boundary; the position is untouched, so no event
   is re-read or skipped whether the reader is replaying, cutting over or live.

7. Heartbeats (heartbeatSeconds=N, server/heartbeat.py). A timer per connection that asked:
   after N seconds without a send it writes `{"kind":"heartbeat","time_us":position}` through
   the same write as events (zstd for compressed clients). It runs between two steps, so the
   position is an event boundary, and it never moves the position. Sync events (kind 3) are
   scanned past like filtered events unless the client asked with includeSync=true.

8. The live fast path (server/live.py). A reader that is caught up (LIVE) hands its slot
   (its position, socket, bucket, filter) to the server's live fan-out instead of the
   waiting set: new batches are then delivered by one C pass over every such reader. The
   pass hands the reader back (`wake`) when it cannot finish a step, and `pause_writing` or
   a close takes the slot out; only then does this reader step again. The slot shares the
   Position object, so the compare-and-set still guards every advance.

9. The wire (server/wires.py), chosen at the upgrade: v1's `/subscribe` (V1Wire) or v2's
   `subscribeEvents` (V2Wire). The one reader serves both; the wire says where the stream
   starts (v2: a seq or a time, and an `#info OutdatedCursor` frame first), which events pass
   (v2 adds the kinds axis), which stored form is sent (v2: the v2 frame the ring holds, or
   the one rendered from the log's v2 record), what a client frame means and how each stop is
   told (v2: an error frame, then the close). v1's bytes are exactly what they were.

It must never queue events per subscriber, block the loop on a socket or a segment read,
deliver an event whose time_us is not above the position, read the log where it may not hold
every event after the position, or let anything but the reader move the position.
"""
from __future__ import annotations

import asyncio
import enum
import logging
import time
from typing import TYPE_CHECKING, NamedTuple

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport

from jetstream.archive import render
from jetstream.events import KIND_SYNC
from jetstream.implementation import EventFilter, Position, PositionConflict, encode_frames, frame_of_record
from jetstream.log.store import LogCorruption, LogGap, index_query_for
from jetstream.server import params, wire_v2_request, wires
from jetstream.server.heartbeat import HeartbeatClock, heartbeat_payload
from jetstream.server.history import HistoryDamaged, archive_query, v1_archive_query

if TYPE_CHECKING:
    from jetstream.server.app import SubscribeServer
    from jetstream.server.ratelimit import TokenBucket

log = logging.getLogger(__name__)

# One step's bounds: small enough that a step (a ring scan, or one RocksDB read of
# LOG_CHUNK_ROWS) stays well under a millisecond and a slow client's buffer overshoots
# the high-water mark by at most STEP_MAX_BYTES, large enough that the per-step loop
# overhead is noise next to the sends.
STEP_MAX_EVENTS = 512
STEP_MAX_BYTES = 256 * 1024
LOG_CHUNK_ROWS = 512
# An archive step renders each event on the loop thread (archive/render.py, ~20-60 us an event), so
# it is bounded by time as well: it ends after the event that took it past this budget (at least
# one event a step), then yields like any step. One replaying reader thus holds the loop for about
# this long at a time, and the live readers wait at most that per replay (docs/performance.md).
ARCHIVE_STEP_BUDGET_S = 0.001
# A reader out of tokens sleeps until this much of its rate has accrued, so a rate-limited
# reader takes steps of ~rate/50 events, not one step (and one log read) per token.
TOKEN_WAIT_S = 0.02

REASON_REPLAY_FAILED = "failed to replay events"  # v1's close reason for a log read error
REASON_INTERNAL = "internal error"
# After a policy close, a peer that never reads cannot receive the close frame (it sits
# behind the events already buffered): abort it after this long (v1's write deadline).
CLOSE_DRAIN_GRACE_S = 10.0
# Close codes RFC 6455 reserves for local use only (1004 is unassigned); gorilla refuses them too.
_UNSENDABLE_CLOSE_CODES = frozenset((1004, 1005, 1006, 1015))


class Batch(NamedTuple):
    """What one reader step yields: payloads to send, and the position they reach."""

    payloads: list[bytes]
    position: int  # time_us of the last entry scanned (sent or filtered out)
    caught_up: bool  # nothing exists after the position right now
    from_log: bool = False  # read from RocksDB (the ring no longer reached back to the position)
    seq: int = 0  # seq of the entry at `position` when the source knows it (log rows, archive events); 0: unknown


def initial_position(cursor: int | None, newest_time_us: int) -> int:
    """The position a connection starts from (the last time_us it has 'seen').

    No cursor: live, from the newest event. A cursor is inclusive, so the event at
    exactly `cursor` is sent again; cursor <= 0 replays everything retained; a cursor
    above the newest event starts live (v1 replayed the whole log for a cursor between
    the newest logged event and now, docs/protocol.md §3.4).
    """
    if cursor is None:
        return newest_time_us
    return min(max(cursor - 1, 0), newest_time_us)


def read_next_batch(start: int, ring, event_log, event_filter, compressed: bool,
                    max_events: int, max_message_size: int, index_query=None, include_sync: bool = False,
                    compress_v2=None) -> Batch:
    """The next batch after `start`, from the ring when it covers `start`, else from the log.

    The reader's whole decision: pure given (ring, log) contents, so tests drive it
    directly against a model (tests/cutover/test_cutover_reader_model.py). Sync events
    are scanned past (the position moves) but sent only with `include_sync`.
    `compress_v2`: a v2 reader (None: v1). It is sent v2 frames: the ring's, or rendered from
    the log's v2 records, compressed with it when `compressed`.
    """
    if ring.covers(start):
        payloads, position = ring.read_after(start, event_filter, compressed, max_events,
                                             STEP_MAX_BYTES, max_message_size, include_sync, compress_v2 is not None)
        return Batch(payloads, position, position == start)
    if compress_v2 is not None:
        return _read_log_batch_v2(start, ring, event_log, event_filter, compressed, max_events, max_message_size,
                                  index_query, compress_v2)
    return _read_log_batch(start, ring, event_log, event_filter, compressed, max_events, max_message_size,
                           index_query, include_sync)


def _log_rows(start: int, event_log, event_filter, compressed: bool, max_events: int, index_query, v2: bool):
    # Unfiltered, every row read is sent: read no more than the step may send.
    limit = min(LOG_CHUNK_ROWS, max_events) if event_filter.wants_all else LOG_CHUNK_ROWS
    # A narrow filter reads only the rows its log index points at (None: range predates the index).
    kwargs = {"v2": True} if v2 else {}
    rows = None if index_query is None else event_log.read_matching_after(start, limit, compressed, index_query,
                                                                          **kwargs)
    if rows is None:
        rows = event_log.read_after(start, limit, compressed, **kwargs)
    return rows


def _read_log_batch_v2(start: int, ring, event_log, event_filter, compressed: bool, max_events: int,
                       max_message_size: int, index_query, compress_v2) -> Batch:
    """A v2 reader's batch from the log: each row's v2 frame rendered from its stored record.

    Only events stored with a v2 record are read (the v2 floor, wire_v2_request.Retention);
    one whose record has no frame is scanned past. The size cap is on the uncompressed frame.
    """
    rows = _log_rows(start, event_log, event_filter, False, max_events, index_query, True)
    if not rows:
        log.debug("event=reader_skips_gap from_time_us=%d to_time_us=%d", start, ring.floor_time_us)
        return Batch([], ring.floor_time_us, False, True)
    payloads: list[bytes] = []
    sent_bytes = 0
    position = start
    seq = 0
    for row in rows:
        position, seq = row.time_us, row.seq
        if not event_filter.matches_event(row.kind, row.did, row.collection):
            continue
        frame = frame_of_record(row.payload, row.seq, row.time_us)
        if not frame or 0 < max_message_size < len(frame):
            continue
        payload = compress_v2(frame) if compressed else frame
        payloads.append(payload)
        sent_bytes += len(payload)
        if len(payloads) >= max_events or sent_bytes >= STEP_MAX_BYTES:
            break
    return Batch(payloads, position, False, True, seq)


def _read_log_batch(start: int, ring, event_log, event_filter, compressed: bool,
                    max_events: int, max_message_size: int, index_query=None, include_sync: bool = False) -> Batch:
    rows = _log_rows(start, event_log, event_filter, compressed, max_events, index_query, False)
    if not rows:
        # Nothing retained between the position and the ring's floor (trimmed by TTL):
        # like v1, the stream simply resumes at the oldest event still held.
        log.debug("event=reader_skips_gap from_time_us=%d to_time_us=%d", start, ring.floor_time_us)
        return Batch([], ring.floor_time_us, False, True)
    payloads: list[bytes] = []
    sent_bytes = 0
    position = start
    seq = 0
    for row in rows:
        position, seq = row.time_us, row.seq
        if row.kind == KIND_SYNC and not include_sync:
            continue
        if not event_filter.matches(row.did, row.collection):
            continue
        if 0 < max_message_size < len(row.payload):
            continue
        payloads.append(row.payload)
        sent_bytes += len(row.payload)
        if len(payloads) >= max_events or sent_bytes >= STEP_MAX_BYTES:
            break
    return Batch(payloads, position, False, True, seq)


def lag_of(position: int, ring) -> tuple[int, float]:
    """(events, seconds) a reader at `position` is behind the newest event.

    Events are counted exactly while the ring covers the position; below the ring's floor
    the events between position and floor are estimated from the ring's own rate (the log
    cannot count a range cheaply), so the figure never under-reports by more than that.
    """
    newest = ring.newest_time_us
    lag_seconds = max(0, newest - position) / 1e6
    behind_in_ring = ring.count_after(position)
    if ring.covers(position):
        return behind_in_ring, lag_seconds
    floor = ring.floor_time_us
    held = len(ring)
    span = newest - floor
    below_floor = (floor - position) * held // span if span > 0 else 0
    return behind_in_ring + below_floor, lag_seconds


class LagPolicy:
    """When a slow client has been too far behind for too long (sans-I/O: the reader feeds it).

    `observe` is called with the reader's lag and whether the socket is what holds the
    reader back. The grace clock starts at the first observation over a limit while
    socket-bound and keeps running while the lag stays over a limit without shrinking.
    It restarts when the lag shrinks (a client replaying from far back that is catching
    up is never dropped for the distance it started at), and stops when the lag is back
    under both limits or the reader is held back by something else (caught up, or
    waiting on the server's own token bucket). A limit of 0 is off.
    """

    __slots__ = ("max_lag_events", "max_lag_seconds", "grace_s", "_over_since", "_lag_at_start")

    def __init__(self, max_lag_events: int = 0, max_lag_seconds: float = 0.0, grace_s: float = 30.0) -> None:
        if max_lag_events < 0 or max_lag_seconds < 0 or grace_s < 0:
            raise ValueError("lag limits and grace must be >= 0")
        self.max_lag_events = int(max_lag_events)
        self.max_lag_seconds = float(max_lag_seconds)
        self.grace_s = float(grace_s)
        self._over_since: float | None = None
        self._lag_at_start = 0.0  # lag_seconds when the grace clock (re)started

    @property
    def enabled(self) -> bool:
        return self.max_lag_events > 0 or self.max_lag_seconds > 0

    def exceeded(self, lag_events: int, lag_seconds: float) -> str | None:
        """Which limit the lag is over ("lag_events" / "lag_seconds"), if any."""
        if 0 < self.max_lag_events < lag_events:
            return "lag_events"
        if 0 < self.max_lag_seconds < lag_seconds:
            return "lag_seconds"
        return None

    def reset(self) -> None:
        self._over_since = None

    def observe(self, now_s: float, lag_events: int, lag_seconds: float, socket_bound: bool) -> str | None:
        """The limit broken for longer than the grace (the disconnect reason), else None."""
        over = self.exceeded(lag_events, lag_seconds)
        if over is None:
            self._over_since = None
            return None
        if self._over_since is None:
            if not socket_bound:
                return None
            self._over_since, self._lag_at_start = now_s, lag_seconds
        elif lag_seconds < self._lag_at_start:  # catching up: the client is not stuck
            self._over_since, self._lag_at_start = now_s, lag_seconds
        return over if now_s - self._over_since >= self.grace_s else None


def lag_close_reason(reason: str, lag_events: int, lag_seconds: float, grace_s: float) -> str:
    # v1 (before fc3fb4e) said "consuming too slowly"; the numbers tell the client how far.
    # Kept well under a close frame's 123 bytes so it is never truncated.
    return (f"consuming too slowly: {lag_events} events / {lag_seconds:.0f}s behind "
            f"for {grace_s:g}s ({reason}); resume with a cursor")


class ReaderState(enum.IntEnum):
    """Where one connection's reader is in its life; exactly one at a time.

    CONNECTING -> AWAITING_HELLO (requireHello=true) or READING; a valid options_update
    takes AWAITING_HELLO to READING. A step runs in READING and ends in READING (the next
    step is scheduled with call_soon), LIVE (nothing follows the position: parked in the
    server's waiting set until notify_new_events), RATE_LIMITED (the token bucket is empty:
    a timer runs the next step), PAUSED (the transport passed its high-water mark during
    the step's write: resume_writing continues) or ARCHIVE_READ (below the log: a block of a
    sealed segment is read in a thread; its arrival continues, or PAUSED if the socket pushed
    back meanwhile). Any state -> CLOSED, which is final.
    Integer values, so a C-level step can switch on them.
    """

    CONNECTING = 0
    AWAITING_HELLO = 1
    READING = 2
    LIVE = 3
    RATE_LIMITED = 4
    PAUSED = 5
    CLOSED = 6
    ARCHIVE_READ = 7  # a segment block (or a manifest listing) is being read in a thread; its arrival steps again


# The states from which a wake-up (notify_new_events, the token timer, call_soon) runs a step.
_STEPPABLE = frozenset((ReaderState.READING, ReaderState.LIVE, ReaderState.RATE_LIMITED))
# The states a full transport buffer interrupts (before a hello nothing has been sent).
_PAUSABLE = _STEPPABLE


class SubscriberListener(WSListener):
    """picows callbacks for one `/subscribe` or `subscribeEvents` connection, and the reader that feeds it."""

    def __init__(self, server: SubscribeServer, wire: wires.V1Wire | wires.V2Wire | params.SubscriberOptions) -> None:
        if isinstance(wire, params.SubscriberOptions):
            wire = wires.V1Wire(wire)
        self._server = server
        self._wire = wire
        self._v2 = wire.frame_form == wires.V2_FORM
        # A v2 reader renders frames from the log's records and compresses them with the v2 dictionary.
        self._compress_v2 = server.compress_v2 if self._v2 else None
        self._compressed = wire.compressed
        self._cursor = wire.options.cursor if not self._v2 else None
        self._plan = wire.plan  # where the stream starts (v1: from the time cursor; v2: seq, time or live)
        self._max_message_size = wire.max_message_size_bytes
        self._event_filter = wire.event_filter
        self._index_query = (_index_query_for(wire.options.filters) if not self._v2
                             else index_query_for(wire.request.collections, wire.request.dids))
        self._require_hello = wire.require_hello
        self._state = ReaderState.CONNECTING
        # Cluster mode: no step runs while the cursor gate holds this reader (whatever its state)
        # until this node has applied up to the cursor (cursor_reached).
        self._awaiting_cursor = False
        self._include_sync = wire.include_sync
        self._heartbeat_s = wire.heartbeat_seconds  # 0: this client asked for none
        self._heartbeat: HeartbeatClock | None = None
        self._heartbeat_timer: asyncio.TimerHandle | None = None
        self.heartbeats_sent = 0
        self._transport: WSTransport | None = None
        self._write = None  # the underlying transport's write: one call per step
        self._position: Position | None = None
        self._bucket: TokenBucket | None = None
        self._lag_policy: LagPolicy | None = _lag_policy_of(server)
        self.client_ip = ""  # the router sets it (socket peer, or proxy headers when trusted)
        # Not life-cycle state but history the lag policy reads: the socket paused us since we
        # were last caught up or rate-bound (so lag is the client's doing, not the server's).
        self._pushed_back = False
        self._wakeup: asyncio.Handle | None = None
        self._lag_check: asyncio.TimerHandle | None = None
        self._abort_after_close: asyncio.TimerHandle | None = None
        self._live = None  # the LiveSlot (server/live.py), made at connect; it also counts what was sent
        self.pauses = 0  # times the socket pushed back (pause_writing)
        self.log_steps = 0  # steps served from RocksDB (replay, or a slow client below the ring)
        self._ring_steps = 0
        self.fell_behind = 0  # times a reader that had reached the ring had to go back to the log
        self._on_ring = False  # the last step read the ring (for fell_behind; not life-cycle state)
        self.peer = ""  # host:port of the socket (client_ip may come from proxy headers)
        self._connected_at = 0.0
        self._options = wire.options if not self._v2 else None
        # Below the log (server/history.py): the archive block being served (one block's events at most),
        # the next one in it, the read under way, and the seq of the event at the position when known.
        self._archive_events: list | None = None
        self._archive_next = 0
        self._archive_task: asyncio.Future | None = None
        self._archive_from = -1  # the position the read under way started from
        self._archive_empty_at = -1  # a position the archive answered nothing after (its listing changed)
        self._archive_query = None  # the filter in the planner's terms, made at the first archive read
        self._v1_filters = wire.options.filters if not self._v2 else None
        self._paused_while_reading = False  # the socket pushed back during an archive read
        self._seam: tuple[int, int] | None = None  # (position, seq of the event there) when known
        self._jump: tuple | None = None  # ((position, seq, next seq the log holds), when first seen): see _unlisted
        self.archive_steps = 0  # steps served from sealed segments
        self._waited_for_listing = False  # a start-up wait for the store's first listing has ended

    # --- state -------------------------------------------------------------------------

    @property
    def state(self) -> ReaderState:
        return self._state

    def _enter(self, state: ReaderState) -> None:
        """The one place the reader's state changes; CLOSED is final."""
        previous = self._state
        if previous is state or previous is ReaderState.CLOSED:
            return
        self._state = state
        if log.isEnabledFor(logging.DEBUG):
            log.debug("event=reader_state ip=%s from=%s to=%s", self.client_ip, previous.name, state.name)

    # --- picows callbacks --------------------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self._connected_at = time.monotonic()
        try:
            self._start(transport)
        except Exception as exc:  # noqa: BLE001 - a server bug must close this one connection clearly
            self._fail_internal("connect", exc, transport)

    def _start(self, transport: WSTransport) -> None:
        self._transport = transport
        self._write = transport.underlying_transport.write
        peer = transport.underlying_transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else ""
        if not self.client_ip:
            self.client_ip = peer[0] if peer else ""
        self._bucket = self._server.rate_limiters.acquire(self.client_ip)
        self._position = Position(self._start_position())
        self._live = self._server.live.new_slot(self, self._position, transport, self._bucket, self._compressed,
                                                self._v2)
        self._live.set_options(self._event_filter, self._max_message_size, self._include_sync)
        self._enter(ReaderState.AWAITING_HELLO if self._require_hello else ReaderState.READING)
        self._server.register(self)  # after the state: it arms the hello deadline of AWAITING_HELLO
        log_subscriber_connected(self)
        if self._v2 and self._wire.plan.first_frames:
            self._send_frames(self._wire.plan.first_frames)  # #info OutdatedCursor, before any event
        gate = self._server.cursor_gate
        if gate is not None and self._v2 and self._v2_cursor_ahead() is not None:
            # As below for v1: a v2 cursor (seq or time) from a node further along is held until
            # this node has applied as far, then resolved again.
            self._plan = self._v2_cursor_ahead()
            self._awaiting_cursor = True
            gate.hold(self, self._plan.value)
            return
        if gate is not None and self._cursor is not None and self._cursor - 1 > self._position.value:
            # Cluster mode: the client comes from a node further along. Starting live here would
            # repeat what it already has; wait until this node has applied up to its cursor.
            self._awaiting_cursor = True
            gate.hold(self, self._cursor)
            return
        self._start_heartbeats()
        if self._state is ReaderState.READING:
            self.wake()

    def _start_position(self) -> int:
        """The position before the first event: from v1's time cursor, or v2's plan (seq or time)."""
        newest = self._server.ring.newest_time_us
        if not self._v2:
            return initial_position(self._cursor, newest)
        plan = self._plan
        if plan.mode == wire_v2_request.FROM_TIME:
            return initial_position(plan.value, newest)
        if plan.mode == wire_v2_request.FROM_SEQ:
            if self._seq_below_log(plan.value):
                # Only the archive holds it: start before everything, knowing the seq (the archive finds it).
                self._seam = (0, plan.value - 1)
                return 0
            time_us = self._server.time_us_of_seq(plan.value)
            if time_us is not None:
                return initial_position(time_us, newest)
        return newest

    def _seq_below_log(self, seq: int) -> bool:
        """Whether `seq` lies below what the ring and the log hold while the archive may have it."""
        server = self._server
        if server.history is None:
            return False
        ring = server.ring
        if len(ring) and ring.seq_at(0) <= seq:
            return False
        oldest = server.event_log.oldest_seq()
        return oldest is None or seq < oldest

    def _v2_cursor_ahead(self):
        """The v2 cursor as a plan when it lies beyond this node's newest event (cluster mode), else None."""
        plan, text = self._plan, self._wire.request.cursor_text
        if plan.mode == wire_v2_request.FROM_TIME:
            return plan if plan.value - 1 > self._position.value else None
        if plan.mode != wire_v2_request.LIVE or not text:
            return None
        requested = int(text)  # the request was accepted: a non-negative integer
        if requested < wire_v2_request.CURSOR_SEQ_MAX and requested > self._server.newest_seq() + 1:
            return wire_v2_request.CursorPlan(wire_v2_request.FROM_SEQ, requested)
        return None  # a time cursor after now, or the next seq: live on every node

    def cursor_reached(self) -> None:
        """The cursor gate's answer: this node has caught up; start from the cursor as at connect."""
        if self._state is ReaderState.CLOSED or not self._awaiting_cursor:
            return
        # Move the one Position forward, never replace it: the live fan-out's slot holds this
        # object, and a slot left on a stale copy would resend (or skip) once the reader joined.
        start = self._position.value
        if not self._advance(start, max(start, self._start_position())):
            return
        self._awaiting_cursor = False
        self._start_heartbeats()
        if self._state is ReaderState.READING:
            self.wake()

    def _fail_internal(self, stage: str, exc: Exception, transport: WSTransport) -> None:
        """Close with 1011 and a reason the client can read, count it, and log why (never picows' bare 1011)."""
        log.error("event=subscriber_failed stage=%s ip=%s error=%r", stage, self.client_ip, exc,
                  exc_info=log.isEnabledFor(logging.DEBUG))
        self._server.count_disconnect("internal_error")
        if self._transport is None:
            self._transport = transport
        self._end(self._wire.internal_error(type(exc).__name__))

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self._enter(ReaderState.CLOSED)
        self._cancel_timers()
        if self._bucket is not None:
            self._server.rate_limiters.release(self.client_ip)
            self._bucket = None
        self._server.unregister(self)
        log_subscriber_disconnected(self, transport)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        try:
            self._on_frame(transport, frame)
        except Exception as exc:  # noqa: BLE001 - as in on_ws_connected: close with a reason, count it
            self._fail_internal("client_message", exc, transport)

    def _on_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if self._v2 and msg_type in (WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CONTINUATION):
            # Server-push only: any data frame ends the stream (1008, no error frame).
            self._server.count_disconnect("bad_client_message")
            self._end(self._wire.on_client_data(msg_type == WSMsgType.TEXT, b""))
            return
        if msg_type == WSMsgType.TEXT:
            self._on_text(frame)
        elif msg_type == WSMsgType.CLOSE:
            # gorilla's default close handler: echo the code, no reason, then hang up. A code
            # that may not be sent on the wire (1004-1006, 1015) gets gorilla's protocol error
            # instead; picows itself already answers codes outside 1000-4999.
            self._enter(ReaderState.CLOSED)
            code = frame.get_close_code()
            if frame.payload_size >= 2 and int(code) in _UNSENDABLE_CLOSE_CODES:  # empty close: fine
                transport.send_close(WSCloseCode.PROTOCOL_ERROR, b"bad close code %d" % int(code))
            else:
                transport.send_close(code)
            transport.disconnect()
        elif msg_type in (WSMsgType.BINARY, WSMsgType.CONTINUATION):
            log.debug("event=client_message_ignored reason=not_text ip=%s", self.client_ip)

    def pause_writing(self) -> None:
        if self._live is not None:
            self._live.leave()  # resume_writing wakes this reader; it rejoins once caught up
        if self._state in _PAUSABLE:
            self._enter(ReaderState.PAUSED)
        elif self._state is ReaderState.ARCHIVE_READ:
            self._paused_while_reading = True  # the read's arrival pauses instead of stepping
        self._pushed_back = True
        self.pauses += 1
        self._arm_lag_check()

    def resume_writing(self) -> None:
        self._paused_while_reading = False
        if self._state is ReaderState.PAUSED:
            self._enter(ReaderState.READING)
        # The peer drained our buffer, so it is alive: this stands in for a pong, so an idle
        # ping stuck behind queued events does not get a reading client closed.
        if self._transport is not None:
            self._transport.notify_user_specific_pong_received()
        self.wake()

    # --- client messages ---------------------------------------------------------------

    def _on_text(self, frame: WSFrame) -> None:
        # picows closes (1009) on a frame over --max-client-message-bytes before we see it;
        # fragmented messages are not reassembled (v1 clients send one frame per message).
        if not frame.fin or frame.payload_size > self._server.settings.max_client_message_bytes:
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
        self._index_query = _index_query_for(update.filters)
        self._v1_filters = update.filters
        self._archive_query = None  # the next archive read skips blocks by the new filter
        self._max_message_size = update.max_message_size_bytes
        if self._live is not None:
            self._live.set_options(self._event_filter, self._max_message_size, self._include_sync)
        if update.heartbeat_seconds is not None:
            self._heartbeat_s = update.heartbeat_seconds
            self._start_heartbeats()
        self._server.options_updates += 1
        if self._state is ReaderState.AWAITING_HELLO:
            self._enter(ReaderState.READING)
            self.wake()

    # --- the reader --------------------------------------------------------------------

    def wake(self) -> None:
        """Run a step now unless one is already scheduled (then that one will run).

        A reader in the live fan-out takes no step of its own: the fan-out's pass serves it.
        """
        if self._wakeup is None and not (self._live is not None and self._live.live):
            self.pump()

    def pump(self) -> None:
        """One reader step; then schedule the next, or wait (paused, caught up, out of tokens)."""
        self._wakeup = None
        if self._state not in _STEPPABLE or self._awaiting_cursor:
            return
        granted = self._bucket.take(STEP_MAX_EVENTS)
        if granted == 0:
            self._held_by_server()
            self._enter(ReaderState.RATE_LIMITED)
            delay = self._bucket.seconds_until_available(_step_tokens(self._bucket))
            self._wakeup = asyncio.get_running_loop().call_later(delay, self.pump)
            return
        self._enter(ReaderState.READING)
        start = self._position.value
        try:
            batch = self._read(start, granted)
            if batch is None:  # an archive read (or listing) is under way: its arrival steps again
                self._bucket.give_back(granted)
                return
        except LogCorruption as exc:
            self._stop_at_damage(exc.describe())
            return
        except LogGap as exc:
            self._stop_at_gap(exc.gap)
            return
        except Exception:
            log.exception("event=reader_failed ip=%s position=%d", self.client_ip, start)
            self._server.count_disconnect("replay_failed")
            self._end(self._wire.read_failed())
            return
        self._bucket.give_back(granted - len(batch.payloads))
        self._count_source(batch.from_log)
        self._send(batch.payloads)
        if not self._advance(start, batch.position):
            return
        if batch.seq:
            self._seam = (batch.position, batch.seq)
        if batch.caught_up:
            self._held_by_server()
            if self._state is ReaderState.READING:  # a paused reader is woken by resume_writing
                self._enter(ReaderState.LIVE)
                self._server.wait_for_events(self)
            return
        if self._lag_policy is not None and self._check_lag():
            return
        if self._state is ReaderState.READING:
            # Yield to the loop between steps so one reader cannot starve the others.
            self._wakeup = asyncio.get_running_loop().call_soon(self.pump)

    def _stop_at_damage(self, damage: dict) -> None:
        """The log cannot be read on from the position: never a skip to live. 1011 names the range."""
        self._server.count_disconnect("log_corruption")
        self._server.report_log_damage(damage)
        self._end(self._wire.log_damaged(damage))

    def _stop_at_gap(self, gap: dict) -> None:
        """The replay reached events `jetstream repair` dropped: the client must know its cursor did not complete."""
        log.info("event=reader_reached_gap ip=%s position=%d from_time_us=%d to_time_us=%d",
                 self.client_ip, self._position.value, gap["from_time_us"], gap["to_time_us"])
        self._server.count_disconnect("log_gap")
        self._end(self._wire.log_gap(gap))

    # --- below the log: the archive and the seams (point 3 of the module docstring) --------

    def _read(self, start: int, granted: int) -> Batch | None:
        """The next batch: the archive block in hand, the ring, the log, or None while an archive read runs."""
        if self._archive_events is not None:
            return self._archive_batch(start, granted)
        history = self._server.history
        if history is None or self._server.ring.covers(start):
            return self._ring_or_log_batch(start, granted)
        return self._below_ring(start, granted, history)

    def _ring_or_log_batch(self, start: int, granted: int) -> Batch:
        return read_next_batch(start, self._server.ring, self._server.event_log, self._event_filter,
                               self._compressed, granted, self._max_message_size, self._index_query,
                               self._include_sync, self._compress_v2)

    def _seq_at(self, position: int) -> int | None:
        seam = self._seam
        return seam[1] if seam is not None and seam[0] == position else None

    def _below_ring(self, start: int, granted: int, history) -> Batch | None:
        """Log or archive for a reader the ring no longer covers, with no gap and no duplicate at the seam.

        The log is read only when it holds every event after the position: its first row after the
        position must carry the seq right after the last event scanned (`seq`), checked after the
        read (the trim only removes from the bottom, appends only add at the top: a row still there
        after the read was there, with everything above it, when the read ran). Otherwise the
        archive, which holds every event the trim removed (it never drops an unsealed one).
        """
        event_log = self._server.event_log
        seq = self._seq_at(start)
        if seq is None:
            seq = event_log.seq_at_or_before(start)
            if seq is None:  # nothing at or before the position in the log: it cannot vouch for what follows
                if self._archive_may_hold(history, start, None):
                    self._fetch_archive(start, None, history)
                    return None
                return self._ring_or_log_batch(start, granted)  # v1: resume at the oldest event still held
        if event_log.seq_at_or_after(start + 1) not in (None, seq + 1) and self._archive_may_hold(history, start, seq):
            self._fetch_archive(start, seq, history)  # the log is already past the position: skip the read
            return None
        batch = self._ring_or_log_batch(start, granted)
        following = event_log.seq_at_or_after(start + 1)
        if following is None and not batch.seq:
            ring = self._server.ring  # the log holds nothing after the position: the ring's first is next
            following = ring.seq_at(0) if len(ring) else seq + 1
        if following == seq + 1:
            self._jump = None
            return batch
        if self._archive_may_hold(history, start, seq):
            self._fetch_archive(start, seq, history)
            return None
        return self._unlisted(start, seq, following, batch, history)

    def _archive_may_hold(self, history, start: int, seq: int | None) -> bool:
        if not history.ready:
            return True  # not listed yet (start-up): an empty manifest proves nothing; _fetch_archive waits
        return start != self._archive_empty_at and history.holds_after(start, seq)

    def _unlisted(self, start: int, seq: int, following: int | None, batch: Batch, history) -> Batch | None:
        """The log lacks seq + 1 and the listed segments end before the position.

        Either a segment was sealed (and the log trimmed) since this process last listed the store, or
        the seqs jump (--cluster, after stream messages expired unapplied). A listing that began after
        the log first showed this same next seq tells them apart: a trimmed event was sealed and
        published before the trim, so such a listing has it. Only then, with nothing refused, is the
        jump taken.
        """
        key = (start, seq, following)
        jump = self._jump
        if jump is not None and jump[0] == key and history.scanned_since(jump[1]):
            if history.has_refused:
                self._stop_at_archive_damage(f"archive damaged: a refused segment may hold seq {seq + 1}.."
                                             f"{following}; replay incomplete")
                return None
            if following is None:
                return Batch([], start, False, True)  # the rows read have gone meanwhile: read again
            log.info("event=reader_seq_jump ip=%s position=%d from_seq=%d to_seq=%d", self.client_ip, start,
                     seq, following)
            self._jump = None
            return batch
        if jump is None or jump[0] != key:
            self._jump = jump = (key, time.monotonic())
        self._wait_for(history.request_scan(jump[1]))
        return None

    def _fetch_archive(self, start: int, seq: int | None, history) -> None:
        """Read the next block after the position in a thread; the reader waits in ARCHIVE_READ."""
        if not history.ready:
            self._await_first_listing(history)
            return
        if self._archive_query is None:
            self._archive_query = self._make_archive_query()
        self._archive_from = start
        self._wait_for(asyncio.ensure_future(history.next_block(start, seq, self._archive_query)))

    def _await_first_listing(self, history) -> None:
        """Start-up: the store has not been listed yet. Wait for a listing (then step again); if one ends
        and the store still is not listed, it cannot be: stop as at damage, never resume past the history."""
        if self._waited_for_listing:
            self._stop_at_archive_damage("archive unreachable: its store could not be listed; replay incomplete")
            return
        self._waited_for_listing = True
        self._archive_from = self._position.value
        self._wait_for(history.first_listing())

    def _wait_for(self, future: asyncio.Future) -> None:
        self._archive_task = future
        self._enter(ReaderState.ARCHIVE_READ)
        future.add_done_callback(self._archive_arrived)

    def _make_archive_query(self):
        if self._v2:
            request = self._wire.request
            return archive_query(request.collections, request.dids, request.kinds)
        filters = self._v1_filters
        return v1_archive_query(filters.wanted_collections, filters.wanted_dids, self._include_sync)

    def _archive_arrived(self, future: asyncio.Future) -> None:
        """A block (or a listing) came back: keep the block, then step again (a closed reader drops it)."""
        if self._archive_task is not future:
            return
        self._archive_task = None
        if future.cancelled() or self._state is ReaderState.CLOSED:
            return
        exc = future.exception()
        if isinstance(exc, HistoryDamaged):
            self._stop_at_archive_damage(exc.close_reason())
            return
        if exc is not None:
            log.error("event=reader_failed source=archive ip=%s position=%d error=%r", self.client_ip,
                      self._position.value, exc)
            self._server.count_disconnect("replay_failed")
            self._end(self._wire.read_failed())
            return
        block = future.result()
        if block is not None and self._position.value == self._archive_from:
            self._take_block(block)
        self._resume_after_wait()

    def _take_block(self, block) -> None:
        start = self._archive_from
        if block.events:
            self._archive_events, self._archive_next = block.events, 0
        elif block.skip_to is not None and block.skip_to[0] > start:
            if self._advance(start, block.skip_to[0]):  # whole segments the filter cannot want: scanned
                self._seam = block.skip_to
        else:
            self._archive_empty_at = start  # the listing changed under the read: let the log path decide

    def _resume_after_wait(self) -> None:
        if self._state is not ReaderState.ARCHIVE_READ:
            return
        if self._paused_while_reading:
            self._paused_while_reading = False
            self._enter(ReaderState.PAUSED)
            return
        self._enter(ReaderState.READING)
        self.wake()

    def _archive_batch(self, start: int, max_events: int) -> Batch:
        """The next events of the archive block in hand, rendered to this reader's wire by ingest's own
        emitters (archive/render.py) and filtered as the log's rows are; the block is let go when done."""
        events, index = self._archive_events, self._archive_next
        event_filter, include_sync, cap = self._event_filter, self._include_sync, self._max_message_size
        compressed, v2 = self._compressed, self._v2
        compress = self._compress_v2 if v2 else self._server.compress_v1
        payloads: list[bytes] = []
        sent_bytes = 0
        position, seq = start, 0
        clock = time.perf_counter
        deadline = clock() + ARCHIVE_STEP_BUDGET_S
        while index < len(events):
            if index > self._archive_next and clock() >= deadline:
                break  # the step's render budget is spent: yield, the next step goes on from here
            event = events[index]
            index += 1
            position, seq = event.witnessed_at, event.seq
            kind = render.log_kind(event)
            if kind is None:
                continue
            if v2:
                if not event_filter.matches_event(kind, event.did, event.collection):
                    continue
                frame = render.v2_frame(event)
                if not frame or 0 < cap < len(frame):
                    continue
                payload = compress(frame) if compressed else frame
            else:
                if (kind == KIND_SYNC and not include_sync) or not event_filter.matches(event.did, event.collection):
                    continue
                text = render.v1_json(event)
                if text is None:
                    continue
                payload = compress(text) if compressed else text
                if 0 < cap < len(payload):
                    continue
            payloads.append(payload)
            sent_bytes += len(payload)
            if len(payloads) >= max_events or sent_bytes >= STEP_MAX_BYTES:
                break
        if index >= len(events):
            self._archive_events, self._archive_next = None, 0
        else:
            self._archive_next = index
        self.archive_steps += 1
        wire = "v2" if v2 else "v1"
        self._server.history_steps[wire] += 1
        self._server.history_events_sent[wire] += len(payloads)
        return Batch(payloads, position, False, True, seq)

    def _stop_at_archive_damage(self, reason: str) -> None:
        """A segment the replay needs cannot be read: never a skip. 1011 (v2: an error frame) names the range."""
        log.info("event=reader_reached_archive_damage ip=%s position=%d reason=%r", self.client_ip,
                 self._position.value, reason)
        self._server.count_disconnect("archive_damage")
        self._end(self._wire.archive_damaged(reason))

    def _count_source(self, from_log: bool) -> None:
        if from_log:
            self.log_steps += 1
            self.fell_behind += self._on_ring
        else:
            self._ring_steps += 1
        self._on_ring = not from_log

    def _end(self, closing: wires.Closing) -> None:
        """Tell the client why the stream ends as its wire does (v2: an error frame first), then close."""
        if closing.frames and self._state is not ReaderState.CLOSED and self._write is not None:
            self._send_frames(closing.frames)
        self.close(closing.code, closing.reason)

    def shut_down(self, reason: str) -> None:
        """The server is stopping: close as the wire says (v1: 1001 with `reason`)."""
        self._end(self._wire.shutting_down(reason))

    def _send_frames(self, frames) -> None:
        """Frames that are not events (v2's #info and error frames), compressed on a zstd connection."""
        payloads = [self._compress_v2(frame) if self._compressed else frame for frame in frames]
        self._write(encode_frames(payloads, self._compressed))

    def _send(self, payloads: list[bytes]) -> None:
        if not payloads:
            return
        # One write for the whole batch: picows' send() costs a send(2) per message.
        self._write(encode_frames(payloads, self._compressed))
        self._live.sent_events += len(payloads)
        self._live.sent_bytes += sum(map(len, payloads))
        if self._heartbeat is not None:
            self._heartbeat.sent(time.monotonic())

    # --- heartbeats (heartbeatSeconds=N) -----------------------------------------------

    def _start_heartbeats(self) -> None:
        """(Re)start the heartbeat timer for the current interval; 0 stops it."""
        if self._heartbeat_timer is not None:
            self._heartbeat_timer.cancel()
            self._heartbeat_timer = None
        if self._heartbeat_s <= 0 or self._state is ReaderState.CLOSED:
            self._heartbeat = None
            return
        self._heartbeat = HeartbeatClock(self._heartbeat_s, time.monotonic())
        if self._live is not None and self._live.live:
            # Out of the live fan-out (it does not tell the heartbeat clock about its sends):
            # back to the server's waiting set, still LIVE and caught up.
            self._live.leave()
            self._server.wait_for_events(self)
        self._arm_heartbeat()

    def _arm_heartbeat(self) -> None:
        delay = self._heartbeat.seconds_until_due(time.monotonic())
        self._heartbeat_timer = asyncio.get_running_loop().call_later(delay, self._heartbeat_due)

    def _heartbeat_due(self) -> None:
        # A timer callback runs between two reader steps, so the position is a step boundary.
        self._heartbeat_timer = None
        if self._state is ReaderState.CLOSED or self._heartbeat is None:
            return
        now = time.monotonic()
        if self._heartbeat.seconds_until_due(now) > 0:
            self._arm_heartbeat()
            return
        if self._state in (ReaderState.PAUSED, ReaderState.AWAITING_HELLO):
            # A paused socket still holds unsent events (and before the hello nothing is sent):
            # look again shortly rather than queue a heartbeat behind them.
            self._heartbeat_timer = asyncio.get_running_loop().call_later(
                min(1.0, self._heartbeat.interval_s), self._heartbeat_due)
            return
        payload = heartbeat_payload(self._position.value, self._compressed, self._server.settings.zstd_dictionary)
        self._write(encode_frames([payload], self._compressed))
        self.heartbeats_sent += 1
        self._heartbeat.sent(now)
        self._arm_heartbeat()

    def _advance(self, start: int, new_position: int) -> bool:
        try:
            self._position.advance(start, new_position)
        except PositionConflict:
            self.position_conflict(start, new_position)
            return False
        return True

    def position_conflict(self, start: int, new_position: int) -> None:
        """A second writer moved the position (a bug): close rather than risk a gap or a duplicate."""
        log.exception("event=position_conflict ip=%s start=%d new=%d", self.client_ip, start, new_position)
        self._server.count_disconnect("position_conflict")
        self._end(self._wire.internal_error())

    # --- lag policy --------------------------------------------------------------------

    def _held_by_server(self) -> None:
        """Caught up or rate-limited: whatever lag there is, the client is not to blame."""
        self._pushed_back = False
        if self._lag_policy is not None:
            self._lag_policy.reset()

    def _arm_lag_check(self) -> None:
        # A paused reader runs no steps, so a timer keeps the policy's clock honest.
        if self._lag_policy is None or self._lag_check is not None or self._state is ReaderState.CLOSED:
            return
        interval = max(0.05, min(1.0, self._lag_policy.grace_s / 2))
        self._lag_check = asyncio.get_running_loop().call_later(interval, self._lag_check_while_paused)

    def _lag_check_while_paused(self) -> None:
        self._lag_check = None
        if self._state is not ReaderState.PAUSED:
            return
        if not self._check_lag():
            self._arm_lag_check()

    def _check_lag(self) -> bool:
        """Apply the lag policy now; True when it closed the connection."""
        lag_events, lag_seconds = lag_of(self._position.value, self._server.ring)
        reason = self._lag_policy.observe(time.monotonic(), lag_events, lag_seconds, self._pushed_back)
        if reason is None:
            return False
        log.info("event=subscriber_closed reason=%s ip=%s lag_events=%d lag_seconds=%.1f",
                 reason, self.client_ip, lag_events, lag_seconds)
        self._server.count_disconnect(reason)
        self._end(self._wire.lagging(reason, lag_events, lag_seconds, self._lag_policy.grace_s,
                                     self._next_seq() if self._v2 else 0))
        self._abort_after_close = asyncio.get_running_loop().call_later(CLOSE_DRAIN_GRACE_S, self.abort)
        return True

    def _next_seq(self) -> int:
        """The seq of the first event after the position (v2's resume cursor), or the next to be assigned."""
        known = self._seq_at(self._position.value)
        if known is not None:
            return known + 1
        seq = self._server.event_log.seq_at_or_after(self._position.value + 1)
        return seq if seq is not None else self._server.newest_seq() + 1

    # --- lifetime ----------------------------------------------------------------------

    @property
    def transport(self) -> WSTransport | None:
        return self._transport

    @property
    def live_slot(self):
        """This reader's LiveSlot for the live fan-out; None before connect, and while it asked
        for heartbeats (the heartbeat timer must see every send, so it keeps its own steps)."""
        return self._live if self._heartbeat is None else None

    @property
    def sent_events(self) -> int:
        return self._live.sent_events if self._live is not None else 0

    @property
    def sent_bytes(self) -> int:
        return self._live.sent_bytes if self._live is not None else 0

    @property
    def ring_steps(self) -> int:
        """Steps served from the ring: this reader's own, and the live fan-out's for it."""
        return self._ring_steps + (self._live.steps if self._live is not None else 0)

    def abort(self) -> None:
        """Drop the connection without waiting for buffered bytes (a stuck peer at shutdown)."""
        self._enter(ReaderState.CLOSED)
        self._cancel_timers()
        if self._transport is not None:
            self._transport.underlying_transport.abort()

    @property
    def awaiting_hello(self) -> bool:
        """requireHello=true and no valid options_update yet."""
        return self._state is ReaderState.AWAITING_HELLO

    @property
    def position(self) -> int:
        return self._position.value if self._position is not None else 0

    def close(self, code: WSCloseCode, reason: str) -> None:
        """Send a close frame with `reason` (cut to 123 bytes) and hang up."""
        if self._state is ReaderState.CLOSED or self._transport is None:
            return
        self._enter(ReaderState.CLOSED)
        self._cancel_timers()
        self._transport.send_close(code, params.truncate_close_reason(reason).encode())
        self._transport.disconnect()

    def _cancel_timers(self) -> None:
        if self._live is not None:
            self._live.leave()  # closing: the live fan-out must not write to it either
        task, self._archive_task = self._archive_task, None
        if task is not None:
            task.cancel()  # a block still being read is dropped when it arrives
        self._archive_events = None
        for name in ("_wakeup", "_lag_check", "_abort_after_close", "_heartbeat_timer"):
            handle = getattr(self, name)
            if handle is not None:
                handle.cancel()
                setattr(self, name, None)


# At most this much of a filter list goes into a log line; the counts are always there.
LOG_FILTER_CHARS = 200


def _joined(values, limit: int = LOG_FILTER_CHARS) -> str:
    text = ",".join(values or ())
    return text if len(text) <= limit else text[:limit] + "..."


def log_subscriber_connected(subscriber: SubscriberListener) -> None:
    """One line per connection: who, what it asked for, from where in the stream."""
    if subscriber._v2:
        request, plan = subscriber._wire.request, subscriber._wire.plan
        log.info("event=subscriber_connected wire=v2 ip=%s peer=%s cursor=%s:%d position=%d zstd=%s "
                 "max_message_size=%d kinds=%s collections=%d dids=%d wanted_collections=%s wanted_dids=%s",
                 subscriber.client_ip, subscriber.peer, plan.mode, plan.value, subscriber.position, request.zstd,
                 request.max_message_size_bytes, _joined(sorted(map(str, request.kinds or ()))) or "*",
                 len(request.collections or ()), len(request.dids or ()), _joined(request.collections) or "*",
                 _joined(request.dids) or "*")
        return
    options = subscriber._options
    filters = options.filters
    log.info("event=subscriber_connected ip=%s peer=%s cursor=%s position=%d compress=%s require_hello=%s "
             "max_message_size=%d collections=%d dids=%d wanted_collections=%s wanted_dids=%s",
             subscriber.client_ip, subscriber.peer, options.cursor, subscriber.position, options.compress,
             options.require_hello, options.max_message_size_bytes, len(filters.wanted_collections or ()),
             len(filters.wanted_dids or ()), _joined(filters.wanted_collections) or "*",
             _joined(filters.wanted_dids) or "*")


def close_of(transport: WSTransport | None) -> tuple[str, int | None, str]:
    """(who closed: server/client/none, close code, reason) from picows' close handshake."""
    handshake = transport.close_handshake if transport is not None else None
    if handshake is None or (handshake.sent is None and handshake.recv is None):
        return "none", None, ""  # the TCP connection ended without a close frame
    if handshake.recv is not None and (handshake.sent is None or handshake.recv_then_sent):
        return "client", int(handshake.recv.code), handshake.recv.reason or ""
    return "server", int(handshake.sent.code), handshake.sent.reason or ""


def log_subscriber_disconnected(subscriber: SubscriberListener, transport: WSTransport) -> None:
    """One line per connection at its end: how long, how much was sent, and how it was closed."""
    closed_by, code, reason = close_of(transport)
    duration = time.monotonic() - subscriber._connected_at if subscriber._connected_at else 0.0
    log.info("event=subscriber_disconnected ip=%s peer=%s duration_s=%.3f events_sent=%d bytes_sent=%d "
             "closed_by=%s close_code=%s close_reason=%r position=%d",
             subscriber.client_ip, subscriber.peer, duration, subscriber.sent_events, subscriber.sent_bytes,
             closed_by, code, reason, subscriber.position)


def _step_tokens(bucket) -> int:
    return max(1, min(STEP_MAX_EVENTS, int(bucket.burst), int(bucket.rate * TOKEN_WAIT_S)))


def _event_filter_for(filters: params.SubscriberFilters) -> EventFilter:
    return EventFilter(filters.wanted_collections, filters.wanted_dids)


def _index_query_for(filters: params.SubscriberFilters):
    return index_query_for(filters.wanted_collections, filters.wanted_dids)


def _lag_policy_of(server) -> LagPolicy | None:
    """The connection's own LagPolicy (it holds a clock), or None when the limits are off."""
    policy = LagPolicy(*server.settings.lag_limits)
    return policy if policy.enabled else None
