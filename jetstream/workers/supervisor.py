"""The main process of `jetstream serve --workers N` (N > 1).

Owns: everything the single process owns except the public listener (ingest, the log read-write,
the TTL trim of the log, systemd READY/WATCHDOG/STOPPING, /metrics), plus the workers: the
listening sockets they serve on (sockets.py), starting each worker, waking every worker after each
durable batch, restarting a worker that dies (same socket, so the same client IPs come back to
it), telling workers the relay's and each other's state for /healthz, and summing their counters
for /metrics (workers/metrics.py). Shutdown order: every worker closes its clients with 1001 and
exits, then ingest stops, the pending batch is written and the log is closed.
It must never serve a subscriber or hold an event: what it publishes is counted, then read by
the workers from the log.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys

from jetstream.compression import EventCompressor
from jetstream.config import Config, parse_listen_addr
from jetstream.daemon import Daemon, UpgradeProgress, freeze_long_lived_objects, sd_notify
from jetstream.dictionary import active_dictionary, active_v2_dictionary
from jetstream.log.store import EventLog
from jetstream.log.ttl import TtlTrimmer, trim_interval_s
from jetstream.metrics import MetricsListener
from jetstream.startup import refuse_single_node_log_in_cluster
from jetstream.tasks import TaskSupervisor
from jetstream.workers import channel as messages
from jetstream.workers.channel import FORCE_CATCH_UP, Channel, ChannelClosed
from jetstream.workers.metrics import WorkersMetricsCollector, retire_counters
from jetstream.workers.sockets import bind_worker_sockets

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 60.0  # every worker listening, or the daemon does not start
WORKER_STOP_TIMEOUT_S = 8.0  # inside the daemon's 15 s shutdown bound; then SIGKILL
STATUS_INTERVAL_S = 0.5
# How long the log's TTL compaction waits after the range delete, so every worker's view has
# replayed the delete first (workers poll every worker.POLL_INTERVAL_S even without a wake-up).
TOMBSTONE_GRACE_S = 1.0
RESTART_DELAY_S = 0.1  # first restart of a worker that died; doubles while it keeps dying young
RESTART_DELAY_MAX_S = 10.0
STABLE_AFTER_S = 10.0  # a worker that lived this long restarts at the first delay again
# systemd's variables are the main process's: a worker must neither notify nor be watched.
_NOT_FOR_WORKERS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID")


class WorkersError(Exception):
    """The workers could not be started."""


class PublishedTail:
    """The main process's stand-in for the live ring: what ingest published, counted, and the
    current batch's events held only until they are sent to the workers."""

    def __init__(self, newest_time_us: int) -> None:
        self.newest_time_us = newest_time_us
        self.events_emitted = 0
        self.bytes_emitted = 0
        self._batch: list = []
        self._newest_before_batch = newest_time_us

    def append(self, event) -> None:
        self.newest_time_us = event.time_us
        self.events_emitted += 1
        self.bytes_emitted += len(event.json)
        self._batch.append(event)

    def take_batch(self) -> tuple[int, list]:
        """(newest time_us before the batch, the batch's events) since the last call."""
        batch, newest_before = self._batch, self._newest_before_batch
        self._batch, self._newest_before_batch = [], self.newest_time_us
        return newest_before, batch


class WorkersTtlTrimmer(TtlTrimmer):
    """The log's TTL trim with the workers in mind: they see the range delete before it is compacted.

    A RocksDB secondary learns of a delete by replaying it from the WAL. If the compaction that
    follows erases both the delete and the rows before a worker caught up, that worker keeps
    the rows it had replayed in its memtable, visible, until the next write reaches it.
    So the compaction waits until every worker has been woken and has had time to catch up.
    """

    def __init__(self, *args, wake_workers, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._wake_workers = wake_workers

    async def _compact_in_thread(self, trimmed) -> None:
        self._wake_workers()
        await asyncio.sleep(TOMBSTONE_GRACE_S)
        await super()._compact_in_thread(trimmed)


class WorkerHandle:
    """The main process's record of one worker slot (its socket outlives each worker process)."""

    def __init__(self, index: int, sock: socket.socket) -> None:
        self.index = index
        self.sock = sock
        self.process: subprocess.Popen | None = None
        self.channel: Channel | None = None
        self.listening = False
        self.restarts = 0
        self.counters: dict = {}  # the live process's latest METRICS
        self.dropped_wakes = 0
        self.listening_event = asyncio.Event()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def describe(self) -> dict:
        return {"index": self.index, "pid": self.process.pid if self.process is not None else None,
                "alive": self.alive, "listening": self.listening, "restarts": self.restarts,
                "subscribers": self.counters.get("connected", 0)}


def spawn_worker(index: int, listen_sock: socket.socket,
                 cfg: Config | None = None) -> tuple[subprocess.Popen, socket.socket]:
    """Start worker `index` on `listen_sock`; (process, the main process's end of its channel)."""
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    env = {name: value for name, value in os.environ.items() if name not in _NOT_FOR_WORKERS}
    logging_args = ["--log-level", cfg.log_level, "--log-format", cfg.log_format] if cfg is not None else []
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "jetstream.workers.worker", "--index", str(index),
             "--listen-fd", str(listen_sock.fileno()), "--channel-fd", str(child_end.fileno()), *logging_args],
            pass_fds=(listen_sock.fileno(), child_end.fileno()), env=env)
    finally:
        child_end.close()
    return process, parent_end


class Supervisor:
    """Starts, wakes, restarts and stops the workers."""

    def __init__(self, cfg: Config, sockets: list[socket.socket], status, cursor_wait=None,
                 tasks: TaskSupervisor | None = None, on_log_damage=None) -> None:
        self.cfg = cfg
        self.tasks = tasks or TaskSupervisor()  # the daemon's: a task that fails is seen (jetstream/tasks.py)
        self.handles = [WorkerHandle(index, sock) for index, sock in enumerate(sockets)]
        self.retired: dict = {}  # counters of worker processes that have exited, summed
        self._status = status  # () -> the STATUS report workers show in /healthz
        # --cluster: async (cursor) -> (caught up with the stream?, the log's newest time_us then)
        self._cursor_wait = cursor_wait
        self._on_log_damage = on_log_damage  # (damage dict) -> None: a worker's reader met a damaged log
        self._stopping = False
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self._tasks = [self.tasks.spawn(self._keep_running(handle), "worker_keeper") for handle in self.handles]

    async def wait_listening(self, timeout_s: float) -> None:
        # Tasks, not a gather: a start-up cancelled here (SIGTERM) leaves no orphaned future behind.
        waits = [asyncio.ensure_future(handle.listening_event.wait()) for handle in self.handles]
        try:
            await asyncio.wait(waits, timeout=timeout_s)
        finally:
            for wait in waits:
                wait.cancel()
        late = [handle.index for handle in self.handles if not handle.listening_event.is_set()]
        if late:
            raise WorkersError(f"workers {late} did not listen within {timeout_s:g}s")

    def wake_all(self, newest_time_us: int) -> None:
        """Every worker catches up with the log to at least `newest_time_us`."""
        for handle in self.handles:
            if handle.channel is not None:
                handle.channel.send_wake(newest_time_us)

    def send_rows(self, newest_before: int, events: list) -> None:
        """After a durable batch: every worker appends its events to its ring (encoded once)."""
        message = None
        for handle in self.handles:
            if handle.channel is not None:
                message = message or messages.encode_rows(newest_before, events)
                handle.channel.send_unless_backed_up(message)

    def broadcast_status(self) -> None:
        message = messages.encode_json(messages.STATUS, self._status())
        for handle in self.handles:
            if handle.channel is not None:
                handle.channel.send(message)

    @property
    def dropped_wakes(self) -> int:
        return sum(handle.dropped_wakes + (handle.channel.dropped_wakes if handle.channel else 0)
                   for handle in self.handles)

    async def _keep_running(self, handle: WorkerHandle) -> None:
        delay = RESTART_DELAY_S
        loop = asyncio.get_running_loop()
        while not self._stopping:
            started = loop.time()
            try:
                await self._run_once(handle)
            except Exception as exc:  # noqa: BLE001 - a spawn failure is retried like a death
                log.error("event=worker_spawn_failed worker=%d error=%r", handle.index, str(exc)[:200])
            if self._stopping:
                return
            delay = RESTART_DELAY_S if loop.time() - started > STABLE_AFTER_S else delay
            handle.restarts += 1
            log.warning("event=worker_restarting worker=%d restarts=%d delay_s=%g",
                        handle.index, handle.restarts, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_DELAY_MAX_S)

    async def _run_once(self, handle: WorkerHandle) -> None:
        process, parent_end = spawn_worker(handle.index, handle.sock, self.cfg)
        handle.process = process
        log.info("event=worker_spawned worker=%d pid=%d", handle.index, process.pid)
        channel = await Channel.open(parent_end)
        handle.channel = channel
        try:
            channel.send(messages.encode_json(messages.CONFIG, self.cfg.values))
            await self._serve_channel(handle, channel)
        finally:
            handle.dropped_wakes += channel.dropped_wakes
            handle.channel = None
            handle.listening = False
            channel.close()
            returncode = await self._wait_exit(process)
            retire_counters(self.retired, handle.counters, self.cfg.max_ip_metric_labels)
            handle.counters = {}
            level = logging.INFO if self._stopping and returncode == 0 else logging.WARNING
            log.log(level, "event=worker_exited worker=%d pid=%d returncode=%s", handle.index, process.pid, returncode)

    async def _serve_channel(self, handle: WorkerHandle, channel: Channel) -> None:
        while True:
            try:
                kind, body = await channel.receive()
            except ChannelClosed:
                return
            if kind == messages.METRICS:
                handle.counters = json.loads(body)
            elif kind == messages.LISTENING:
                handle.listening = True
                handle.listening_event.set()
                self.broadcast_status()
            elif kind == messages.CURSOR_WAIT:
                self._tasks.append(self.tasks.spawn(self._answer_cursor_wait(channel, json.loads(body)),
                                                    "worker_cursor_wait"))
            elif kind == messages.LOG_DAMAGE and self._on_log_damage is not None:
                self._on_log_damage(json.loads(body))
                self.broadcast_status()  # every worker's /healthz shows it now, not at the next STATUS

    async def _answer_cursor_wait(self, channel: Channel, question: dict) -> None:
        """A worker holds a client whose cursor is ahead of this node's log: has the node caught up?

        Sent after every ROWS of what the node applied meanwhile (one ordered channel), with the
        log's newest time_us, so the worker can check its ring holds it before starting the client.
        """
        caught_up, hwm = False, 0
        if self._cursor_wait is not None:
            caught_up, hwm = await self._cursor_wait(int(question["cursor"]))
        channel.send(messages.encode_json(messages.CURSOR_ANSWER,
                                          {"id": question["id"], "caught_up": caught_up, "hwm": hwm}))

    async def _wait_exit(self, process: subprocess.Popen) -> int:
        """The exit status; a worker that closed its channel but lingers is killed after a while."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WORKER_STOP_TIMEOUT_S
        while process.poll() is None:
            if loop.time() > deadline:
                log.error("event=worker_killed pid=%d reason=exit_timeout", process.pid)
                process.kill()
            await asyncio.sleep(0.02)
        return process.returncode

    async def stop_all(self) -> None:
        """SIGTERM every worker (each closes its clients with 1001) and wait for all to exit."""
        self._stopping = True
        for handle in self.handles:
            if handle.alive:
                handle.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), WORKER_STOP_TIMEOUT_S + 2)
        except asyncio.TimeoutError:
            for handle in self.handles:
                if handle.alive:
                    handle.process.kill()
        for task in self._tasks:
            task.cancel()


class WorkersDaemon(Daemon):
    """`jetstream serve --workers N`: this process ingests; N worker processes serve."""

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.sockets: list[socket.socket] = []
        self.supervisor: Supervisor | None = None
        self.tail: PublishedTail | None = None
        self._port = 0

    async def start(self, *, connect_relay: bool = True) -> None:
        cfg = self.cfg
        self.event_log = EventLog(cfg.data_dir, fsync=cfg.fsync, on_upgrade_progress=UpgradeProgress())
        refuse_single_node_log_in_cluster(cfg, self.event_log)
        hwm = self.event_log.hwm()
        self.tail = PublishedTail(hwm)
        # The same ingest as one process (relay cursor rules included); each durable batch wakes the workers.
        compressor = EventCompressor(active_dictionary(cfg.zstd_dictionary_path), active_v2_dictionary())
        if cfg.cluster:
            # The node's applier writes the log and hands each applied batch to the workers, as
            # ingest does here without --cluster; the node ingests only while it leads.
            self.cluster = self._cluster_node(self.tail, compressor, self._publish)
            self.cluster.on_joined = self._on_cluster_joined
        else:
            self._start_ingest(self.tail, hwm, compressor, self._publish)
        host, port = parse_listen_addr(cfg.listen_addr)
        # Behind a proxy every client shares the proxy's address: steering by it would put them
        # all on one worker, so the kernel spreads them and the per-IP limits hold per worker.
        self.sockets = bind_worker_sockets(host, port, cfg.workers, steer_by_ip=not cfg.trust_proxy_headers)
        self._port = self.sockets[0].getsockname()[1]
        self.supervisor = Supervisor(cfg, self.sockets, self.status_report,
                                     cursor_wait=self._cluster_cursor_wait if self.cluster is not None else None,
                                     tasks=self.tasks, on_log_damage=self.damage.report)
        self.supervisor.start()
        try:
            await self.supervisor.wait_listening(STARTUP_TIMEOUT_S)
        except WorkersError:
            await self.supervisor.stop_all()
            self._close_sockets()
            self.event_log.close()
            raise
        self._metrics_collector = WorkersMetricsCollector(self.supervisor, self.tail)
        from prometheus_client import REGISTRY

        REGISTRY.register(self._metrics_collector)
        if cfg.metrics_listen_addr:
            self.metrics_listener = MetricsListener(cfg.metrics_listen_addr)
        self._start_archive_writer()  # this process seals; each worker serves the directory (rescans every 5 s)
        self._start_archive_scrub(None)  # and scrubs it, once for the node (workers adopt what it refuses)
        self.trimmer = WorkersTtlTrimmer(self.event_log, cfg.event_ttl,
                                         trim_interval_s(cfg.event_ttl, cfg.ttl_trim_interval),
                                         wake_workers=lambda: self.supervisor.wake_all(FORCE_CATCH_UP),
                                         hold_time_us=self.archive_hold_time_us)
        self._tasks += [self.tasks.spawn(self.trimmer.run(), "ttl_trim"),
                        self.tasks.spawn(self._status_forever(), "worker_status")]
        # Ready: the log is open and every worker listens; the relay comes after.
        self.ready = True
        self.supervisor.broadcast_status()
        self._announce_ready()
        if connect_relay:
            self.connect_relay()
        log.info("event=daemon_started listen=%s:%d workers=%d data_dir=%s relay=%s relay_cursor=%s hwm=%d cluster=%s",
                 host, self.port, cfg.workers, cfg.data_dir, cfg.ws_url,
                 self.pipeline.last_accepted_seq if self.pipeline is not None else self.event_log.relay_cursor(), hwm,
                 cfg.cluster or "-")

    @property
    def port(self) -> int:
        return self._port

    def _on_cluster_joined(self, cluster_id: str) -> None:
        # No server here: the workers learn the cluster's id from the STATUS they are sent.
        log.info("event=instance_id_served instance=%s source=cluster log_instance=%s", cluster_id,
                 self.event_log.instance_id())
        if self.freeze_gc:
            freeze_long_lived_objects("cluster_joined")

    def _publish(self) -> None:
        """A batch is durable: every worker gets its rows."""
        newest_before, events = self.tail.take_batch()
        if events:
            self.supervisor.send_rows(newest_before, events)

    def status_report(self) -> dict:
        """What every worker shows: /healthz's daemon fields, the workers, /stats/collections."""
        _, report = self.health()
        report["workers"] = [handle.describe() for handle in self.supervisor.handles]
        report["collection_stats"] = self._collection_stats().report()
        return report

    async def _status_forever(self) -> None:
        while True:
            await asyncio.sleep(STATUS_INTERVAL_S)
            self.supervisor.broadcast_status()

    def _stop_listening(self) -> None:
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._close_sockets()

    def _close_sockets(self) -> None:
        for sock in self.sockets:
            sock.close()

    async def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.ready = False
        sd_notify("STOPPING=1")
        log.info("event=daemon_stopping workers=%d", self.cfg.workers)
        # Every worker stops accepting at the same moment: shutdown() acts on the socket every
        # process shares, not on one descriptor. Otherwise the clients of the first worker to stop
        # would reconnect to the port and reach a worker still listening, only to be closed again.
        self._stop_listening()
        if self.supervisor is not None:
            self.supervisor.broadcast_status()
            await self.supervisor.stop_all()
            log.info("event=workers_stopped")
        await self._stop_ingest()
        if self.metrics_listener is not None:
            self.metrics_listener.close()
        if self._metrics_collector is not None:
            from prometheus_client import REGISTRY

            REGISTRY.unregister(self._metrics_collector)
            self._metrics_collector = None
        if self.event_log is not None:
            self.event_log.close()
        log.info("event=daemon_stopped")
