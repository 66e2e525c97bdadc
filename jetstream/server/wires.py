"""The wire one subscriber connection speaks, chosen at the upgrade: v1 `/subscribe` or v2 `subscribeEvents`.

Owns: everything that differs between the two wires for one connection, as one small object the
single reader (subscriber.py) consults instead of branching on the endpoint:
- accepting or refusing the request (`negotiate_v1`: params.py's rules and v1's plain-text 400;
  `negotiate_v2`: wire_v2_request.py's rules and XRPC envelopes), and the subprotocol to echo;
- where the stream starts (`plan`, a CursorPlan: v1 counts in time_us, v2 in seq or time_us,
  and v2 may owe the client an `#info OutdatedCursor` frame before the first event);
- the event predicate: one EventFilter over kinds x dids x collections;
- which stored frame form the reader sends (`frame_form`, `compressed`) and how the size limit
  is measured (v2: the uncompressed frame, envelope included);
- what a client's data frame means (v1: options_update; v2: server-push only, close 1008);
- how each kind of stop is told (`Closing`: v1 a close code and reason only; v2 an error frame
  first, then the close).
It must never touch a socket, the log, the ring or the clock (callers pass now_us and a
Retention snapshot), and never render event frames (ingest does, wire_v2.py).
"""
from __future__ import annotations

from http import HTTPStatus
from typing import NamedTuple

from picows import WSCloseCode

from jetstream import wire_v2
from jetstream.implementation import EventFilter
from jetstream.log.damage import corruption_close_reason, gap_close_reason
from jetstream.server import params, wire_v2_request
from jetstream.server.wire_v2_request import LIVE_PLAN, CursorPlan, Refusal, Retention

V1_FORM, V2_FORM = "v1", "v2"
REASON_REPLAY_FAILED = "failed to replay events"  # v1's close reason for a log read error
REASON_INTERNAL = "internal error"
V2_READ_FAILED = "stream read failed; reconnect"  # handler.go's InternalError message for read failures
V2_SHUTDOWN = "server shutting down"  # handler.go closeConn: 1001 with this reason
V2_CLIENT_DATA = "unexpected data message"  # coder/websocket CloseRead: 1008 on any client data frame
ERROR_INTERNAL = "InternalError"
TEXT_PLAIN = "text/plain; charset=UTF-8"  # echo's c.String, v1's 400s


class Closing(NamedTuple):
    """How a connection ends: send `frames` (uncompressed; compress them on a zstd connection), then
    close with `code` and `reason` (already within a close frame's 123 bytes)."""

    frames: tuple[bytes, ...]
    code: int
    reason: str


def _closing(code: int, reason: str, frames: tuple[bytes, ...] = ()) -> Closing:
    return Closing(frames, int(code), params.truncate_close_reason(reason))


def lag_message(reason: str, lag_events: int, lag_seconds: float, grace_s: float) -> str:
    """How far behind a reader was when the lag policy dropped it (both wires)."""
    return f"{lag_events} events / {lag_seconds:.0f}s behind for {grace_s:g}s ({reason})"


class V1Wire:
    """`/subscribe`: Jetstream v1's JSON stream, byte for byte (docs/protocol.md)."""

    name = "v1"
    frame_form = V1_FORM
    subprotocol = None
    accepts_client_messages = True
    size_limit_uncompressed = False  # v1 compared the payload it sends (compressed for zstd clients)

    def __init__(self, options: params.SubscriberOptions) -> None:
        self.options = options
        self.compressed = options.compress
        self.max_message_size_bytes = options.max_message_size_bytes
        self.require_hello = options.require_hello
        self.heartbeat_seconds = options.heartbeat_seconds
        self.include_sync = options.include_sync
        # v1's cursor is time_us; None (absent, or later than now) is the live tip.
        self.plan = LIVE_PLAN if options.cursor is None else CursorPlan(wire_v2_request.FROM_TIME, options.cursor)
        self.event_filter = self.filter_for(options.filters)

    @staticmethod
    def filter_for(filters: params.SubscriberFilters) -> EventFilter:
        """v1's two dimensions; sync events stay the reader's include_sync business, as before."""
        return EventFilter(filters.wanted_collections, filters.wanted_dids)

    def on_client_data(self, is_text: bool, payload: bytes) -> params.OptionsUpdate | Closing | None:
        """A text frame may be an options_update; binary frames are ignored, as v1 did."""
        if not is_text:
            return None
        outcome = params.interpret_client_message(payload)
        if isinstance(outcome, params.CloseConnection):
            return _closing(WSCloseCode.OK, outcome.reason)
        return outcome

    def lagging(self, reason: str, lag_events: int, lag_seconds: float, grace_s: float,
                resume_cursor: int) -> Closing:
        del resume_cursor  # v1 names no cursor: its clients resume from the last time_us they saw
        return _closing(WSCloseCode.POLICY_VIOLATION,
                        f"consuming too slowly: {lag_message(reason, lag_events, lag_seconds, grace_s)}; "
                        "resume with a cursor")

    def log_damaged(self, damage: dict) -> Closing:
        return _closing(WSCloseCode.INTERNAL_ERROR, corruption_close_reason(damage))

    def log_gap(self, gap: dict) -> Closing:
        return _closing(WSCloseCode.INTERNAL_ERROR, gap_close_reason(gap))

    def archive_damaged(self, reason: str) -> Closing:
        """A sealed segment the replay needs cannot be read: 1011 naming the segment and range, as the log's."""
        return _closing(WSCloseCode.INTERNAL_ERROR, reason)

    def read_failed(self) -> Closing:
        return _closing(WSCloseCode.OK, REASON_REPLAY_FAILED)  # v1 closed a failed replay with 1000

    def internal_error(self, detail: str = "") -> Closing:
        return _closing(WSCloseCode.INTERNAL_ERROR, f"{REASON_INTERNAL}: {detail}" if detail else REASON_INTERNAL)

    def shutting_down(self, reason: str) -> Closing:
        return _closing(WSCloseCode.GOING_AWAY, reason)


class V2Wire:
    """`subscribeEvents`: Jetstream v2's xrpc.v1.json stream (lexicons/.../subscribeEvents.json)."""

    name = "v2"
    frame_form = V2_FORM
    accepts_client_messages = False
    size_limit_uncompressed = True  # handler.go: the cap bounds the logical frame, not its zstd form
    require_hello = False  # refused with a 400 before the upgrade
    heartbeat_seconds = 0  # v2 has none (an unknown parameter is ignored); it pings instead
    include_sync = True  # sync is one of the kinds; the kinds axis decides

    def __init__(self, request: wire_v2_request.V2Request, plan: CursorPlan) -> None:
        self.request = request
        self.plan = plan
        self.subprotocol = request.subprotocol
        self.compressed = request.zstd
        self.max_message_size_bytes = request.max_message_size_bytes
        self.event_filter = EventFilter(request.collections, request.dids, request.kinds)

    def on_client_data(self, is_text: bool, payload: bytes) -> Closing:
        """Server-push only: any data frame, text or binary, closes with 1008 and no error frame."""
        del is_text, payload
        return _closing(WSCloseCode.POLICY_VIOLATION, V2_CLIENT_DATA)

    def _error(self, code: int, name: str, message: str) -> Closing:
        # v2 writes the error frame and then drops the TCP connection without a close frame (its
        # clients see 1006); we follow the error frame with a close frame naming the same thing.
        return _closing(code, message, (wire_v2.error_frame(name, message),))

    def lagging(self, reason: str, lag_events: int, lag_seconds: float, grace_s: float,
                resume_cursor: int) -> Closing:
        """ConsumerTooSlow; `resume_cursor` is the next seq this reader would have read (inclusive)."""
        message = f"{lag_message(reason, lag_events, lag_seconds, grace_s)}; reconnect with cursor={resume_cursor}"
        return self._error(WSCloseCode.POLICY_VIOLATION, wire_v2.ERROR_CONSUMER_TOO_SLOW, message)

    def log_damaged(self, damage: dict) -> Closing:
        # v2's own read failures are InternalError ("stream read failed; reconnect"); ours name the range.
        return self._error(WSCloseCode.INTERNAL_ERROR, ERROR_INTERNAL, corruption_close_reason(damage))

    def archive_damaged(self, reason: str) -> Closing:
        return self._error(WSCloseCode.INTERNAL_ERROR, ERROR_INTERNAL, reason)

    def log_gap(self, gap: dict) -> Closing:
        # The reason's cursor is a time_us (>= 10^15), which v2's cursor also takes.
        return self._error(WSCloseCode.INTERNAL_ERROR, ERROR_INTERNAL, gap_close_reason(gap))

    def read_failed(self) -> Closing:
        return self._error(WSCloseCode.INTERNAL_ERROR, ERROR_INTERNAL, V2_READ_FAILED)

    def internal_error(self, detail: str = "") -> Closing:
        del detail  # v2 names no internals to the client; the server logs them
        return self._error(WSCloseCode.INTERNAL_ERROR, ERROR_INTERNAL, V2_READ_FAILED)

    def shutting_down(self, reason: str = V2_SHUTDOWN) -> Closing:
        del reason
        return _closing(WSCloseCode.GOING_AWAY, V2_SHUTDOWN)


def negotiate_v1(raw_query: bytes, socket_encoding: str, now_us: int) -> V1Wire | Refusal:
    """`/subscribe`: v1's checks (params.py); a refusal is v1's plain-text 400."""
    try:
        options = params.parse_subscribe_query(raw_query, socket_encoding, now_us)
    except params.BadRequest as exc:
        return Refusal(HTTPStatus.BAD_REQUEST, (("Content-Type", TEXT_PLAIN),), params.text_to_wire(exc.text))
    return V1Wire(options)


def negotiate_v2(raw_query: bytes, socket_encoding: str, offered_subprotocols: list[str], *,
                 current_dictionary_id: int, retention: Retention, now_us: int,
                 not_ready: str | None = None) -> V2Wire | Refusal:
    """`subscribeEvents`: v2's checks in v2's order; a refusal is an XRPC error envelope."""
    outcome = wire_v2_request.accept(raw_query, socket_encoding, offered_subprotocols,
                                     current_dictionary_id=current_dictionary_id, retention=retention,
                                     now_us=now_us, not_ready=not_ready)
    if isinstance(outcome, Refusal):
        return outcome
    request, plan = outcome
    return V2Wire(request, plan)


def upgrade_headers(wire: V1Wire | V2Wire) -> list[tuple[str, str]]:
    """Headers of the 101 that depend on the wire: the subprotocol, only when the client offered it."""
    return [("Sec-WebSocket-Protocol", wire.subprotocol)] if wire.subprotocol else []
