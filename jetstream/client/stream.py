"""`Jetstream`: an async iterator of typed events from any Jetstream v1 endpoint.

Owns: the websocket connection (picows, so it runs on uvloop), reassembling fragmented
messages, a bounded receive buffer that pauses reading when the consumer is slower than
the stream, zstd decoding, the requireHello handshake, options updates, and reconnecting
with backoff while resuming without gaps or duplicates (protocol.ResumeState), also when
a reconnect lands on another instance (instance.InstanceTracker), and cursor heartbeats.
It must never reorder or invent events, never deliver an event twice, and never retry a
request the server rejected (a 4xx, or a close saying our options are invalid).
"""
from __future__ import annotations

import asyncio
import collections
import logging
import os
import time
from typing import Iterable

import zstandard
from picows import WSCloseCode, WSError, WSInvalidStatusError, WSListener, WSMsgType, ws_connect

from jetstream.client.events import Event, EventDecodeError, HeartbeatEvent, parse_event
from jetstream.client.instance import DEFAULT_SWITCH_REWIND_US, INSTANCE_HEADER, InstanceTracker
from jetstream.client.protocol import (
    DEFAULT_REWIND_US,
    Backoff,
    ResumeState,
    SubscribeOptions,
    dictionary_url,
    is_fatal_close,
    normalize_url,
    subscribe_url,
)
from jetstream.client.zstd import (
    USER_AGENT,
    DictionaryMismatch,
    ZstdFrameDecoder,
    fetch_dictionary,
    read_dictionary_argument,
)

log = logging.getLogger(__name__)

BUFFER_HIGH_WATER = 10_000  # messages held before we stop reading the socket
BUFFER_LOW_WATER = BUFFER_HIGH_WATER // 4
# Closes that mean "the server is failing / overloaded, come back later": back off even if
# the connection delivered events, so a server in trouble is not hammered (1011, 1013, 1012).
BACK_OFF_CLOSE_CODES = frozenset((1011, 1012, 1013))
_UNCHANGED = object()


class JetstreamError(Exception):
    """The stream cannot continue: the server refused our options, or a frame is undecodable."""


class ConnectionLost(JetstreamError):
    """The connection ended and reconnecting is off (or gave up)."""

    def __init__(self, message: str, close_code: int | None = None, close_reason: str = "") -> None:
        super().__init__(message)
        self.close_code = close_code
        self.close_reason = close_reason


class _MessageListener(WSListener):
    """Collects whole messages of one connection into a bounded deque."""

    def __init__(self, high_water: int) -> None:
        self.messages: collections.deque[tuple[WSMsgType, bytes]] = collections.deque()
        self.disconnected = False
        self.close_code: int | None = None
        self.close_reason = ""
        self._transport = None
        self._waiter: asyncio.Future | None = None
        self._fragments: list[bytes] = []
        self._fragment_type = WSMsgType.TEXT
        self._high_water = high_water
        self._low_water = max(high_water // 4, 1)
        self._reading_paused = False

    def on_ws_connected(self, transport) -> None:
        self._transport = transport

    def on_ws_frame(self, transport, frame) -> None:
        msg_type = frame.msg_type
        if msg_type in (WSMsgType.TEXT, WSMsgType.BINARY):
            if frame.fin:
                self._push(msg_type, frame.get_payload_as_bytes())
            else:  # gorilla (v1) splits messages larger than its write buffer into fragments
                self._fragment_type, self._fragments = msg_type, [frame.get_payload_as_bytes()]
        elif msg_type == WSMsgType.CONTINUATION:
            self._fragments.append(frame.get_payload_as_bytes())
            if frame.fin:
                payload, self._fragments = b"".join(self._fragments), []
                self._push(self._fragment_type, payload)
        elif msg_type == WSMsgType.CLOSE:
            self.close_code = frame.get_close_code()
            self.close_reason = frame.get_close_reason() or ""
            if not transport.is_close_frame_sent:
                transport.send_close(_echoable_close_code(self.close_code))
            transport.disconnect()

    def on_ws_disconnected(self, transport) -> None:
        self.disconnected = True
        self._wake()

    def _push(self, msg_type: WSMsgType, payload: bytes) -> None:
        self.messages.append((msg_type, payload))
        self._wake()
        if len(self.messages) >= self._high_water and not self._reading_paused:
            self._reading_paused = True
            self._transport.underlying_transport.pause_reading()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next_message(self) -> tuple[WSMsgType, bytes] | None:
        """The next message, or None once the connection has ended and the buffer is empty."""
        while not self.messages:
            if self.disconnected:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        item = self.messages.popleft()
        if self._reading_paused and len(self.messages) <= self._low_water and not self.disconnected:
            self._reading_paused = False
            self._transport.underlying_transport.resume_reading()
        return item

    def send(self, message: bytes) -> None:
        if self._transport is not None and not self.disconnected:
            self._transport.send(WSMsgType.TEXT, message)

    def disconnect(self) -> None:
        if self._transport is not None and not self.disconnected:
            self._transport.send_close(WSCloseCode.OK)
            self._transport.disconnect()


def _echoable_close_code(code: int | None) -> WSCloseCode:
    try:
        return WSCloseCode(code)
    except ValueError:  # a code picows has no name for (e.g. 4xxx): answer with a plain 1000
        return WSCloseCode.OK


def _now_us() -> int:
    return time.time_ns() // 1000


class Jetstream:
    """`async for event in Jetstream(url, ...)`: typed events, reconnecting until closed.

    url: a ws(s):// URL, an http(s):// URL or a bare host (see protocol.normalize_url).
    collections / dids: v1's wantedCollections / wantedDids (None = all).
    cursor: time_us to replay from (inclusive); None = live.
    compress: ask for zstd frames; `dictionary` is bytes, a path, or None to fetch the
    server's GET /zstd-dictionary (falling back to no dictionary when it 404s).
    require_hello: connect with requireHello=true and send the filters as the hello.
    max_message_size: v1's maxMessageSizeBytes (0 = no limit).
    heartbeat_seconds: ask for a HeartbeatEvent after that many seconds without a message
    (not v1; servers that do not know it ignore it); its time_us advances the resume point.
    switch_rewind_us: when a reconnect lands on another instance (its Jetstream-Instance
    header differs), resume this far before the last event and drop the events already
    delivered (by content); 0 turns that off.
    """

    def __init__(self, url: str, collections: Iterable[str] | None = None, dids: Iterable[str] | None = None,
                 cursor: int | None = None, compress: bool = False,
                 dictionary: bytes | str | os.PathLike | None = None, require_hello: bool = False,
                 max_message_size: int = 0, *, reconnect: bool = True, rewind_us: int = DEFAULT_REWIND_US,
                 backoff: Backoff | None = None, max_reconnect_attempts: int | None = None,
                 buffer_high_water: int = BUFFER_HIGH_WATER, handshake_timeout_s: float = 10.0,
                 heartbeat_seconds: int = 0, switch_rewind_us: int = DEFAULT_SWITCH_REWIND_US) -> None:
        self.url = normalize_url(url)
        self.options = SubscribeOptions(
            list(collections) if collections is not None else None,
            list(dids) if dids is not None else None,
            compress, max_message_size, require_hello,
        )
        self.options.heartbeat_seconds = heartbeat_seconds
        self.instances = InstanceTracker(switch_rewind_us)
        self._switch_cursor: int | None = None
        self._dictionary_argument = dictionary
        self._decoder: ZstdFrameDecoder | None = None
        self._dictionary_fetched = False
        self.resume = ResumeState(cursor, rewind_us)
        self.backoff = backoff or Backoff()
        self.reconnect = reconnect
        self.max_reconnect_attempts = max_reconnect_attempts
        self._buffer_high_water = buffer_high_water
        self._handshake_timeout_s = handshake_timeout_s
        self._listener: _MessageListener | None = None
        self._closed = asyncio.Event()
        self.connections = 0  # successful websocket handshakes, for stats and tests
        self.undecodable_messages = 0
        self._delivered_this_connection = 0
        self._reconnect_delay_s = 0.0  # waited before the next dial (a connection ended badly)

    # --- public surface ---------------------------------------------------------------------

    @property
    def last_time_us(self) -> int | None:
        return self.resume.last_time_us

    @property
    def duplicates_dropped(self) -> int:
        return self.resume.duplicates_dropped + self.instances.duplicates_dropped

    @property
    def instance(self) -> str | None:
        """The Jetstream-Instance the server announced (None: it announced none, e.g. Go v1)."""
        return self.instances.instance

    @property
    def buffered(self) -> int:
        """Messages received and not yet iterated (0: the consumer is keeping up)."""
        return len(self._listener.messages) if self._listener is not None else 0

    @property
    def connected(self) -> bool:
        return self._listener is not None and not self._listener.disconnected

    async def connect(self) -> None:
        """Open the connection now (iteration does this lazily); retries per the backoff."""
        if self._listener is None or self._listener.disconnected:
            await self._connect_with_retries()

    def update_options(self, *, collections=_UNCHANGED, dids=_UNCHANGED, max_message_size=_UNCHANGED) -> None:
        """Change filters for this connection and every later one (v1 options_update).

        None or [] clears a filter. Events the server sent before it read the update may
        still follow under the old filters.
        """
        if collections is not _UNCHANGED:
            self.options.collections = list(collections) if collections is not None else None
        if dids is not _UNCHANGED:
            self.options.dids = list(dids) if dids is not None else None
        if max_message_size is not _UNCHANGED:
            self.options.max_message_size = max_message_size
        if self.connected:
            self._listener.send(self.options.options_update())

    async def close(self) -> None:
        """Stop: end the connection; iteration then finishes (StopAsyncIteration)."""
        self._closed.set()
        if self._listener is not None:
            self._listener.disconnect()

    async def __aenter__(self) -> Jetstream:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()

    def __aiter__(self) -> Jetstream:
        return self

    async def __anext__(self) -> Event:
        while not self._closed.is_set():
            if self._listener is None:
                await self._connect_with_retries()
                continue
            item = await self._listener.next_message()
            if item is None:
                self._connection_ended()
                continue
            event = self._to_event(*item)
            if event is not None:
                return event
        raise StopAsyncIteration

    # --- messages ----------------------------------------------------------------------------

    def _to_event(self, msg_type: WSMsgType, payload: bytes) -> Event | None:
        if msg_type == WSMsgType.BINARY:
            payload = self._decompress(payload)
        try:
            event = parse_event(payload)
        except EventDecodeError as exc:
            self.undecodable_messages += 1
            log.warning("event=message_skipped reason=%s bytes=%d", exc, len(payload))
            return None
        if isinstance(event, HeartbeatEvent):
            self.resume.heartbeat(event.time_us)
            return event
        if not self.resume.accept(event.time_us) or not self.instances.deliver(event.time_us, payload):
            return None
        self._delivered_this_connection += 1
        return event

    def _decompress(self, frame: bytes) -> bytes:
        if self._decoder is None:
            self._decoder = ZstdFrameDecoder(None)
        try:
            return self._decoder.decode(frame)
        except DictionaryMismatch as exc:
            raise JetstreamError(str(exc)) from exc
        except zstandard.ZstdError as exc:
            raise JetstreamError(f"undecodable zstd frame: {exc}") from exc

    # --- connecting --------------------------------------------------------------------------

    async def _prepare_decoder(self) -> None:
        if not self.options.compress or self._decoder is not None:
            return
        try:
            dictionary = read_dictionary_argument(self._dictionary_argument)
        except OSError as exc:  # a local file: retrying cannot fix it, so say which one and stop
            raise JetstreamError(f"cannot read zstd dictionary {os.fspath(self._dictionary_argument)!r}: "
                                 f"{exc.strerror or exc}") from exc
        if dictionary is None and not self._dictionary_fetched:
            self._dictionary_fetched = True
            dictionary = await fetch_dictionary(dictionary_url(self.url))
        self._decoder = ZstdFrameDecoder(dictionary)
        log.info("event=zstd_decoder_ready dictionary_id=%d", self._decoder.dictionary_id)

    async def _connect_with_retries(self) -> None:
        attempts = 0
        if self._reconnect_delay_s > 0:
            delay, self._reconnect_delay_s = self._reconnect_delay_s, 0.0
            await self._sleep_unless_closed(delay)
        while not self._closed.is_set():
            try:
                await self._connect_once()
                return
            except (OSError, WSError, asyncio.TimeoutError) as exc:
                if isinstance(exc, WSInvalidStatusError) and _is_refusal(exc):
                    raise JetstreamError(f"server refused the subscription: {_describe_refusal(exc)}") from exc
                attempts += 1
                if not self.reconnect or (self.max_reconnect_attempts is not None
                                          and attempts > self.max_reconnect_attempts):
                    raise ConnectionLost(f"cannot connect to {self.url}: {exc!r}") from exc
                delay = self.backoff.next_delay()
                log.warning("event=jetstream_connect_failed url=%s attempt=%d delay_s=%.2f error=%r",
                            self.url, attempts, delay, exc)
                await self._sleep_unless_closed(delay)

    async def _connect_once(self) -> None:
        await self._prepare_decoder()
        switching = self._switch_cursor is not None
        cursor = self._switch_cursor if switching else self.resume.cursor_for_next_connection()
        url = subscribe_url(self.url, self.options, cursor)
        high_water = self._buffer_high_water
        transport, listener = await ws_connect(
            lambda: _MessageListener(high_water), url,
            extra_headers={"User-Agent": USER_AGENT},
            websocket_handshake_timeout=self._handshake_timeout_s,
            logger_name="client.jetstream",
        )
        announced = transport.response.headers.get(INSTANCE_HEADER) if transport.response is not None else None
        if not switching and self.resume.last_time_us is not None and self.instances.is_switch(announced):
            # Another instance numbers the same events with its own time_us: start over a margin
            # earlier, on a new connection, and drop by content what we delivered already.
            self._switch_cursor = self.instances.switch_cursor(self.resume.last_time_us)
            log.warning("event=jetstream_instance_changed from=%s to=%s last_time_us=%d resume_cursor=%d",
                        self.instances.instance, announced, self.resume.last_time_us, self._switch_cursor)
            listener.disconnect()
            return await self._connect_once()
        if switching:
            self.resume.restart_at(cursor)
            self._switch_cursor = None
        self.instances.connected(announced, switching)
        self._listener = listener
        self.connections += 1
        self._delivered_this_connection = 0
        if self.resume.first_connected_us is None:
            self.resume.first_connected_us = _now_us()
        if self.options.require_hello:
            listener.send(self.options.options_update())
        log.info("event=jetstream_connected url=%s cursor=%s connection=%d", self.url, cursor, self.connections)

    def _connection_ended(self) -> None:
        listener, self._listener = self._listener, None
        code, reason = listener.close_code, listener.close_reason
        if self._closed.is_set():
            return
        if is_fatal_close(code, reason):
            raise JetstreamError(f"server closed the stream: {reason}")
        if not self.reconnect:
            raise ConnectionLost(f"connection closed (code={code} reason={reason!r})", code, reason)
        delivered = self._delivered_this_connection
        if delivered and code not in BACK_OFF_CLOSE_CODES:
            # This connection worked: the next outage starts from a short delay, and a healthy
            # stream that dropped reconnects at once.
            self.backoff.reset()
        else:
            # Closed before delivering anything, or the server says it is failing: keep backing
            # off (a handshake that succeeds is no proof the server can serve us).
            self._reconnect_delay_s = self.backoff.next_delay()
        log.warning("event=jetstream_disconnected code=%s reason=%r events=%d last_time_us=%s reconnect_in_s=%.2f",
                    code, reason, delivered, self.resume.last_time_us, self._reconnect_delay_s)

    async def _sleep_unless_closed(self, delay_s: float) -> None:
        try:
            await asyncio.wait_for(self._closed.wait(), delay_s)
        except asyncio.TimeoutError:
            pass


def _is_refusal(exc: WSInvalidStatusError) -> bool:
    """4xx other than 429 means our request is wrong: retrying would only repeat it."""
    status = int(exc.response.status) if exc.response is not None else 0
    return 400 <= status < 500 and status != 429


def _describe_refusal(exc: WSInvalidStatusError) -> str:
    status = int(exc.response.status) if exc.response is not None else 0
    body = (exc.raw_body or b"").decode("utf-8", "replace").strip()
    return f"HTTP {status} {body}".strip()
