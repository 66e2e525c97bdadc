"""The archive writer: seals the durable event log into `.jss` segments (issue 24).

Owns: turning log rows into segment rows (`segment_event`), the active segment (a temporary
file rebuilt from the log, never resumed), the block and seal clocks (`--archive-block-events`,
`--archive-block-seconds`, `--archive-segment-bytes`, `--archive-seal-after`), the seal protocol
(footer, header, fsync, a no-clobber publish, the directory fsync), the sealed tip (the newest
published segment: the archive directory is its only record), what the TTL trim must keep (every
event above the sealed tip, `hold_time_us`, on every node: a --cluster node seals its own archive
directory and holds at its own tip; with a shared --archive-url only the leader seals, and a follower
reads the tip it sealed from the store every FOLLOW_EVERY_S and holds its trim there),
`--archive-retention`, and the `archive_seal_failed` and `archive_tip_unreadable` problems.
It must never read an event that is not yet in RocksDB (it reads the log, which holds only
durable batches), never overwrite or rewrite a published segment (publish refuses an existing
name; a segment found at start is adopted after its checksum is verified), never publish while
`may_seal()` says this process must not (a --cluster follower of a shared --archive-url), and
never stop the daemon: every failure is counted, reported and retried, and the log keeps the
events meanwhile.

Crash argument (docs/architecture.md §12.3): the active segment lives only in a `.tmp` file
that is deleted at start; a segment is sealed exactly when its name exists in the archive
directory (linked there after its header and footer were fsynced; the directory is fsynced
before the tip moves); the tip is read back from the directory at start, and reading resumes
at the first log event above it. Seq and time_us rise together, so "above the tip" is
"time_us above the tip segment's max witnessed_at". The TTL trim keeps every event above the
tip in memory, which only moves after the directory fsync, so an event leaves the log only once
a durable segment holds it. Hence, after kill -9 anywhere: every event is in a segment or in the
log, none in two segments (a new segment starts above the newest one's max seq).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import struct
import time
from dataclasses import dataclass
from typing import Callable, NamedTuple

import libipld

from jetstream.archive.format import (
    HEADER_SIZE,
    KIND_ACCOUNT,
    KIND_CREATE,
    KIND_DELETE,
    KIND_IDENTITY,
    KIND_SYNC,
    KIND_UPDATE,
    Header,
    InvalidEvent,
    SegmentError,
    SegmentEvent,
    decode_header,
    parse_segment_name,
    segment_name,
)
from jetstream.archive.reader import SegmentReader
from jetstream.archive.writer import SegmentOptions, SegmentWriter
from jetstream.events import KIND_ACCOUNT as LOG_ACCOUNT
from jetstream.events import KIND_COMMIT as LOG_COMMIT
from jetstream.events import KIND_IDENTITY as LOG_IDENTITY
from jetstream.events import KIND_SYNC as LOG_SYNC
from jetstream.implementation import commit_record_fields
from jetstream.log.store import LogGap
from jetstream.wire_v2 import RECORD_HEAD

log = logging.getLogger(__name__)

STAGED_SUFFIX = ".tmp"
QUARANTINE_SUFFIX = ".corrupt"
READ_CHUNK = 2048  # log rows read per step of the writer thread
IDLE_TICK_S = 1.0  # how often an idle sealer looks at its clocks (a durable batch wakes it sooner)
COALESCE_S = 0.1
RETRY_S = 5.0  # after a failure: rebuild from the log and try again this often
FOLLOW_EVERY_S = 5.0  # a --cluster follower of a shared --archive-url re-reads its sealed tip this often
# A follower that has not read the tip for this long raises archive_tip_unreadable (its trim holds meanwhile).
TIP_UNREADABLE_AFTER_S = 15.0
RETENTION_EVERY_S = 60.0

_OPERATION_NAMES = {"create": KIND_CREATE, "update": KIND_UPDATE, "delete": KIND_DELETE}


# -- log row -> segment row ----------------------------------------------------------------------

class Skip(NamedTuple):
    """An event the archive cannot hold, and why (a counter's label)."""

    reason: str


def commit_fields_from_json(document: bytes) -> tuple[int, str, str] | None:
    """(kind, rev, rkey) from the event's v1 JSON (for a commit whose v2 record has no frame)."""
    try:
        commit = json.loads(document)["commit"]
        return _OPERATION_NAMES[commit["operation"]], commit.get("rev", ""), commit.get("rkey", "")
    except (ValueError, KeyError, TypeError):
        return None


def segment_event(row, json_of: Callable[[int], bytes | None]) -> SegmentEvent | Skip:
    """The segment row of one log row read from `events_v2` (payload = the stored v2 record).

    witnessed_at = time_us, indexed_at = 0 (no import times). `json_of(time_us)` gives the v1
    JSON when the v2 record lacks what a row needs (a record v2's emitter refused: no frame).
    """
    record = row.payload
    kind = row.kind
    if kind == LOG_COMMIT:
        split = commit_record_fields(record)  # the C twin on the common path (jetstream/_core/segment.pyx)
        if split is None:
            return Skip("bad_record")
        segment_kind, rev, rkey, payload = split
        if segment_kind is None:
            document = json_of(row.time_us)
            fields = commit_fields_from_json(document) if document is not None else None
            if fields is None:
                return Skip("bad_record")
            segment_kind, rev, rkey = fields
        if segment_kind != KIND_DELETE and not payload:
            return Skip("no_payload")  # stored without its record block (a log written before events_v2)
        return SegmentEvent(row.seq, row.time_us, 0, segment_kind, row.did, row.collection, rkey, rev, payload)
    try:
        _, head_length, tail_length, cid_length = RECORD_HEAD.unpack_from(record)
    except struct.error:
        return Skip("bad_record")
    payload = bytes(record[RECORD_HEAD.size + head_length + tail_length + cid_length:])
    if not payload:
        return Skip("no_payload")
    if kind == LOG_IDENTITY:
        return SegmentEvent(row.seq, row.time_us, 0, KIND_IDENTITY, row.did, "", "", "", payload)
    if kind == LOG_ACCOUNT:
        return SegmentEvent(row.seq, row.time_us, 0, KIND_ACCOUNT, row.did, "", "", "", payload)
    if kind == LOG_SYNC:
        return SegmentEvent(row.seq, row.time_us, 0, KIND_SYNC, row.did, "", "", _sync_rev(payload), payload)
    return Skip("unknown_kind")


def _sync_rev(body: bytes) -> str:
    try:
        rev = libipld.decode_dag_cbor(body).get("rev")
    except Exception:  # noqa: BLE001 - libipld raises several types; a bad body has no rev
        return ""
    return rev if isinstance(rev, str) else ""


# -- where segments are published ---------------------------------------------------------------

class SealConflict(Exception):
    """A segment of that name is already published (another sealer got there first)."""


class LocalArchiveStore:
    """Segments in a local directory. `publish(staged_path, name)` is the one step an object store
    (--archive-url) replaces; staging stays a local file either way."""

    def __init__(self, directory: str, fsync: bool = True) -> None:
        self.directory = directory
        self.fsync = fsync

    def prepare(self) -> list[str]:
        """Create the directory; delete half-written staged segments of an earlier life (their names)."""
        os.makedirs(self.directory, exist_ok=True)
        removed = []
        for name in os.listdir(self.directory):
            if name.endswith(STAGED_SUFFIX) and parse_segment_name(name[:-len(STAGED_SUFFIX)]) is not None:
                os.unlink(os.path.join(self.directory, name))
                removed.append(name)
        return removed

    def staging_path(self, name: str) -> str:
        return os.path.join(self.directory, name + STAGED_SUFFIX)

    def published(self) -> list[tuple[int, str]]:
        """(index, name) of every published segment file, ascending."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        found = [(parse_segment_name(name), name) for name in names]
        return sorted((index, name) for index, name in found if index is not None)

    def verified_header(self, name: str) -> Header:
        """The segment's header, its checksum over the footer verified (SegmentError if not)."""
        with SegmentReader.open(os.path.join(self.directory, name)) as reader:
            return reader.header

    def header(self, name: str) -> Header:
        """The header alone, unverified (retention only needs its time bounds)."""
        with open(os.path.join(self.directory, name), "rb") as file:
            return decode_header(file.read(HEADER_SIZE))

    def quarantine(self, name: str) -> str:
        """Move a segment that fails verification out of the served names (kept for the operator)."""
        moved = name + QUARANTINE_SUFFIX
        os.replace(os.path.join(self.directory, name), os.path.join(self.directory, moved))
        return moved

    def publish(self, staged_path: str, name: str) -> None:
        """Make the sealed file at `staged_path` the segment `name`, atomically and never over another.

        A hard link fails if the name exists (no clobber: two sealers cannot both publish an index);
        then the staged name goes and the directory is fsynced, so the name survives power loss.
        """
        final = os.path.join(self.directory, name)
        try:
            os.link(staged_path, final)
        except FileExistsError:
            raise SealConflict(f"{name} is already published") from None
        os.unlink(staged_path)
        if self.fsync:
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def delete(self, name: str) -> None:
        os.unlink(os.path.join(self.directory, name))


class ObjectArchiveStore:
    """Segments in an object store (--archive-url): staged in a local directory, published by a
    create-only upload, so the daemon serving --archive-url serves what it sealed.

    The object store is the only record of what is sealed: `published()` lists its `seg_*.jss`
    objects, and `verified_header()` checks one with ranged reads (header, then the footer its
    checksum covers), never downloading the blocks. A PUT is atomic (no reader sees a part), and
    the create-only mode makes the store refuse a name that exists: a retried upload whose first
    attempt did land, or another sealer, ends in SealConflict, never in a replaced segment. The
    staged file is removed only after the store confirmed the upload. Objects are never deleted
    or renamed here (store.py must not delete): a newest object that fails verification stays in
    place (the serving manifest refuses it), and `--archive-retention` is left to the bucket's
    lifecycle rules.
    """

    deletes = False  # retention: the bucket's lifecycle rules expire objects, not the sealer

    def __init__(self, url: str, staging_directory: str, objects=None) -> None:
        from jetstream.archive.store import ObjectStore
        self.objects = objects or ObjectStore(url)
        self.staging_directory = staging_directory
        self.directory = url  # named in logs and in the archive_seal_failed problem

    def prepare(self) -> list[str]:
        return LocalArchiveStore(self.staging_directory, fsync=False).prepare()

    def staging_path(self, name: str) -> str:
        return os.path.join(self.staging_directory, name + STAGED_SUFFIX)

    def published(self) -> list[tuple[int, str]]:
        return [(obj.index, obj.name) for obj in self.objects.list_segments()]

    def verified_header(self, name: str) -> Header:
        from jetstream.archive.manifest import open_segment
        summary, _ = open_segment(self.objects, self.objects.head(name))
        return summary.header

    def header(self, name: str) -> Header:
        return decode_header(self.objects.read_range(name, 0, HEADER_SIZE))

    def quarantine(self, name: str) -> str:
        return "left_in_place"  # cannot be renamed atomically; the manifest refuses it; its index is never reused

    def publish(self, staged_path: str, name: str) -> None:
        from jetstream.archive.store import ObjectExists
        try:
            self.objects.put_file_new(name, staged_path)
        except ObjectExists:
            raise SealConflict(f"{name} is already published") from None
        os.unlink(staged_path)

    def delete(self, name: str) -> None:
        raise NotImplementedError("segments in an object store expire by the bucket's lifecycle rules")


def segment_store(settings: SealerSettings):
    """Where the sealer publishes: the object store of --archive-url, else the archive directory."""
    if settings.url:
        return ObjectArchiveStore(settings.url, settings.directory)
    return LocalArchiveStore(settings.directory, settings.fsync)


# -- the sealer ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class SealerSettings:
    directory: str
    block_events: int = 4096
    block_seconds: float = 30.0
    segment_bytes: int = 256 << 20
    seal_after_s: float = 3600.0
    retention_s: float = 0.0  # 0: keep every segment
    fsync: bool = True
    url: str = ""  # --archive-url: publish there (`directory` then only stages the segment being written)

    @classmethod
    def from_config(cls, cfg) -> SealerSettings:
        return cls(cfg.archive_dir or os.path.join(cfg.data_dir, "archive"), cfg.archive_block_events,
                   cfg.archive_block_seconds, cfg.archive_segment_bytes, cfg.archive_seal_after,
                   cfg.archive_retention, fsync=True, url=cfg.archive_url)


class SealedTip(NamedTuple):
    next_index: int  # the index the next segment is published under
    seq: int  # the newest sealed seq (0: none)
    time_us: int  # its time_us (the newest segment's max witnessed_at; 0: none)


class ArchiveSealer:
    """Reads the log forward from the sealed tip and seals segments; one per process that ingests."""

    def __init__(self, event_log, settings: SealerSettings, *, store=None, problems=None,
                 may_seal: Callable[[], bool] = lambda: True, on_sealed: Callable[[], None] | None = None,
                 clock_s: Callable[[], float] = time.time) -> None:
        self.event_log = event_log
        self.settings = settings
        self.store = store or segment_store(settings)
        self.problems = problems
        self.may_seal = may_seal
        self.on_sealed = on_sealed
        self.clock_s = clock_s
        self.tip: SealedTip | None = None  # None until recover() read the archive: hold every event
        self.writer: SegmentWriter | None = None
        self._fed_time_us = 0  # time_us of the last log row read (events above the tip)
        self._fed_seq = 0
        self._segment_first_us = 0  # time_us of the active segment's first event
        self._block_first_us = 0  # of the pending block's first event (0: the block is empty)
        self._wake = asyncio.Event()
        self._step: asyncio.Future | None = None
        self._last_retention = 0.0
        self._leading = False
        self._logged_skips: set[str] = set()
        self.sealed_segments = 0
        self.sealed_events = 0
        self.skipped: dict[str, int] = {}  # reason -> events the archive cannot hold
        self.missing = 0  # seqs above the tip the log no longer (or never) held as v2 rows
        self.failures = 0
        # A follower (may_seal() False) follows the tip another node seals: when it last read it (monotonic),
        # when it last read it successfully, and the failed reads (its trim holds at the last tip it read).
        self._followed_at = float("-inf")
        self._followed_ok_at = time.monotonic()
        self.tip_read_failures = 0
        self._verified: dict[str, Header] = {}  # name -> header of segments already verified (immutable once published)

    # -- what the rest of the daemon asks -------------------------------------------------------

    def hold_time_us(self) -> int:
        """The TTL trim may delete events with time_us below this (and only those): every sealed event.

        The same on a leader (its own tip) and a follower (the tip last read from the store); 0 (hold
        everything) while no tip is known: at start, and on a follower that has never read one."""
        return 0 if self.tip is None else self.tip.time_us + 1

    def wake(self) -> None:
        """A batch is durable (pipeline on_durable / the cluster applier): read it soon."""
        self._wake.set()

    async def wait_idle(self) -> None:
        """Return once no writer step runs in a thread (before the log is reopened or closed)."""
        if self._step is not None:
            await asyncio.gather(self._step, return_exceptions=True)

    def report(self) -> dict:
        tip = self.tip
        return {"sealed_tip_seq": tip.seq if tip else None, "next_index": tip.next_index if tip else None,
                "sealed_segments": self.sealed_segments, "sealed_events": self.sealed_events,
                "active_events": self.writer.event_count if self.writer else 0, "skipped": dict(self.skipped),
                "missing": self.missing, "failures": self.failures,
                "role": "sealing" if self._leading else "following", "tip_read_failures": self.tip_read_failures}

    # -- the task -------------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            sealed_before = self.sealed_segments
            failed = False
            try:
                leading = self.may_seal()
                if leading != self._leading:
                    self._leading = leading
                    self._drop_active(None if leading else "not_leader")
                    if leading:  # a new term re-reads the archive: another node may have sealed meanwhile
                        self.tip = None
                    else:  # what this node sealed stays sealed: hold there, and follow the next leader at once
                        self._followed_at = float("-inf")
                if leading:
                    if self.tip is None:
                        await self._in_thread(self.recover)
                    await self._in_thread(self.step)
                else:
                    await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a sealer that cannot write must not stop the daemon
                self._failed(exc)
                failed = True
            if self.sealed_segments != sealed_before and self.on_sealed is not None:
                self.on_sealed()
            if failed:
                await asyncio.sleep(RETRY_S)
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), IDLE_TICK_S)
                await asyncio.sleep(COALESCE_S)  # gather a few batches per step, not one step per batch
            except asyncio.TimeoutError:
                pass

    async def _in_thread(self, function) -> None:
        # Shielded: cancelling run() (daemon stop) must not orphan a thread still reading RocksDB;
        # wait_idle() lets the daemon finish it before closing the log.
        self._step = asyncio.ensure_future(asyncio.to_thread(function))
        await asyncio.shield(self._step)

    def stop(self) -> None:
        """At daemon stop (after the task and its thread ended): delete the active segment's file."""
        self._drop_active(None)

    # -- a follower: the tip another node seals ------------------------------------------------

    async def _follow(self) -> None:
        """Not sealing (a --cluster follower): read the store's sealed tip every FOLLOW_EVERY_S.

        The trim holds at the tip last read, so a follower keeps every event no segment holds yet
        and, leading after a failover, can seal them from its own log. A read that fails keeps the
        last tip (what was sealed stays sealed: the trim only holds longer); failing for
        TIP_UNREADABLE_AFTER_S raises archive_tip_unreadable.
        """
        now = time.monotonic()
        if now - self._followed_at < FOLLOW_EVERY_S:
            return
        self._followed_at = now
        try:
            await self._in_thread(self._read_followed_tip)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a store that cannot be read: hold, count, report
            self._tip_unreadable(exc)
            return
        self._followed_ok_at = time.monotonic()
        if self.problems is not None:
            self.problems.clear("archive_tip_unreadable")

    def _read_followed_tip(self) -> None:
        tip = self.read_tip()
        if self.tip is None or tip.seq != self.tip.seq:
            log.info("event=archive_followed_tip sealed_tip_seq=%d next_segment=%s", tip.seq,
                     segment_name(tip.next_index))
        self.tip = tip

    def read_tip(self) -> SealedTip:
        """The store's sealed tip without changing the store: the newest published segment that verifies.

        What recover() adopts, read-only (staged files and corrupt segments are the sealer's to
        handle). Each segment is verified once: a published name is never rewritten."""
        published = self.store.published()
        next_index = published[-1][0] + 1 if published else 0
        for _, name in reversed(published):
            try:
                header = self._verified_header(name)
            except SegmentError as exc:
                log.warning("event=archive_followed_segment_refused name=%s reason=%r", name, str(exc)[:200])
                continue
            return SealedTip(next_index, header.max_seq, header.max_witnessed_at)
        return SealedTip(next_index, 0, 0)

    def _verified_header(self, name: str) -> Header:
        """store.verified_header, remembered: a published segment is never rewritten (SegmentError if it fails)."""
        header = self._verified.get(name)
        if header is None:
            header = self.store.verified_header(name)
            if len(self._verified) >= 64:
                self._verified.clear()
            self._verified[name] = header
        return header

    def _tip_unreadable(self, exc: Exception) -> None:
        self.tip_read_failures += 1
        stale_s = time.monotonic() - self._followed_ok_at
        log.warning("event=archive_tip_read_failed failures=%d stale_s=%.0f held_at_seq=%s error=%r",
                    self.tip_read_failures, stale_s, self.tip.seq if self.tip else "none", str(exc)[:300])
        if stale_s >= TIP_UNREADABLE_AFTER_S and self.problems is not None:
            self.problems.raise_problem(
                "archive_tip_unreadable",
                f"this node cannot read the sealed tip of {self.store.directory} ({stale_s:.0f}s, "
                f"{self.tip_read_failures} failed reads, last: {str(exc)[:200]}); its TTL trim holds every event "
                f"above sealed seq {self.tip.seq if self.tip else 'unknown (none trimmed)'}, so the log grows",
                "check that this node reaches the archive store of --archive-url (credentials, endpoint, network; "
                "file://: the shared directory is mounted); the trim resumes by itself at the next read")

    # -- recovery -------------------------------------------------------------------------------

    def recover(self) -> SealedTip:
        """At start: delete staged files, adopt the newest published segment that verifies, set the tip.

        A newest segment that fails verification cannot have been written by this protocol
        (it is linked only once complete): it is moved aside (`.corrupt`) and its events are
        sealed again from the log, if the log still holds them. Indexes are never reused.
        """
        for name in self.store.prepare():
            log.warning("event=archive_staged_segment_removed name=%s reason=unsealed_at_restart", name)
        published = self.store.published()
        next_index = published[-1][0] + 1 if published else 0
        tip = SealedTip(next_index, 0, 0)
        for _, name in reversed(published):
            try:
                header = self.store.verified_header(name)
            except SegmentError as exc:
                moved = self.store.quarantine(name)
                log.error("event=archive_segment_quarantined name=%s moved_to=%s reason=%r", name, moved, str(exc))
                continue
            tip = SealedTip(next_index, header.max_seq, header.max_witnessed_at)
            log.info("event=archive_segment_adopted name=%s max_seq=%d events=%d", name, header.max_seq,
                     header.event_count)
            break
        self._reset_to(tip)
        log.info("event=archive_sealer_ready directory=%s sealed_tip_seq=%d next_segment=%s log_newest_seq=%d",
                 self.store.directory, tip.seq, segment_name(tip.next_index), self.event_log.newest_seq())
        return tip

    def _reset_to(self, tip: SealedTip) -> None:
        """Forget the active segment; read the log again from just above `tip`."""
        self._drop_active(None)
        self.tip = tip
        self._fed_time_us = tip.time_us
        self._fed_seq = tip.seq

    def _drop_active(self, reason: str | None) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None
            if reason:
                log.info("event=archive_active_segment_dropped reason=%s", reason)
            if self.tip is not None:  # rebuilt from the log when sealing resumes
                self._fed_time_us, self._fed_seq = self.tip.time_us, self.tip.seq
        self._block_first_us = 0

    # -- one step (in a worker thread) ----------------------------------------------------------

    def step(self) -> None:
        """Read every durable row above what was fed; cut and seal by the clocks; apply retention."""
        if self.tip is None:
            return
        while True:
            try:
                rows = self.event_log.read_after(self._fed_time_us, READ_CHUNK, compressed=False, v2=True)
            except LogGap as gap:  # a range `jetstream repair` dropped: what it lost cannot be archived
                self._fed_time_us = gap.gap["to_time_us"]
                log.warning("event=archive_log_gap_skipped from_time_us=%s to_time_us=%s",
                            gap.gap["from_time_us"], gap.gap["to_time_us"])
                continue
            rewound = False
            for row in rows:
                if not self._feed(row):
                    rewound = True  # the tip moved under this chunk: read again from just above it
                    break
            if (len(rows) < READ_CHUNK and not rewound) or not self.may_seal():
                break
        self._apply_clocks(int(self.clock_s() * 1_000_000))
        self._apply_retention()

    def _feed(self, row) -> bool:
        """Add one log row to the active segment; False when a seal moved the tip and the row was not used.

        A seal that meets a conflict (another sealer published meanwhile) or finds this node no longer
        leads resets the read position to the tip it then adopts, which may lie below or above `row`:
        the caller must read the log again from there, never go on with the rest of its chunk.
        """
        if row.seq <= self._fed_seq:
            return True  # cannot happen (rows above the tip's time have higher seqs); never twice
        event = segment_event(row, self.event_log.json_payload_at)
        writer = self.writer
        if writer is not None and not isinstance(event, Skip):
            if self._block_first_us and row.time_us - self._block_first_us >= self.settings.block_seconds * 1e6:
                writer.cut_block()
                self._block_first_us = 0
            if writer.size_bytes >= self.settings.segment_bytes or \
                    row.time_us - self._segment_first_us >= self.settings.seal_after_s * 1e6:
                if not self._seal():
                    return False
        if row.seq != self._fed_seq + 1:
            self.missing += row.seq - self._fed_seq - 1
            log.warning("event=archive_seqs_missing after_seq=%d next_seq=%d missing=%d reason=not_in_log",
                        self._fed_seq, row.seq, row.seq - self._fed_seq - 1)
        self._fed_time_us, self._fed_seq = row.time_us, row.seq
        if isinstance(event, Skip):
            self._count_skip(event.reason, row)
            return True
        if self.writer is None:
            self._open_writer(row.time_us)
        try:
            self.writer.add(event)
        except InvalidEvent as exc:  # a collection, rkey or rev past 255 bytes: v2 cannot hold it either
            self._count_skip("too_long", row, str(exc))
            return True
        if not self._block_first_us:
            self._block_first_us = row.time_us
        if self.writer.pending_events == 0:  # the writer cut at --archive-block-events
            self._block_first_us = 0
        return True

    def _count_skip(self, reason: str, row, detail: str = "") -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if reason not in self._logged_skips:  # once per reason; the count is in report() and /healthz
            self._logged_skips.add(reason)
            log.warning("event=archive_event_skipped reason=%s seq=%d did=%s detail=%r (logged once per reason)",
                        reason, row.seq, row.did, detail[:200])

    def _open_writer(self, first_time_us: int) -> None:
        name = segment_name(self.tip.next_index)
        path = self.store.staging_path(name)
        if os.path.exists(path):
            os.unlink(path)  # a staged file this process abandoned (a failed seal)
        options = SegmentOptions(block_events=self.settings.block_events, fsync=self.settings.fsync)
        self.writer = SegmentWriter(path, self.tip.seq + 1, options)
        self._segment_first_us = first_time_us
        self._block_first_us = 0

    def _apply_clocks(self, now_us: int) -> None:
        """Caught up with the log: cut a block or seal the segment whose time has come."""
        writer = self.writer
        if writer is None or writer.event_count == 0:
            return
        if now_us - self._segment_first_us >= self.settings.seal_after_s * 1e6:
            self._seal()
        elif self._block_first_us and now_us - self._block_first_us >= self.settings.block_seconds * 1e6:
            writer.cut_block()
            self._block_first_us = 0

    def _seal(self) -> bool:
        """Footer, header, fsync; publish (no clobber; refused to a non-leader); move the tip.

        False when nothing was published and the read position went back to a tip (this node no
        longer leads, or another sealer published meanwhile and its segments were adopted).
        """
        writer, tip = self.writer, self.tip
        name = segment_name(tip.next_index)
        if not self.may_seal():
            self._drop_active("not_leader")
            return False
        started = time.perf_counter()
        finished = writer.finish()
        self.writer = None
        try:
            overlap = self._overlaps_published(tip.next_index, finished.header.min_seq)
            if overlap:
                raise SealConflict(overlap)
            self.store.publish(finished.path, name)
        except SealConflict as conflict:
            os.unlink(finished.path)
            log.warning("event=archive_seal_conflict name=%s reason=%r action=rescan_and_rebuild", name, str(conflict))
            self.tip = None  # recover() again: adopt what the other sealer published
            self.recover()
            return False
        except BaseException:
            try:
                os.unlink(finished.path)
            except OSError:
                pass
            raise
        header = finished.header
        self.tip = SealedTip(tip.next_index + 1, header.max_seq, header.max_witnessed_at)
        self.sealed_segments += 1
        self.sealed_events += header.event_count
        self._block_first_us = 0
        log.info("event=archive_segment_sealed name=%s events=%d blocks=%d min_seq=%d max_seq=%d bytes=%d ms=%.1f",
                 name, header.event_count, header.block_count, header.min_seq, header.max_seq, finished.size_bytes,
                 (time.perf_counter() - started) * 1000)
        if self.problems is not None:
            self.problems.clear("archive_seal_failed")
        return True

    def _overlaps_published(self, next_index: int, min_seq: int) -> str:
        """Why publishing seqs from `min_seq` as segment `next_index` would seal something twice ("" if not).

        The create-only publish refuses a taken name; this also refuses a segment another sealer
        (a deposed leader finishing its seal, a node with a stale tip) published under a later index,
        or whose seqs reach ours: the newest published segment must end below `min_seq`.
        """
        published = self.store.published()
        if not published:
            return ""
        index, name = published[-1]
        if index >= next_index:
            return f"{name} was published meanwhile (this segment would be {segment_name(next_index)})"
        try:
            header = self._verified_header(name)
        except SegmentError:
            return ""  # never served; recover() passed it over for the same reason
        if header.event_count and header.max_seq >= min_seq:
            return f"{name} holds seqs up to {header.max_seq}, this segment starts at {min_seq}"
        return ""

    def _failed(self, exc: Exception) -> None:
        """Report, drop the active segment (rebuilt from the log next time), keep the events in the log."""
        self.failures += 1
        self._drop_active(None)
        if self.tip is not None:
            self._fed_time_us, self._fed_seq = self.tip.time_us, self.tip.seq
        log.error("event=archive_seal_error error=%r retry_s=%g", str(exc)[:300], RETRY_S)
        if self.problems is not None:
            self.problems.raise_problem(
                "archive_seal_failed",
                f"the archive writer cannot write to {self.store.directory}: {str(exc)[:200]}; events above "
                f"sealed seq {self.tip.seq if self.tip else 'unknown'} stay in the log (the TTL trim keeps them)",
                ("check that the object store of --archive-url is reachable and writable (credentials, bucket, "
                 "endpoint)" if self.settings.url else
                 "free space or fix permissions of the archive directory (--archive-dir)") +
                "; sealing resumes by itself "
                f"within {RETRY_S:g}s and the problem ends at the next sealed segment; the log grows meanwhile")

    def _apply_retention(self) -> None:
        """--archive-retention: delete segments wholly older than it, never the newest (it holds the tip)."""
        if self.settings.retention_s <= 0 or not getattr(self.store, "deletes", True):
            return
        now = self.clock_s()
        if now - self._last_retention < RETENTION_EVERY_S:
            return
        self._last_retention = now
        cutoff_us = int((now - self.settings.retention_s) * 1_000_000)
        for _, name in self.store.published()[:-1]:
            try:
                if self.store.header(name).max_witnessed_at >= cutoff_us:
                    break  # segments are in time order: the rest are younger
                self.store.delete(name)
            except (OSError, SegmentError) as exc:
                log.warning("event=archive_retention_failed name=%s error=%r", name, str(exc)[:200])
                break
            log.info("event=archive_segment_expired name=%s retention_s=%g", name, self.settings.retention_s)
