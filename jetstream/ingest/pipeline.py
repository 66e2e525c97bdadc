"""From relay frame to visible event: decode, sequence, write, publish.

Owns: the order of the four steps, the group commit, the relay cursor of accepted
frames, and the accounting of every frame (docs/architecture.md §2, invariants 3 and 4). Frames that
arrive close together (within `group_commit_s`) share one RocksDB write batch that also
carries the relay cursor and the time_us high-water mark, so a crash can never separate
an event from the cursor that produced it. Events reach the live ring — and therefore
subscribers — only after that batch is written.

Every frame ends in exactly one of: events written, counted drop (`jetstream_ingest_drops_total`
by reason), or counted no-op kind (#info, unknown `t`: `consumer_events_processed_total`; a #sync is
stored as a sync event, see decode.py).
The cursor advances past each handled frame that carries a seq, skipped kinds and
undecodable-but-seq-bearing frames included, so a restart never reads them again.
With --ingest-collections, commits of other collections are dropped after decoding (counted
`not_ingested`); the counts of each written batch go to CollectionStats (/stats/collections).
It must never talk to sockets: the relay client feeds it, the server is woken by
the `publish` callback, and a relay error frame is reported through `on_relay_error`.
A relay that disowns the cursor (`FutureCursor`) makes it drop the cursor and go live, and an
`#info OutdatedCursor` is logged and counted as a possible gap (ingest/relay_cursor.py).
"""
from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from typing import Callable

from jetstream import metrics
from jetstream.events import KIND_NAMES
from jetstream.ingest.decode import DecodedFrame, FrameError, decode_frame
from jetstream.ingest.frames import split_frame
from jetstream.ingest.relay_cursor import is_future_cursor, is_outdated_cursor, relay_identity

log = logging.getLogger(__name__)

# `t` values that get their own consumer_events_processed label; anything else is "unknown",
# so a relay sending odd types cannot blow up the metric's cardinality.
KNOWN_FRAME_TYPES = frozenset(
    ("commit", "identity", "account", "sync", "info", "error", "handle", "migrate", "tombstone", "labels")
)
_OPERATION_MARK = b'"operation":"'


def event_type_label(frame_type: str) -> str:
    """v1's event_type label ("#commit" -> "commit"); unknown types collapse to "unknown"."""
    name = frame_type.lstrip("#")
    return name if name in KNOWN_FRAME_TYPES else "unknown"


def operation_of(json_tail: bytes) -> str:
    """The commit op's action as written in its JSON tail (v1's `kind` label of ops_processed)."""
    start = json_tail.find(_OPERATION_MARK)
    if start < 0:
        return "other"
    start += len(_OPERATION_MARK)
    return json_tail[start:json_tail.index(b'"', start)].decode("ascii")


def readable_seq(frame: bytes) -> int | None:
    """The body's seq of a frame the decoder rejected, when the frame is at least CBOR."""
    try:
        _, body = split_frame(frame)
    except FrameError:
        return None
    seq = body.get("seq")
    return seq if type(seq) is int else None


def relay_time_s(frame: bytes) -> float | None:
    """Unix seconds of the frame body's `time` (RFC 3339), or None."""
    try:
        _, body = split_frame(frame)
        text = body.get("time")
        return datetime.fromisoformat(text).timestamp() if type(text) is str else None
    except (FrameError, ValueError):
        return None


class GateDrop(bytes):
    """A frame the signature stage dropped (jetstream/ingest/sigcheck.py): its bytes, for its seq, and why."""

    reason: str
    detail: str

    @classmethod
    def of(cls, frame: bytes, reason: str, detail: str) -> "GateDrop":
        dropped = cls(frame)
        dropped.reason, dropped.detail = reason, detail
        return dropped


class _BatchTally:
    """Counts of one batch, published to prometheus once per batch."""

    __slots__ = ("processed", "ops", "kinds", "not_ingested", "commit_seconds")

    def __init__(self) -> None:
        self.processed: dict[str, int] = {}  # frame type -> frames
        self.ops: dict[tuple[str, str], int] = {}  # (operation, collection) -> ops
        self.kinds: dict[int, int] = {}  # kind -> events without a collection (identity, account, sync)
        self.not_ingested = 0  # commit events outside --ingest-collections
        self.commit_seconds: list[float] = []  # decode time of each #commit frame


def _stats_counts(tally: _BatchTally) -> dict[tuple[str, str], int]:
    """A written batch's counts as CollectionStats takes them: (collection, operation) or ("", kind)."""
    counts = {(collection, operation): count for (operation, collection), count in tally.ops.items()}
    for kind, count in tally.kinds.items():
        counts[("", KIND_NAMES[kind] if 0 <= kind < len(KIND_NAMES) else "other")] = count
    return counts


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
        on_relay_error: Callable[[str], None] = lambda detail: None,
        verify_mst: bool = False,
        hand_off: Callable[[list, int | None], None] | None = None,
        ingest_collections=None,
        collection_stats=None,
    ) -> None:
        self.event_log = event_log
        self.ring = ring
        self.sequencer = sequencer
        self.compressor = compressor
        self.publish = publish
        self.socket_url = socket_url
        self.group_commit_s = group_commit_s
        self.on_write_failure = on_write_failure
        self.on_relay_error = on_relay_error
        self.verify_mst = verify_mst  # v1's MST lookup per create/update (decode.py)
        # Cluster mode (jetstream/cluster/): sequenced batches go to the replicated stream
        # instead of the local log; every node, this one included, applies them from there.
        self.hand_off = hand_off
        # --ingest-collections (collection_filter.IngestCollections) or None: store every collection.
        self.ingest_collections = ingest_collections
        # collection_stats.CollectionStats or None: counts of what each written batch stored.
        self.collection_stats = collection_stats
        # The relay `time` (unix s) of the newest written frame; before any this run, the log's
        # newest event's time_us (so an offline daemon's lag grows from what it last stored).
        hwm = event_log.hwm() if event_log.relay_cursor() is not None else 0
        self._newest_relay_time_s: float | None = hwm / 1e6 if hwm else None
        # When a relay frame was last stored (monotonic): how long ingest has made no progress.
        self._progress_at = time.monotonic()
        # The highest relay seq accepted into the pipeline (written or pending). Reconnects
        # resume from here; frames at or below it are duplicates and are skipped.
        self.last_accepted_seq: int | None = event_log.relay_cursor()
        # Event seqs continue the log's (the log is where the newest one is kept, like the hwm).
        sequencer.resume_seq(event_log.newest_seq())
        self._pending: list[bytes] = []
        # Set by the daemon while the log refuses writes: frames are dropped unread, because
        # the relay is re-read from the durable cursor once the log takes writes again.
        self.paused = False
        self._flush_handle: asyncio.Handle | None = None
        self._labels = {name: getattr(metrics, name).labels(socket_url=socket_url)
                        for name in ("EVENTS_SEQUENCED", "EVENTS_PERSISTED", "EVENTS_EMITTED", "LAST_SEQ",
                                     "EVENT_PROCESSING_SECONDS", "LAST_EVT_PROCESSED_AT",
                                     "LAST_EVT_CREATED_AT", "LAST_EVT_GAP")}
        self._processed = {}  # event_type label -> bound counter (labels() costs a lock + dict)
        # --verify-signatures: the stage in front of submit (sigcheck.SignatureGate), else None.
        self.gate = None

    # -- intake ---------------------------------------------------------------------------------
    def submit(self, frame: bytes) -> None:
        """Accept one relay frame; it is written within group_commit_s."""
        if self.paused:
            return
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
        if self.gate is not None:
            self.gate.reset()

    # -- the signature stage (--verify-signatures) ----------------------------------------------
    def attach_gate(self, gate) -> None:
        """Route relay frames through `gate` (it calls submit_verified / submit_dropped in relay order)."""
        self.gate = gate
        self.submit = gate.admit  # an instance attribute: with no gate, submit stays the plain method

    def submit_verified(self, frame: bytes) -> None:
        """A frame the signature stage let through."""
        IngestPipeline.submit(self, frame)

    def submit_dropped(self, frame: bytes, reason: str, detail: str) -> None:
        """A commit the signature stage dropped: no events, but its seq is accepted in order."""
        IngestPipeline.submit(self, GateDrop.of(frame, reason, detail))

    def prepare_reconnect(self) -> None:
        """Before re-dialling the relay: write what is pending; frames still held for a DID are
        forgotten, the relay sends them again from the cursor."""
        self.flush()
        if self.gate is not None:
            self.gate.discard_held()

    # -- the four steps -------------------------------------------------------------------------
    def flush(self) -> None:
        """Process every pending frame now (timer callback; also before a reconnect and at stop)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        frames, self._pending = self._pending, []
        if frames:
            self.process(frames)

    def process(self, frames: list[bytes]) -> int:
        """Decode, sequence, write and publish `frames` as one batch; the number of events made visible.

        Never raises for input. If storing fails, nothing of the batch is published and the
        cursor falls back to the durable one, so the relay resends the batch after a reconnect.
        """
        pending_events, batch_cursor, newest_frame, tally = self._decode(frames)
        try:
            events = self.sequencer.sequence(pending_events, self.compressor)
            self._labels["EVENTS_SEQUENCED"].inc(len(events))
            frameless = sum(1 for event in events if not event.v2)
            if frameless:
                metrics.V2_FRAMELESS.inc(frameless)
            if self.hand_off is not None:
                return self._hand_off(events, batch_cursor, newest_frame)
            self._write(events, batch_cursor)
        except Exception as exc:  # noqa: BLE001 - any storage failure must not lose data
            # repr(exc), not exc: a log record that keeps the exception keeps its traceback, whose
            # frames hold RocksDB handles, and the log could then never be re-opened (disk full).
            log.error("event=log_write_failed events=%d cursor=%s error=%s", len(pending_events), batch_cursor,
                      repr(exc))
            # time_us values handed out for this batch are skipped: the contract is strictly
            # increasing, not gap-free. Seqs must have no gap in what is stored, so they are
            # handed out again (not in cluster mode: batches before this one may still be on
            # their way to the stream). The relay resends everything after the durable cursor.
            if self.hand_off is None:
                self.sequencer.rewind_seq(self.event_log.newest_seq())
            self.reset_to_durable_cursor()
            self.on_write_failure()
            return 0
        if self.collection_stats is not None:
            self.collection_stats.record(_stats_counts(tally))
        for event in events:
            self.ring.append(event)
        self._labels["EVENTS_EMITTED"].inc(len(events))
        if events:
            self.publish()
        if newest_frame is not None:
            self._observe_progress(newest_frame, batch_cursor)
        return len(events)

    def _decode(self, frames: list[bytes]):
        """(pending events in frame order, the batch's relay cursor or None, newest accepted frame)."""
        pending_events = []
        batch_cursor = newest_frame = None
        tally = _BatchTally()
        for frame in frames:
            decoded = self._decode_one(frame, tally)
            if decoded is None:
                continue
            seq = decoded.seq
            if seq is not None:
                if self.last_accepted_seq is not None and seq <= self.last_accepted_seq:
                    self._skip_old_seq(seq, decoded.frame_type)
                    continue
                self.last_accepted_seq = batch_cursor = seq
                newest_frame = frame
            if self.ingest_collections is not None and decoded.events:
                decoded = self._only_ingested(decoded, tally)
            self._account(decoded, tally)
            if self.last_accepted_seq is None:
                batch_cursor = None  # the relay disowned our cursor (forget_relay_cursor): store none
            pending_events.extend(decoded.events)
        self._publish_tally(tally)
        return pending_events, batch_cursor, newest_frame, tally

    def _only_ingested(self, decoded: DecodedFrame, tally: "_BatchTally") -> DecodedFrame:
        """The frame without the commit events --ingest-collections does not store (counted)."""
        keeps = self.ingest_collections.keeps
        kept = [event for event in decoded.events if keeps(event.collection)]
        if len(kept) == len(decoded.events):
            return decoded
        tally.not_ingested += len(decoded.events) - len(kept)
        return decoded._replace(events=kept)

    def _decode_one(self, frame: bytes, tally: "_BatchTally") -> DecodedFrame | None:
        """The decoded frame, or None after counting an unusable one (its seq, if readable, is accepted)."""
        if type(frame) is GateDrop:
            return DecodedFrame(readable_seq(frame), "#commit", [], [(frame.reason, frame.detail)])
        started = time.perf_counter()
        try:
            decoded = decode_frame(frame, verify_mst=self.verify_mst)
        except FrameError as exc:
            reason, detail = f"frame_{exc.reason}", exc.detail
        except Exception as exc:  # noqa: BLE001 - a decoder bug on odd input must not stop ingest
            reason, detail = "frame_decoder_error", repr(exc)
        else:
            if decoded.frame_type == "#commit":
                tally.commit_seconds.append(time.perf_counter() - started)
            return decoded
        seq = readable_seq(frame)
        metrics.INGEST_DROPS.labels(reason).inc()
        log.warning("event=frame_skipped reason=%s seq=%s size=%d detail=%s", reason, seq, len(frame), detail[:200])
        if seq is None:
            return None
        # Handled (dropped): accept its seq like any other frame's so a restart skips it too.
        return DecodedFrame(seq, "undecodable", [], [])

    def _skip_old_seq(self, seq: int, frame_type: str) -> None:
        reason = "duplicate_seq" if seq == self.last_accepted_seq else "regressed_seq"
        metrics.INGEST_DROPS.labels(reason).inc()
        log.warning("event=frame_skipped reason=%s seq=%d last_seq=%d type=%s",
                    reason, seq, self.last_accepted_seq, frame_type)

    def _account(self, decoded: DecodedFrame, tally: "_BatchTally") -> None:
        if decoded.frame_type == "undecodable":
            return  # already counted as a drop
        processed = tally.processed
        processed[decoded.frame_type] = processed.get(decoded.frame_type, 0) + 1
        if decoded.info:
            self._relay_info(decoded.info)
        for reason, detail in decoded.drops:
            if reason == "error_frame":
                self._relay_error(detail)
                continue
            metrics.INGEST_DROPS.labels(reason).inc()
            log.warning("event=ingest_drop reason=%s seq=%s detail=%s", reason, decoded.seq, detail)
        ops, kinds = tally.ops, tally.kinds
        for pending in decoded.events:
            if pending.collection:
                key = (operation_of(pending.json_tail), pending.collection)
                ops[key] = ops.get(key, 0) + 1
            else:
                kinds[pending.kind] = kinds.get(pending.kind, 0) + 1

    def _publish_tally(self, tally: "_BatchTally") -> None:
        # Once per batch and label, not per frame: each prometheus inc() takes a lock.
        if tally.commit_seconds:
            self._labels["EVENT_PROCESSING_SECONDS"].observe_many(tally.commit_seconds)
        for frame_type, count in tally.processed.items():
            label = event_type_label(frame_type)
            counter = self._processed.get(label)
            if counter is None:
                counter = self._processed[label] = metrics.EVENTS_PROCESSED.labels(label, self.socket_url)
            counter.inc(count)
        for (operation, collection), count in tally.ops.items():
            metrics.OPS_PROCESSED.labels(operation, collection, self.socket_url).inc(count)
        if tally.not_ingested:
            metrics.INGEST_DROPS.labels("not_ingested").inc(tally.not_ingested)

    def _relay_error(self, detail: str) -> None:
        # v1 only logged it; the relay closes after an error frame anyway, so re-dial at once
        # from the stored cursor rather than wait for the close.
        log.warning("event=relay_error_frame %s", detail)
        if is_future_cursor(detail):
            self.forget_relay_cursor("future_cursor")
        self.on_relay_error(detail)

    def _relay_info(self, detail: str) -> None:
        if is_outdated_cursor(detail):
            # The relay carries on from its oldest held frame: what lay between is lost to us.
            metrics.INGEST_DROPS.labels("outdated_cursor").inc()
            log.warning("event=relay_outdated_cursor cursor=%s action=continue_from_relay_oldest %s",
                        self.last_accepted_seq, detail)
        else:
            log.info("event=relay_info %s", detail)

    def forget_relay_cursor(self, reason: str) -> None:
        """Start live from the relay: it says our cursor is one it never reached (reset relay)."""
        old = self.last_accepted_seq
        self._pending.clear()  # frames still pending came before the error: the old sequence
        self.event_log.switch_relay(relay_identity(self.socket_url), keep_cursor=False)
        self.last_accepted_seq = None
        log.warning("event=relay_cursor_dropped reason=%s old_cursor=%s action=start_live", reason, old)

    def _write(self, events, batch_cursor) -> None:
        if not events and batch_cursor is None:
            return
        started = time.perf_counter()
        did_revs = self.gate.take_dirty_revs() if self.gate is not None else None
        if did_revs:
            self.event_log.append(events, batch_cursor, did_revs)
        else:
            self.event_log.append(events, batch_cursor)
        metrics.BATCH_WRITE_SECONDS.observe(time.perf_counter() - started)
        metrics.BATCH_EVENTS.observe(len(events))
        self._labels["EVENTS_PERSISTED"].inc(len(events))

    def _hand_off(self, events, batch_cursor, newest_frame) -> int:
        """Cluster mode: the batch leaves for the stream; the ring and log get it when it is applied."""
        if events or batch_cursor is not None:
            self.hand_off(events, batch_cursor)
        if newest_frame is not None:
            self._observe_progress(newest_frame, batch_cursor)
        return len(events)

    def _observe_progress(self, newest_frame: bytes, batch_cursor: int) -> None:
        """v1's progress gauges, once per batch (re-reading one frame's `time` is cheap at that rate)."""
        now = time.time()
        self._labels["LAST_SEQ"].set(batch_cursor)
        self._labels["LAST_EVT_PROCESSED_AT"].set(int(now * 1e9))
        created = relay_time_s(newest_frame)
        if created is not None:
            self._labels["LAST_EVT_CREATED_AT"].set(int(created * 1e9))
            self._labels["LAST_EVT_GAP"].set(now - created)
            metrics.RELAY_LAG_SECONDS.set(now - created)
            self._newest_relay_time_s = created
        self._progress_at = time.monotonic()

    @property
    def relay_lag_s(self) -> float | None:
        """Wall clock now minus the newest written frame's `time` (/healthz, /status): it grows
        while nothing arrives (a paused ingest, a silent or unreachable relay), never freezes."""
        if self._newest_relay_time_s is None:
            return None
        return time.time() - self._newest_relay_time_s

    def silent_for(self) -> float:
        """Seconds since a relay frame was last stored (or since this pipeline was made)."""
        return time.monotonic() - self._progress_at

    def restart_silence_clock(self) -> None:
        """Ingest resumes after a pause: the relay gets a full threshold to deliver again."""
        self._progress_at = time.monotonic()
