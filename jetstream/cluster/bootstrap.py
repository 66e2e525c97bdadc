"""A new cluster node fills its log window from the archive, then applies the stream from after it (issue 24).

Owns: whether a node bootstraps (`--archive` on, its log has applied no stream message, and the
archive holds sealed events of the last `--event-ttl`), the plan (the verified segments of the
window, in an unbroken run; the stream message the applier starts at: the first whose events go
past the archive's tip; how far the archive is used: below that message's first event, so no
message is applied in part), loading the window (each segment row rendered by
jetstream/archive/render.py into what ingest stored for it: the row's seq, time_us = its
witnessed_at, the same v1 JSON, zstd, v2 record and v2 frame as on every other node), the log's
bootstrap mark (an interrupted bootstrap resumes after the log's newest seq instead of being taken
for a single-node log), seqs inside the loaded range the archive gives no event for (rows the
sealer could not hold, `archive.skipped`, and rows render.py cannot turn back into an event): taken
from the stream when it still holds them, else counted and named in `cluster.bootstrap`; and saying
so when neither the archive nor the stream holds a range of the window: the `cluster_bootstrap_gap`
problem and a gap record in the log (readers reaching it are told, as for a range `jetstream repair`
dropped).
It must never write an event the stream will apply, never load a segment that does not verify,
never seal or publish, and never block the event loop on the store or on rendering (threads).
"""
from __future__ import annotations

import asyncio
import datetime
import glob
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, NamedTuple

from jetstream.archive.manifest import Manifest, SegmentSummary
from jetstream.archive.reader import SegmentReader
from jetstream.archive.store import ArchiveStore, StoreError, open_store
from jetstream.cluster.wire import WireError, decode_batch
from jetstream.events import Event, render_json
from jetstream.implementation import frame_of_record
from jetstream.wire_v2 import NO_FRAME_RECORD

log = logging.getLogger(__name__)

CHUNK_EVENTS = 2048  # events rendered in a thread, then written as one log batch on the loop
PROGRESS_EVERY_S = 10.0
NATS_TIMEOUT_S = 5.0
# Seqs missing between the archive and the stream are called a hole of the window when the archive's
# part reaches into the window, or when the stream's first event is younger than the window's start
# by more than this (NATS expires by max_age on its own clock; a quiet firehose leaves time between events).
HOLE_SLACK_S = 60.0
DOWNLOAD_PREFIX = "bootstrap-"


class BootstrapUnavailable(Exception):
    """No bootstrap is possible before anything was written (the archive cannot be read, or the stream's
    messages carry no seqs): the node applies the stream alone, as without an archive."""


class BootstrapFailed(Exception):
    """The archive changed or could not be read while loading: the node tries again."""


class Missing(NamedTuple):
    """Seqs from_seq..to_seq of the loaded range the archive gave no event for, and why
    (not_in_archive: the segments skip them; unrenderable: render.py made no event of the row)."""

    from_seq: int
    to_seq: int
    reason: str


MISSING_SEQS_LISTED = 20  # the first seqs in neither the archive nor the stream, named in /healthz


class StreamPoint(NamedTuple):
    """The stream message the applier starts at, and its first event (seq 0 / time 0: it has none)."""

    message: int
    first_seq: int
    first_time_us: int


@dataclass
class BootstrapReport:
    state: str = "not_needed"  # not_needed | planning | loading | done | failed
    archive_tip_seq: int = 0  # the last seq of the verified, unbroken run of segments in the window
    loaded_through_seq: int = 0
    start_message: int = 0  # the stream message the applier starts at
    events: int = 0
    segments: int = 0
    unrenderable: int = 0  # rows render.py made no event of
    not_in_archive: int = 0  # seqs of the loaded range no segment holds (the sealer's archive.skipped)
    from_stream: int = 0  # of those two, the events taken from the stream instead
    missing: int = 0  # of those two, seqs neither holds: unused in this log, held by nodes that ingested them
    missing_seqs: list = field(default_factory=list)  # the first MISSING_SEQS_LISTED of them
    seconds: float = 0.0
    hole: dict | None = None

    def as_dict(self) -> dict:
        return {"state": self.state, "archive_tip_seq": self.archive_tip_seq,
                "loaded_through_seq": self.loaded_through_seq, "start_message": self.start_message,
                "events": self.events, "segments": self.segments, "unrenderable": self.unrenderable,
                "not_in_archive": self.not_in_archive, "from_stream": self.from_stream, "missing": self.missing,
                "missing_seqs": list(self.missing_seqs), "seconds": round(self.seconds, 3), "hole": self.hole}


def archive_location(cfg) -> str:
    return cfg.archive_url or cfg.archive_dir or os.path.join(cfg.data_dir, "archive")


def download_directory(cfg) -> str:
    """Where a segment of an object store is downloaded to while it is loaded (this node's own disk)."""
    return cfg.archive_dir or os.path.join(cfg.data_dir, "archive")


def needs_bootstrap(cfg, event_log) -> bool:
    """A node with the archive on whose log has applied no stream message: new, or an interrupted bootstrap."""
    if not cfg.archive or event_log.stream_seq() > 0:
        return False
    return event_log.newest_seq() == 0 or event_log.bootstrap_pending()


class ArchiveBootstrap:
    """One bootstrap: plan against the archive and the stream, load the window, record where the stream starts."""

    def __init__(self, cfg, event_log, js, stream: str, subject: str, ring, notify: Callable[[], None],
                 compressor, problems, store: ArchiveStore | None = None,
                 clock_s: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.event_log = event_log
        self.js = js
        self.stream = stream
        self.subject = subject
        self.ring = ring
        self.notify = notify
        self.compress = compressor.compress
        self.problems = problems
        self.store = store or open_store(archive_location(cfg))
        self.clock_s = clock_s
        self.report = BootstrapReport()

    # -- the whole bootstrap --------------------------------------------------------------------

    async def run(self) -> None:
        started = time.monotonic()
        self.report.state = "planning"
        after_seq = self.event_log.newest_seq()  # > 0: an interrupted bootstrap resumes after it
        window_start_us = int((self.clock_s() - self.cfg.event_ttl) * 1_000_000)
        try:
            run = await asyncio.to_thread(self._segments_of_window, window_start_us, after_seq)
        except StoreError as exc:
            if after_seq == 0 and not self.event_log.bootstrap_pending():
                raise BootstrapUnavailable(f"the archive cannot be listed: {exc}") from exc
            raise
        if not run and after_seq == 0:
            self.report.state = "not_needed"
            log.info("event=cluster_bootstrap_skipped reason=no_sealed_events_in_window archive=%s",
                     self.store.describe())
            return
        tip_seq = max(run[-1].header.max_seq if run else 0, after_seq)
        tip_time_us = max(run[-1].header.max_witnessed_at if run else 0, self.event_log.hwm())
        self.report.archive_tip_seq = tip_seq
        point = await self._first_message_past(tip_seq)
        through = tip_seq if not point.first_seq else min(tip_seq, point.first_seq - 1)
        self.report.start_message = point.message
        log.info("event=cluster_bootstrap_planned archive=%s segments=%d after_seq=%d archive_tip_seq=%d "
                 "load_through_seq=%d start_message=%d window_start_us=%d", self.store.describe(), len(run),
                 after_seq, tip_seq, through, point.message, window_start_us)
        if after_seq == 0:
            self.event_log.begin_bootstrap()
        self.report.state = "loading"
        await self._load(run, after_seq, through, window_start_us)
        self._check_hole(point, tip_seq, tip_time_us, window_start_us)
        self.event_log.finish_bootstrap(point.message - 1)
        self.report.state = "done"
        self.report.seconds = time.monotonic() - started
        report = self.report
        log.info("event=cluster_bootstrap_done events=%d segments=%d loaded_through_seq=%d start_message=%d "
                 "seconds=%.1f events_per_s=%.0f unrenderable=%d not_in_archive=%d from_stream=%d missing=%d",
                 report.events, report.segments, report.loaded_through_seq, point.message, report.seconds,
                 report.events / max(report.seconds, 1e-9), report.unrenderable, report.not_in_archive,
                 report.from_stream, report.missing)
        if report.missing:
            log.warning("event=cluster_bootstrap_seqs_missing missing=%d first_seqs=%s (in neither the archive nor "
                        "the stream: this log leaves them unused; nodes that ingested them hold them)",
                        report.missing, ",".join(str(seq) for seq in report.missing_seqs))

    # -- the archive's part ---------------------------------------------------------------------

    def _segments_of_window(self, window_start_us: int, after_seq: int) -> list[SegmentSummary]:
        """The verified segments holding events of the window above `after_seq`, as one unbroken run.

        The run ends before a missing index or a segment that failed verification: what lies
        past it comes from the stream (or is a hole, said so), never around a segment we skipped.
        """
        manifest = Manifest(self.store, footer_cache_bytes=0)
        scan = manifest.scan()
        for name, reason in scan.corrupt.items():
            log.warning("event=cluster_bootstrap_segment_refused name=%s reason=%r", name, reason)
        run: list[SegmentSummary] = []
        for summary in manifest.segments:
            header = summary.header
            if not run:
                if header.event_count == 0 or header.max_witnessed_at < window_start_us or header.max_seq <= after_seq:
                    continue
            elif summary.index != run[-1].index + 1:
                log.warning("event=cluster_bootstrap_run_broken after=%s next=%s reason=missing_or_refused_segment",
                            run[-1].name, summary.name)
                break
            run.append(summary)
        return run

    async def _load(self, run: list[SegmentSummary], after_seq: int, through_seq: int, window_start_us: int) -> None:
        """Render the run's events with after_seq < seq <= through_seq (and in the window) into the log."""
        chunks = self._rendered_chunks(run, after_seq, through_seq, window_start_us)
        last_progress = time.monotonic()
        try:
            upcoming = asyncio.ensure_future(asyncio.to_thread(next, chunks, None))
            while True:
                chunk = await upcoming
                if chunk is None:
                    break
                # The next chunk renders in its thread while this one is written (RocksDB lets go of the GIL).
                upcoming = asyncio.ensure_future(asyncio.to_thread(next, chunks, None))
                self._write(await self._filled(chunk))
                if time.monotonic() - last_progress >= PROGRESS_EVERY_S:
                    last_progress = time.monotonic()
                    log.info("event=cluster_bootstrap_progress events=%d segments=%d loaded_through_seq=%d",
                             self.report.events, self.report.segments, self.report.loaded_through_seq)
        finally:
            try:
                chunks.close()  # closes the open segment reader
            except ValueError:
                pass  # still running in a thread this task was cancelled out of (the daemon is stopping)

    def _write(self, events: list[Event]) -> None:
        """The chunk's log batches, one per run of consecutive seqs (the window starts mid-history, and
        seqs in neither the archive nor the stream stay unused), then the ring and the readers, as the
        applier does for a message."""
        if not events:
            return
        start = 0
        for end in range(1, len(events) + 1):
            if end == len(events) or events[end].seq != events[end - 1].seq + 1:
                self.event_log.append(events[start:end], None, seq_jump=True)
                start = end
        ring_append = self.ring.append
        for event in events:
            ring_append(event)
        self.report.events += len(events)
        self.report.loaded_through_seq = events[-1].seq
        self.notify()

    def _rendered_chunks(self, run: list[SegmentSummary], after_seq: int, through_seq: int,
                         window_start_us: int) -> Iterator[list[Event]]:
        """Chunks of rendered events, and a Missing for each run of seqs the archive gives no event for
        (between two rows of the window, or after the last one up to `through_seq`); stepped from
        worker threads, one step at a time (never two at once)."""
        chunk: list[Event | Missing] = []
        previous = after_seq or None  # the seq before the next row (None: the window starts at that row)
        for summary in run:
            if summary.header.min_seq > through_seq:
                break
            with self._open(summary) as reader:
                self.report.segments += 1
                for row in reader.iter_events():
                    if row.seq <= after_seq:
                        continue
                    if row.witnessed_at < window_start_us:
                        previous = None  # expired, not missing
                        continue
                    if row.seq > through_seq:
                        break
                    if previous is not None and row.seq > previous + 1:
                        chunk.append(Missing(previous + 1, row.seq - 1, "not_in_archive"))
                    previous = row.seq
                    event = self._event_of(row)
                    chunk.append(event if event is not None else Missing(row.seq, row.seq, "unrenderable"))
                    if len(chunk) >= CHUNK_EVENTS:
                        yield chunk
                        chunk = []
        if previous is not None and previous < through_seq:
            chunk.append(Missing(previous + 1, through_seq, "not_in_archive"))
        if chunk:
            yield chunk

    def _event_of(self, row) -> Event | None:
        """What ingest stored for this segment row (render.py's PendingEvent at the row's seq and time)."""
        from jetstream.archive.render import pending_of

        pending = pending_of(row)
        if pending is None:
            self.report.unrenderable += 1
            log.warning("event=cluster_bootstrap_row_unrenderable seq=%d did=%s kind=%d", row.seq, row.did, row.kind)
            return None
        time_us = row.witnessed_at
        json = render_json(pending, time_us)
        record = pending.v2_record or NO_FRAME_RECORD
        frame = frame_of_record(record, row.seq, time_us)
        # No v2 zstd form: as for every event since ingest-cost, the ring makes it on the first
        # compressed v2 read (ring.pyx); the log never stored it.
        return Event(time_us, pending.did, pending.kind, pending.collection, json, self.compress(json), row.seq,
                     frame, b"", record)

    def _open(self, summary: SegmentSummary) -> SegmentReader:
        """A reader over the verified segment: the file itself (a directory), or a download of it."""
        local = self.store.local_path(summary.name)
        if local is not None:
            return SegmentReader.open(local)
        directory = download_directory(self.cfg)
        os.makedirs(directory, exist_ok=True)
        for stale in glob.glob(os.path.join(directory, DOWNLOAD_PREFIX + "*")):
            os.unlink(stale)  # a download an earlier run left behind
        fd, path = tempfile.mkstemp(prefix=DOWNLOAD_PREFIX, dir=directory)
        try:
            self.store.read_range_into(summary.name, 0, summary.size, fd, summary.version)
            reader = SegmentReader.open(path)  # verifies the checksum again, over what was downloaded
        finally:
            os.close(fd)
            os.unlink(path)  # the reader keeps its own descriptor
        if reader.header.checksum != summary.checksum:
            reader.close()
            raise BootstrapFailed(f"{summary.name} changed since it was listed")
        return reader

    # -- what the archive lacks, from the stream -----------------------------------------------

    async def _filled(self, chunk: list) -> list[Event]:
        """The chunk's events, each Missing replaced by the stream's events of those seqs (what it still holds)."""
        if not any(isinstance(item, Missing) for item in chunk):
            return chunk
        events: list[Event] = []
        for item in chunk:
            if isinstance(item, Missing):
                events += await self._from_stream(item)
            else:
                events.append(item)
        return events

    async def _from_stream(self, missing: Missing) -> list[Event]:
        report = self.report
        wanted = missing.to_seq - missing.from_seq + 1
        if missing.reason == "not_in_archive":
            report.not_in_archive += wanted
        try:
            events = await self._stream_events(missing.from_seq, missing.to_seq)
        except BootstrapUnavailable:  # a message without seqs (JSB1): it cannot say which events it holds
            events = []
        report.from_stream += len(events)
        found = {event.seq for event in events}
        lost = [seq for seq in range(missing.from_seq, missing.to_seq + 1) if seq not in found]
        report.missing += len(lost)
        report.missing_seqs += lost[:max(0, MISSING_SEQS_LISTED - len(report.missing_seqs))]
        log.warning("event=cluster_bootstrap_seqs_not_in_archive from_seq=%d to_seq=%d reason=%s from_stream=%d "
                    "missing=%d", missing.from_seq, missing.to_seq, missing.reason, len(events), len(lost))
        return events

    async def _stream_events(self, from_seq: int, to_seq: int) -> list[Event]:
        """The stream's events with from_seq <= seq <= to_seq, with their v2 frames (as the applier renders them)."""
        info = await asyncio.wait_for(self.js.stream_info(self.stream), NATS_TIMEOUT_S)
        first, last = info.state.first_seq, info.state.last_seq
        hit = await self._first_message_reaching(from_seq, first, last) if last and first <= last else None
        events: list[Event] = []
        while hit is not None:
            message, batch = hit
            events += [event for event in batch if from_seq <= event.seq <= to_seq]
            if batch[-1].seq >= to_seq or message >= last:
                break
            hit = await self._events_at_or_after(message + 1, last)
        return [event._replace(v2=frame_of_record(event.v2_record, event.seq, event.time_us), v2_zstd=b"")
                for event in events]

    # -- the stream's part ----------------------------------------------------------------------

    async def _first_message_reaching(self, seq: int, first: int, last: int):
        """(message, its events) of the first message from `first` to `last` whose events reach `seq`
        (its last event's seq >= seq); None if none does. Binary search: messages hold rising seqs."""
        low, high, found = first, last, None
        while low <= high:
            middle = (low + high) // 2
            hit = await self._events_at_or_after(middle, high)
            if hit is None:
                high = middle - 1
                continue
            message, events = hit
            if events[-1].seq >= seq:
                found, high = (message, events), middle - 1
            else:
                low = message + 1
        return found

    async def _first_message_past(self, tip_seq: int) -> StreamPoint:
        """The first stream message whose events go past `tip_seq`, else the last message (its relay cursor
        is the newest); the stream's end when it holds none. Binary search: messages hold rising seqs."""
        info = await asyncio.wait_for(self.js.stream_info(self.stream), NATS_TIMEOUT_S)
        first, last = info.state.first_seq, info.state.last_seq
        if last == 0 or first > last:
            return StreamPoint(last + 1, 0, 0)
        found = await self._first_message_reaching(tip_seq + 1, first, last)
        if found is None:
            message = last
            events = await self._events_of(last)
            return StreamPoint(message, events[0].seq if events else 0, events[0].time_us if events else 0)
        message, events = found
        return StreamPoint(message, events[0].seq, events[0].time_us)

    async def _events_at_or_after(self, message: int, last: int):
        """(message, its events) of the first message at or after `message` (up to `last`) holding events."""
        from nats.js.errors import NotFoundError

        while message <= last:
            try:
                raw = await self.js.get_msg(self.stream, seq=message, subject=self.subject, next=True)
            except NotFoundError:
                return None
            if raw.seq > last:
                return None
            events = self._decoded(raw.seq, raw.data)
            if events:
                return raw.seq, events
            message = raw.seq + 1
        return None

    async def _events_of(self, message: int) -> list:
        from nats.js.errors import NotFoundError

        try:
            raw = await self.js.get_msg(self.stream, seq=message)
        except NotFoundError:
            return []
        return self._decoded(message, raw.data)

    @staticmethod
    def _decoded(message: int, data: bytes | None) -> list:
        try:
            events = decode_batch(data or b"").events
        except WireError:
            return []
        if events and events[0].seq == 0:
            raise BootstrapUnavailable(f"stream message {message} was written without event seqs (JSB1)")
        return events

    # -- a range neither holds ------------------------------------------------------------------

    def _check_hole(self, point: StreamPoint, tip_seq: int, tip_time_us: int, window_start_us: int) -> None:
        """Seqs between the archive's tip and the stream's first event are in neither: inside the window,
        that is a hole this node must admit (problem + gap record), not serve in silence."""
        if not point.first_seq or point.first_seq <= tip_seq + 1:
            return
        lost = point.first_seq - tip_seq - 1
        in_window = tip_time_us >= window_start_us or point.first_time_us > window_start_us + HOLE_SLACK_S * 1e6
        if not in_window:
            log.info("event=cluster_bootstrap_expired_range from_seq=%d to_seq=%d (older than --event-ttl: expired "
                     "from the stream, never sealed)", tip_seq + 1, point.first_seq - 1)
            return
        from_time_us = max(tip_time_us + 1, window_start_us)
        gap = {"from_time_us": from_time_us, "to_time_us": point.first_time_us - 1, "events_lost": lost,
               "repaired_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
               "file": "", "column_families": [], "reason": "cluster_bootstrap",
               "from_seq": tip_seq + 1, "to_seq": point.first_seq - 1}
        self.event_log.record_gaps([gap])
        self.report.hole = gap
        log.error("event=cluster_bootstrap_hole from_seq=%d to_seq=%d from_time_us=%d to_time_us=%d",
                  tip_seq + 1, point.first_seq - 1, from_time_us, point.first_time_us - 1)
        if self.problems is not None:
            self.problems.raise_problem(
                "cluster_bootstrap_gap",
                f"this node bootstrapped its log from the archive ({self.store.describe()}, sealed through seq "
                f"{tip_seq}) and the stream (from seq {point.first_seq}); seqs {tip_seq + 1}..{point.first_seq - 1} "
                f"are in neither: a reader reaching them is closed with the range (the log's gap record)",
                "the leader's sealing lagged behind the stream's retention (--event-ttl) or the stream lost "
                "messages: check the leader's archive_seal_failed; the range cannot be recovered on this node "
                "(another node's log may hold it until its TTL trim); the problem ends when this node restarts")

