"""The `jetstream serve` process: wires ingest, log, ring and server together.

Owns: start-up order (log open -> server bound -> READY -> relay connected), the TTL
trim timer (jetstream.log.ttl), readiness (/healthz, systemd READY=1 and WATCHDOG=1 over $NOTIFY_SOCKET),
what degrades /healthz about ingest as a whole (a paused ingest, a relay that has stored nothing
or not been reached for --relay-stall-threshold), the signals (SIGTERM/SIGINT stop, at any moment
of start-up too; SIGHUP is logged, log files are reopened, and the daemon carries on),
freezing what start-up allocated out of the cyclic GC's reach once ready (the serving
process only: a full collection over it paused the loop for 100+ ms), and graceful shutdown
(stop the relay, write the pending batch, close every subscriber with 1001, close RocksDB).
It must never hold event data itself.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import shutil
import signal
import socket
import time

from jetstream import __version__, metrics
from jetstream.archive.scrub import ArchiveScrub, archive_scrub
from jetstream.archive.sealer import ArchiveSealer, SealerSettings
from jetstream.archive.xrpc import archive_service
from jetstream.compression import EventCompressor
from jetstream.config import Config, parse_listen_addr
from jetstream.dictionary import active_dictionary, active_v2_dictionary
from jetstream.health import Problems, apply_to_report
from jetstream.implementation import LiveRing
from jetstream.ingest.collection_filter import IngestCollections
from jetstream.ingest.collection_stats import CollectionStats
from jetstream.ingest.pipeline import IngestPipeline
from jetstream.ingest.relay_client import RelayClient
from jetstream.ingest.relay_cursor import resume_cursor_for
from jetstream.ingest.sequencer import Sequencer
from jetstream.log.damage import DamageReport
from jetstream.log.store import EventLog
from jetstream.log.ttl import TtlTrimmer, trim_interval_s
from jetstream.server.app import SHUTDOWN_REASON, SubscribeServer
from jetstream.server.metrics import register_server, unregister_server
from jetstream.server.settings import ServerSettings
from jetstream.startup import StartupError, refuse_single_node_log_in_cluster
from jetstream.tasks import TaskSupervisor

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S = 15.0
# How often a paused ingest checks whether the log takes writes again (disk full).
LOG_RECOVERY_INTERVAL_S = 1.0
LOG_RECOVERY_MIN_FREE_BYTES = 1 << 20
# While the log is upgraded at open: how much more start-up time to ask systemd for after each chunk.
UPGRADE_EXTEND_USEC = 60_000_000
UPGRADE_LOG_EVERY_S = 10.0
# How often the relay's progress is judged against --relay-stall-threshold (and the lag gauge set).
RELAY_WATCH_INTERVAL_S = 1.0


def sd_notify(state: str) -> bool:
    """Send `state` (e.g. "READY=1") to systemd's $NOTIFY_SOCKET; False when not under systemd.

    The protocol is one AF_UNIX datagram; a leading "@" names an abstract socket. Done by
    hand so the daemon needs no libsystemd binding.
    """
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError as exc:
        log.warning("event=sd_notify_failed state=%s error=%r", state.split("=")[0], exc)
        return False
    return True


def watchdog_interval_s() -> float | None:
    """Half of systemd's WatchdogSec (from $WATCHDOG_USEC, if it is meant for this process)."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000


def freeze_long_lived_objects(reason: str) -> None:
    """Move every object alive now out of the cyclic GC's reach (gc.freeze).

    A full collection walks every tracked object, and the modules, classes and functions
    loaded at start-up are most of them: measured at 100-130 ms on a 2-core machine, a
    pause the whole loop takes (ingest, apply, every subscriber). Frozen, they are never
    walked again; only what was allocated since is. Only for the serving process: in a
    test process, objects frozen with a test's daemon would never be collected.
    """
    started = time.perf_counter()
    gc.collect()  # what start-up left as garbage is freed, not frozen
    gc.freeze()
    log.info("event=gc_frozen reason=%s objects=%d ms=%.1f", reason, gc.get_freeze_count(),
             (time.perf_counter() - started) * 1000)


def reopen_log_files() -> int:
    """Reopen every log file a handler writes (after logrotate moved it); how many. Logs that go
    to stderr (the default: journald keeps them) have nothing to reopen."""
    reopened = 0
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.acquire()
            try:
                if handler.stream is not None:
                    handler.stream.close()
                handler.stream = handler._open()
            finally:
                handler.release()
            reopened += 1
    return reopened


def on_hangup(process: str) -> None:
    """SIGHUP: what daemons under systemd are expected to do with it: reopen logs, carry on."""
    reopened = reopen_log_files()
    log.warning("event=signal_received signal=%d action=reopen_logs_and_continue process=%s log_files_reopened=%d",
                signal.SIGHUP, process, reopened)


def relay_lag_s(pipeline) -> float | None:
    """How far behind the relay ingest is: the newest written frame's age, or, when
    --verify-signatures holds frames for their authors' DID documents, the oldest held frame's
    age if larger (measured from the relay's own `time`, so the hold counts as lag)."""
    if pipeline is None:
        return None
    lag = pipeline.relay_lag_s
    held = pipeline.gate.held_lag_s() if pipeline.gate is not None else None
    if held is None:
        return lag
    return held if lag is None else max(lag, held)


class UpgradeProgress:
    """A log format upgrade at open (jetstream/log/store.py) can take minutes on a large log: tell
    systemd it is still starting (EXTEND_TIMEOUT_USEC, so TimeoutStartSec does not kill it) and
    log how far it got every UPGRADE_LOG_EVERY_S."""

    def __init__(self) -> None:
        self._last_log = time.monotonic()

    def __call__(self, rows: int) -> None:
        sd_notify(f"EXTEND_TIMEOUT_USEC={UPGRADE_EXTEND_USEC}\nSTATUS=upgrading the event log: {rows} rows")
        now = time.monotonic()
        if now - self._last_log >= UPGRADE_LOG_EVERY_S:
            self._last_log = now
            log.info("event=log_upgrade_progress rows=%d", rows)


class Daemon:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.event_log: EventLog | None = None
        self.server: SubscribeServer | None = None
        self.relay: RelayClient | None = None
        self.pipeline: IngestPipeline | None = None
        self.trimmer: TtlTrimmer | None = None
        self.sealer: ArchiveSealer | None = None  # --archive: the archive writer (jetstream/archive/sealer.py)
        self.scrub: ArchiveScrub | None = None  # --archive-scrub-interval (jetstream/archive/scrub.py)
        self.metrics_listener: metrics.MetricsListener | None = None
        self._metrics_collector = None
        self.cluster = None  # jetstream.cluster.node.ClusterNode with --cluster
        self._tasks: list[asyncio.Task] = []
        self._stopped = asyncio.Event()
        self.ready = False
        # What degrades /healthz (jetstream/health.py): the part that meets a failure raises it.
        self.problems = Problems()
        # A reader that meets a damaged log reports here: one line per damaged file, a counter, the problem.
        self.damage = DamageReport(self.problems)
        # Every background task starts through it: one that fails is logged, counted and degrades /healthz.
        self.tasks = TaskSupervisor(self.problems)
        # The process entry (run_until_signalled) sets this: see freeze_long_lived_objects.
        self.freeze_gc = False
        self.started_monotonic = time.monotonic()  # /healthz uptime_s

    async def start(self, *, connect_relay: bool = True) -> None:
        """Open the log, bind the listeners, then (unless told not to) connect the relay."""
        cfg = self.cfg
        self.event_log = EventLog(cfg.data_dir, fsync=cfg.fsync, on_upgrade_progress=UpgradeProgress())
        refuse_single_node_log_in_cluster(cfg, self.event_log)
        hwm = self.event_log.hwm()
        ring = LiveRing(cfg.ring_capacity, floor_time_us=hwm)
        dictionary = active_dictionary(cfg.zstd_dictionary_path)
        compressor = EventCompressor(dictionary, active_v2_dictionary())
        settings = ServerSettings.from_config(cfg, zstd_dictionary=dictionary)
        self.server = SubscribeServer(self.event_log, ring, settings, health=self.health)
        self.server.on_log_damage = self.damage.report
        self.server.archive = archive_service(cfg, self.problems)  # issue 24: the sealed archive's XRPC endpoints
        if self.server.archive is not None:
            self._tasks.append(self.tasks.spawn(self.server.archive.run(), "archive_manifest"))
        self._start_archive_scrub(self.server.archive)
        host, port = parse_listen_addr(cfg.listen_addr)
        try:
            await self.server.start(host, port)
        except OSError as exc:  # taken since the start-up probe: still one clear line, naming the address
            raise StartupError("listen-addr", cfg.listen_addr,
                               f"cannot bind {host}:{port}: {exc.strerror or exc}") from None
        if cfg.cluster:
            await self._start_cluster_node(ring, compressor, host, connect_relay)
            return
        self._start_ingest(ring, hwm, compressor, self.server.notify_new_events)
        self.server.collection_stats = self.pipeline.collection_stats
        self._metrics_collector = register_server(self.server)
        if cfg.metrics_listen_addr:
            try:
                self.metrics_listener = metrics.MetricsListener(cfg.metrics_listen_addr)
            except OSError as exc:
                raise StartupError("metrics-listen-addr", cfg.metrics_listen_addr,
                                   f"cannot bind: {exc.strerror or exc}") from None
        self._start_archive_writer()
        self.trimmer = TtlTrimmer(self.event_log, cfg.event_ttl,
                                  trim_interval_s(cfg.event_ttl, cfg.ttl_trim_interval), ring=ring,
                                  hold_time_us=self.archive_hold_time_us)
        self._tasks.append(self.tasks.spawn(self.trimmer.run(), "ttl_trim"))
        self._log_served_instance("log")
        # Ready: the log is open and both listeners are bound; the relay comes after.
        self._announce_ready()
        if connect_relay:
            self.connect_relay()
        log.info("event=daemon_started listen=%s:%d data_dir=%s relay=%s relay_cursor=%s hwm=%d",
                 host, self.server.port, cfg.data_dir, cfg.ws_url, self.pipeline.last_accepted_seq, hwm)

    async def _start_cluster_node(self, ring, compressor, host: str, join: bool) -> None:
        """--cluster: the node applies the shared stream and ingests only while it holds the lease.

        The same log, ring and new-events notification as a single node; only the node's
        applier writes the log (jetstream/cluster/). Ready at once: the local log is served
        while the node joins.
        """
        self.cluster = self._cluster_node(ring, compressor, self.server.notify_new_events)
        self.server.collection_stats = self._collection_stats()
        self.server.cursor_gate = self.cluster
        # Clients see the cluster's id, not this node's log's, so moving between nodes is no switch.
        self.cluster.on_joined = self._on_cluster_joined
        self._metrics_collector = register_server(self.server)
        if self.cfg.metrics_listen_addr:
            self.metrics_listener = metrics.MetricsListener(self.cfg.metrics_listen_addr)
        self._start_archive_writer()
        self.trimmer = TtlTrimmer(self.event_log, self.cfg.event_ttl,
                                  trim_interval_s(self.cfg.event_ttl, self.cfg.ttl_trim_interval), ring=ring,
                                  hold_time_us=self.archive_hold_time_us)
        self._tasks.append(self.tasks.spawn(self.trimmer.run(), "ttl_trim"))
        self._log_served_instance("log")
        self._announce_ready()
        if join:
            self.cluster.start()
        log.info("event=daemon_started mode=cluster node=%s listen=%s:%d data_dir=%s cluster=%s applied_seq=%d hwm=%d",
                 self.cluster.node_name, host, self.server.port, self.cfg.data_dir, self.cfg.cluster,
                 self.event_log.stream_seq(), self.event_log.hwm())

    def _cluster_node(self, ring, compressor: EventCompressor, on_applied):
        """--cluster: the node that applies the stream into the log and `ring` (then `on_applied`)
        and ingests while it holds the lease. Also used by the --workers main process."""
        from jetstream.cluster.node import ClusterNode

        cfg = self.cfg  # --verify-signatures with --cluster is refused by jetstream.config
        # What the single-node pipeline is given, for the pipeline of each leadership term. The
        # collection counts are of what this node ingested while it led (followers count none).
        self._cluster_collection_stats = CollectionStats(cfg.event_ttl, cfg.stats_max_collections)
        pipeline_options = {
            "ingest_collections": IngestCollections(cfg.ingest_collections) if cfg.ingest_collections else None,
            "collection_stats": self._cluster_collection_stats,
        }
        return ClusterNode(cfg, self.event_log, ring, compressor, on_applied, pipeline_options, tasks=self.tasks)

    def _start_archive_writer(self) -> None:
        """--archive: seal the log into segments of the archive directory (the process that ingests).

        Fed by reading the log forward from the sealed tip (every row there is durable); the
        TTL trim is held at the first unsealed event. With --cluster every node seals its own
        directory; only a shared --archive-url is sealed by the ingest leader alone.
        """
        if not self.cfg.archive:
            return
        service = self.server.archive if self.server is not None else None
        self.sealer = ArchiveSealer(self.event_log, SealerSettings.from_config(self.cfg), problems=self.problems,
                                    may_seal=self.archive_may_seal,
                                    on_sealed=service.segment_sealed if service is not None else None)
        self._tasks.append(self.tasks.spawn(self.sealer.run(), "archive_sealer"))

    def _start_archive_scrub(self, service) -> None:
        """--archive-scrub-interval: one scrub per node, in this process (it serves `service`; the --workers
        main process serves nothing and passes None: the scrub then lists the archive for itself)."""
        self.scrub = archive_scrub(self.cfg, service, self.problems)
        if self.scrub is None:
            return
        if self.scrub.own_service:
            self._tasks.append(self.tasks.spawn(self.scrub.service.run(), "archive_scrub_manifest"))
        self._tasks.append(self.tasks.spawn(self.scrub.run(), "archive_scrub"))

    def archive_may_seal(self) -> bool:
        """Whether this process may publish segments now: always on a single node, and on every --cluster
        node whose archive is its own (a directory: `--archive-dir`, default <data-dir>/archive; nobody
        else writes there, and every node's log holds the same seqs, so each seals its own log, applied
        or ingested). Only a shared archive (--archive-url) is sealed by the ingest leader alone, while
        it leads (its ingest term runs and its lease is held and unexpired, as for its publishes); the
        others follow its tip. Read from the sealer's thread too: plain attribute reads."""
        cluster = self.cluster
        if cluster is None or not self.cfg.archive_url:
            return True
        lease = cluster.lease
        return cluster.term is not None and lease is not None and lease.held and not lease.expired_locally()

    def archive_hold_time_us(self) -> int:
        """The TTL trim's ceiling: the first event no segment holds yet (no limit without --archive).

        On every node: with its own archive directory, at its own tip; with a shared --archive-url, a
        follower holds at the tip its sealer last read from the store, so a failover finds every
        unsealed event in the new leader's log (docs/architecture.md §12.4)."""
        if self.sealer is None:
            return 1 << 64
        return self.sealer.hold_time_us()

    def _collection_stats(self):
        """/stats/collections' counts: of what ingest stored, or (--cluster) what this node ingested leading."""
        return self.pipeline.collection_stats if self.cluster is None else self._cluster_collection_stats

    async def _cluster_cursor_wait(self, cursor: int) -> tuple[bool, int]:
        """A --workers worker's cursor gate: (caught up with the stream?, the log's newest time_us then)."""
        caught_up = await self.cluster.caught_up_with_stream(cursor)
        return caught_up, self.event_log.hwm()

    def _start_ingest(self, ring, hwm: int, compressor: EventCompressor, on_durable) -> None:
        """The pipeline (relay -> decode -> sequence -> log -> `ring`) and the relay client.

        `on_durable` runs after each batch is in RocksDB (wake the readers, or the workers).
        The relay cursor is the stored one only if it belongs to --ws-url's relay
        (ingest/relay_cursor.py), unless --override-relay-cursor says otherwise.
        """
        cfg = self.cfg
        self.pipeline = IngestPipeline(
            self.event_log, ring, Sequencer(hwm), compressor, on_durable,
            socket_url=cfg.ws_url, group_commit_s=cfg.group_commit_ms / 1000.0,
            on_write_failure=self._on_log_write_failure,
            on_relay_error=lambda detail: self.relay and self.relay.reconnect("error_frame"),
            verify_mst=cfg.verify_mst,
            ingest_collections=IngestCollections(cfg.ingest_collections) if cfg.ingest_collections else None,
            collection_stats=CollectionStats(cfg.event_ttl, cfg.stats_max_collections),
        )
        self.pipeline.last_accepted_seq = resume_cursor_for(self.event_log, cfg.ws_url)
        if cfg.ingest_collections:
            log.info("event=ingest_collections_limited collections=%s", ",".join(cfg.ingest_collections))
        if cfg.verify_signatures:
            self._start_signature_stage()
        if cfg.override_relay_cursor >= 0:
            log.info("event=relay_cursor_overridden stored=%s override=%d",
                     self.pipeline.last_accepted_seq, cfg.override_relay_cursor)
            self.pipeline.last_accepted_seq = cfg.override_relay_cursor
        self.relay = RelayClient(
            cfg.ws_url, self.pipeline.submit, lambda: self.pipeline.last_accepted_seq,
            liveness_ttl_s=cfg.liveness_ttl, before_connect=self.pipeline.prepare_reconnect,
            backoff_initial_s=cfg.relay_backoff_initial, backoff_max_s=cfg.relay_backoff_max,
            problems=self.problems,
        )

    def _on_cluster_joined(self, cluster_id: str) -> None:
        self.server.instance_id = cluster_id
        self._log_served_instance("cluster")
        if self.freeze_gc:
            freeze_long_lived_objects("cluster_joined")  # the NATS client's modules are loaded by now

    def _log_served_instance(self, source: str) -> None:
        """Which instance id clients see (`instance` on /healthz, the Jetstream-Instance header):
        the log's own until a cluster node joins, the cluster's after (the log's is then not served)."""
        served = self.server.instance_id if self.server is not None else self.cluster.cluster_id
        log.info("event=instance_id_served instance=%s source=%s log_instance=%s", served, source,
                 self.event_log.instance_id())

    def _announce_ready(self) -> None:
        """Ready for /healthz and systemd (READY=1), and the watchdog pings if systemd asks for them."""
        if self.freeze_gc:
            freeze_long_lived_objects("ready")
        self.ready = True
        sd_notify("READY=1")
        watchdog_s = watchdog_interval_s()
        if watchdog_s is not None:
            self._tasks.append(self.tasks.spawn(self._watchdog_forever(watchdog_s), "systemd_watchdog"))

    def _start_signature_stage(self) -> None:
        """--verify-signatures: commits pass a signature check before the pipeline (ingest/sigcheck.py)."""
        from jetstream.ingest.sigcheck import build_signature_gate, trim_did_revs_forever

        self.pipeline.attach_gate(build_signature_gate(self.cfg, self.event_log, self.pipeline, self.problems))
        self._tasks.append(self.tasks.spawn(trim_did_revs_forever(self.event_log, self.cfg.did_rev_retention),
                                            "did_revs_trim"))
        log.info("event=signature_verification_on plc_url=%s unresolved_did=%s verify_processes=%d",
                 self.cfg.plc_url, self.cfg.unresolved_did, self.cfg.verify_processes)

    def connect_relay(self) -> None:
        """Start reading the relay (tests call this after their subscribers are connected)."""
        self._tasks.append(asyncio.ensure_future(self._watch_relay_forever()))
        if self.cluster is not None:
            self.cluster.start()  # joining the cluster is what may lead to reading the relay
            return
        self._tasks.append(self.tasks.spawn(self.relay.run(), "relay"))

    def _ingest_parts(self):
        """(relay client, pipeline) ingesting now: this process's, or this node's term's while it leads."""
        if self.cluster is None:
            return self.relay, self.pipeline
        term = self.cluster.term
        return self.cluster.relay, (term.pipeline if term is not None else None)

    def _relay_watch_interval_s(self) -> float:
        return min(RELAY_WATCH_INTERVAL_S, self.cfg.relay_stall_threshold / 4)

    async def _watch_relay_forever(self) -> None:
        while True:
            await asyncio.sleep(self._relay_watch_interval_s())
            self.check_relay_progress()

    def check_relay_progress(self) -> None:
        """Degrade /healthz while the relay has not been reached, or nothing from it has been
        stored, for longer than --relay-stall-threshold; recover when that ends.

        One problem per cause: a paused ingest (disk full) and an endpoint that is not a relay
        firehose have their own, so they do not also count as a stall. A relay that is connected
        but has no events to send (rare on the real network) stalls too: the threshold is for that.
        """
        relay, pipeline = self._ingest_parts()
        if relay is None or pipeline is None:  # a cluster follower: it does not read the relay
            self.problems.clear("relay_unreachable")
            self.problems.clear("relay_stalled")
            return
        lag = relay_lag_s(pipeline)
        if lag is not None:
            metrics.RELAY_LAG_SECONDS.set(lag)  # between batches too: a silent relay's lag grows
        threshold = self.cfg.relay_stall_threshold
        offline_s = relay.disconnected_for()
        if offline_s is None:
            self.problems.clear("relay_unreachable")
        elif offline_s > threshold:
            self.problems.raise_problem(
                "relay_unreachable",
                f"no connection to the relay {relay.ws_url} for {offline_s:.0f}s (threshold {threshold:g}s, "
                f"attempt {relay.attempt}, last error {relay.last_error or 'none yet'}); nothing new is ingested",
                "check --ws-url, DNS and the network to the relay; the daemon keeps retrying and serves its log")
        silent_s = pipeline.silent_for()
        if silent_s <= threshold:
            self.problems.clear("relay_stalled")
            return
        if pipeline.paused or any(self.problems.is_active(kind) for kind in (
                "ingest_paused", "relay_unreachable", "relay_not_a_firehose")):
            return  # that problem says why nothing is stored
        if offline_s is not None and offline_s > silent_s - 2 * self._relay_watch_interval_s():
            return  # silent since the connection was lost: relay_unreachable, once past the threshold
        self.problems.raise_problem(
            "relay_stalled",
            f"no relay event stored for {silent_s:.0f}s (threshold {threshold:g}s); relay connected="
            f"{str(relay.connected).lower()}, lag {'unknown' if lag is None else f'{lag:.0f}s'}",
            "check the relay (--ws-url) and the network; a relay that really has nothing to send also "
            "trips this: raise --relay-stall-threshold if that is normal for yours")

    @property
    def port(self) -> int:
        return self.server.port

    def health(self) -> tuple[bool, dict]:
        """(ready, report) for /healthz: ready once started and until stopping."""
        relay = self.relay if self.cluster is None else self.cluster.relay
        pipeline = self.pipeline if self.cluster is None or self.cluster.term is None else self.cluster.term.pipeline
        report = {
            "status": "ok" if self.ready else ("stopping" if self._stopped.is_set() else "starting"),
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started_monotonic, 1),
            "log_open": self.event_log is not None and not self._stopped.is_set(),
            "relay": {
                "connected": bool(relay is not None and relay.connected),
                "cursor": pipeline.last_accepted_seq if pipeline is not None else None,
                "lag_seconds": relay_lag_s(pipeline),
            },
        }
        if self.sealer is not None:
            report["archive"] = self.sealer.report()
        if self.scrub is not None:
            report["archive_scrub"] = self.scrub.report()
        if self.cluster is not None:
            report["cluster"] = self.cluster.report()
            if pipeline is None:  # a follower: the relay cursor its log holds from the stream
                report["relay"]["cursor"] = self.event_log.relay_cursor() if self.event_log is not None else None
        return apply_to_report(self.ready, report, self.problems)

    def _on_log_write_failure(self) -> None:
        """The log refused a batch (disk full, I/O error): pause ingest until it takes writes again.

        Subscribers keep being served from what the log and ring hold; nothing unwritten was
        published, and the relay is re-read from the durable cursor when ingest resumes.
        """
        metrics.LOG_WRITE_FAILURES.inc()
        if self.pipeline.paused:
            return
        self.pipeline.paused = True
        metrics.INGEST_PAUSED.set(1)
        log.error("event=ingest_paused reason=log_write_failed relay_cursor=%s retry_every_s=%g",
                  self.event_log.relay_cursor(), LOG_RECOVERY_INTERVAL_S)
        self._report_ingest_paused("")
        if self.relay is not None:
            self.relay.reconnect("write_failure")
        self._tasks.append(self.tasks.spawn(self._resume_ingest_when_log_writable(), "ingest_resume"))

    def _report_ingest_paused(self, error: str) -> None:
        """/healthz is degraded for the whole pause (updated with the latest reason while it lasts)."""
        self.problems.raise_problem(
            "ingest_paused",
            f"the log refuses writes (disk full or I/O error): ingest paused at relay cursor "
            f"{self.event_log.relay_cursor()}; subscribers are served what is stored" + (f"; {error}" if error else ""),
            "free space under --data-dir (or repair the disk): ingest resumes by itself from the durable cursor "
            f"within {LOG_RECOVERY_INTERVAL_S:g}s of the log taking writes again")

    async def _resume_ingest_when_log_writable(self) -> None:
        attempts = 0
        while not self._stopped.is_set():
            await asyncio.sleep(LOG_RECOVERY_INTERVAL_S)
            attempts += 1
            try:
                # Re-opening closes the log that readers are still served from; with no room
                # to open it again they would lose it, so wait for space first.
                free = shutil.disk_usage(self.cfg.data_dir).free
                if free < LOG_RECOVERY_MIN_FREE_BYTES:
                    raise OSError(f"only {free} bytes free in {self.cfg.data_dir}")
                if self.trimmer is not None:
                    await self.trimmer.wait_idle()  # reopen closes the database under a compaction
                if self.sealer is not None:
                    await self.sealer.wait_idle()  # nor under the archive writer's read
                self.event_log.reopen()
            except Exception as exc:  # noqa: BLE001 - still full, or worse: keep serving, keep trying
                if attempts == 1 or attempts % 30 == 0:  # one line now and then, not one per second
                    log.warning("event=log_still_unwritable attempts=%d error=%r", attempts, str(exc)[:200])
                self._report_ingest_paused(str(exc)[:200])
                continue
            self.pipeline.reset_to_durable_cursor()
            self.pipeline.restart_silence_clock()
            self.pipeline.paused = False
            metrics.INGEST_PAUSED.set(0)
            self.problems.clear("ingest_paused")
            log.warning("event=ingest_resumed relay_cursor=%s paused_s=%g",
                        self.event_log.relay_cursor(), attempts * LOG_RECOVERY_INTERVAL_S)
            if self.relay is not None:
                self.relay.reconnect("log_recovered")
            return

    async def _watchdog_forever(self, interval_s: float) -> None:
        """WATCHDOG=1 while the loop turns: a stuck loop stops the pings and systemd restarts us."""
        while True:
            sd_notify("WATCHDOG=1")
            await asyncio.sleep(interval_s)

    async def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.ready = False
        sd_notify("STOPPING=1")
        log.info("event=daemon_stopping")
        await self._stop_ingest()
        if self.server is not None:
            await self.server.close(SHUTDOWN_REASON)
        if self.metrics_listener is not None:
            self.metrics_listener.close()
        if self._metrics_collector is not None:
            unregister_server(self._metrics_collector)
            self._metrics_collector = None
        if self.event_log is not None:
            self.event_log.close()
        log.info("event=daemon_stopped")

    async def _stop_ingest(self) -> None:
        """Stop the relay (or leave the cluster), the background tasks and the trim; write what is pending."""
        if self.relay is not None:
            self.relay.stop()
        if self.cluster is not None:
            await self.cluster.stop()  # stops ingest (unpublished batches are re-read by the next leader)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.trimmer is not None:
            await self.trimmer.wait_idle()  # a compaction thread may still be inside RocksDB
        if self.sealer is not None:
            await self.sealer.wait_idle()  # so may the archive writer's step
            self.sealer.stop()  # the active segment's file: rebuilt from the log at the next start
        if self.pipeline is not None:
            self.pipeline.flush()
            if self.pipeline.gate is not None:
                await self.pipeline.gate.close()  # held frames were never acknowledged: re-read on restart

    async def run_until_signalled(self) -> None:
        """Serve until SIGTERM/SIGINT; a second signal exits at once."""
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()

        def on_signal(signum: int) -> None:
            if stop_requested.is_set():
                # The operator insists: leave now. RocksDB's WAL already holds every batch
                # a client saw, so nothing acknowledged is lost (docs/architecture.md §2, invariant 3).
                log.error("event=forced_exit signal=%d", signum)
                logging.shutdown()
                os._exit(1)
            log.info("event=signal_received signal=%d action=stop", signum)
            stop_requested.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        loop.add_signal_handler(signal.SIGHUP, on_hangup, "main")
        self.freeze_gc = True
        if await self._start_unless_stopped(stop_requested):
            await stop_requested.wait()
        try:
            await asyncio.wait_for(self.stop(), timeout=SHUTDOWN_TIMEOUT_S)
        except asyncio.TimeoutError:
            log.error("event=shutdown_timeout timeout_s=%g", SHUTDOWN_TIMEOUT_S)
            logging.shutdown()
            os._exit(1)

    async def _start_unless_stopped(self, stop_requested: asyncio.Event) -> bool:
        """start(), given up at once if a stop is asked for meanwhile (False: stop without serving).

        A signal during start-up (spawning workers, binding, joining) is not left waiting for the
        start-up to finish: the start is cancelled where it stands and stop() releases what opened.
        """
        starting = asyncio.ensure_future(self.start())
        stopping = asyncio.ensure_future(stop_requested.wait())
        try:
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if starting.done():
            if starting.cancelled() or starting.exception() is not None:
                await self.stop()  # release what did open (the log, a bound listener) before reporting
                starting.result()  # raises
            return True
        log.warning("event=startup_interrupted msg=\"stop asked for during start-up: stopping what started\"")
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        return False
