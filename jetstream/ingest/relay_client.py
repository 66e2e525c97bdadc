"""The websocket connection to the relay.

Owns: connecting to `--ws-url` with the right `cursor`, handing every binary frame
to the pipeline, reconnecting with capped exponential backoff and jitter, and
declaring a silent relay dead after `--liveness-ttl` (v1 exited the process instead;
we reconnect in-process so subscribers stay connected).
It must never decode or store frames: that is the pipeline's job.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Callable
from urllib.parse import urlsplit, urlunsplit

from picows import WSListener, WSMsgType, WSTransport, ws_connect

from jetstream import metrics

log = logging.getLogger(__name__)


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

    def on_ws_frame(self, transport: WSTransport, frame) -> None:
        self.client.last_frame_at = time.monotonic()
        if frame.msg_type == WSMsgType.BINARY:
            self.client.on_frame(frame.get_payload_as_bytes())
        elif frame.msg_type == WSMsgType.CLOSE:
            transport.disconnect()
        elif frame.msg_type == WSMsgType.TEXT:
            metrics.INGEST_DROPS.labels("text_frame").inc()
            log.warning("event=relay_text_frame_ignored size=%d", frame.payload_size)


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
    ) -> None:
        self.ws_url = ws_url
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

    async def run(self) -> None:
        """Connect, read until the connection ends, back off, repeat until stop()."""
        attempt = 0
        while not self._stopping:
            attempt += 1
            self.before_connect()
            url = url_with_cursor(self.ws_url, self.cursor_source())
            try:
                await self._read_one_connection(url)
                attempt = 0 if self._saw_frames else attempt
            except (OSError, asyncio.TimeoutError, Exception) as exc:  # noqa: BLE001 - any dial error
                metrics.RELAY_CONNECTS.labels("error").inc()
                log.warning("event=relay_connect_failed url=%s attempt=%d error=%r", url, attempt, exc)
            if self._stopping:
                break
            delay = backoff_delay(max(attempt, 1), self.backoff_initial_s, self.backoff_max_s, self._rng)
            log.info("event=relay_reconnect attempt=%d delay_s=%.2f", attempt, delay)
            await asyncio.sleep(delay)

    async def _read_one_connection(self, url: str) -> None:
        self._saw_frames = False
        transport, _ = await ws_connect(lambda: _RelayListener(self), url, max_frame_size=16 * 1024 * 1024)
        metrics.RELAY_CONNECTS.labels("ok").inc()
        metrics.RELAY_CONNECTED.set(1)
        self.connected = True
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
            self._transport = None
            metrics.RELAY_CONNECTED.set(0)
            self._saw_frames = self.last_frame_at > start_frames_at
            log.info("event=relay_disconnected url=%s", url)

    async def _liveness_watchdog(self, transport: WSTransport) -> None:
        period = max(0.05, self.liveness_ttl_s / 4)
        while True:
            await asyncio.sleep(period)
            idle = time.monotonic() - self.last_frame_at
            if idle > self.liveness_ttl_s:
                log.warning("event=relay_liveness_expired idle_s=%.1f ttl_s=%.1f", idle, self.liveness_ttl_s)
                transport.disconnect(graceful=False)
                return

    def reconnect(self) -> None:
        """Drop the current connection; run() reconnects from cursor_source()."""
        if self._transport is not None:
            self._transport.disconnect(graceful=False)

    def stop(self) -> None:
        self._stopping = True
        self.reconnect()
