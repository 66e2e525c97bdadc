"""A worker's read-only view of the event log, and the feed into the worker's live ring.

Owns: opening the main process's RocksDB as a secondary instance (no LOCK, its own info-log
directory), catching up with the primary (which replays the primary's new WAL records, so a
batch is visible as soon as it is durable, before any memtable flush), and appending new
events to the worker's LiveRing in time_us order: on the live path the rows the main process
sends after each durable batch (channel.ROWS, no RocksDB work at all), and from the log after
a catch-up when rows were missed (a gap between what the ring holds and what a batch follows),
at a poll, or when asked to. The ring follows the single process's rules: its floor starts at
the log's high-water mark when the worker opens it, and every event above the floor is
appended, once, in order, so a reader never sees a gap or a duplicate across ring and log.
Because the ring may now run ahead of this view, a log read first makes sure the view
reaches the ring's floor (a reader below the floor must find every event up to it).
It must never write to the log, invent or re-encode an event (the ring holds the very bytes
the log holds), or append to the ring anything the primary has not made durable.
"""
from __future__ import annotations

import logging
import time

from rocksdict import AccessType, Options, Rdict

from jetstream.events import Event
from jetstream.implementation import frame_of_record
from jetstream.log.store import (
    _SIGNED,
    _UNSIGNED,
    CF_EVENTS_INDEX,
    META_HWM,
    META_INDEX_FROM,
    META_INSTANCE_ID,
    META_RELAY_CURSOR,
    META_SEQ,
    OUR_COLUMN_FAMILIES,
    EventLog,
    LogError,
    _column_family_options,
)

log = logging.getLogger(__name__)

# Rows read per log call while feeding the ring; bounds one call's work, not the feed.
FEED_CHUNK = 4096


class SecondaryEventLog(EventLog):
    """An EventLog that follows another process's log: every read method, no writes.

    `catch_up()` makes the primary's newest durable batches visible and refreshes the
    high-water mark, relay cursor and index start that the read methods use. Opening goes
    through EventLog's own steps (location checks, column families, format check, meta),
    with the database opened as a secondary and nothing written.
    """

    def __init__(self, path: str, secondary_path: str) -> None:
        self.secondary_path = str(secondary_path)
        self.ring = None  # the worker's LiveRing: log reads first reach its floor (see cover_ring_floor)
        self.catch_ups = 0
        self.floor_catch_ups = 0  # catch-ups a log read needed because the ring had run ahead of the view
        self.catch_up_seconds = 0.0  # wall clock, preemption included
        self.catch_up_cpu_seconds = 0.0  # this thread's CPU only
        super().__init__(path, fsync=False, create=False)

    def _open(self, fresh: bool, existing_column_families: set[str]) -> Rdict:
        missing = [name for name in (*OUR_COLUMN_FAMILIES, CF_EVENTS_INDEX) if name not in existing_column_families]
        if missing:  # the main process opens the log (adding these) before any worker starts
            raise LogError(f"{self.path} is not a jetstream event log opened by this version "
                           f"(missing {', '.join(missing)})")
        options = Options(raw_mode=True)
        # A secondary keeps every SST it has seen open: files the primary compacts away stay
        # readable to iterators in flight instead of vanishing under them.
        options.set_max_open_files(-1)
        # Each catch-up re-applies the primary's MANIFEST, and RocksDB loads table handles with up
        # to this many threads, spawned per column family per catch-up: ~3 ms of thread starts
        # per column family where one thread takes ~15 µs (measured, 5 column families).
        options.set_max_file_opening_threads(1)
        names = sorted(existing_column_families - {"default"})
        try:
            return Rdict(self.path, options, column_families={name: _column_family_options(name) for name in names},
                         access_type=AccessType.secondary(self.secondary_path))
        except Exception as exc:  # noqa: BLE001 - rocksdict raises bare Exception
            raise LogError(f"cannot open event log at {self.path} as a secondary: {exc}") from exc

    def _read_or_create_instance_id(self) -> str:
        stored = self._meta.get(META_INSTANCE_ID)
        if not stored:  # the primary creates it when it opens the log, before any worker starts
            raise LogError(f"event log at {self.path} has no instance id yet")
        return stored.decode("ascii")

    def _start_index(self, index_from: int) -> None:
        self._index_from = index_from  # the primary records it; a reader only needs the value

    def _upgrade_to_seq(self) -> None:
        # The primary upgrades a format 1 log when it opens it, before any worker starts.
        raise LogError(f"event log at {self.path} is not upgraded to format 2 yet (the main process does that)")

    def _refresh_meta(self) -> None:
        self._relay_cursor = self._read_meta_int(META_RELAY_CURSOR, _SIGNED)
        self._hwm = self._read_meta_int(META_HWM, _UNSIGNED) or 0
        self._newest_seq = self._read_meta_int(META_SEQ, _UNSIGNED) or 0
        index_from = self._read_meta_int(META_INDEX_FROM, _UNSIGNED)
        self._index_from = index_from if index_from is not None else self._hwm + 1
        self._gaps = self._read_gaps()  # the primary's TTL trim forgets expired ones

    def catch_up(self) -> int:
        """Make the primary's newest durable batches visible; the high-water mark after it."""
        started, started_cpu = time.perf_counter(), time.thread_time()
        self._db.try_catch_up_with_primary()
        self._refresh_meta()
        self.catch_ups += 1
        self.catch_up_seconds += time.perf_counter() - started
        self.catch_up_cpu_seconds += time.thread_time() - started_cpu
        return self._hwm

    def cover_ring_floor(self) -> None:
        """Catch up if the ring's floor is past this view: a read below the floor must reach it.

        The ring is fed from the main process's rows, which can be ahead of this view; a reader
        that finds nothing in the log between its position and the floor would otherwise skip
        to the floor (the TTL rule) over events the primary holds. Raises LogError if a
        catch-up does not get there, so the reader closes and resumes rather than skip.
        """
        ring = self.ring
        if ring is None or self._hwm >= ring.floor_time_us:
            return
        self.floor_catch_ups += 1
        self.catch_up()
        if self._hwm < ring.floor_time_us:
            raise LogError(f"log view at {self._hwm} is behind the live ring's floor {ring.floor_time_us}")

    def read_after(self, after_time_us: int, limit: int, compressed: bool, *, v2: bool = False):
        self.cover_ring_floor()
        return super().read_after(after_time_us, limit, compressed, v2=v2)

    def read_matching_after(self, *args, **kwargs):
        self.cover_ring_floor()
        return super().read_matching_after(*args, **kwargs)

    def append(self, *args, **kwargs) -> None:
        raise LogError("a worker's view of the log is read-only")

    def delete_older_than(self, *args, **kwargs):
        raise LogError("a worker's view of the log is read-only")

    def reopen(self) -> None:
        raise LogError("a worker's view of the log is read-only")


class RingFeeder:
    """Moves new events into the ring (sent rows, or what a catch-up revealed), then wakes the readers."""

    def __init__(self, event_log: SecondaryEventLog, ring, notify_new_events) -> None:
        self.event_log = event_log
        # Events read from the log (not sent as rows) get their v2 frame rendered here, from the record;
        # its zstd form is made by the ring on the first compressed v2 read (ring.pyx).
        self.ring = ring
        self.notify_new_events = notify_new_events
        self.events_fed = 0
        self.rows_fed = 0  # of events_fed, those that came as rows from the main process
        self.gaps_filled = 0  # rows that followed events this ring had not seen: filled from the log

    def feed_rows(self, newest_before: int, events) -> int:
        """A durable batch the main process sent: append what the ring lacks, after filling any gap."""
        ring = self.ring
        if newest_before > ring.newest_time_us:
            # Rows were not sent while this worker's channel was backed up (or before it started):
            # the log has them. After this catch-up the batch itself is in the ring too.
            self.gaps_filled += 1
            self.wake(None)
        added = 0
        for event in events:
            if event.time_us > ring.newest_time_us:
                ring.append(event)
                added += 1
        if added:
            self.events_fed += added
            self.rows_fed += added
            self.notify_new_events()
        return added

    def wake(self, newest_time_us: int | None = None) -> int:
        """Catch up unless the ring already holds `newest_time_us`; events appended."""
        if newest_time_us is not None and newest_time_us <= self.ring.newest_time_us:
            return 0
        hwm = self.event_log.catch_up()
        return self.feed(hwm)

    def feed(self, hwm: int) -> int:
        """Append every logged event above the ring's newest, up to `hwm`."""
        added = 0
        while self.ring.newest_time_us < hwm:
            after = self.ring.newest_time_us
            json_rows = self.event_log.read_after(after, FEED_CHUNK, False)
            if not json_rows:
                break  # trimmed away meanwhile: the next wake-up retries
            zstd_rows = self.event_log.read_after(after, len(json_rows), True)
            v2_rows = self.event_log.read_after(after, len(json_rows), False, v2=True)
            appended = self._append_rows(json_rows, zstd_rows, v2_rows)
            added += appended
            if appended < len(json_rows):
                break
        if added:
            self.events_fed += added
            self.notify_new_events()
        return added

    def _append_rows(self, json_rows, zstd_rows, v2_rows=()) -> int:
        ring = self.ring
        appended = 0
        # Events stored before the log had v2 records have none: they get no v2 frame.
        records = {row.time_us: row.payload for row in v2_rows}
        for json_row, zstd_row in zip(json_rows, zstd_rows):
            if json_row.time_us != zstd_row.time_us:
                # One batch writes both rows, so this cannot happen; stop rather than pair wrong bytes.
                log.error("event=ring_feed_mismatch json_time_us=%d zstd_time_us=%d",
                          json_row.time_us, zstd_row.time_us)
                break
            record = records.get(json_row.time_us, b"")
            v2 = frame_of_record(record, json_row.seq, json_row.time_us)
            ring.append(Event(json_row.time_us, json_row.did, json_row.kind, json_row.collection,
                              json_row.payload, zstd_row.payload, json_row.seq, v2, b"", record))
            appended += 1
        return appended
