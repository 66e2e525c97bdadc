"""The leader's side of the stream: publish each ingest batch, fenced by sequence.

Owns: turning the pipeline's sequenced batches into stream messages, in order, with up to
MAX_IN_FLIGHT publishes awaiting their acks at once. The fence, per message:
- `Nats-Expected-Last-Sequence` = the sequence the message before it has (or will have:
  the leader is the stream's only writer, so message k of a term is predicted to land at
  the term's starting sequence + k), checked by the stream leader against what it has
  accepted so far, in-flight proposals included;
- from the second message of a term on, also `Nats-Expected-Last-Msg-Id` = the
  `Nats-Msg-Id` of the message before it (ids unique to the term). The sequence alone
  would not do with several in flight: if another leader wrote one message, this leader's
  next message is refused but the one after it would expect exactly that sequence again
  and be accepted. An id this term gave is never matched by another writer's message,
  nor by a refused message of ours, so after one refusal every later message is refused.
Any failed publish (fenced, timed out, NATS gone) or an ack at another sequence than
predicted fails the publisher for good: it drops what it still holds, ignores the acks
still outstanding and reports the failure; the node steps down. So the stream holds an
unbroken prefix of each term's messages and never a message of a deposed leader after
another leader's. Batches waiting while every slot is in flight are merged into the next
message (whole batches only, so a message's relay cursor always covers exactly its
events) up to MAX_MESSAGE_BYTES.
It must never retry a failed publish or publish after a failure: a new leadership term
re-reads the stream's last message and the relay from its cursor instead.
"""
from __future__ import annotations

import asyncio
import json
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
# Publishes awaiting their ack at once. One in flight made each batch wait out the previous
# publish's round trip (R3, fsync on every server) before its own; a few in flight overlap
# them. Bounded so a stalled stream holds a few messages, not the whole backlog, and the
# backlog is merged into fewer, larger messages instead.
MAX_IN_FLIGHT = 4
EXPECTED_LAST_SEQUENCE = "Nats-Expected-Last-Sequence"
EXPECTED_LAST_MSG_ID = "Nats-Expected-Last-Msg-Id"
MSG_ID = "Nats-Msg-Id"
WRONG_LAST_SEQUENCE = 10071  # JSStreamWrongLastSequenceErrF
WRONG_LAST_MSG_ID = 10070  # JSStreamWrongLastMsgIDErrF


class UnexpectedSequence(RuntimeError):
    """An ack at another stream sequence than predicted: someone else wrote to the stream."""


class PublishRejected(RuntimeError):
    """The stream answered a publish with an error (err_code 10071/10070: the fence)."""

    def __init__(self, err_code: int | None, description: str) -> None:
        super().__init__(f"err_code={err_code} {description}")
        self.err_code = err_code


def parse_ack(msg) -> int:
    """The stream sequence a publish ack names; PublishRejected for an error or no stream."""
    if msg.headers and msg.headers.get("Status") == "503":
        raise PublishRejected(None, "no responders: no stream takes the subject")
    answer = json.loads(msg.data)
    error = answer.get("error")
    if error:
        raise PublishRejected(error.get("err_code"), str(error.get("description", "")))
    return int(answer["seq"])


class FencedPublisher:
    def __init__(self, nc, subject: str, stream: str, expected_last_seq: int,
                 on_failure: Callable[[str], None], *, publish_timeout_s: float = 5.0,
                 max_message_bytes: int = MAX_MESSAGE_BYTES, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self._nc = nc
        self.subject = subject
        self.stream = stream
        self.expected_last_seq = expected_last_seq  # what the next message expects (sent, maybe not acked)
        self.acked_seq = expected_last_seq
        self._on_failure = on_failure
        self.publish_timeout_s = publish_timeout_s
        self.max_message_bytes = max_message_bytes
        # (events, cursor, size, perf_counter at submit)
        self._queue: deque[tuple[list[Event], int | None, int, float]] = deque()
        self._ready = asyncio.Event()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._task: asyncio.Task | None = None
        self._acks: set[asyncio.Task] = set()
        # Our own reply subject and futures (as nats-py's publish_async, which in nats-py 2.16 loses
        # an error answer: its reply handler raises instead of failing the future).
        self._reply_prefix: str | None = None
        self._reply_sub = None
        self._answers: dict[str, asyncio.Future] = {}
        self._term_id = os.urandom(8).hex()
        self._last_msg_id: str | None = None  # of the message sent last in this term
        self.failed = False
        self.published_messages = 0
        self.published_events = 0

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

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

    @property
    def in_flight(self) -> int:
        return self.expected_last_seq - self.acked_seq

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
                # A slot first, then the message: batches arriving meanwhile join it.
                await self._slots.acquire()
                if self.failed or not self._queue:
                    self._slots.release()
                    break
                events, cursor = self._next_message()
                await self._send(events, cursor)

    def _fence_headers(self) -> tuple[str, dict[str, str]]:
        msg_id = f"{self._term_id}.{self.expected_last_seq + 1}"
        headers = {EXPECTED_LAST_SEQUENCE: str(self.expected_last_seq), MSG_ID: msg_id}
        if self._last_msg_id is not None:
            headers[EXPECTED_LAST_MSG_ID] = self._last_msg_id
        return msg_id, headers

    async def _reply_subject(self, token: str) -> str:
        if self._reply_prefix is None:
            prefix = f"{self._nc.new_inbox()}."
            self._reply_sub = await self._nc.subscribe(prefix + "*", cb=self._on_answer)
            self._reply_prefix = prefix
        return self._reply_prefix + token

    async def _on_answer(self, msg) -> None:
        future = self._answers.pop(msg.subject[len(self._reply_prefix):], None)
        if future is not None and not future.done():
            future.set_result(msg)

    async def _send(self, events: list[Event], cursor: int | None) -> None:
        """Write one message to NATS (in order: this task alone sends) and await its ack aside."""
        msg_id, headers = self._fence_headers()
        headers["Nats-Expected-Stream"] = self.stream
        token = str(self.expected_last_seq + 1)
        started = time.perf_counter()
        try:
            reply = await self._reply_subject(token)
            ack = self._answers[token] = asyncio.get_running_loop().create_future()
            await self._nc.publish(self.subject, encode_batch(events, cursor), reply=reply, headers=headers)
        except Exception as exc:  # noqa: BLE001 - NATS gone (closed, or its outbound buffer full)
            self._slots.release()
            self._fail(exc, len(events))
            return
        self.expected_last_seq += 1
        self._last_msg_id = msg_id
        task = asyncio.ensure_future(self._await_ack(ack, self.expected_last_seq, len(events), started))
        self._acks.add(task)
        task.add_done_callback(self._acks.discard)

    async def _await_ack(self, ack: asyncio.Future, predicted_seq: int, events: int, started: float) -> None:
        try:
            seq = parse_ack(await asyncio.wait_for(ack, self.publish_timeout_s))
            if seq != predicted_seq:
                raise UnexpectedSequence(f"acked at {seq}, predicted {predicted_seq}")
        except Exception as exc:  # noqa: BLE001 - fenced (another leader wrote), timeout, no NATS
            if not self.failed:
                self._fail(exc, events)
            return
        finally:
            self._slots.release()
        if self.failed:
            return  # acknowledged, so in the stream: the applier applies it like any other
        cluster_metrics.PUBLISH_SECONDS.observe(time.perf_counter() - started)
        self.acked_seq = max(self.acked_seq, predicted_seq)
        self.published_messages += 1
        self.published_events += events
        cluster_metrics.PUBLISHED_EVENTS.inc(events)

    def _fail(self, exc: Exception, events: int) -> None:
        fenced = getattr(exc, "err_code", None) in (WRONG_LAST_SEQUENCE, WRONG_LAST_MSG_ID)
        reason = "fenced" if fenced or isinstance(exc, UnexpectedSequence) else "publish_failed"
        cluster_metrics.PUBLISH_FAILURES.labels(reason).inc()
        log.warning("event=cluster_publish_failed reason=%s expected_last_seq=%d acked_seq=%d events=%d "
                    "dropped_batches=%d error=%r", reason, self.expected_last_seq, self.acked_seq, events,
                    len(self._queue), str(exc)[:200])
        self.stop()
        self._on_failure(reason)

    def stop(self) -> None:
        """Publish nothing more; what is queued is dropped (the relay is re-read from the stream's cursor).

        Acks still outstanding are no longer awaited: a message NATS did accept is in the
        stream all the same, and every node (this one too) applies it from there."""
        self.failed = True
        self._queue.clear()
        self._ready.set()
        current = asyncio.current_task()
        for task in [self._task, *self._acks]:
            if task is not None and task is not current:
                task.cancel()
        self._answers.clear()
        if self._reply_sub is not None:
            asyncio.ensure_future(self._unsubscribe(self._reply_sub))
            self._reply_sub = None

    @staticmethod
    async def _unsubscribe(sub) -> None:
        try:
            await sub.unsubscribe()
        except Exception:  # noqa: BLE001 - the connection may already be gone
            pass
