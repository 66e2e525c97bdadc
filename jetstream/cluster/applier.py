"""Every node's side of the stream: apply its messages, in order, to the local log.

Owns: the ordered consumer that reads the stream from the message after the one the
local log last applied, and the apply step: one RocksDB write batch per message
(its events, its relay cursor and its stream sequence together), then the live ring,
then the same new-events notification the single-node pipeline gives (which wakes
subscribers). So every node stores the same time_us, the same seq (the leader's, carried in
the message) and the same bytes, and a restarted node resumes right after its applied
sequence. A node whose next message has already expired from the stream (stopped longer
than --event-ttl) skips ahead, logged: those events are past their retention everywhere,
and its event seqs jump over theirs. A message from a leader that predates seq (wire
JSB1) is numbered here, continuing the log's newest seq: every node that applied the same
messages numbers it the same.
It must never sequence, re-render or reorder events, and never apply a message twice.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from jetstream.cluster import metrics as cluster_metrics
from jetstream.cluster.wire import WireError, decode_batch
from jetstream.implementation import frame_of_record
from jetstream.log.store import SeqError

log = logging.getLogger(__name__)

RESTART_DELAY_S = 1.0
# The ordered consumer's settings (the cluster bench taps the stream with the same ones).
SUBSCRIBE_OPTIONS = {"idle_heartbeat": 1.0, "pending_msgs_limit": 4096, "pending_bytes_limit": 256 * 1024 * 1024}


class ApplyGap(RuntimeError):
    """A message arrived out of order: resubscribe from the last applied one."""


class StreamApplier:
    def __init__(self, js, subject: str, stream: str, event_log, ring, notify: Callable[[], None],
                 spawn: Callable | None = None) -> None:
        self._js = js
        self.subject = subject
        self.stream = stream
        self.event_log = event_log
        self.ring = ring
        self.notify = notify
        self.applied_seq = event_log.stream_seq()
        self.stream_last_seq = self.applied_seq  # as last seen in a message's metadata or stream info
        self.applied_messages = 0
        self.applied_events = 0
        self._waiters: list[tuple[int, asyncio.Future]] = []
        # Messages below this were gone from the stream when we subscribed (max_age): a jump
        # over them is expected, any other jump is a delivery gap and we resubscribe.
        self._expired_below = 0
        self._task: asyncio.Task | None = None
        self._stopping = False
        self.failed_reason: str | None = None
        # jetstream.tasks.TaskSupervisor.spawn (the daemon's): the apply task cannot die unseen.
        self._spawn = spawn or (lambda awaitable, name: asyncio.ensure_future(awaitable))
        # Whether it applies (cluster_apply_stuck): failed subscriptions/applies since the last
        # applied message, the last error, and when it last applied or was current (monotonic).
        self.failures_in_row = 0
        self.last_error = ""
        self.last_ok_at = time.monotonic()

    # -- lifetime ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = self._spawn(self._run(), "cluster_apply")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        """Subscribe from applied_seq + 1 and apply; on any subscription failure, start again."""
        while not self._stopping:
            try:
                await self._consume()
            except asyncio.CancelledError:
                raise
            except ApplyGap as exc:
                cluster_metrics.APPLY_ERRORS.labels("gap").inc()
                self._failed(exc)
                log.warning("event=cluster_apply_resubscribe applied_seq=%d reason=%s", self.applied_seq, exc)
            except Exception as exc:  # noqa: BLE001 - NATS gone, consumer lost: resubscribe from what we applied
                cluster_metrics.APPLY_ERRORS.labels("subscription").inc()
                self._failed(exc)
                # One warning per run of failures, the retries at debug: a lasting one degrades
                # /healthz (cluster_apply_stuck, raised by the node) with the count and this error.
                level = logging.WARNING if self.failures_in_row == 1 else logging.DEBUG
                log.log(level, "event=cluster_apply_restart applied_seq=%d failures_in_row=%d error=%r",
                        self.applied_seq, self.failures_in_row, str(exc)[:200])
                await asyncio.sleep(RESTART_DELAY_S)

    def _failed(self, exc: Exception) -> None:
        self.failures_in_row += 1
        self.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"

    def stuck_for_s(self, now: float) -> float:
        """How long it has been failing or behind without applying anything (0.0: it applies)."""
        if self.failures_in_row == 0 and self.lag_messages == 0:
            self.last_ok_at = now
        return max(0.0, now - self.last_ok_at)

    async def _consume(self) -> None:
        from nats.js.api import ConsumerConfig, DeliverPolicy

        info = await asyncio.wait_for(self._js.stream_info(self.stream), 5.0)
        self.stream_last_seq = max(self.stream_last_seq, info.state.last_seq)
        self._expired_below = info.state.first_seq
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=self.applied_seq + 1)
        failed = asyncio.get_running_loop().create_future()

        async def on_message(msg) -> None:
            # A callback, not next_msg(): nats-py makes a task per next_msg() call, which cost
            # more than the apply itself. An error must end this subscription, not reach
            # nats-py's error callback, so it is handed to the waiting coroutine instead.
            if failed.done():
                return
            try:
                self.apply_message(msg)
            except Exception as exc:  # noqa: BLE001 - re-raised below, in _consume
                failed.set_exception(exc)

        sub = await self._js.subscribe(self.subject, stream=self.stream, ordered_consumer=True, config=config,
                                       cb=on_message, **SUBSCRIBE_OPTIONS)
        log.info("event=cluster_apply_subscribed from_seq=%d", self.applied_seq + 1)
        try:
            await failed
        finally:
            try:
                await sub.unsubscribe()
            except Exception:  # noqa: BLE001 - the connection may already be gone
                pass

    # -- the apply step ---------------------------------------------------------------------------
    def apply_message(self, msg) -> None:
        meta = msg.metadata
        seq = meta.sequence.stream
        self.stream_last_seq = max(self.stream_last_seq, seq + (meta.num_pending or 0))
        self.apply(seq, msg.data)

    def apply(self, seq: int, data: bytes) -> None:
        """Apply stream message `seq`: log (events + cursor + seq in one batch), ring, notify."""
        if seq <= self.applied_seq:
            return  # redelivered after a consumer reset: already in the log
        expired_gap = False
        if seq != self.applied_seq + 1:
            if seq > self._expired_below:
                raise ApplyGap(f"message {seq} arrived after {self.applied_seq}")
            cluster_metrics.APPLY_ERRORS.labels("expired_gap").inc()
            log.warning("event=cluster_apply_gap applied_seq=%d next_seq=%d (older messages expired from the stream)",
                        self.applied_seq, seq)
            expired_gap = True
        try:
            batch = decode_batch(data)
        except WireError as exc:
            # Only our leaders publish to the subject; count it, keep the stream position moving.
            cluster_metrics.APPLY_ERRORS.labels("bad_message").inc()
            log.error("event=cluster_apply_bad_message seq=%d size=%d error=%s", seq, len(data), exc)
            self.event_log.append([], None, stream_seq=seq)
            self._advance(seq, 0)
            return
        events = batch.events
        if events and events[0].seq == 0:  # a JSB1 message: number its events here
            first = self.event_log.newest_seq() + 1
            events = [event._replace(seq=first + index) for index, event in enumerate(events)]
        events = self._with_v2_frames(events)
        self._append(seq, events, batch.relay_cursor, expired_gap)
        ring_append = self.ring.append
        for event in events:
            ring_append(event)
        self._advance(seq, len(events))
        if events:
            self.notify()
            cluster_metrics.APPLY_DELAY_SECONDS.observe(max(0.0, time.time() - events[0].time_us / 1e6))

    def _with_v2_frames(self, events: list) -> list:
        """Each event with its v2 frame, rendered from its record (the same on every node); the
        frame's zstd form is made by the ring on the first compressed v2 read (ring.pyx)."""
        return [event._replace(v2=frame_of_record(event.v2_record, event.seq, event.time_us), v2_zstd=b"")
                for event in events]

    def _append(self, seq: int, events: list, relay_cursor: int | None, expired_gap: bool) -> None:
        """The log write of one message; a seq jump the log refuses is applied anyway, loudly.

        Every node applies the same messages, so refusing would stop every node at the same
        message for good; storing the leader's seqs keeps them identical everywhere.
        """
        jump = expired_gap or self._continues_after_recorded_gap(seq, events)
        try:
            self.event_log.append(events, relay_cursor, stream_seq=seq, seq_jump=jump)
        except SeqError as exc:
            if not events or events[0].seq <= self.event_log.newest_seq():
                raise  # a repeated or regressed seq: never stored twice
            cluster_metrics.APPLY_ERRORS.labels("seq_jump").inc()
            log.error("event=cluster_apply_seq_jump stream_seq=%d newest_seq=%d first_seq=%d error=%s",
                      seq, self.event_log.newest_seq(), events[0].seq, exc)
            self.event_log.append(events, relay_cursor, stream_seq=seq, seq_jump=True)

    def _continues_after_recorded_gap(self, seq: int, events: list) -> bool:
        """Whether `events` start right after a gap the log records (a bootstrap hole: bootstrap.py has
        reported it, with a problem and the gap record readers are closed with): a jump this node
        expects, applied without a second report."""
        if not events:
            return False
        first, newest = events[0].seq, self.event_log.newest_seq()
        if first <= newest + 1:
            return False
        for gap in self.event_log.gaps():
            if gap.get("to_seq") == first - 1 and newest < gap.get("from_seq", 0):
                log.info("event=cluster_apply_after_recorded_gap stream_seq=%d first_seq=%d gap_from_seq=%d "
                         "reason=%s", seq, first, gap["from_seq"], gap.get("reason", ""))
                return True
        return False

    def _advance(self, seq: int, events: int) -> None:
        self.applied_seq = seq
        self.failures_in_row = 0
        self.last_ok_at = time.monotonic()
        self.applied_messages += 1
        self.applied_events += events
        cluster_metrics.APPLIED_EVENTS.inc(events)
        cluster_metrics.APPLIED_SEQ.set(seq)
        if self._waiters:
            still = []
            for wanted, future in self._waiters:
                if wanted <= seq:
                    if not future.done():
                        future.set_result(True)
                else:
                    still.append((wanted, future))
            self._waiters = still

    async def wait_applied(self, seq: int, timeout_s: float | None = None) -> bool:
        """Wait until the message `seq` is applied; False on timeout."""
        if self.applied_seq >= seq:
            return True
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((seq, future))
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout_s)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            self._waiters = [(w, f) for w, f in self._waiters if f is not future]

    async def refresh_stream_last_seq(self, timeout_s: float = 2.0) -> int:
        """Ask the stream for its last sequence (what this node must apply to be current)."""
        info = await asyncio.wait_for(self._js.stream_info(self.stream), timeout_s)
        self.stream_last_seq = max(self.stream_last_seq, info.state.last_seq)
        return info.state.last_seq

    @property
    def lag_messages(self) -> int:
        return max(0, self.stream_last_seq - self.applied_seq)

    def lag_seconds(self) -> float:
        if self.lag_messages == 0:
            return 0.0
        newest = self.event_log.hwm()
        return max(0.0, time.time() - newest / 1e6) if newest else 0.0
