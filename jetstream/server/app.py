"""The public listener: `/`, `/subscribe`, `/healthz`, `/zstd-dictionary`, and the set of subscribers.

Owns: the picows server (with the socket peer known at routing time), request routing
to HTTP answers or a SubscriberListener, the client IP rule, the per-IP connection cap,
the registry of connected subscribers (for shutdown, counts and metrics), the set of
readers that are caught up and waiting (woken by notify_new_events) or, with the live
fast path on, the live fan-out they join instead (server/live.py), the rate limiters,
the requireHello deadline, and plain counters of refused requests and server-initiated
disconnects by reason (server/metrics.py turns them into Prometheus families).
It must never read or filter events for a subscriber (subscriber.py's reader does), and
never hold events for a subscriber: waiting readers hold only their position.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Callable

from picows import WSCloseCode, WSUpgradeRequest

from jetstream.compression import EventCompressor
from jetstream.instance import INSTANCE_HEADER, instance_id_of
from jetstream.server import http, params, status_page, wires
from jetstream.server.file_send import FileSender
from jetstream.server.front import FrontDoor
from jetstream.server.live import LiveFastPath
from jetstream.server.picows_adapter import PeerAwareProtocol, close_sent_by_picows, server_protocol
from jetstream.server.ratelimit import RateLimiterRegistry
from jetstream.server.request_head import HeadBudget
from jetstream.server.settings import ServerSettings
from jetstream.server.subscriber import SubscriberListener
from jetstream.server.wire_v2_request import CURSOR_TOO_OLD, Refusal, Retention, service_unavailable

log = logging.getLogger(__name__)

SHUTDOWN_REASON = "server shutting down"
OTHER_IPS_LABEL = "other"
READ_BUFFER_INIT_SIZE = 1024


def _now_us() -> int:
    return time.time_ns() // 1000


def hello_timeout_reason(timeout_s: float) -> str:
    return f"no options_update received within {timeout_s:g}s of connecting with requireHello=true"


class SubscribeServer:
    """Serves Jetstream v1's public HTTP/websocket surface from an EventLog and a LiveRing."""

    def __init__(self, event_log, ring, settings: ServerSettings = ServerSettings(), *,
                 health: Callable[[], tuple[bool, dict]] | None = None, clock_us=_now_us) -> None:
        self.event_log = event_log
        self.ring = ring
        self.settings = settings
        self.rate_limiters = RateLimiterRegistry(settings.max_sub_rate, per_ip=settings.per_ip_limit)
        self.pending_heads = HeadBudget(settings.max_pending_request_bytes)
        self._zstd_dictionary_id = settings.zstd_dictionary_id
        self._v2_dictionary_id = settings.v2_zstd_dictionary_id
        # v2 frames not taken from the ring (replay from the log, #info and error frames) are
        # compressed here, with the v2 dictionary, for zstdDictionary=<id> connections.
        self.compress_v2 = EventCompressor(None, settings.v2_zstd_dictionary).compress_v2
        # v1 events rendered from the archive, compressed as ingest compresses them for the log's zstd rows.
        self.compress_v1 = EventCompressor(settings.zstd_dictionary or None).compress
        if ring.compress_v2 is None:
            # The ring makes an event's v2 zstd form on its first compressed v2 read (ingest does
            # not make it), with the dictionary this server advertises.
            ring.compress_v2 = self.compress_v2
        self._health = health
        self._clock_us = clock_us
        self._subscribers: set[SubscriberListener] = set()
        self._waiting: set[SubscriberListener] = set()
        # Caught-up readers served by one C pass per batch (--live-fastpath, --live-coalesce-ms).
        self.live = LiveFastPath(ring, settings.live_fastpath, settings.live_coalesce_s)
        self._connections_by_ip: collections.Counter[str] = collections.Counter()
        self._hello_deadlines: dict[SubscriberListener, asyncio.TimerHandle] = {}
        self._server: asyncio.AbstractServer | None = None
        self.port = 0
        self.refused_requests: collections.Counter[str] = collections.Counter()
        self.disconnects: collections.Counter[str] = collections.Counter()
        self.options_updates = 0
        # History on the live wire (issue 24): archive steps taken and events sent from sealed segments, by wire.
        self.history_steps: collections.Counter[str] = collections.Counter()
        self.history_events_sent: collections.Counter[str] = collections.Counter()
        # v1's emitted counters, advanced in notify_new_events from the ring itself.
        self.events_emitted = 0
        self.bytes_emitted = 0
        self._emitted_up_to = ring.newest_time_us
        # Deliveries of subscribers that have gone, per IP: [events, bytes], least recently
        # gone first; past max_ip_metric_labels the oldest fold into OTHER_IPS_LABEL.
        self._delivered_gone: dict[str, list[int]] = {}
        self._delivered_other = [0, 0]
        # Cluster mode: holds a subscriber whose cursor is ahead of this node's log until the node
        # has caught up (jetstream/cluster/node.py: hold / cursor_reached). None: single node.
        self.cursor_gate = None
        # Issue 15: the stream's identity (healthz, the 101's Jetstream-Instance header) and
        # the per-collection counters ingest keeps (the daemon sets them; None: no route data).
        self.instance_id = instance_id_of(event_log)
        self.collection_stats = None
        # Issue 24: the sealed archive's XRPC endpoints (jetstream/archive/xrpc.py ArchiveService),
        # answered by the front door; None: --archive=false (the paths are unknown routes).
        self.archive = None
        self._history = None  # server/history.py's ArchiveHistory over `archive`, made at first use
        # Sends the archive's file ranges by sendfile in a few threads (made at the first download).
        self.file_sender = FileSender(self.settings.archive_send_threads, self.settings.archive_send_timeout_s)
        # Where a reader that met a damaged log reports it (jetstream/log/damage.py's DamageReport, or
        # a worker's message to its main process); None: logged here only.
        self.on_log_damage: Callable[[dict], None] | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, host: str, port: int, sock=None) -> None:
        """Listen on host:port, or on `sock`, a listening socket handed over (a --workers worker's)."""
        # The event loop's own transport, not aiofastnet's (which picows' ws_create_server would
        # pick): same fan-out CPU per event in bench/suite.py, ~5 KiB less per idle connection.
        if sock is not None:
            self._server = await asyncio.get_running_loop().create_server(self._new_front_door, sock=sock)
        else:
            self._server = await asyncio.get_running_loop().create_server(self._new_front_door, host=host, port=port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("event=subscribe_server_listening host=%s port=%d", host, self.port)

    def _new_front_door(self) -> FrontDoor:
        archive = self.archive
        local = (archive.routes, archive.answer, self.file_sender) if archive is not None else (None, None, None)
        return FrontDoor(self._new_protocol, self.settings.max_request_bytes, self.settings.handshake_timeout_s,
                         self.pending_heads, self._count_front_door_answer, *local,
                         count_disconnect=self.count_disconnect,
                         hold_until=self._archive_listed if archive is not None else None)

    def _archive_listed(self, target: bytes) -> asyncio.Future | None:
        """Start-up: a subscribeEvents request with a cursor waits for the archive's first listing (the
        front door holds it at most --handshake-timeout), so its cursor is judged against the archive
        rather than refused CursorTooOld by an empty manifest. None: hand it over now."""
        history = self.history
        if history is None or history.ready:
            return None
        path, raw_query = http.split_target(target)
        if http.route_of(path) is not http.Route.SUBSCRIBE_EVENTS or b"cursor=" not in raw_query:
            return None
        return history.first_listing()

    def _count_front_door_answer(self, reason: str) -> None:
        self.refused_requests[reason] += 1

    def _new_protocol(self, full_target: bytes | None = None) -> PeerAwareProtocol:
        """picows' protocol for one connection, routed by _route.

        Pings go out only after ping_interval_s without anything from the client. A
        subscriber that is busy draining our stream proves it is alive through
        resume_writing (see SubscriberListener), so no ping has to race megabytes of events.
        """
        settings = self.settings
        protocol: PeerAwareProtocol | None = None

        def route(request: WSUpgradeRequest):
            return self._route(request, protocol.full_target or request.path, protocol.peer_ip)

        protocol = server_protocol(
            route, logger_name="server.subscribe", handshake_timeout_s=settings.handshake_timeout_s,
            ping_interval_s=settings.ping_interval_s, pong_timeout_s=settings.effective_pong_timeout_s,
            max_frame_size=settings.max_client_message_bytes, read_buffer_init_size=READ_BUFFER_INIT_SIZE)
        protocol.full_target = full_target
        return protocol

    async def close(self, reason: str = SHUTDOWN_REASON, grace_s: float = 1.0) -> None:
        """Close every subscriber with 1001 and `reason`, then stop listening.

        A peer that does not read cannot receive its close frame (it sits behind the
        events already buffered for it); after `grace_s` such connections are aborted.
        """
        if self._server is not None:
            self._server.close()  # stop accepting first, so nobody joins during shutdown
        for subscriber in list(self._subscribers):
            self.count_disconnect("shutdown")
            subscriber.shut_down(reason)
        self._waiting.clear()
        self.live.close()
        if self._history is not None:
            self._history.close()
        self.file_sender.close()  # downloads in flight are aborted; their threads end within a poll slice
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

    @property
    def is_listening(self) -> bool:
        return self._server is not None and self._server.is_serving()

    # --- what the daemon calls ---------------------------------------------------------------

    def notify_new_events(self) -> None:
        """New events are in the ring: count them once, let every caught-up reader take a step."""
        self._count_emitted()
        self.live.on_new_events()
        if not self._waiting:
            return
        waiting, self._waiting = self._waiting, set()
        for subscriber in waiting:
            subscriber.wake()

    def _count_emitted(self) -> None:
        ring = self.ring
        position = self._emitted_up_to
        while position < ring.newest_time_us:
            if not ring.covers(position):
                position = ring.floor_time_us  # evicted before we looked: cannot happen at sane capacities
                continue
            payloads, position = ring.read_after(position, None, False, 1 << 30, 1 << 62)
            self.events_emitted += len(payloads)
            self.bytes_emitted += sum(map(len, payloads))
        self._emitted_up_to = position

    @property
    def connected_count(self) -> int:
        return len(self._subscribers)

    @property
    def subscribers(self) -> frozenset[SubscriberListener]:
        return frozenset(self._subscribers)

    def connected_by_ip(self) -> dict[str, int]:
        return dict(self._connections_by_ip)

    def delivered_by_ip(self) -> dict[str, tuple[int, int]]:
        """(events, bytes) sent per client IP since start, connected or gone."""
        totals = {ip: list(counts) for ip, counts in list(self._delivered_gone.items())}
        if self._delivered_other[0] or self._delivered_other[1]:
            totals[OTHER_IPS_LABEL] = list(self._delivered_other)
        for subscriber in list(self._subscribers):  # list(): scrapes run on the metrics thread
            counts = totals.setdefault(subscriber.client_ip, [0, 0])
            counts[0] += subscriber.sent_events
            counts[1] += subscriber.sent_bytes
        return {ip: (counts[0], counts[1]) for ip, counts in totals.items()}

    # --- what subscribers call ---------------------------------------------------------------

    def register(self, subscriber: SubscriberListener) -> None:
        self._subscribers.add(subscriber)
        self._connections_by_ip[subscriber.client_ip] += 1
        hello_timeout_s = self.settings.hello_timeout_s
        if subscriber.awaiting_hello and hello_timeout_s > 0:
            self._hello_deadlines[subscriber] = asyncio.get_running_loop().call_later(
                hello_timeout_s, self._hello_deadline_passed, subscriber)

    def unregister(self, subscriber: SubscriberListener) -> None:
        if subscriber not in self._subscribers:
            return
        self._subscribers.discard(subscriber)
        self._waiting.discard(subscriber)
        deadline = self._hello_deadlines.pop(subscriber, None)
        if deadline is not None:
            deadline.cancel()
        ip = subscriber.client_ip
        self._connections_by_ip[ip] -= 1
        if self._connections_by_ip[ip] <= 0:
            del self._connections_by_ip[ip]
        self._remember_gone(ip, subscriber.sent_events, subscriber.sent_bytes)
        self._count_picows_close(subscriber)

    def _remember_gone(self, ip: str, events: int, sent_bytes: int) -> None:
        """Keep a gone client's delivery totals under its IP, within the label budget.

        v1 kept a series per IP forever, so every distinct client address grew the
        scrape and the heap; here the least recently gone IPs beyond the budget are
        summed into one `other` series (the per-family totals stay exact).
        """
        gone = self._delivered_gone.pop(ip, None) or [0, 0]
        gone[0] += events
        gone[1] += sent_bytes
        self._delivered_gone[ip] = gone  # most recently gone last
        while 0 < self.settings.max_ip_metric_labels < len(self._delivered_gone):
            oldest = self._delivered_gone.pop(next(iter(self._delivered_gone)))
            self._delivered_other[0] += oldest[0]
            self._delivered_other[1] += oldest[1]

    def wait_for_events(self, subscriber: SubscriberListener) -> None:
        """A caught-up reader: into the live fan-out when it is on, else the waiting set."""
        slot = subscriber.live_slot
        if slot is None or not self.live.join(slot):
            self._waiting.add(subscriber)

    def report_log_damage(self, damage: dict) -> None:
        """A reader met data the log cannot read back (LogCorruption.describe())."""
        if self.on_log_damage is not None:
            self.on_log_damage(damage)
        else:
            log.error("event=log_corruption %s", " ".join(f"{key}={value}" for key, value in damage.items()))

    def count_disconnect(self, reason: str) -> None:
        self.disconnects[reason] += 1

    def _count_picows_close(self, subscriber: SubscriberListener) -> None:
        """Closes picows sends on its own (no pong, oversize client frame) are ours too: count them."""
        reason = close_sent_by_picows(subscriber.transport)
        if reason is not None:
            self.count_disconnect(reason)

    def _hello_deadline_passed(self, subscriber: SubscriberListener) -> None:
        self._hello_deadlines.pop(subscriber, None)
        if subscriber in self._subscribers and subscriber.awaiting_hello:
            self.count_disconnect("hello_timeout")
            log.info("event=subscriber_closed reason=hello_timeout ip=%s", subscriber.client_ip)
            subscriber.close(WSCloseCode.POLICY_VIOLATION, hello_timeout_reason(self.settings.hello_timeout_s))

    # --- routing -----------------------------------------------------------------------------

    def _route(self, request: WSUpgradeRequest, target: bytes, peer_ip: str):
        path, raw_query = http.split_target(target)
        route = http.route_of(path)
        headers = request.headers
        if route is http.Route.SUBSCRIBE:
            return self._subscribe(raw_query, headers, peer_ip)
        if route is http.Route.SUBSCRIBE_EVENTS:
            return self._subscribe_events(raw_query, headers, peer_ip)
        if route is http.Route.GET_ZSTD_DICTIONARY:
            return http.v2_zstd_dictionary_response(self.settings.v2_zstd_dictionary, self._v2_dictionary_id,
                                                    raw_query, headers)
        if route is http.Route.WELCOME:
            return http.welcome_response(headers)
        if route is http.Route.HEALTHZ:
            ready, report = self.health_report()
            return http.healthz_response(ready, report, headers)
        if route is http.Route.ZSTD_DICTIONARY:
            return http.zstd_dictionary_response(self.settings.zstd_dictionary, self._zstd_dictionary_id, headers)
        if route is http.Route.STATS_COLLECTIONS:
            return http.json_response(status_page.collection_stats_report(self.collection_stats), headers)
        if route is http.Route.STATUS:
            return http.html_response(status_page.page_bytes(), headers)
        return http.not_found_response(headers)

    def health_report(self) -> tuple[bool, dict]:
        """(ready, report): the daemon's view when it gave one, else the server's own."""
        ready, report = self._health() if self._health is not None else (True, {})
        report = dict(report, listening=self.is_listening, subscribers=self.connected_count,
                      instance=self.instance_id, **self._retention_range(), gaps=self._recorded_gaps())
        return ready and self.is_listening, report

    def _recorded_gaps(self) -> list[dict]:
        """Ranges `jetstream repair` dropped (known to the operator, so they do not degrade health)."""
        gaps = getattr(self.event_log, "gaps", None)
        return gaps() if gaps is not None else []

    def _retention_range(self) -> dict:
        """The oldest and newest time_us and seq a cursor can replay from (None while the log is empty)."""
        try:
            oldest = self.event_log.oldest_time_us()
            oldest_seq = self.event_log.oldest_seq()
        except Exception:  # noqa: BLE001 - a closed or failed log: health still answers
            oldest = oldest_seq = None
        held = oldest is not None
        return {"oldest_time_us": oldest, "newest_time_us": self.ring.newest_time_us if held else None,
                "oldest_seq": oldest_seq, "newest_seq": self._newest_seq() if held else None}

    def _newest_seq(self) -> int:
        """The ring's newest event's (a worker's ring runs ahead of its log view), else the log's."""
        held = len(self.ring)
        return max(self.ring.seq_at(held - 1) if held else 0, self.event_log.newest_seq())

    def newest_seq(self) -> int:
        return self._newest_seq()

    @property
    def history(self):
        """The archive as the readers' third source (server/history.py); None with --archive=false."""
        if self._history is None and self.archive is not None:
            from jetstream.server.history import ArchiveHistory

            self._history = ArchiveHistory(self.archive, self.settings.archive_replay_concurrency,
                                           self.settings.archive_replay_lookback_s)
        return self._history

    def history_counters(self) -> dict:
        """What /metrics shows of history replay (server/metrics.py HISTORY_METRICS), as plain values."""
        history = self._history
        return {"history_blocks_read": history.blocks_read if history is not None else 0,
                "history_blocks_skipped": history.blocks_skipped if history is not None else 0,
                "history_reads_in_flight": history.reads_in_flight if history is not None else 0,
                "history_steps": dict(self.history_steps), "history_events_sent": dict(self.history_events_sent)}

    def v2_retention(self) -> Retention:
        """What a v2 cursor can replay here: from the oldest event stored with a v2 record, or the archive's
        oldest within --archive-replay-lookback when that is older."""
        newest_seq = self._newest_seq()
        oldest = self.event_log.v2_oldest()
        history = self.history
        archived = history.floor(self._clock_us()) if history is not None else None
        if archived is not None and (oldest is None or archived[0] < oldest[1]):
            floor_seq, oldest_time_us = archived
            return Retention(floor_seq, newest_seq, oldest_time_us)
        if oldest is None:
            return Retention(newest_seq + 1, newest_seq, None)
        oldest_time_us, floor_seq = oldest
        return Retention(floor_seq, newest_seq, oldest_time_us)

    def time_us_of_seq(self, seq: int) -> int | None:
        """time_us of the first event with seq >= `seq`: the ring's when it holds it, else the log's."""
        ring = self.ring
        low, high = 0, len(ring)
        if high and ring.seq_at(0) <= seq <= ring.seq_at(high - 1):
            while low < high:
                middle = (low + high) // 2
                if ring.seq_at(middle) >= seq:
                    high = middle
                else:
                    low = middle + 1
            return ring.time_us_at(low)
        return self.event_log.time_us_of_seq(seq)

    def _subscribe(self, raw_query: bytes, headers, peer_ip: str):
        try:
            options = params.parse_subscribe_query(raw_query, headers.get("Socket-Encoding", ""), self._clock_us())
        except params.BadRequest as exc:
            self.refused_requests["invalid_options"] += 1
            log.info("event=subscribe_refused reason=%r", exc.text)
            return http.bad_request_response(params.text_to_wire(exc.text), headers)
        return self._upgrade(wires.V1Wire(options), headers, peer_ip, [])

    def _subscribe_events(self, raw_query: bytes, headers, peer_ip: str):
        """`GET /xrpc/network.bsky.jetstream.subscribeEvents`: the v2 wire (wires.negotiate_v2 decides)."""
        try:
            retention = self.v2_retention()
        except Exception as exc:  # noqa: BLE001 - a damaged or closed log: refuse this one request
            log.warning("event=subscribe_refused wire=v2 reason=retention_unreadable error=%r", exc)
            retention, not_ready = None, "event log unreadable"
        else:
            not_ready = None
        wire = wires.negotiate_v2(raw_query, headers.get("Socket-Encoding", ""),
                                  http.header_values(headers, "Sec-WebSocket-Protocol"),
                                  current_dictionary_id=self._v2_dictionary_id,
                                  retention=retention or Retention(1, 0, None), now_us=self._clock_us(),
                                  not_ready=not_ready)
        if self._archive_unlisted_for(wire):
            # The front door held it for the first listing, which has not finished (or failed): the cursor
            # may lie in the archive, so no CursorTooOld and no clamp to the log; 503, try again shortly.
            wire = service_unavailable("archive manifest warming up")
        if isinstance(wire, Refusal):
            self.refused_requests["invalid_options" if wire.status == 400 else "not_ready"] += 1
            log.info("event=subscribe_refused wire=v2 status=%d error=%s body=%r", wire.status, wire.error,
                     wire.body[:200])
            return http.xrpc_refusal_response(wire, headers)
        return self._upgrade(wire, headers, peer_ip, wires.upgrade_headers(wire))

    def _archive_unlisted_for(self, wire) -> bool:
        """Whether negotiating `wire` judged its cursor below the log while the archive is not listed yet."""
        history = self.history
        if history is None or history.ready:
            return False
        if isinstance(wire, Refusal):
            return wire.error == CURSOR_TOO_OLD
        return bool(wire.plan.first_frames)  # a time cursor clamped to the log's floor (#info OutdatedCursor)

    def _upgrade(self, wire, headers, peer_ip: str, extra_headers: list[tuple[str, str]]):
        """Both wires, once their own parameters passed: a websocket handshake, the per-IP cap, the 101."""
        if not http.is_websocket_handshake(headers):
            self.refused_requests["not_websocket"] += 1
            return http.handshake_error_response(headers)
        ip = http.client_ip(headers, peer_ip, self.settings.trust_proxy_headers)
        max_conns = self.settings.max_conns_per_ip
        if 0 < max_conns <= self._connections_by_ip.get(ip, 0):
            self.refused_requests["too_many_connections"] += 1
            log.info("event=subscribe_refused%s reason=too_many_connections ip=%s limit=%d",
                     "" if isinstance(wire, wires.V1Wire) else " wire=v2", ip, max_conns)
            return http.too_many_connections_response(ip, max_conns, headers)
        listener = SubscriberListener(self, wire)
        listener.client_ip = ip
        return http.upgrade_response(listener, [(INSTANCE_HEADER, self.instance_id)] + extra_headers)
