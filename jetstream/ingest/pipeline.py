"""From relay frame to visible event: decode, sequence, write, publish.

Owns: the order of the four steps and the group commit. Frames that arrive close
together (within `group_commit_s`) share one RocksDB write batch that also carries
the relay cursor and the time_us high-water mark, so a crash can never separate an
event from the cursor that produced it (DESIGN invariant 3). Events reach the live
ring — and therefore subscribers — only after that batch is written.
It must never talk to sockets: the relay client feeds it, the server is woken by
the `publish` callback.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from jetstream import metrics
from jetstream.ingest.decode import FrameError, decode_frame

log = logging.getLogger(__name__)


class IngestPipeline:
    def __init__(
        self,
        event_log,
        ring,
        sequencer,
        compressor,
        publish: Callable[[], None],
        *,
        socket_url: str,
        group_commit_s: float = 0.001,
        on_write_failure: Callable[[], None] = lambda: None,
    ) -> None:
        self.event_log = event_log
        self.ring = ring
        self.sequencer = sequencer
        self.compressor = compressor
        self.publish = publish
        self.socket_url = socket_url
        self.group_commit_s = group_commit_s
        self.on_write_failure = on_write_failure
        # The highest relay seq accepted into the pipeline (written or pending). Reconnects
        # resume from here; frames at or below it are duplicates and are skipped.
        self.last_accepted_seq: int | None = event_log.relay_cursor()
        self._pending: list[bytes] = []
        self._flush_handle: asyncio.Handle | None = None
        self._labels = {name: getattr(metrics, name).labels(socket_url=socket_url)
                        for name in ("EVENTS_SEQUENCED", "EVENTS_PERSISTED", "EVENTS_EMITTED", "LAST_SEQ")}

    # -- intake ---------------------------------------------------------------------------------
    def submit(self, frame: bytes) -> None:
        """Accept one relay frame; it is written within group_commit_s."""
        self._pending.append(frame)
        if self._flush_handle is None:
            loop = asyncio.get_running_loop()
            if self.group_commit_s > 0:
                self._flush_handle = loop.call_later(self.group_commit_s, self.flush)
            else:
                self._flush_handle = loop.call_soon(self.flush)

    def reset_to_durable_cursor(self) -> None:
        """Forget pending frames and resume from what the log holds (before a reconnect)."""
        self._pending.clear()
        self.last_accepted_seq = self.event_log.relay_cursor()

    # -- the four steps -------------------------------------------------------------------------
    def flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        frames, self._pending = self._pending, []
        if not frames:
            return
        pending_events, batch_cursor = self._decode(frames)
        events = self.sequencer.sequence(pending_events, self.compressor)
        self._labels["EVENTS_SEQUENCED"].inc(len(events))
        if not self._write(events, batch_cursor):
            return
        for event in events:
            self.ring.append(event)
        self._labels["EVENTS_EMITTED"].inc(len(events))
        if events:
            self.publish()

    def _decode(self, frames: list[bytes]):
        pending_events = []
        batch_cursor = None
        for frame in frames:
            try:
                decoded = decode_frame(frame)
            except FrameError as exc:
                metrics.INGEST_DROPS.labels(f"frame_{exc.reason}").inc()
                log.warning("event=frame_skipped reason=%s size=%d", exc.reason, len(frame))
                continue
            seq = decoded.seq
            if seq is not None and self.last_accepted_seq is not None and seq <= self.last_accepted_seq:
                metrics.INGEST_DROPS.labels("duplicate_seq").inc()
                log.warning("event=frame_skipped reason=duplicate_seq seq=%d last_seq=%d", seq, self.last_accepted_seq)
                continue
            self._count(decoded)
            pending_events.extend(decoded.events)
            if seq is not None:
                self.last_accepted_seq = batch_cursor = seq
        return pending_events, batch_cursor

    def _count(self, decoded) -> None:
        event_type = decoded.frame_type.lstrip("#")
        metrics.EVENTS_PROCESSED.labels(event_type, self.socket_url).inc()
        for reason, detail in decoded.drops:
            metrics.INGEST_DROPS.labels(reason).inc()
            log.warning("event=ingest_drop reason=%s seq=%s detail=%s", reason, decoded.seq, detail)
        for pending in decoded.events:
            if pending.collection:
                metrics.OPS_PROCESSED.labels("op", pending.collection, self.socket_url).inc()
        if decoded.seq is not None:
            self._labels["LAST_SEQ"].set(decoded.seq)

    def _write(self, events, batch_cursor) -> bool:
        if not events and batch_cursor is None:
            return True
        started = time.perf_counter()
        try:
            self.event_log.append(events, batch_cursor)
        except Exception as exc:  # noqa: BLE001 - any storage failure must not lose data
            log.error("event=log_write_failed events=%d cursor=%s error=%r", len(events), batch_cursor, exc)
            # time_us values handed out for this batch are skipped: the contract is strictly
            # increasing, not gap-free. The relay resends everything after the durable cursor.
            self.reset_to_durable_cursor()
            self.on_write_failure()
            return False
        metrics.BATCH_WRITE_SECONDS.observe(time.perf_counter() - started)
        metrics.BATCH_EVENTS.observe(len(events))
        self._labels["EVENTS_PERSISTED"].inc(len(events))
        return True
