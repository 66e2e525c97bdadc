"""The sealed archive as the one reader's third source: history below the log (issue 24, docs/architecture.md §4).

Owns: `ArchiveHistory`, one process's read path from its archive (the ArchiveService's manifest, store
and, for `--archive-url`, its bounded range cache) to subscribers: where the replayable history
starts (`floor`, bounded by `--archive-replay-lookback`), whether the archive holds anything after a
reader's position (`holds_after`, from the resident segment summaries, no I/O), and `next_block`: the
first block holding an event after a position (time_us and seq) that the reader's filter may want,
found through the manifest's bounds and the footer's block index, blooms and collection index
(planner.matching_blocks, the planner's own tests), read and decoded in a thread of a bounded pool
(`--archive-replay-concurrency` reads at once, process-wide), and handed back as that block's events
after the position. Also the manifest rescans a reader at the archive/log seam asks for (a segment
sealed since the last listing), the first listing a reader or an upgrade waits for at start-up
(`ready`, `first_listing`: before it nothing may be concluded from an empty manifest), the counters
/metrics shows, and what a damaged or unreadable segment raises (the archive's own problems:
archive_segment_corrupt, archive_store_unreachable).
It must never run blocking I/O on the event loop (footers, blocks and listings are read in the pool;
the cache's fetches run in its own threads), never hold more than one block's events per reader (the
reader keeps what `next_block` returns), never render frames (render.py does, through ingest's
emitters) and never skip a segment it cannot read: it raises `HistoryDamaged` naming the range.
"""
from __future__ import annotations

import asyncio
import bisect
import dataclasses
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from jetstream._py.filter import split_wanted_collections
from jetstream.archive import planner
from jetstream.archive.bloom import key_hash
from jetstream.archive.format import (
    FRAME_PREFIX_SIZE,
    MAX_DECODED_BYTES,
    CorruptSegment,
    SegmentError,
    SegmentEvent,
    decode_block,
    decompress_frame,
    parse_segment_name,
)
from jetstream.archive.store import ObjectChanged, StoreError
from jetstream.events import KIND_ACCOUNT, KIND_COMMIT, KIND_IDENTITY, KIND_SYNC

log = logging.getLogger(__name__)

# Segments one lookup may pass over (none of their blocks can match the filter) before it answers
# with how far it got: bounds one pool job's time for a narrow filter over a long archive.
SKIP_SEGMENTS_PER_LOOKUP = 64
DEFAULT_CONCURRENCY = 4
_PLAN_KIND_BITS = {KIND_COMMIT: planner.KIND_COMMIT_BIT, KIND_IDENTITY: planner.KIND_IDENTITY_BIT,
                   KIND_ACCOUNT: planner.KIND_ACCOUNT_BIT, KIND_SYNC: planner.KIND_SYNC_BIT}
_V1_KINDS_WITHOUT_SYNC = (KIND_COMMIT, KIND_IDENTITY, KIND_ACCOUNT)


class HistoryDamaged(Exception):
    """A segment the replay needs cannot be read (checksum, truncation, the store): the reader stops."""

    def __init__(self, segment: str, from_time_us: int, to_time_us: int | None, detail: str,
                 summary=None, unreachable: bool = False) -> None:
        super().__init__(detail)
        self.segment = segment
        self.summary = summary  # the listed segment to refuse (None: a refused one was met)
        self.unreachable = unreachable  # the store failed, not the bytes
        self.from_time_us = from_time_us
        self.to_time_us = to_time_us
        self.detail = detail

    def close_reason(self) -> str:
        upper = "?" if self.to_time_us is None else str(self.to_time_us)
        return f"archive damaged: {self.segment} time_us {self.from_time_us}..{upper} unreadable; replay incomplete"


class ArchiveBlock(NamedTuple):
    """What one lookup gives a reader: one block's events after its position, or how far it may skip."""

    events: list[SegmentEvent]  # ascending; only events with time_us and seq above the asked position
    skip_to: tuple[int, int] | None  # (time_us, seq) of the last event of segments passed as filtered out
    segment: str = ""  # the block's segment (log lines)
    block: int = -1


class ArchiveQuery(NamedTuple):
    """A reader's filter in the planner's terms, for skipping blocks that cannot match."""

    request: planner.PlanRequest
    did_hashes: tuple[int, ...]


def archive_query(collections, dids, kinds=None) -> ArchiveQuery:
    """The plan request whose blocks are a superset of what EventFilter(collections, dids, kinds) passes."""
    exact, prefixes = split_wanted_collections(collections or ())
    kind_bits = 0
    for kind in kinds or ():
        kind_bits |= _PLAN_KIND_BITS.get(kind, 0)
    if kinds is not None and not kind_bits:
        kind_bits = 0  # kinds this build cannot name: read every block, the filter decides
    did_list = tuple(sorted(dids or ()))
    request = planner.PlanRequest(kinds=kind_bits, dids=did_list, collections=tuple(sorted(exact)),
                                  prefixes=tuple(prefixes))
    return ArchiveQuery(request, tuple(key_hash(did) for did in did_list))


def v1_archive_query(collections, dids, include_sync: bool) -> ArchiveQuery:
    """v1's two dimensions; sync events are skipped unless asked for, so blocks of only sync are too."""
    return archive_query(collections, dids, None if include_sync else _V1_KINDS_WITHOUT_SYNC)


class _Bounds(NamedTuple):
    segments: tuple  # the manifest's tuple these were computed from
    nonempty: list  # the segments holding events, ascending
    max_seqs: list[int]
    max_times: list[int]


class ArchiveHistory:
    """One process's archive as a source of events for its subscribers (see the module docstring)."""

    def __init__(self, service, concurrency: int = DEFAULT_CONCURRENCY, lookback_s: float = 0.0) -> None:
        self.service = service
        self.manifest = service.manifest
        self.store = service.store
        self.cache = service.cache  # None: a local directory, read with pread
        self.lookback_us = int(lookback_s * 1_000_000)
        self.concurrency = max(1, concurrency)
        self._executor = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="archive-replay")
        self._slots: asyncio.Semaphore | None = None  # made on the loop at first use
        self._bounds: _Bounds | None = None
        self._scan: asyncio.Future | None = None
        self._scan_started = 0.0
        self.last_completed_scan_started = 0.0  # monotonic start of the newest scan that finished
        # /metrics (server/metrics.py HISTORY_METRICS), counted on the loop only (pool jobs return their counts).
        self.blocks_read = 0
        self.blocks_skipped = 0  # blocks after a reader's position passed over: its filter rules them out
        self.reads_in_flight = 0

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- what the reader asks without I/O ----------------------------------------------------------

    def _current(self) -> _Bounds:
        segments = self.manifest.segments
        bounds = self._bounds
        if bounds is None or bounds.segments is not segments:
            nonempty = [s for s in segments if s.header.event_count]
            bounds = self._bounds = _Bounds(segments, nonempty, [s.header.max_seq for s in nonempty],
                                            [s.header.max_witnessed_at for s in nonempty])
        return bounds

    def _floor_index(self, bounds: _Bounds, now_us: int) -> int:
        if not self.lookback_us:
            return 0
        return bisect.bisect_left(bounds.max_times, now_us - self.lookback_us)

    def floor(self, now_us: int | None = None) -> tuple[int, int] | None:
        """(seq, time_us) of the oldest event a reader may replay from the archive; None: it holds none.

        With --archive-replay-lookback, the first segment holding an event inside the lookback: the
        lookback is rounded down to a segment's start (a segment is replayed whole or not at all)."""
        bounds = self._current()
        first = self._floor_index(bounds, _now_us() if now_us is None else now_us)
        if first >= len(bounds.nonempty):
            return None
        header = bounds.nonempty[first].header
        return header.min_seq, header.min_witnessed_at

    def holds_after(self, after_time_us: int, after_seq: int | None) -> bool:
        """Whether a listed segment holds an event with time_us above the position (and seq above after_seq)."""
        bounds = self._current()
        if not bounds.nonempty:
            return False
        return bounds.max_times[-1] > after_time_us and (after_seq is None or bounds.max_seqs[-1] > after_seq)

    @property
    def ready(self) -> bool:
        """Whether the store has been listed once: before that, no answer about the archive is to be trusted."""
        return self.manifest.scanned

    def first_listing(self) -> asyncio.Future | None:
        """None once the store has been listed; else a listing to wait for (one shared by every asker; it
        may fail, leaving `ready` False: the store cannot be listed). Listing known objects again is cheap
        (they are kept by version), so running beside the service's own first scan costs one more LIST."""
        return None if self.ready else self.request_scan(-1.0)

    @property
    def has_refused(self) -> bool:
        """A segment failed verification: it may hold events the reader would otherwise jump over."""
        return bool(self.manifest.corrupt)

    # -- manifest rescans at the seam ----------------------------------------------------------------

    def scanned_since(self, moment: float) -> bool:
        """Whether a listing that began after `moment` (time.monotonic) has completed."""
        return self.last_completed_scan_started > moment

    def request_scan(self, since: float) -> asyncio.Future:
        """A listing of the store that begins after `since` (time.monotonic), in the pool; askers share one."""
        scan = self._scan
        if scan is not None and not scan.done() and self._scan_started > since:
            return scan
        self._scan_started = started = time.monotonic()
        self._scan = scan = asyncio.ensure_future(self._rescan(started))
        return scan

    async def _rescan(self, started: float) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self.manifest.scan)
        except StoreError as exc:
            self.service._store_unreachable(f"listing for a replay failed: {exc}")
        else:
            self.service._report_corrupt()
        self.last_completed_scan_started = max(self.last_completed_scan_started, started)

    # -- the block after a position ------------------------------------------------------------------

    async def next_block(self, after_time_us: int, after_seq: int | None, query: ArchiveQuery) -> ArchiveBlock:
        """The first block after the position that may hold an event `query` wants, its events after the
        position; ArchiveBlock([], None) when the archive holds nothing after it. HistoryDamaged when a
        segment on the way cannot be read. At most `concurrency` of these read at once, process-wide."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency)
        loop = asyncio.get_running_loop()
        try:
            return await self._next_block(after_time_us, after_seq, query, loop)
        except HistoryDamaged as exc:
            self._report(exc)  # on the loop: the service's problems and manifest are the loop's
            raise

    def _report(self, exc: HistoryDamaged) -> None:
        log.error("event=archive_replay_failed segment=%s from_time_us=%d detail=%r", exc.segment, exc.from_time_us,
                  exc.detail[:300])
        if exc.summary is None:
            return
        if exc.unreachable:
            self.service._store_unreachable(f"replaying {exc.segment} failed: {exc.detail}")
        else:
            self.service.refuse(exc.summary, exc.detail)

    async def _next_block(self, after_time_us: int, after_seq: int | None, query: ArchiveQuery, loop) -> ArchiveBlock:
        async with self._slots:
            self.reads_in_flight += 1
            try:
                located = await loop.run_in_executor(self._executor, self._locate, after_time_us, after_seq, query,
                                                     _now_us())
                self.blocks_skipped += located.skipped
                if located.summary is None:
                    return ArchiveBlock([], located.skip_to)
                if self.cache is None:
                    events = await loop.run_in_executor(self._executor, self._read_local, located)
                else:
                    events = await self._read_cached(located, loop)
            finally:
                self.reads_in_flight -= 1
        self.blocks_read += 1
        start = 0
        while start < len(events) and (events[start].witnessed_at <= after_time_us
                                       or (after_seq is not None and events[start].seq <= after_seq)):
            start += 1
        return ArchiveBlock(events[start:], None, located.summary.name, located.block)

    def _locate(self, after_time_us: int, after_seq: int | None, query: ArchiveQuery, now_us: int) -> _Located:
        """In the pool: the segment and block to read next (footers may be read from the store)."""
        bounds = self._current()
        nonempty = bounds.nonempty
        first = max(self._floor_index(bounds, now_us), bisect.bisect_right(bounds.max_times, after_time_us))
        if after_seq is not None:
            first = max(first, bisect.bisect_right(bounds.max_seqs, after_seq))
        refused = self._refused_indices()
        skip_to = None
        skipped = 0
        request = dataclasses.replace(query.request, after_seq=after_seq)
        for position in range(first, min(len(nonempty), first + SKIP_SEGMENTS_PER_LOOKUP)):
            summary = nonempty[position]
            self._check_no_refused_before(summary, nonempty[position - 1] if position else None, refused,
                                          after_time_us)
            try:
                footer, mask = planner.matching_blocks(self.manifest, summary, request, list(query.did_hashes))
            except SegmentError as exc:
                raise self._damaged(summary, after_time_us, str(exc)) from exc
            except StoreError as exc:
                raise self._unreachable(summary, after_time_us, exc) from exc
            block = _first_block_after(footer, mask, after_time_us) if footer is not None else None
            if block is not None:
                skipped += block - _blocks_behind(footer, after_time_us)
                return _Located(summary, block, footer.blocks[block], skip_to, skipped)
            skipped += summary.header.block_count - (_blocks_behind(footer, after_time_us) if footer is not None else 0)
            skip_to = (summary.header.max_witnessed_at, summary.header.max_seq)
        return _Located(None, -1, None, skip_to, skipped)

    def _refused_indices(self) -> set[int]:
        corrupt = self.manifest.corrupt
        return {index for index in map(parse_segment_name, corrupt) if index is not None} if corrupt else set()

    def _check_no_refused_before(self, summary, previous, refused: set[int], after_time_us: int) -> None:
        """A refused segment between the last one passed and this one may hold events after the position."""
        if not refused:
            return
        lower = previous.index if previous is not None else -1
        holes = sorted(index for index in refused if lower < index < summary.index)
        if holes:
            name = next(n for n in self.manifest.corrupt if parse_segment_name(n) == holes[0])
            raise HistoryDamaged(name, after_time_us + 1, summary.header.min_witnessed_at - 1,
                                 f"{name} was refused ({self.manifest.corrupt[name]}): its events cannot be replayed")

    def _read_local(self, located: _Located) -> list[SegmentEvent]:
        summary, info = located.summary, located.info
        try:
            frame = self.store.read_range(summary.name, info.offset + FRAME_PREFIX_SIZE, info.compressed_size,
                                          summary.version)
            if len(frame) != info.compressed_size:
                raise CorruptSegment(f"block {located.block}: short read, {len(frame)} of {info.compressed_size} bytes")
            return _decode(frame, info, located.block)
        except ObjectChanged as exc:
            raise self._damaged(summary, info.min_witnessed_at, f"changed since it was listed: {exc}") from exc
        except SegmentError as exc:
            raise self._damaged(summary, info.min_witnessed_at, str(exc)) from exc
        except StoreError as exc:
            raise self._unreachable(summary, info.min_witnessed_at, exc) from exc

    async def _read_cached(self, located: _Located, loop) -> list[SegmentEvent]:
        summary, info = located.summary, located.info
        offset = info.offset + FRAME_PREFIX_SIZE
        try:
            fd = await self.cache.open_range(summary.name, summary.version, summary.size, offset,
                                             info.compressed_size, summary.header)
        except SegmentError as exc:
            raise self._damaged(summary, info.min_witnessed_at, str(exc)) from exc
        except StoreError as exc:
            raise self._unreachable(summary, info.min_witnessed_at, exc) from exc
        try:
            return await loop.run_in_executor(self._executor, _read_fd, fd, offset, info, located.block)
        except SegmentError as exc:
            raise self._damaged(summary, info.min_witnessed_at, str(exc)) from exc
        finally:
            os.close(fd)

    @staticmethod
    def _damaged(summary, from_time_us: int, detail: str) -> HistoryDamaged:
        """A segment that fails its checks: refused on the loop (unlisted, archive_segment_corrupt)."""
        return HistoryDamaged(summary.name, from_time_us, summary.header.max_witnessed_at, detail, summary)

    @staticmethod
    def _unreachable(summary, from_time_us: int, exc: Exception) -> HistoryDamaged:
        return HistoryDamaged(summary.name, from_time_us, summary.header.max_witnessed_at, f"store: {exc}",
                              summary, unreachable=True)


class _Located(NamedTuple):
    summary: object  # SegmentSummary, or None: nothing to read
    block: int
    info: object  # BlockInfo
    skip_to: tuple[int, int] | None
    skipped: int = 0  # blocks after the position passed over by the filter (for /metrics)


def _blocks_behind(footer, after_time_us: int) -> int:
    """How many of a segment's first blocks end at or before the position (behind the reader, not skipped)."""
    behind = 0
    for info in footer.blocks:
        if info.max_witnessed_at > after_time_us:
            break
        behind += 1
    return behind


def _first_block_after(footer, mask: int, after_time_us: int) -> int | None:
    """The first selected block (byte mask) holding an event with time_us above the position."""
    if not mask:
        return None
    marks = mask.to_bytes(footer.block_count, "little")
    index = marks.find(1)
    while index >= 0:
        if footer.blocks[index].max_witnessed_at > after_time_us:
            return index
        index = marks.find(1, index + 1)
    return None


def _read_fd(fd: int, offset: int, info, block: int) -> list[SegmentEvent]:
    frame = os.pread(fd, info.compressed_size, offset)
    if len(frame) != info.compressed_size:
        raise CorruptSegment(f"block {block}: short read, {len(frame)} of {info.compressed_size} bytes")
    return _decode(frame, info, block)


def _decode(frame: bytes, info, block: int) -> list[SegmentEvent]:
    """A block frame's events, its zstd checksum and the index entry's sizes and count checked."""
    body = decompress_frame(frame, limit=min(info.uncompressed_size, MAX_DECODED_BYTES))
    if len(body) != info.uncompressed_size:
        raise CorruptSegment(f"block {block} decompressed to {len(body)} bytes, index says {info.uncompressed_size}")
    events = decode_block(body)
    if len(events) != info.event_count:
        raise CorruptSegment(f"block {block} holds {len(events)} events, index says {info.event_count}")
    return events


def _now_us() -> int:
    return time.time_ns() // 1000
