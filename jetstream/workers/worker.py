"""One --workers worker process: serves /subscribe, /, /healthz and /zstd-dictionary.

Owns: the worker's SubscribeServer on the listening socket the main process handed it, its
read-only view of the log (secondary.SecondaryEventLog), its LiveRing and the feed into it
(the rows the main process sends after each durable batch; the log after a missed batch, at
a poll, or when the main process asks), the TTL
drop of its ring, its /healthz report (the main process's status plus its own), and pushing its
server counters to the main process for the one /metrics. On SIGTERM, or when the main process
goes away, it closes every subscriber with 1001, sends its last counters and exits 0; a main
process gone (killed) is one `worker_main_gone` line, at any moment, never a traceback. SIGHUP is
logged and the worker carries on.
It must never write to the log, talk to the relay, or notify systemd (the main process does).
Started by supervisor.py as `python -m jetstream.workers.worker --index I --listen-fd L --channel-fd C`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import signal
import socket
import tempfile
import time

from jetstream import __version__
from jetstream.archive.xrpc import archive_service
from jetstream.config import Config
from jetstream.daemon import freeze_long_lived_objects, on_hangup
from jetstream.dictionary import active_dictionary
from jetstream.health import Problems, apply_to_report
from jetstream.implementation import LiveRing
from jetstream.log.damage import CORRUPTION_ACTION, damage_detail
from jetstream.log.ttl import trim_interval_s
from jetstream.logfmt import setup_logging
from jetstream.server.app import SHUTDOWN_REASON, SubscribeServer
from jetstream.server.settings import ServerSettings
from jetstream.tasks import TaskSupervisor
from jetstream.workers import channel as messages
from jetstream.workers.channel import Channel, ChannelClosed
from jetstream.workers.secondary import RingFeeder, SecondaryEventLog

log = logging.getLogger("jetstream.workers.worker")  # not __main__ under -m

# How often a worker catches up without being woken: only matters if WAKEs were dropped.
POLL_INTERVAL_S = 0.5
METRICS_PUSH_INTERVAL_S = 1.0


def server_counters(server, feeder: RingFeeder, event_log: SecondaryEventLog) -> dict:
    """What the main process's /metrics sums over workers: the server's plain counters."""
    return {
        "connected_by_ip": server.connected_by_ip(),
        "delivered_by_ip": {ip: list(totals) for ip, totals in server.delivered_by_ip().items()},
        "connected": server.connected_count,
        "disconnects": dict(server.disconnects),
        "refused_requests": dict(server.refused_requests),
        "options_updates": server.options_updates,
        "catch_ups": event_log.catch_ups,
        "catch_up_seconds": event_log.catch_up_seconds,
        "catch_up_cpu_seconds": event_log.catch_up_cpu_seconds,
        "floor_catch_ups": event_log.floor_catch_ups,
        "events_fed": feeder.events_fed,
        "rows_fed": feeder.rows_fed,
        "gaps_filled": feeder.gaps_filled,
        "ring_newest_time_us": server.ring.newest_time_us,
        **server.history_counters(),
    }


class MainProcessStats:
    """/stats/collections in a worker: the main process's counts of what it stored (sent with STATUS)."""

    def __init__(self, worker: "Worker") -> None:
        self._worker = worker

    def report(self) -> dict:
        return self._worker.status.get("collection_stats") or {}


class WorkerCursorGate:
    """--cluster: the server's cursor gate in a worker. A client whose cursor is ahead of the
    node's log waits while the main process's node catches up with the stream (its gate's own
    wait, asked over the channel); the answer comes after the rows of what it applied meanwhile,
    and the worker makes sure its ring holds the newest of them before the client starts."""

    def __init__(self, worker: "Worker") -> None:
        self._worker = worker
        self._held: dict[int, tuple] = {}  # question id -> (subscriber, cursor)
        self._next_id = 0

    def hold(self, subscriber, cursor: int) -> None:
        self._next_id += 1
        self._held[self._next_id] = (subscriber, cursor)
        self._worker.channel.send(messages.encode_json(messages.CURSOR_WAIT, {"id": self._next_id, "cursor": cursor}))

    def answer(self, body: bytes) -> None:
        answer = json.loads(body)
        subscriber, cursor = self._held.pop(answer["id"], (None, 0))
        if subscriber is None:
            return
        if not answer["caught_up"]:
            from picows import WSCloseCode

            from jetstream.cluster.node import CURSOR_TOO_FAR_CODE, cursor_wait_reason

            subscriber.close(WSCloseCode(CURSOR_TOO_FAR_CODE),
                             cursor_wait_reason(cursor, answer["hwm"], self._worker.cfg.cluster_cursor_wait))
            return
        if self._worker.server.ring.newest_time_us < answer["hwm"]:
            self._worker._wake(None)  # rows were not sent while the channel was backed up: the log has them
        subscriber.cursor_reached()


class Worker:
    def __init__(self, index: int, cfg: Config, channel: Channel, listen_sock: socket.socket) -> None:
        self.index = index
        self.cfg = cfg
        self.channel = channel
        self.listen_sock = listen_sock
        self.status: dict = {"status": "starting"}  # the main process's latest STATUS
        self.problems = Problems()  # this worker's own (jetstream/health.py); its main's are shown too
        self.event_log: SecondaryEventLog | None = None
        self.server = None
        self.feeder: RingFeeder | None = None
        self._secondary_dir = ""
        self._stop = asyncio.Event()
        self._stopping = False
        self._main_gone = False  # the channel closed: nobody to report to, nothing to say but that
        self._tasks: list[asyncio.Task] = []
        self.cursor_gate: WorkerCursorGate | None = None

    async def start(self) -> None:
        cfg = self.cfg
        self._secondary_dir = tempfile.mkdtemp(prefix=f"jetstream-worker{self.index}-")
        self.event_log = SecondaryEventLog(cfg.data_dir, self._secondary_dir)
        ring = LiveRing(cfg.ring_capacity, floor_time_us=self.event_log.hwm())
        # The single process's server, configured from the same flags.
        settings = ServerSettings.from_config(cfg, zstd_dictionary=active_dictionary(cfg.zstd_dictionary_path))
        self.event_log.ring = ring  # log reads reach the ring's floor (the ring is fed ahead of the view)
        self.server = SubscribeServer(self.event_log, ring, settings, health=self.health)
        self.server.on_log_damage = self._on_log_damage
        if cfg.cluster:
            self.cursor_gate = self.server.cursor_gate = WorkerCursorGate(self)
        self.server.collection_stats = MainProcessStats(self)
        self.feeder = RingFeeder(self.event_log, ring, self.server.notify_new_events)
        await self.server.start("", 0, sock=self.listen_sock)
        tasks = TaskSupervisor(self.problems)  # a task that fails is logged, counted and degrades /healthz
        self._tasks = [tasks.spawn(coro, name) for coro, name in (
            (self._receive_forever(), "worker_receive"), (self._poll_forever(), "worker_poll"),
            (self._push_metrics_forever(), "worker_metrics"), (self._drop_expired_forever(), "worker_ring_trim"))]
        # issue 24: each worker serves the archive (with its own download cache directory)
        self.server.archive = archive_service(cfg, self.problems, f"worker-{self.index}")
        if self.server.archive is not None:
            self._tasks.append(tasks.spawn(self.server.archive.run(), "archive_manifest"))
        # As the single process does once ready: no full GC pass over start-up objects while serving.
        freeze_long_lived_objects("worker_ready")
        self.channel.send(messages.encode(messages.LISTENING))
        log.info("event=worker_started worker=%d pid=%d port=%d hwm=%d", self.index, os.getpid(),
                 self.server.port, self.event_log.hwm())

    def _on_log_damage(self, damage: dict) -> None:
        """A reader here met a damaged log: degrade this worker now; the main process logs it once,
        counts it, and its STATUS shows it on every worker."""
        self.problems.raise_problem("log_corruption", damage_detail(damage), CORRUPTION_ACTION)
        self.channel.send(messages.encode_json(messages.LOG_DAMAGE, damage))

    def health(self) -> tuple[bool, dict]:
        """The main process's view (relay, workers) with this worker's own state on top."""
        main_ok = self.status.get("status") in ("ok", "degraded")  # degraded: its problems are shown below
        status = "stopping" if self._stopping else self.status.get("status", "starting")
        report = {
            "status": status,
            "version": __version__,
            "uptime_s": self.status.get("uptime_s"),  # the daemon's: its main process's, not this worker's
            "log_open": self.event_log is not None and not self._stopping,
            "relay": self.status.get("relay", {"connected": False, "cursor": None}),
            "worker": self.index,
            "workers": self.status.get("workers", []),
        }
        if "cluster" in self.status:
            report["cluster"] = self.status["cluster"]
        if "archive" in self.status:  # the main process's archive writer (it seals; workers serve)
            report["archive"] = self.status["archive"]
        self.problems.show_remote(self.status.get("problems", []))
        return apply_to_report(main_ok and not self._stopping, report, self.problems)

    # -- what keeps the ring fed ----------------------------------------------------------------
    async def _receive_forever(self) -> None:
        while True:
            try:
                kind, body = await self.channel.receive()
            except ChannelClosed:
                log.warning("event=worker_main_gone worker=%d pid=%d action=exit", self.index, os.getpid())
                self._main_gone = True
                self._stop.set()
                return
            if kind == messages.ROWS:
                self._feed_rows(body)
            elif kind == messages.WAKE:
                self._wake(messages.decode_wake(body))
            elif kind == messages.STATUS:
                self._on_status(json.loads(body))
            elif kind == messages.CURSOR_ANSWER and self.cursor_gate is not None:
                self.cursor_gate.answer(body)

    def _on_status(self, status: dict) -> None:
        self.status = status
        cluster_id = (status.get("cluster") or {}).get("cluster_id")
        if cluster_id:
            # Clients see the cluster's id, not this node's log's, so moving between nodes is no switch.
            self.server.instance_id = cluster_id

    def _feed_rows(self, body: bytes) -> None:
        try:
            newest_before, events = messages.decode_rows(body)
        except ValueError as exc:
            log.error("event=worker_bad_rows worker=%d size=%d error=%r", self.index, len(body), str(exc)[:200])
            self._wake(None)  # the log has the batch
            return
        try:
            self.feeder.feed_rows(newest_before, events)
        except Exception as exc:  # noqa: BLE001 - e.g. a failed gap catch-up: the next rows or the poll retry
            log.error("event=worker_feed_failed worker=%d error=%r", self.index, str(exc)[:200])

    def _wake(self, newest_time_us: int | None) -> None:
        try:
            self.feeder.wake(newest_time_us)
        except Exception as exc:  # noqa: BLE001 - a failed catch-up is retried at the next wake or poll
            log.error("event=worker_catch_up_failed worker=%d error=%r", self.index, str(exc)[:200])

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL_S)
            self._wake(None)

    async def _drop_expired_forever(self) -> None:
        """The ring half of the TTL trim (the main process trims the log)."""
        interval = trim_interval_s(self.cfg.event_ttl, self.cfg.ttl_trim_interval)
        while True:
            await asyncio.sleep(interval)
            cutoff = int((time.time() - self.cfg.event_ttl) * 1_000_000)
            self.server.ring.drop_before(cutoff)

    async def _push_metrics_forever(self) -> None:
        while True:
            await asyncio.sleep(METRICS_PUSH_INTERVAL_S)
            self._push_metrics()

    def _push_metrics(self) -> None:
        self.channel.send(messages.encode_json(messages.METRICS,
                                               server_counters(self.server, self.feeder, self.event_log)))

    # -- lifetime -------------------------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        # Ctrl-C reaches the whole process group; the main process decides when workers stop.
        loop.add_signal_handler(signal.SIGINT, lambda: None)
        try:
            await self.start()
            await self._stop.wait()
        finally:
            await self.stop()

    async def stop(self) -> None:
        self._stopping = True
        if not self._main_gone:
            log.info("event=worker_stopping worker=%d", self.index)
        if self.server is not None:
            await self.server.close(SHUTDOWN_REASON)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.server is not None and self.feeder is not None and not self._main_gone:
            self._push_metrics()  # the last counters, so /metrics loses none of a clean stop
            try:
                await asyncio.wait_for(self.channel.drain(), timeout=2)
            except asyncio.TimeoutError:
                log.warning("event=worker_last_metrics_not_sent worker=%d", self.index)
        self.channel.close()
        if self.event_log is not None:
            self.event_log.close()
        if self._secondary_dir:
            shutil.rmtree(self._secondary_dir, ignore_errors=True)
        if not self._main_gone:
            log.info("event=worker_stopped worker=%d", self.index)


async def run_worker(index: int, listen_fd: int, channel_fd: int) -> None:
    loop = asyncio.get_running_loop()
    # From the first moment: a hangup of the terminal reaches the whole process group.
    loop.add_signal_handler(signal.SIGHUP, on_hangup, f"worker{index}")
    channel = await Channel.open(socket.socket(fileno=channel_fd))
    try:
        kind, body = await channel.receive()
    except ChannelClosed:  # the main process died (or stopped) before it sent the config
        log.warning("event=worker_main_gone worker=%d pid=%d action=exit phase=starting", index, os.getpid())
        return
    if kind != messages.CONFIG:
        raise SystemExit(f"worker {index}: expected the config first, got message kind {kind}")
    cfg = Config(json.loads(body))
    setup_logging(cfg.log_level, cfg.log_format)
    await Worker(index, cfg, channel, socket.socket(fileno=listen_fd)).run()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="jetstream-worker", description="a --workers serving process")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--channel-fd", type=int, required=True)
    # The daemon's, so a line logged before the config arrives (worker_main_gone) looks like the rest.
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-format", default="text")
    args = parser.parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    from jetstream.cli import run_loop

    run_loop(run_worker(args.index, args.listen_fd, args.channel_fd))


if __name__ == "__main__":
    main()
