"""The `jetstream serve` process: wires ingest, log, ring and server together.

Owns: start-up order (log open -> server bound -> relay connected), the TTL trim
timer, and graceful shutdown (stop the relay, write the pending batch, close every
subscriber with 1001, close RocksDB). It must never hold event data itself.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import time

from jetstream.compression import EventCompressor
from jetstream.config import Config, parse_listen_addr
from jetstream.core import LiveRing
from jetstream.ingest.pipeline import IngestPipeline
from jetstream.ingest.relay_client import RelayClient
from jetstream.ingest.sequencer import Sequencer
from jetstream.log.store import EventLog
from jetstream.metrics import start_metrics_listener
from jetstream.server.app import SubscribeServer

log = logging.getLogger(__name__)


class Daemon:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.event_log: EventLog | None = None
        self.server: SubscribeServer | None = None
        self.relay: RelayClient | None = None
        self.pipeline: IngestPipeline | None = None
        self._tasks: list[asyncio.Task] = []
        self._stopped = asyncio.Event()

    async def start(self, *, connect_relay: bool = True) -> None:
        """Open the log, bind the listeners, then (unless told not to) connect the relay."""
        cfg = self.cfg
        self.event_log = EventLog(cfg.data_dir, fsync=cfg.fsync)
        hwm = self.event_log.hwm()
        ring = LiveRing(cfg.ring_capacity, floor_time_us=hwm)
        compressor = (
            EventCompressor.from_path(cfg.zstd_dictionary_path) if cfg.zstd_dictionary_path else EventCompressor()
        )
        self.server = SubscribeServer(self.event_log, ring, max_sub_rate=cfg.max_sub_rate)
        host, port = parse_listen_addr(cfg.listen_addr)
        await self.server.start(host, port)
        self.pipeline = IngestPipeline(
            self.event_log, ring, Sequencer(hwm), compressor, self.server.notify_new_events,
            socket_url=cfg.ws_url, group_commit_s=cfg.group_commit_ms / 1000.0,
            on_write_failure=lambda: self.relay and self.relay.reconnect(),
        )
        if cfg.override_relay_cursor >= 0:
            log.info("event=relay_cursor_overridden stored=%s override=%d",
                     self.pipeline.last_accepted_seq, cfg.override_relay_cursor)
            self.pipeline.last_accepted_seq = cfg.override_relay_cursor
        self.relay = RelayClient(
            cfg.ws_url, self.pipeline.submit, lambda: self.pipeline.last_accepted_seq,
            liveness_ttl_s=cfg.liveness_ttl, before_connect=self.pipeline.flush,
        )
        if cfg.metrics_listen_addr:
            start_metrics_listener(cfg.metrics_listen_addr)
        self._tasks = [asyncio.ensure_future(self._trim_forever())]
        if connect_relay:
            self.connect_relay()
        log.info("event=daemon_started listen=%s:%d data_dir=%s relay=%s relay_cursor=%s hwm=%d",
                 host, self.server.port, cfg.data_dir, cfg.ws_url, self.pipeline.last_accepted_seq, hwm)

    def connect_relay(self) -> None:
        """Start reading the relay (tests call this after their subscribers are connected)."""
        self._tasks.append(asyncio.ensure_future(self.relay.run()))

    @property
    def port(self) -> int:
        return self.server.port

    async def _trim_forever(self) -> None:
        period = max(1.0, min(self.cfg.liveness_ttl, self.cfg.event_ttl))
        while True:
            await asyncio.sleep(period)
            cutoff_us = int((time.time() - self.cfg.event_ttl) * 1_000_000)
            try:
                self.event_log.trim_older_than(cutoff_us)
            except Exception as exc:  # noqa: BLE001 - trimming must never stop the daemon
                log.error("event=ttl_trim_failed error=%r", exc)

    async def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        log.info("event=daemon_stopping")
        if self.relay is not None:
            self.relay.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.pipeline is not None:
            self.pipeline.flush()
        if self.server is not None:
            await self.server.close("server shutting down")
        if self.event_log is not None:
            self.event_log.close()
        log.info("event=daemon_stopped")

    async def run_until_signalled(self) -> None:
        """Serve until SIGTERM/SIGINT; a second signal exits at once."""
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()

        def on_signal(signum: int) -> None:
            if stop_requested.is_set():
                log.error("event=forced_exit signal=%d", signum)
                raise SystemExit(1)
            log.info("event=signal_received signal=%d", signum)
            stop_requested.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        await self.start()
        await stop_requested.wait()
        try:
            await asyncio.wait_for(self.stop(), timeout=15)
        except asyncio.TimeoutError:
            log.error("event=shutdown_timeout")
