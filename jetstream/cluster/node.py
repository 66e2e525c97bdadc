"""One daemon as a member of a cluster: NATS connection, lease, leadership terms, cursor gate.

Owns: connecting to the NATS servers of `--cluster`, creating the stream and the lease
bucket if absent, running the applier (every node, always), and the leadership cycle:
take the lease -> apply the stream up to its last message -> start ingest (a fresh
sequencer above the applied time_us, the relay from the applied relay cursor, batches
handed to a FencedPublisher expecting the applied sequence) -> renew -> on a lost lease,
an expired lease or a failed publish, stop ingest at once and drop what was not published.
Also: the cursor gate (a subscriber whose cursor is ahead of this node's log waits until
the node has applied what the stream held when it connected, at most
--cluster-cursor-wait), and the cluster part of /healthz.
A new node with the archive on first fills its log window from it (bootstrap.py), then applies
the stream from the message after what the archive gave.
Also what keeps the node from being useful, for /healthz: not joined (or the NATS connection
lost) for longer than --lease-ttl (`cluster_not_joined`), and an applier that has not applied
anything for --lease-ttl while failing or behind (`cluster_apply_stuck`); and one warning per
NATS outage (`cluster_nats_unreachable`), the connection attempts at debug.
It must never write the local log itself (the applier does) and never publish without
the fence.
"""
from __future__ import annotations

import asyncio
import logging
import random
import socket
import time
from typing import Callable

from jetstream.cluster import metrics as cluster_metrics
from jetstream.cluster.applier import StreamApplier
from jetstream.cluster.lease import Lease
from jetstream.cluster.publisher import FencedPublisher
from jetstream.ingest.pipeline import IngestPipeline
from jetstream.ingest.relay_client import RelayClient
from jetstream.ingest.sequencer import Sequencer
from jetstream.instance import cluster_instance_id
from jetstream.tasks import TaskSupervisor

log = logging.getLogger(__name__)

NATS_TIMEOUT_S = 2.0
STOP_APPLY_WAIT_S = 5.0  # a graceful stop waits this long at most to apply what the stream holds
STOP_PUBLISH_WAIT_S = 2.0  # and first this long at most for the leader's publish in flight to be answered
CURSOR_TOO_FAR_CODE = 1013  # try again later: another node (or this one, later) can serve it
HEALTH_CHECK_INTERVAL_S = 0.5  # how often the node re-checks its /healthz problems
BOOTSTRAP_RETRY_S = 5.0  # a bootstrap from the archive that failed mid-way is planned again after this


def cluster_urls(text: str) -> list[str]:
    """`nats://h1:4222,nats://h2:4222` -> the list nats-py takes (blank entries ignored)."""
    return [url.strip() for url in text.split(",") if url.strip()]


def default_node_name() -> str:
    return socket.gethostname()


def subject_of(stream: str) -> str:
    return f"{stream}.batches"


def cursor_wait_reason(cursor: int, applied_time_us: int, wait_s: float) -> str:
    return (f"cursor {cursor} is ahead of this node's log (at {applied_time_us}) "
            f"after {wait_s:g}s; retry or use another node")


class IngestTerm:
    """One leadership term's ingest: a pipeline handing batches to the publisher, and the relay."""

    def __init__(self, cfg, event_log, ring, compressor, notify, publisher: FencedPublisher,
                 relay_cursor_override: int | None, pipeline_options: dict | None = None,
                 tasks: TaskSupervisor | None = None) -> None:
        self.publisher = publisher
        self.tasks = tasks or TaskSupervisor()
        self.pipeline = IngestPipeline(
            event_log, ring, Sequencer(event_log.hwm()), compressor, notify,
            socket_url=cfg.ws_url, group_commit_s=cfg.group_commit_ms / 1000.0,
            verify_mst=cfg.verify_mst, hand_off=publisher.submit, **(pipeline_options or {}),
            on_relay_error=lambda detail: self.relay.reconnect("error_frame"),
        )
        if relay_cursor_override is not None:
            self.pipeline.last_accepted_seq = relay_cursor_override
        self.relay = RelayClient(
            cfg.ws_url, self.pipeline.submit, lambda: self.pipeline.last_accepted_seq,
            liveness_ttl_s=cfg.liveness_ttl, before_connect=self.pipeline.flush,
            backoff_initial_s=cfg.relay_backoff_initial, backoff_max_s=cfg.relay_backoff_max,
            problems=self.tasks.problems,  # relay_not_a_firehose shows on the leader's /healthz too
        )
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self.publisher.start()
        self._task = self.tasks.spawn(self.relay.run(), "cluster_relay")

    async def settle(self, timeout_s: float) -> bool:
        """A graceful stop: read no more of the relay, and let the publish in flight be answered
        while the lease is still ours (then `stop`); True when nothing was left in flight."""
        self._stop_reading()
        return await self.publisher.finish_in_flight(timeout_s)

    def _stop_reading(self) -> None:
        self.relay.stop()
        self.pipeline.paused = True

    def stop(self) -> None:
        """Stop reading the relay and drop every frame and batch not yet published."""
        self._stop_reading()
        self.pipeline.reset_to_durable_cursor()
        self.publisher.stop()
        if self._task is not None:
            self._task.cancel()


class ClusterNode:
    def __init__(self, cfg, event_log, ring, compressor, notify: Callable[[], None],
                 pipeline_options: dict | None = None, tasks: TaskSupervisor | None = None) -> None:
        self.cfg = cfg
        # The daemon's: every task of the node runs under it, and the node raises its problems there.
        self.tasks = tasks or TaskSupervisor()
        self.problems = self.tasks.problems
        self.pipeline_options = pipeline_options or {}
        self.urls = cluster_urls(cfg.cluster)
        self.node_name = cfg.node_name or default_node_name()
        self.stream = cfg.cluster_stream
        self.subject = subject_of(self.stream)
        self.lease_ttl_s = cfg.lease_ttl
        self.cursor_wait_s = cfg.cluster_cursor_wait
        self.event_log = event_log
        self.ring = ring
        self.compressor = compressor
        self.notify = notify
        self.nc = None
        self.js = None
        self.applier: StreamApplier | None = None
        self.lease: Lease | None = None
        self.term: IngestTerm | None = None
        self.leader_name: str | None = None
        self.leading_since: float | None = None
        self._term_task: asyncio.Task | None = None
        self._tasks: list[asyncio.Task] = []
        self._not_before = 0.0  # no lease attempt before this (monotonic): a cool-down after stepping down
        self._stopping = False
        self.ready = asyncio.Event()  # connected, stream and bucket exist, applier running
        self.cluster_id: str | None = None  # the instance id every node answers, once joined
        self.on_joined: Callable[[str], None] = lambda cluster_id: None
        # NATS outages: the one warning per outage went out; errors met; since when not joined/connected.
        self._unreachable_reported = False
        self.nats_errors = 0
        self.last_nats_error = ""
        self._cut_off_since: float | None = None
        # A new node filling its log from the archive before it applies the stream (bootstrap.py).
        self.bootstrap = None
        self._bootstrapping = False

    # -- lifetime ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Connect and join in the background; the daemon serves its local log meanwhile."""
        self._tasks.append(self.tasks.spawn(self._join(), "cluster_join"))
        self._tasks.append(self.tasks.spawn(self._watch_health(), "cluster_health"))

    async def _join(self) -> None:
        import nats

        attempt = 0
        while not self._stopping:
            attempt += 1
            try:
                self.nc = await nats.connect(
                    servers=self.urls, name=self.node_name, connect_timeout=NATS_TIMEOUT_S,
                    max_reconnect_attempts=-1, reconnect_time_wait=0.25, ping_interval=2, max_outstanding_pings=2,
                    error_cb=self._on_nats_error, disconnected_cb=self._on_nats_disconnected,
                    reconnected_cb=self._on_nats_reconnected)
                self.js = self.nc.jetstream(timeout=NATS_TIMEOUT_S)
                await self._ensure_stream()
                kv = await self._ensure_lease_bucket()
                await self._bootstrap_from_archive()
                break
            except Exception as exc:  # noqa: BLE001 - NATS not reachable yet: keep serving, keep trying
                self._note_nats_error(exc)
                # Connected but the stream or bucket cannot be had (no JetStream, no quorum): the first
                # attempt warns, the retries are at debug; a lasting failure is cluster_not_joined.
                level = logging.WARNING if attempt == 1 else logging.DEBUG
                log.log(level, "event=cluster_join_failed attempt=%d error=%r", attempt, str(exc)[:200])
                if self.nc is not None:
                    await self._close_nats()
                await asyncio.sleep(min(5.0, 0.5 * attempt))
        else:
            return
        self.lease = Lease(kv, self.node_name, self.lease_ttl_s)
        self.applier = StreamApplier(self.js, self.subject, self.stream, self.event_log, self.ring, self.notify,
                                     spawn=self.tasks.spawn)
        self.applier.start()
        self._tasks.append(self.tasks.spawn(self._lease_loop(), "cluster_lease"))
        self.ready.set()
        self._unreachable_reported = False
        log.info("event=cluster_joined node=%s stream=%s applied_seq=%d servers=%s instance=%s",
                 self.node_name, self.stream, self.applier.applied_seq, ",".join(self.urls), self.cluster_id)
        self.on_joined(self.cluster_id)

    async def _bootstrap_from_archive(self) -> None:
        """A new node with the archive on fills its log window from it first (jetstream/cluster/bootstrap.py);
        the applier then starts at the stream message after what the archive gave. Failures before
        anything was written fall back to applying the stream alone; later ones are retried."""
        from jetstream.cluster.bootstrap import ArchiveBootstrap, BootstrapUnavailable, needs_bootstrap

        if not needs_bootstrap(self.cfg, self.event_log):
            return
        self._bootstrapping = True
        try:
            while not self._stopping:
                self.bootstrap = ArchiveBootstrap(self.cfg, self.event_log, self.js, self.stream, self.subject,
                                                  self.ring, self.notify, self.compressor, self.problems)
                try:
                    await self.bootstrap.run()
                    return
                except asyncio.CancelledError:
                    raise
                except BootstrapUnavailable as exc:
                    self.bootstrap.report.state = "unavailable"
                    log.warning("event=cluster_bootstrap_unavailable reason=%r action=apply_the_stream_alone",
                                str(exc)[:300])
                    return
                except Exception as exc:  # noqa: BLE001 - the store or NATS failed mid-way: plan again, resume
                    self.bootstrap.report.state = "failed"
                    log.warning("event=cluster_bootstrap_failed error=%r retry_s=%g", str(exc)[:300],
                                BOOTSTRAP_RETRY_S)
                    await asyncio.sleep(BOOTSTRAP_RETRY_S)
        finally:
            self._bootstrapping = False

    async def _ensure_stream(self) -> None:
        from nats.js.api import DiscardPolicy, StorageType, StreamConfig
        from nats.js.errors import NotFoundError

        config = StreamConfig(name=self.stream, subjects=[self.subject], storage=StorageType.FILE,
                              num_replicas=self.cfg.cluster_replicas, max_age=self.cfg.event_ttl,
                              discard=DiscardPolicy.OLD, max_msg_size=-1)
        try:
            info = await self.js.stream_info(self.stream)
        except NotFoundError:
            info = await self.js.add_stream(config)
            log.info("event=cluster_stream_created stream=%s replicas=%d max_age_s=%g",
                     self.stream, self.cfg.cluster_replicas, self.cfg.event_ttl)
        else:
            if info.config.max_age != self.cfg.event_ttl:
                await self.js.update_stream(config)
                log.info("event=cluster_stream_updated stream=%s max_age_s=%g", self.stream, self.cfg.event_ttl)
        # Read back, not taken from the create answer: every node must derive the id from the same fields.
        info = await self.js.stream_info(self.stream)
        self.cluster_id = cluster_instance_id(self.stream, str(info.created))

    async def _ensure_lease_bucket(self):
        from nats.js.errors import BucketNotFoundError, NotFoundError

        bucket = f"{self.stream}_lease"
        try:
            return await self.js.key_value(bucket)
        except (BucketNotFoundError, NotFoundError):
            return await self.js.create_key_value(bucket=bucket, ttl=self.lease_ttl_s, history=1,
                                                  replicas=self.cfg.cluster_replicas)

    async def stop(self) -> None:
        self._stopping = True
        if self.term is not None:
            settled = await self.term.settle(STOP_PUBLISH_WAIT_S)
            if not settled:
                log.warning("event=cluster_stop_publish_unanswered node=%s wait_s=%g msg=\"the last publish was "
                            "not answered in time; if it landed, the next start applies it from the stream\"",
                            self.node_name, STOP_PUBLISH_WAIT_S)
            self._step_down("shutdown", cool_down=False)
        if self.lease is not None and self.lease.held:
            await self.lease.release(NATS_TIMEOUT_S)
        await self._apply_what_the_stream_holds(STOP_APPLY_WAIT_S)
        for task in self._tasks + ([self._term_task] if self._term_task else []):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.applier is not None:
            await self.applier.stop()
        await self._close_nats()

    async def _apply_what_the_stream_holds(self, timeout_s: float) -> None:
        """At a graceful stop: apply what the stream holds now (a leader's own last publishes, acked
        but not yet applied), so the log a stopped node leaves equals the stream it saw; bounded, and
        nothing is lost past the bound (a restart applies the rest from the stream)."""
        applier = self.applier
        if applier is None or not self.nats_connected:
            return
        started = time.monotonic()
        last, reached = await self._apply_stream_last(started, timeout_s)
        log.info("event=cluster_stop_applied node=%s applied_seq=%d stream_last_seq=%d complete=%s waited_s=%.3f",
                 self.node_name, applier.applied_seq, last, str(reached).lower(), time.monotonic() - started)

    async def _apply_stream_last(self, started: float, timeout_s: float) -> tuple[int, bool]:
        """Ask the stream for its last message and wait until it is applied, within `timeout_s` of
        `started` (monotonic); (that message, whether it was applied in time)."""
        applier = self.applier
        try:
            last = await applier.refresh_stream_last_seq(min(NATS_TIMEOUT_S, timeout_s))
        except Exception:  # noqa: BLE001 - NATS unreachable: what the applier last saw
            last = applier.stream_last_seq
        return last, await applier.wait_applied(last, max(0.0, timeout_s - (time.monotonic() - started)))

    async def _close_nats(self) -> None:
        nc, self.nc = self.nc, None
        if nc is not None:
            try:
                await asyncio.wait_for(nc.close(), NATS_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - closing a dead connection
                pass

    async def _on_nats_error(self, exc: Exception) -> None:
        """nats-py's callback, once per failed connection attempt (it retries inside connect())."""
        log.debug("event=cluster_nats_error error=%r", exc)
        self._note_nats_error(exc)
        if not self.nats_connected:
            self._report_unreachable_once()

    def _note_nats_error(self, exc: Exception) -> None:
        self.nats_errors += 1
        self.last_nats_error = f"{type(exc).__name__}: {str(exc)[:200]}"

    def _report_unreachable_once(self) -> None:
        """One plain-words line per NATS outage (not per attempt), like the relay's `relay_unreachable`."""
        if self._unreachable_reported:
            return
        self._unreachable_reported = True
        log.warning('event=cluster_nats_unreachable node=%s servers=%s error=%r msg="cannot reach the NATS '
                    'servers of --cluster; retrying until one answers; the local log is served meanwhile and '
                    '/healthz is degraded after --lease-ttl"', self.node_name, ",".join(self.urls),
                    self.last_nats_error)

    @property
    def nats_connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    async def _on_nats_disconnected(self) -> None:
        log.warning("event=cluster_nats_disconnected node=%s", self.node_name)

    async def _on_nats_reconnected(self) -> None:
        self._unreachable_reported = False
        log.info("event=cluster_nats_reconnected node=%s server=%s", self.node_name,
                 getattr(self.nc, "connected_url", None) and self.nc.connected_url.netloc)

    # -- health (/healthz problems) ----------------------------------------------------------------
    async def _watch_health(self) -> None:
        while not self._stopping:
            self.check_health(time.monotonic())
            await asyncio.sleep(HEALTH_CHECK_INTERVAL_S)

    def check_health(self, now: float) -> None:
        """Raise or clear `cluster_not_joined` and `cluster_apply_stuck`; both wait --lease-ttl, so a
        NATS server's failover (the client moves to another in a second) does not flap /healthz."""
        joined = self.ready.is_set() and self.nats_connected
        if not joined and self._bootstrapping and self.nats_connected:
            self._cut_off_since = None  # joined NATS, loading the archive's window first: not cut off
            return
        if not joined:
            if self._cut_off_since is None:
                self._cut_off_since = now
            cut_off_s = now - self._cut_off_since
            if cut_off_s >= self.lease_ttl_s:
                what = "lost its NATS connection" if self.ready.is_set() else "has not joined the cluster"
                self.problems.raise_problem(
                    "cluster_not_joined",
                    f"node {self.node_name} {what} for {cut_off_s:.0f}s (servers {','.join(self.urls)}; "
                    f"{self.nats_errors} connection errors, last: {self.last_nats_error or 'none'}); it serves "
                    f"its local log, applied to stream seq {self.event_log.stream_seq()}",
                    "check that this node reaches the NATS servers of --cluster and that they run JetStream "
                    "with a quorum (nats-server -js, cluster routes); the node joins by itself once they answer")
            return
        self._cut_off_since = None
        self.problems.clear("cluster_not_joined")
        stuck_s = self.applier.stuck_for_s(now)
        if stuck_s >= self.lease_ttl_s:
            applier = self.applier
            self.problems.raise_problem(
                "cluster_apply_stuck",
                f"node {self.node_name} has applied nothing for {stuck_s:.0f}s at stream seq {applier.applied_seq} "
                f"of {applier.stream_last_seq} ({applier.failures_in_row} failed attempts in a row, last: "
                f"{applier.last_error or 'none'})",
                "if the error says `time_us ... is not above the previous`, this node's log has diverged from the "
                "stream: stop the node, run `jetstream cluster reset-node --data-dir DIR --yes`, start it again; "
                "otherwise check NATS (the stream's health: `nats stream info`)")
        else:
            self.problems.clear("cluster_apply_stuck")

    # -- leadership -------------------------------------------------------------------------------
    async def _lease_loop(self) -> None:
        period = self.lease_ttl_s / 3
        while not self._stopping:
            try:
                await self._lease_step(period)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - timeouts, NATS unreachable: the TTL decides
                log.debug("event=cluster_lease_step_failed error=%r", exc)
            if self.lease.held and self.lease.expired_locally():
                self._step_down("lease_expired")
            self._update_gauges()
            await asyncio.sleep(period * (0.8 + 0.2 * random.random()))

    async def _lease_step(self, period: float) -> None:
        lease = self.lease
        if lease.held:
            if not await lease.renew(period):
                self._step_down("lease_lost")
        elif time.monotonic() >= self._not_before and self.nc is not None and self.nc.is_connected:
            if await lease.try_acquire(period):
                self._begin_term()
        self.leader_name = self.node_name if lease.held else await lease.holder(period)
        await self.applier.refresh_stream_last_seq(period)

    def _begin_term(self) -> None:
        cluster_metrics.LEADER_CHANGES.labels("elected").inc()
        log.info("event=cluster_lease_acquired node=%s", self.node_name)
        self._term_task = self.tasks.spawn(self._lead(), "cluster_lead")

    async def _lead(self) -> None:
        """Catch up with the stream, then ingest; on any failure before ingest starts, step down.

        Stepping down gives the lease back: a node holding it without ingesting would stop the
        whole cluster's ingest while renewing it forever.
        """
        try:
            await self._catch_up_and_ingest()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - stream info timed out (NATS failover, load): try later
            log.warning("event=cluster_lead_failed node=%s error=%r", self.node_name, str(exc)[:200])
            self._step_down("lead_failed")

    async def _catch_up_and_ingest(self) -> None:
        last = await self._stream_last_seq_while_leading()
        if last is None:
            return
        if not await self.applier.wait_applied(last, self.lease_ttl_s):
            log.warning("event=cluster_catch_up_slow applied_seq=%d stream_last_seq=%d",
                        self.applier.applied_seq, last)
            self._step_down("catch_up_timeout")
            return
        if not self.lease.held or self._stopping:
            return
        # Read together, with no await in between: the fence, the time_us floor and the relay
        # cursor all describe the same applied message.
        expected = self.applier.applied_seq
        override = self.cfg.override_relay_cursor if expected == 0 and self.cfg.override_relay_cursor >= 0 else None
        # A publish NATS does not answer is retried (same message, same fence) for as long as the lease
        # could last: a NATS server's failover (a raft election, 4-9 s) is ridden out, not a hand-over.
        publisher = FencedPublisher(self.js, self.subject, self.stream, expected, self._on_publish_failure,
                                    publish_timeout_s=self.lease_ttl_s, spawn=self.tasks.spawn)
        self.term = IngestTerm(self.cfg, self.event_log, self.ring, self.compressor, self.notify, publisher,
                               override, self.pipeline_options, self.tasks)
        self.term.start()
        self.leading_since = time.monotonic()
        cluster_metrics.ROLE_LEADER.set(1)
        log.info("event=cluster_leading node=%s expected_last_seq=%d hwm=%d relay_cursor=%s",
                 self.node_name, expected, self.event_log.hwm(), self.term.pipeline.last_accepted_seq)

    async def _stream_last_seq_while_leading(self) -> int | None:
        """The stream's last sequence, asked again while the lease is ours (None once it is not).

        A stream whose nats-server leader just died answers nothing until its raft group elects
        another (4-9 s): the new leader waits it out instead of handing the lease on again.
        """
        while self.lease.held and not self._stopping:
            try:
                return await self.applier.refresh_stream_last_seq(NATS_TIMEOUT_S)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - no stream leader yet, NATS reconnecting: ask again
                log.debug("event=cluster_stream_info_retry error=%r", str(exc)[:200])
                await asyncio.sleep(0.2)
        return None

    def _on_publish_failure(self, reason: str) -> None:
        self._step_down(reason)

    def _step_down(self, reason: str, *, cool_down: bool = True) -> None:
        """Stop ingesting now; give the lease up so another node can take it."""
        term, self.term = self.term, None
        if self._term_task is not None and not self._term_task.done() and self._term_task is not asyncio.current_task():
            self._term_task.cancel()
        self._term_task = None
        if term is not None:
            term.stop()
        was_held = self.lease is not None and self.lease.held
        if was_held:
            self.tasks.spawn(self.lease.release(NATS_TIMEOUT_S), "cluster_lease_release")
        if term is None and not was_held:
            return
        self.leading_since = None
        cluster_metrics.ROLE_LEADER.set(0)
        cluster_metrics.LEADER_CHANGES.labels("stepped_down").inc()
        if cool_down:
            self._not_before = time.monotonic() + self.lease_ttl_s
        log.warning("event=cluster_stepped_down node=%s reason=%s", self.node_name, reason)

    @property
    def is_leader(self) -> bool:
        return self.term is not None

    @property
    def relay(self) -> RelayClient | None:
        return self.term.relay if self.term is not None else None

    # -- cursor gate (SubscribeServer.cursor_gate) ------------------------------------------------
    def hold(self, subscriber, cursor: int) -> None:
        """`subscriber`'s cursor is ahead of this node's log: start it once the node has caught up."""
        self.tasks.spawn(self._release_when_applied(subscriber, cursor), "cluster_cursor_gate")

    async def _release_when_applied(self, subscriber, cursor: int) -> None:
        if await self.caught_up_with_stream(cursor):
            subscriber.cursor_reached()
            return
        from picows import WSCloseCode

        subscriber.close(WSCloseCode(CURSOR_TOO_FAR_CODE),
                         cursor_wait_reason(cursor, self.event_log.hwm(), self.cursor_wait_s))

    async def caught_up_with_stream(self, cursor: int) -> bool:
        """Wait (at most --cluster-cursor-wait) until this node has applied what the stream holds now.

        The cursor gate's wait, for this process's readers and for --workers' workers (which
        ask over their channel). Counted and logged here, once per wait.
        """
        started = time.monotonic()
        reached = False
        try:
            await asyncio.wait_for(self.ready.wait(), self.cursor_wait_s)  # not joined yet: it may within the wait
        except asyncio.TimeoutError:
            pass
        if self.applier is not None:
            _, reached = await self._apply_stream_last(started, self.cursor_wait_s)
        if reached:
            cluster_metrics.CURSOR_WAITS.labels("caught_up").inc()
            log.info("event=cluster_cursor_wait_caught_up cursor=%d applied_time_us=%d waited_s=%.3f",
                     cursor, self.event_log.hwm(), time.monotonic() - started)
            return True
        cluster_metrics.CURSOR_WAITS.labels("timed_out").inc()
        log.info("event=cluster_cursor_wait_timeout cursor=%d applied_time_us=%d", cursor, self.event_log.hwm())
        return False

    # -- reporting --------------------------------------------------------------------------------
    def _update_gauges(self) -> None:
        applier = self.applier
        cluster_metrics.APPLIED_TIME_US.set(self.event_log.hwm())
        cluster_metrics.STREAM_LAST_SEQ.set(applier.stream_last_seq)
        cluster_metrics.LAG_MESSAGES.set(applier.lag_messages)
        cluster_metrics.LAG_SECONDS.set(applier.lag_seconds())

    def report(self) -> dict:
        applier = self.applier
        return {
            "node": self.node_name,
            "cluster": self.stream,
            "cluster_id": self.cluster_id,
            "role": "leader" if self.is_leader else "follower",
            "leader": self.leader_name,
            "nats_connected": self.nats_connected,
            "applied_stream_seq": applier.applied_seq if applier else self.event_log.stream_seq(),
            "applied_time_us": self.event_log.hwm(),
            "stream_last_seq": applier.stream_last_seq if applier else None,
            "replication_lag_messages": applier.lag_messages if applier else None,
            "replication_lag_seconds": round(applier.lag_seconds(), 3) if applier else None,
            "bootstrap": self.bootstrap.report.as_dict() if self.bootstrap is not None else None,
        }
