"""The public listener: `/`, `/subscribe`, and the set of connected subscribers.

Owns: the picows server, request routing to HTTP answers or a SubscriberListener,
the registry of connected subscribers (for shutdown and counts), the set of readers
that are caught up and waiting (woken by notify_new_events), the per-IP rate limiters,
and counters of refused requests and server-initiated disconnects by reason.
It must never read or filter events itself (subscriber.py's reader does), and never
hold events for a subscriber: waiting readers hold only their position.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time

from picows import WSAutoPingStrategy, WSCloseCode, WSUpgradeRequest, ws_create_server

from jetstream.server import http, params
from jetstream.server.ratelimit import RateLimiterRegistry
from jetstream.server.subscriber import SubscriberListener

log = logging.getLogger(__name__)

SHUTDOWN_REASON = "server shutting down"
PING_INTERVAL_S = 30.0  # v1 (since f4da85b) pings every 30 s
# v1 inbound frames up to 10,000,000 bytes are read and ignored; picows would close on
# anything above max_frame_size, so keep its limit above v1's.
MAX_FRAME_SIZE = 16 * 1024 * 1024


def _now_us() -> int:
    return time.time_ns() // 1000


class SubscribeServer:
    """Serves Jetstream v1's public HTTP/websocket surface from an EventLog and a LiveRing."""

    def __init__(self, event_log, ring, *, max_sub_rate: float = 5000.0,
                 ping_interval_s: float = PING_INTERVAL_S, clock_us=_now_us) -> None:
        self.event_log = event_log
        self.ring = ring
        self.rate_limiters = RateLimiterRegistry(max_sub_rate)
        self._ping_interval_s = ping_interval_s
        self._clock_us = clock_us
        self._subscribers: set[SubscriberListener] = set()
        self._waiting: set[SubscriberListener] = set()
        self._server: asyncio.AbstractServer | None = None
        self.port = 0
        self.refused_requests: collections.Counter[str] = collections.Counter()
        self.disconnects: collections.Counter[str] = collections.Counter()
        self.options_updates = 0

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> None:
        ping = self._ping_interval_s > 0
        self._server = await ws_create_server(
            self._route, host, port,
            enable_auto_ping=ping,
            auto_ping_idle_timeout=self._ping_interval_s if ping else 20,
            auto_ping_reply_timeout=self._ping_interval_s if ping else 20,
            auto_ping_strategy=WSAutoPingStrategy.PING_PERIODICALLY,
            max_frame_size=MAX_FRAME_SIZE,
            logger_name="server.subscribe",
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("event=subscribe_server_listening host=%s port=%d", host, self.port)

    async def close(self, reason: str = SHUTDOWN_REASON, grace_s: float = 1.0) -> None:
        """Close every subscriber with 1001 and `reason`, then stop listening.

        A peer that does not read cannot receive its close frame (it sits behind the
        events already buffered for it); after `grace_s` such connections are aborted.
        """
        if self._server is not None:
            self._server.close()  # stop accepting first, so nobody joins during shutdown
        for subscriber in list(self._subscribers):
            self.count_disconnect("shutdown")
            subscriber.close(WSCloseCode.GOING_AWAY, reason)
        self._waiting.clear()
        deadline = asyncio.get_running_loop().time() + grace_s
        while self._subscribers and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        for subscriber in list(self._subscribers):
            log.warning("event=subscriber_aborted reason=close_not_drained ip=%s", subscriber.client_ip)
            subscriber.abort()
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), timeout=5)
            except asyncio.TimeoutError:
                log.warning("event=subscribe_server_close_timeout subscribers=%d", len(self._subscribers))
            self._server = None

    # --- what the daemon calls ---------------------------------------------------------------

    def notify_new_events(self) -> None:
        """New events are in the ring: let every caught-up reader take a step."""
        if not self._waiting:
            return
        waiting, self._waiting = self._waiting, set()
        for subscriber in waiting:
            subscriber.wake()

    @property
    def connected_count(self) -> int:
        return len(self._subscribers)

    @property
    def subscribers(self) -> frozenset[SubscriberListener]:
        return frozenset(self._subscribers)

    # --- what subscribers call ---------------------------------------------------------------

    def register(self, subscriber: SubscriberListener) -> None:
        self._subscribers.add(subscriber)

    def unregister(self, subscriber: SubscriberListener) -> None:
        self._subscribers.discard(subscriber)
        self._waiting.discard(subscriber)

    def wait_for_events(self, subscriber: SubscriberListener) -> None:
        self._waiting.add(subscriber)

    def count_disconnect(self, reason: str) -> None:
        self.disconnects[reason] += 1

    # --- routing -----------------------------------------------------------------------------

    def _route(self, request: WSUpgradeRequest):
        path, raw_query = http.split_target(request.path)
        route = http.route_of(path)
        if route is http.Route.WELCOME:
            return http.welcome_response(request.headers)
        if route is http.Route.NOT_FOUND:
            return http.not_found_response(request.headers)
        return self._subscribe(raw_query, request.headers)

    def _subscribe(self, raw_query: bytes, headers):
        try:
            options = params.parse_subscribe_query(raw_query, headers.get("Socket-Encoding", ""), self._clock_us())
        except params.BadRequest as exc:
            self.refused_requests["invalid_options"] += 1
            log.info("event=subscribe_refused reason=%r", exc.text)
            return http.bad_request_response(params.text_to_wire(exc.text), headers)
        if not http.is_websocket_handshake(headers):
            self.refused_requests["not_websocket"] += 1
            return http.handshake_error_response(headers)
        return SubscriberListener(self, options)
