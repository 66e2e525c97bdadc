"""The leader's side of the stream: publish each ingest batch, fenced by sequence.

Owns: turning the pipeline's sequenced batches into stream messages, in order, one
publish in flight at a time, each carrying `Nats-Expected-Last-Sequence` = the sequence
of the message before it. When another leader has written in between (or NATS did not
answer), the publish fails and the publisher gives up for good: it drops what it still
holds and reports the failure, and the node steps down. Batches waiting while a publish
is in flight are merged into the next message (whole batches only, so a message's relay
cursor always covers exactly its events) up to MAX_MESSAGE_BYTES.
A publish NATS does not answer (the stream's leader died, a new one is being elected) is sent
again, the same message under the same fence, every PUBLISH_ATTEMPT_TIMEOUT_S until
publish_timeout_s: only one copy can be stored at the fenced sequence, and when the answer is
"wrong last sequence" the message stored there is read back: ours (its Nats-Msg-Id, unique per
term and sequence) means the earlier attempt landed. Without this a NATS server's failover cost
the whole publish timeout plus a leader hand-over (measured: 6 s of stalled ingest).
It must never publish a different message after a failure: a new leadership term
re-reads the stream's last message and the relay from its cursor instead. And it must
never have a second publish in flight: with the sequence as the only fence, message k+1
expects the sequence message k was predicted to get, so if another leader wrote exactly
one message there (refusing k), k+1 would be accepted after it; a message-id chain
(`Nats-Expected-Last-Msg-Id`) would refuse it, but nats-server 2.15 checks that header
only when applying a clustered stream's entry and treats a mismatch as a critical write
error that stops the stream taking any publish (tests/cluster/test_cluster_parts.py keeps
the race; bench/cluster_bench.py --breakdown shows the wait it would save is a few ms).
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from typing import Callable, Sequence

from jetstream.cluster import metrics as cluster_metrics
from jetstream.cluster.wire import encode_batch, encoded_size
from jetstream.events import Event

log = logging.getLogger(__name__)

# Below the 1 MiB nats-server default max_payload, so a stock server takes every message.
MAX_MESSAGE_BYTES = 900 * 1024
EXPECTED_LAST_SEQUENCE = "Nats-Expected-Last-Sequence"
MSG_ID = "Nats-Msg-Id"
PUBLISH_ATTEMPT_TIMEOUT_S = 1.0  # one attempt's wait for the ack; then the same message again
PUBLISH_RETRY_MIN_INTERVAL_S = 0.2
FENCED_ERROR_CODE = 10071  # JSStreamWrongLastSequenceErrF


class FencedPublisher:
    def __init__(self, js, subject: str, stream: str, expected_last_seq: int,
                 on_failure: Callable[[str], None], *, publish_timeout_s: float = 5.0,
                 max_message_bytes: int = MAX_MESSAGE_BYTES, spawn: Callable | None = None) -> None:
        self._js = js
        self.subject = subject
        self.stream = stream
        self.expected_last_seq = expected_last_seq
        self._on_failure = on_failure
        self.publish_timeout_s = publish_timeout_s
        self.max_message_bytes = max_message_bytes
        # (events, cursor, size, perf_counter at submit)
        self._queue: deque[tuple[list[Event], int | None, int, float]] = deque()
        self._ready = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.failed = False
        self.published_messages = 0
        self.published_events = 0
        self.retries = 0
        self._term_id = os.urandom(6).hex()  # this publisher's messages' ids: "<term id>:<sequence>"
        # jetstream.tasks.TaskSupervisor.spawn (the daemon's): the publish task cannot die unseen.
        self._spawn = spawn or (lambda awaitable, name: asyncio.ensure_future(awaitable))

    def start(self) -> None:
        self._task = self._spawn(self._run(), "cluster_publish")

    def submit(self, events: Sequence[Event], relay_cursor: int | None) -> None:
        """The pipeline's hand-off: one sequenced batch, published after those before it."""
        if self.failed:
            return
        if not events and relay_cursor is None:
            return
        size = encoded_size(events)
        now = time.perf_counter()
        if size <= self.max_message_bytes:
            self._queue.append((list(events), relay_cursor, size, now))
        else:
            self._queue.extend((*part, now) for part in self._split(list(events), relay_cursor))
        self._ready.set()

    def _split(self, events: list[Event], relay_cursor: int | None) -> list[tuple[list[Event], int | None, int]]:
        """One batch too big for a message, as several; only the last carries the relay cursor.

        Rare (one group commit of several hundred KiB). If leadership changes between the
        parts, the next leader re-reads those frames from the previous cursor, so the events
        of parts already published appear twice (with new time_us): logged, and bounded by one batch.
        """
        parts, current, size = [], [], 0
        for event in events:
            event_size = encoded_size((event,))
            if current and size + event_size > self.max_message_bytes:
                parts.append((current, None, size))
                current, size = [], 0
            current.append(event)
            size += event_size
        parts.append((current, relay_cursor, size))
        log.warning("event=cluster_batch_split events=%d messages=%d", len(events), len(parts))
        return parts

    @property
    def queued_batches(self) -> int:
        return len(self._queue)

    def _next_message(self) -> tuple[list[Event], int | None]:
        events, cursor, size, submitted = self._queue.popleft()
        cluster_metrics.PUBLISH_WAIT_SECONDS.observe(time.perf_counter() - submitted)
        while self._queue and size + self._queue[0][2] <= self.max_message_bytes:
            more, more_cursor, more_size, _ = self._queue.popleft()
            events += more
            size += more_size
            if more_cursor is not None:
                cursor = more_cursor
        return events, cursor

    async def _run(self) -> None:
        while not self.failed:
            await self._ready.wait()
            self._ready.clear()
            while self._queue and not self.failed:
                events, cursor = self._next_message()
                await self._publish(events, cursor)

    async def _publish(self, events: list[Event], cursor: int | None) -> None:
        payload = encode_batch(events, cursor)
        started = time.perf_counter()
        deadline = started + self.publish_timeout_s
        msg_id = f"{self._term_id}:{self.expected_last_seq + 1}"
        headers = {EXPECTED_LAST_SEQUENCE: str(self.expected_last_seq), MSG_ID: msg_id}
        attempts = 0
        while True:
            attempts += 1
            attempt_started = time.perf_counter()
            timeout = max(0.05, min(PUBLISH_ATTEMPT_TIMEOUT_S, deadline - attempt_started))
            try:
                ack = await self._js.publish(self.subject, payload, timeout=timeout, stream=self.stream,
                                             headers=headers)
                seq = ack.seq
                break
            except Exception as exc:  # noqa: BLE001 - fenced (another leader wrote), timeout, no NATS
                if getattr(exc, "err_code", None) == FENCED_ERROR_CODE:
                    if attempts > 1 and await self._stored_at_fence(msg_id, deadline):
                        seq = self.expected_last_seq + 1  # an earlier attempt of ours landed
                        break
                    self._fail(exc, len(events))
                    return
                if time.perf_counter() >= deadline or self.failed:  # failed: a stop is waiting, not a retry
                    self._fail(exc, len(events))
                    return
                self.retries += 1
                cluster_metrics.PUBLISH_RETRIES.inc()
                log.debug("event=cluster_publish_retry attempt=%d expected_last_seq=%d error=%r",
                          attempts, self.expected_last_seq, str(exc)[:200])
                # A quick refusal (no responders while the stream elects a leader) is not retried at once.
                await asyncio.sleep(max(0.0, PUBLISH_RETRY_MIN_INTERVAL_S - (time.perf_counter() - attempt_started)))
        if attempts > 1:
            log.info("event=cluster_publish_retried attempts=%d expected_last_seq=%d waited_s=%.2f",
                     attempts, self.expected_last_seq, time.perf_counter() - started)
        cluster_metrics.PUBLISH_SECONDS.observe(time.perf_counter() - started)
        self.expected_last_seq = seq
        self.published_messages += 1
        self.published_events += len(events)
        cluster_metrics.PUBLISHED_EVENTS.inc(len(events))

    async def _stored_at_fence(self, msg_id: str, deadline: float) -> bool:
        """Is the message at the fenced sequence ours (`msg_id`)? False when it cannot be read."""
        try:
            stored = await asyncio.wait_for(
                self._js.get_msg(self.stream, seq=self.expected_last_seq + 1),
                max(0.5, deadline - time.perf_counter()))
        except Exception as exc:  # noqa: BLE001 - cannot tell: treat it as fenced (the safe answer)
            log.debug("event=cluster_publish_fence_check_failed error=%r", str(exc)[:200])
            return False
        return (stored.headers or {}).get(MSG_ID) == msg_id

    def _fail(self, exc: Exception, events: int) -> None:
        fenced = getattr(exc, "err_code", None) == FENCED_ERROR_CODE
        reason = "fenced" if fenced else "publish_failed"
        cluster_metrics.PUBLISH_FAILURES.labels(reason).inc()
        log.warning("event=cluster_publish_failed reason=%s expected_last_seq=%d events=%d dropped_batches=%d "
                    "error=%r", reason, self.expected_last_seq, events, len(self._queue), str(exc)[:200])
        self.stop()
        self._on_failure(reason)

    def _take_no_more(self) -> None:
        """Refuse new batches, drop the queued ones, and let the publish loop see it and end."""
        self.failed = True
        self._queue.clear()
        self._ready.set()

    async def finish_in_flight(self, timeout_s: float) -> bool:
        """A graceful stop's first step: take no more batches, drop what is queued, and let the
        publish already sent be answered (within `timeout_s`) instead of cancelling it.

        A cancelled publish still lands when its bytes had left: the stream then holds a message
        this node's stop never waited for. Answered or not, the task is cancelled after the wait;
        True when nothing was left in flight.
        """
        self._take_no_more()
        task = self._task
        if task is None or task.done() or task is asyncio.current_task():
            return True
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
        return bool(done)

    def stop(self) -> None:
        """Publish nothing more; what is queued is dropped (the relay is re-read from the stream's cursor)."""
        self._take_no_more()
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
