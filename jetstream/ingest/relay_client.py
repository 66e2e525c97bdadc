"""The websocket connection to the relay.

Owns: connecting to `--ws-url` with the right `cursor`, handing every binary frame
to the pipeline, reconnecting with capped exponential backoff and jitter, and
declaring a silent relay dead after `--liveness-ttl` (v1 exited the process instead;
we reconnect in-process so subscribers stay connected). Every connection that ends is
counted by why (`jetstream_relay_disconnects_total{reason}`) and logged once.
An outage is reported once (`relay_unreachable`, a warning); its attempts are debug lines.
How long it has lasted (`disconnected_for`) is for the daemon's health check to judge.
An endpoint that answers with text frames is not a relay firehose (most likely a Jetstream
`/subscribe` URL): after a few of them it is reported once, `/healthz` is degraded
(`relay_not_a_firehose`) and the client backs off instead of reading JSON it cannot use.
It must never decode or store frames: that is the pipeline's job (which asks for a
reconnect, through `reconnect(reason)`, when it sees an error frame or cannot write).
"""
from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from typing import Callable
from urllib.parse import urlsplit, urlunsplit

from picows import WSListener, WSMsgType, WSTransport, ws_connect

from jetstream import metrics
from jetstream.health import Problems

log = logging.getLogger(__name__)

# The DAG-CBOR header {"op": -1} of an error frame: recognised without decoding, so a relay
# that answers every dial with an error frame is backed off from, not re-dialled at once.
ERROR_FRAME_HEADER = b"\xa1\x62op\x20"

# v1's gorilla dialer gave up after 45 s; a black-holed relay must not hang a dial forever.
CONNECT_TIMEOUT_S = 45.0
# Text frames, with no binary frame before them on a connection, that make an endpoint "not a
# relay firehose": a relay sends binary DAG-CBOR frames only; a Jetstream /subscribe sends text.
TEXT_FRAMES_TO_DECIDE = 3


def url_with_cursor(ws_url: str, cursor: int | None) -> str:
    """v1 semantics: a known cursor REPLACES the URL's query string with `cursor=N`."""
    if cursor is None:
        return ws_url
    parts = urlsplit(ws_url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, f"cursor={cursor}", ""))


def backoff_delay(attempt: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff capped at max_s, with full jitter in [50%, 100%] of the step."""
    step = min(max_s, initial_s * (2 ** max(0, attempt - 1)))
    return step * (0.5 + 0.5 * rng.random())


class _RelayListener(WSListener):
    def __init__(self, client: "RelayClient") -> None:
        self.client = client

    def on_ws_connected(self, transport: WSTransport) -> None:
        # Frames can arrive (and the pipeline can ask to reconnect, e.g. after an error frame)
        # before ws_connect's coroutine resumes: the transport must be known from this moment,
        # or that reconnect finds no connection to drop and waits out the liveness TTL.
        self.client._transport = transport

    def on_ws_frame(self, transport: WSTransport, frame) -> None:
        client = self.client
        client.last_frame_at = time.monotonic()
        if frame.msg_type == WSMsgType.BINARY:
            payload = frame.get_payload_as_bytes()
            if payload.startswith(ERROR_FRAME_HEADER):
                client.error_frame_seen = True
            if client.awaiting_binary:
                client.first_binary_frame()
            client.on_frame(payload)
        elif frame.msg_type == WSMsgType.CLOSE:
            transport.disconnect()
        elif frame.msg_type == WSMsgType.TEXT:
            client.text_frame(transport, frame.get_payload_as_bytes())


def looks_like_jetstream(payload: bytes) -> bool:
    """A Jetstream /subscribe message: a JSON object with `did`, `time_us` and `kind`."""
    try:
        message = json.loads(payload)
    except ValueError:
        return False
    return isinstance(message, dict) and {"did", "time_us", "kind"} <= message.keys()


class RelayClient:
    def __init__(
        self,
        ws_url: str,
        on_frame: Callable[[bytes], None],
        cursor_source: Callable[[], int | None],
        *,
        liveness_ttl_s: float = 15.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        before_connect: Callable[[], None] = lambda: None,
        problems: Problems | None = None,
    ) -> None:
        self.ws_url = ws_url
        self.problems = problems if problems is not None else Problems()
        self.on_frame = on_frame
        self.cursor_source = cursor_source
        self.before_connect = before_connect
        self.liveness_ttl_s = liveness_ttl_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.last_frame_at = time.monotonic()
        self.connected = False
        self._transport: WSTransport | None = None
        self._stopping = False
        self._rng = random.Random()
        self._disconnect_reason = "closed_by_relay"
        self._saw_frames = False
        self.error_frame_seen = False  # on the current connection
        self.attempt = 0  # consecutive failed attempts; the next backoff step
        self.unreachable_reported = False  # the plain-words outage line went out; reset on connect
        self.last_error = ""  # why the latest dial failed (for /healthz's relay_unreachable detail)
        self._disconnected_since: float | None = None  # monotonic; None while connected or before run()
        # Text frames: counted, logged once until a binary frame comes; a few with no binary
        # frame before them on a connection mean the endpoint is not a relay firehose.
        self.awaiting_binary = True  # no binary frame yet on this connection
        self._text_frames_on_connection = 0
        self._text_frame_logged = False
        self.not_a_firehose = False  # this connection was judged not a firehose

    async def run(self) -> None:
        """Connect, read until the connection ends, back off, repeat until stop()."""
        self.attempt = 0
        self._disconnected_since = time.monotonic()
        while not self._stopping:
            self.attempt += 1
            self.before_connect()
            url = url_with_cursor(self.ws_url, self.cursor_source())
            dial_failed = False
            try:
                await self._read_one_connection(url)
                # A connection that delivered frames (not an error, not text) was healthy: start over.
                if self._saw_frames and not self.error_frame_seen and not self.not_a_firehose:
                    self.attempt = 0
            except Exception as exc:  # noqa: BLE001 - any dial error (refused, DNS, handshake, timeout)
                dial_failed = True
                metrics.RELAY_CONNECTS.labels("error").inc()
                metrics.RELAY_DISCONNECTS.labels("dial_failed").inc()
                self.last_error = repr(exc)[:200]
                # Per attempt at debug: the outage itself is reported once, just below.
                log.debug("event=relay_connect_failed url=%s attempt=%d error=%r", url, self.attempt, exc)
                self._report_unreachable_once(url)
            if self._stopping:
                break
            delay = backoff_delay(max(self.attempt, 1), self.backoff_initial_s, self.backoff_max_s, self._rng)
            log.log(logging.DEBUG if dial_failed else logging.INFO,
                    "event=relay_reconnect attempt=%d delay_s=%.3f", self.attempt, delay)
            await asyncio.sleep(delay)

    def disconnected_for(self) -> float | None:
        """Seconds since the relay was last connected (or since run() began); None while connected."""
        if self._disconnected_since is None:
            return None
        return time.monotonic() - self._disconnected_since

    async def _read_one_connection(self, url: str) -> None:
        self._saw_frames = False
        self.error_frame_seen = False
        self.not_a_firehose = False
        self.awaiting_binary = True
        self._text_frames_on_connection = 0
        self._disconnect_reason = "closed_by_relay"
        transport, _ = await asyncio.wait_for(
            ws_connect(lambda: _RelayListener(self), url, max_frame_size=16 * 1024 * 1024),
            CONNECT_TIMEOUT_S)
        metrics.RELAY_CONNECTS.labels("ok").inc()
        metrics.RELAY_CONNECTED.set(1)
        self.connected = True
        self._disconnected_since = None
        self.unreachable_reported = False
        self._transport = transport
        self.last_frame_at = time.monotonic()
        log.info("event=relay_connected url=%s", url)
        watchdog = asyncio.ensure_future(self._liveness_watchdog(transport))
        start_frames_at = self.last_frame_at
        try:
            await transport.wait_disconnected()
        finally:
            watchdog.cancel()
            self.connected = False
            self._disconnected_since = time.monotonic()
            self._transport = None
            metrics.RELAY_CONNECTED.set(0)
            self._saw_frames = self.last_frame_at > start_frames_at
            metrics.RELAY_DISCONNECTS.labels(self._disconnect_reason).inc()
            log.info("event=relay_disconnected url=%s reason=%s", url, self._disconnect_reason)

    def _report_unreachable_once(self, url: str) -> None:
        """One plain-words line per outage (not per attempt): an operator starting the daemon
        offline should read that it is fine to wait, among the per-attempt warnings."""
        if self.unreachable_reported:
            return
        self.unreachable_reported = True
        log.warning('event=relay_unreachable url=%s retry_max_delay_s=%g error=%s msg="cannot reach the relay; '
                    'retrying with backoff until it answers (each attempt is logged at debug); '
                    'subscribers are still served from the log"',
                    url, self.backoff_max_s, self.last_error)

    def first_binary_frame(self) -> None:
        """This connection sends relay frames: a not-a-firehose verdict is over, text frames get a line again."""
        self.awaiting_binary = False
        self._text_frame_logged = False
        self.problems.clear("relay_not_a_firehose")

    def text_frame(self, transport: WSTransport, payload: bytes) -> None:
        """A relay sends no text frames: count each, log the first, and judge the endpoint after a few."""
        metrics.INGEST_DROPS.labels("text_frame").inc()
        if not self._text_frame_logged:
            self._text_frame_logged = True
            log.warning("event=relay_text_frame_ignored size=%d msg=\"a relay sends binary frames; further text "
                        "frames are counted in jetstream_ingest_drops_total{reason=text_frame}, not logged\"",
                        len(payload))
        self._text_frames_on_connection += 1
        if (self.awaiting_binary and not self.not_a_firehose
                and self._text_frames_on_connection >= TEXT_FRAMES_TO_DECIDE):
            self._declare_not_a_firehose(transport, payload)

    def _declare_not_a_firehose(self, transport: WSTransport, payload: bytes) -> None:
        """One error line (the health one), /healthz degraded, and back off rather than read on."""
        self.not_a_firehose = True
        what = ("it sends JSON events like a Jetstream /subscribe stream" if looks_like_jetstream(payload)
                else "it sends text frames, not the binary DAG-CBOR frames of a relay")
        self.problems.raise_problem(
            "relay_not_a_firehose",
            f"--ws-url {self.ws_url} is not a relay firehose: {what}; nothing is ingested",
            "point --ws-url at a relay's com.atproto.sync.subscribeRepos URL "
            "(e.g. wss://bsky.network/xrpc/com.atproto.sync.subscribeRepos) and restart")
        self._disconnect_reason = "not_a_firehose"
        transport.disconnect(graceful=False)

    async def _liveness_watchdog(self, transport: WSTransport) -> None:
        period = max(0.05, self.liveness_ttl_s / 4)
        while True:
            await asyncio.sleep(period)
            idle = time.monotonic() - self.last_frame_at
            if idle > self.liveness_ttl_s:
                log.warning("event=relay_liveness_expired idle_s=%.1f ttl_s=%.1f", idle, self.liveness_ttl_s)
                self._disconnect_reason = "liveness"
                transport.disconnect(graceful=False)
                return

    def reconnect(self, reason: str = "requested") -> None:
        """Drop the current connection; run() reconnects from cursor_source()."""
        if self._transport is not None:
            self._disconnect_reason = reason
            self._transport.disconnect(graceful=False)

    def stop(self) -> None:
        self._stopping = True
        self.reconnect("stopping")
