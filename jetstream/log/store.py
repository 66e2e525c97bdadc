"""The durable event log: RocksDB column families `events`, `events_zstd`, `events_index`, `events_v2`,
`meta`, `did_revs`.

Owns: the on-disk log and its atomicity. One `append` is one WriteBatch holding
every event (JSON row, zstd row and v2 record row), the relay cursor that produced them and
the time_us high-water mark, so a crash can never separate an event from its
cursor (docs/architecture.md §2, invariant 3), and the high-water mark survives trimming so
time_us keeps increasing across restarts (invariant 2). Rows are laid out by
`jetstream.log.rows`. The same batch writes each event's secondary index keys (by
collection and by did), so a narrow filtered replay (`read_matching_after`) reads
only the rows its filter can want instead of scanning every row.
Every read verifies block checksums and checks its iterator's status when the iterator
ends: RocksDB reports a damaged block by ending the iteration, so an unchecked end would
read as the end of the log. Damage raises `LogCorruption` (which column family, file and
time_us range); a replay that reaches a range `jetstream repair` dropped raises `LogGap`
(the ranges are recorded in `meta` as `gaps`).
Each row carries its seq (jetstream.log.rows, format 2); the newest seq is kept in `meta`
with the high-water mark, written in the same batch as the events, and every append must
continue it without a gap (`SeqError` otherwise). A format 1 log (rows without seq) is
upgraded in place at open (`_upgrade_to_seq`): rows get seqs 1..N in time_us order, in
chunks whose batch also records how far the upgrade got, so an interrupted upgrade resumes.
It must never invent time_us values, parse event JSON, or silently re-create a
directory that is not an event log of this format.
"""
from __future__ import annotations

import gc
import json
import logging
import re
import struct
import time
import uuid
from pathlib import Path
from typing import Callable, Iterable, NamedTuple, Sequence

from rocksdict import DBCompressionType, Options, Rdict, ReadOptions, WriteBatch, WriteOptions

from jetstream.events import Event
from jetstream.log.rows import (
    INDEX_PREFIX_SIZE,
    INDEX_TAG_COLLECTION,
    INDEX_TAG_DID,
    MAX_TIME_US,
    LogRow,
    decode_index_time_us,
    decode_key,
    decode_row,
    decode_rows,
    decode_seq,
    encode_bucket_start,
    encode_event_rows,
    encode_index_prefix,
    encode_key,
    has_seq,
    index_bucket,
    name_hash,
    upgrade_value,
)

log = logging.getLogger(__name__)


class TrimmedRanges(NamedTuple):
    """Key ranges a trim deleted, for compact_trimmed: the events CFs' range, the index's."""

    events: tuple[bytes, bytes]
    index: tuple[tuple[bytes, bytes], ...]

CF_EVENTS = "events"
CF_EVENTS_ZSTD = "events_zstd"
CF_META = "meta"
OUR_COLUMN_FAMILIES = (CF_EVENTS, CF_EVENTS_ZSTD, CF_META)
# Not required at open: a log written before the index existed gets it added, complete
# from META_INDEX_FROM on (older events are read by scanning, as before).
CF_EVENTS_INDEX = "events_index"
# Not required at open either: the last commit rev seen per DID (--verify-signatures' stale-rev
# check), key = DID, value = rev. Written in the same batch as the events it let through.
CF_DID_REVS = "did_revs"
# Not required at open either: each event's v2 record (jetstream/wire_v2.py), same key and
# row header as `events`, written in the same batch. A log that predates it gets it added, with
# rows from its next event on: the v2 wire replays only what this column family holds.
CF_EVENTS_V2 = "events_v2"

META_FORMAT_NAME = b"format_name"
META_FORMAT_VERSION = b"format_version"
META_RELAY_CURSOR = b"relay_cursor"
META_RELAY = b"relay"  # host of the relay the stored relay cursor belongs to (utf-8)
META_HWM = b"hwm_time_us"
META_SEQ = b"newest_seq"  # the seq of the newest event ever written (kept through trims), u64
# While a format 1 log is upgraded: (the time_us to continue from, the last seq given), >QQ.
META_SEQ_UPGRADE = b"seq_upgrade_progress"
META_INDEX_FROM = b"index_from_time_us"  # every event with time_us >= this is indexed
# Cluster mode: the sequence of the last stream message applied (jetstream/cluster/applier.py).
META_STREAM_SEQ = b"cluster_stream_seq"
# Cluster mode: a bootstrap from the archive is under way (jetstream/cluster/bootstrap.py): the log holds
# archive events but no stream message is applied yet. Removed in the batch that records the stream seq to
# apply after; an interrupted bootstrap resumes from the log's newest seq.
META_BOOTSTRAP = b"cluster_bootstrap"
# This log's identity: created with the log (or at the first open of a log that predates it)
# and never changed, so clients can tell a restart of the same instance from another one.
META_INSTANCE_ID = b"instance_id"
# Ranges `jetstream repair` dropped because RocksDB could not read them back: a JSON list of
# {"from_time_us", "to_time_us", "events_lost" (null: unknown), "repaired_at", "file", "column_families"}.
META_GAPS = b"gaps"

# A filter naming more than this many exact collections (or dids) reads faster by scanning:
# each name costs one seek per index bucket.
MAX_INDEX_NAMES = 64

FORMAT_NAME = b"jetstream-py event log"
FORMAT_VERSION = 2  # 2: every row carries its seq; 1: no seq (upgraded in place at open)
FORMAT_VERSION_NO_SEQ = 1
READABLE_FORMAT_VERSIONS = (FORMAT_VERSION_NO_SEQ, FORMAT_VERSION)
SEQ_UPGRADE_CHUNK = 10_000  # rows per upgrade batch (one batch: these rows and the progress)

_SIGNED = struct.Struct(">q")
_UNSIGNED = struct.Struct(">Q")
_UPGRADE_PROGRESS = struct.Struct(">QQ")


class IndexQuery(NamedTuple):
    """Which index keys a narrow filter can match: one tag and the hashes of its names."""

    tag: int  # INDEX_TAG_COLLECTION or INDEX_TAG_DID
    hashes: tuple[int, ...]


def index_query_for(wanted_collections: Iterable[str] | None, wanted_dids: Iterable[str] | None) -> IndexQuery | None:
    """The index lookup that finds every event a subscriber filter can match, or None to scan.

    Dids first (every kind obeys wantedDids); else exact collections plus "" (identity and
    account events pass every collection filter). Prefix entries ("app.bsky.*"), no filter
    or too many names: None.
    """
    dids = set(wanted_dids or ())
    if dids:
        if len(dids) > MAX_INDEX_NAMES:
            return None
        return IndexQuery(INDEX_TAG_DID, tuple(sorted({name_hash(did) for did in dids})))
    collections = set(wanted_collections or ())
    if not collections or len(collections) > MAX_INDEX_NAMES or any(c.endswith(".*") for c in collections):
        return None
    collections.add("")
    return IndexQuery(INDEX_TAG_COLLECTION, tuple(sorted({name_hash(c) for c in collections})))


class LogError(Exception):
    """The log cannot be opened as asked, or an append would break its invariants."""


class SeqError(LogError):
    """An append whose seqs do not continue the log's newest seq by exactly one each."""


class LogCorruption(LogError):
    """A read met data RocksDB cannot read back (a block checksum mismatch, a damaged file).

    Never an end of the log: the events from `from_time_us` to `to_time_us` (inclusive; None:
    not known) are held but unreadable. `file` is the damaged file as RocksDB names it.
    """

    def __init__(self, path: str, column_family: str, detail: str,
                 from_time_us: int | None = None, to_time_us: int | None = None) -> None:
        self.path = path
        self.column_family = column_family
        self.detail = detail
        self.file = damaged_file_of(detail)
        self.from_time_us = from_time_us
        self.to_time_us = to_time_us
        super().__init__(f"event log at {path}: {column_family} unreadable at time_us "
                         f"{_bound(from_time_us)}..{_bound(to_time_us)} ({self.file or 'file unknown'}): {detail}")

    def describe(self) -> dict:
        """What is known about the damage, as plain values (a log line, a channel message)."""
        return {"path": self.path, "column_family": self.column_family, "file": self.file,
                "from_time_us": self.from_time_us, "to_time_us": self.to_time_us, "detail": self.detail[:300]}


class LogGap(LogError):
    """A replay reached a range `jetstream repair` dropped: the reader's cursor cannot complete."""

    def __init__(self, gap: dict) -> None:
        self.gap = gap
        super().__init__(f"events lost at time_us {gap['from_time_us']}..{gap['to_time_us']} "
                         f"(dropped by jetstream repair at {gap.get('repaired_at', '?')})")


def _bound(time_us: int | None) -> str:
    return "?" if time_us is None else str(time_us)


_SST_NAME = re.compile(r"([0-9]+\.sst)")


def damaged_file_of(detail: str) -> str | None:
    """The table file a RocksDB error names ("... in /data/000123.sst offset ..."), or None."""
    found = _SST_NAME.search(detail)
    return found.group(1) if found else None


def verifying_read_options() -> ReadOptions:
    """Reads that check every block's checksum (RocksDB's default, stated so no one turns it off)."""
    options = ReadOptions()
    options.set_verify_checksums(True)
    return options


def _column_family_options(name: str) -> Options:
    options = Options(raw_mode=True)
    if name == CF_EVENTS:
        options.set_compression_type(DBCompressionType.lz4())
    elif name == CF_EVENTS_V2:
        options.set_compression_type(DBCompressionType.lz4())  # JSON and CBOR: compresses like `events`
    elif name == CF_EVENTS_INDEX:
        options.set_compression_type(DBCompressionType.lz4())  # keys only: shared prefixes compress
    elif name == CF_EVENTS_ZSTD:
        # Values are zstd frames already; a second compression pass only burns CPU.
        options.set_compression_type(DBCompressionType.none())
    return options


# The history archive's default home is <data-dir>/archive (issue 24): a data directory holding
# only that is still a new log's place.
ARCHIVE_SUBDIR = "archive"


def _is_empty_dir(path: Path) -> bool:
    return all(entry.name == ARCHIVE_SUBDIR and entry.is_dir() for entry in path.iterdir())


def release_unreferenced() -> None:
    """A full collection, frozen objects included: rocksdict releases the LOCK when its last
    Python reference goes, and the serving process froze the objects of its start-up
    (jetstream.daemon.freeze_long_lived_objects), this database among them."""
    frozen = gc.get_freeze_count()
    gc.unfreeze()
    gc.collect()
    if frozen:
        gc.freeze()


class EventLog:
    """Append-only, time_us-keyed event log with an atomic relay cursor.

    Not safe for concurrent appends from several threads; reads may interleave
    with appends in the same thread (the asyncio loop).
    """

    def __init__(self, path: str, *, fsync: bool = False, create: bool = True, upgrade: bool = True,
                 on_upgrade_progress=None) -> None:
        self.path = str(path)
        # (rows upgraded so far) -> None after each upgrade chunk: the daemon tells systemd it is
        # still starting (EXTEND_TIMEOUT_USEC) and logs progress, so a long upgrade is not killed.
        self._on_upgrade_progress = on_upgrade_progress
        self.values_read = 0  # event rows read by read_after / read_matching_after (for measurements)
        # False: open a format 1 log as it is (jetstream repair works on either layout); its
        # rows cannot be replayed (decode_rows refuses them) until a normal open upgrades it.
        self._upgrade = upgrade
        self._connect(fsync, create)

    def _connect(self, fsync: bool, create: bool) -> None:
        """Open (or, from reopen, open again) the database at self.path and load its meta state."""
        fresh, existing_column_families = self._inspect_location(Path(self.path), create)
        self._db = self._open(fresh, existing_column_families)
        self._events = self._db.get_column_family(CF_EVENTS)
        self._events_zstd = self._db.get_column_family(CF_EVENTS_ZSTD)
        self._meta = self._db.get_column_family(CF_META)
        self._events_handle = self._db.get_column_family_handle(CF_EVENTS)
        self._events_zstd_handle = self._db.get_column_family_handle(CF_EVENTS_ZSTD)
        self._meta_handle = self._db.get_column_family_handle(CF_META)
        self._index = self._db.get_column_family(CF_EVENTS_INDEX)
        self._index_handle = self._db.get_column_family_handle(CF_EVENTS_INDEX)
        self._did_revs = self._db.get_column_family(CF_DID_REVS)
        self._did_revs_handle = self._db.get_column_family_handle(CF_DID_REVS)
        self._events_v2 = self._db.get_column_family(CF_EVENTS_V2)
        self._events_v2_handle = self._db.get_column_family_handle(CF_EVENTS_V2)
        self._write_options = WriteOptions()
        self._write_options.sync = fsync  # WAL is always on; fsync only decides sync-to-disk.
        self._read_options = verifying_read_options()
        self._closed = False
        self._hwm = 0
        self._relay_cursor = None
        try:
            if fresh:
                self._write_format()
                self._format_version = FORMAT_VERSION
            else:
                self._format_version = self._verify_format()
                if self._format_version < FORMAT_VERSION and self._upgrade:
                    self._upgrade_to_seq()
        except BaseException:
            self.close()
            raise
        self._relay_cursor = self._read_meta_int(META_RELAY_CURSOR, _SIGNED)
        self._hwm = self._read_meta_int(META_HWM, _UNSIGNED) or 0
        self._newest_seq = self._read_meta_int(META_SEQ, _UNSIGNED) or 0
        self._index_from = self._read_meta_int(META_INDEX_FROM, _UNSIGNED)
        self._stream_seq = self._read_meta_int(META_STREAM_SEQ, _UNSIGNED) or 0
        if self._index_from is None:
            self._start_index(0 if fresh else self._hwm + 1)
        self._instance_id = self._read_or_create_instance_id()
        self._gaps = self._read_gaps()
        log.info("event=log_opened path=%s fresh=%s relay_cursor=%s hwm=%d newest_seq=%d fsync=%s",
                 self.path, fresh, self._relay_cursor, self._hwm, self._newest_seq, fsync)

    # -- opening --------------------------------------------------------------------------------
    @staticmethod
    def _inspect_location(path: Path, create: bool) -> tuple[bool, set[str]]:
        """(create a new log?, column families present); LogError when the place is not ours."""
        if not path.exists() or (path.is_dir() and _is_empty_dir(path)):
            if not create:
                raise LogError(f"no event log at {path} (and create=False)")
            path.mkdir(parents=True, exist_ok=True)
            return True, set()
        if not path.is_dir():
            raise LogError(f"{path} exists and is not a directory; refusing to use it as the event log")
        if not (path / "CURRENT").exists():
            raise LogError(f"{path} is a non-empty directory without a RocksDB database; "
                           "refusing to use it as the event log")
        try:
            present = set(Rdict.list_cf(str(path), Options(raw_mode=True)))
        except Exception as exc:  # noqa: BLE001 - rocksdict raises bare Exception
            raise LogError(f"{path} holds an unreadable RocksDB database: {exc}") from exc
        missing = [name for name in OUR_COLUMN_FAMILIES if name not in present]
        if missing:
            raise LogError(f"{path} is a RocksDB database but not a jetstream event log "
                           f"(missing column families {', '.join(missing)})")
        return False, present

    def _open(self, fresh: bool, existing_column_families: set[str]) -> Rdict:
        options = Options(raw_mode=True)
        options.create_if_missing(fresh)
        # Fresh: all of ours; existing: at most the index, added to a log that predates it.
        options.create_missing_column_families(True)
        # RocksDB must open every column family a database has, ours or not.
        names = set(OUR_COLUMN_FAMILIES) | {CF_EVENTS_INDEX, CF_DID_REVS, CF_EVENTS_V2} | existing_column_families
        names.discard("default")
        try:
            return Rdict(self.path, options,
                         column_families={name: _column_family_options(name) for name in sorted(names)})
        except Exception as exc:  # noqa: BLE001 - e.g. the LOCK is held by another process
            raise LogError(f"cannot open event log at {self.path}: {exc}") from exc

    def _write_format(self) -> None:
        batch = WriteBatch(raw_mode=True)
        batch.put(META_FORMAT_NAME, FORMAT_NAME, self._meta_handle)
        batch.put(META_FORMAT_VERSION, b"%d" % FORMAT_VERSION, self._meta_handle)
        sync = WriteOptions()
        sync.sync = True
        self._db.write(batch, sync)

    def _verify_format(self) -> int:
        """The log's format version (1 or 2); LogError for anything else."""
        name = self._meta.get(META_FORMAT_NAME)
        if name != FORMAT_NAME:
            raise LogError(f"{self.path} is not a jetstream event log (format name {name!r})")
        version = self._meta.get(META_FORMAT_VERSION)
        for readable in READABLE_FORMAT_VERSIONS:
            if version == b"%d" % readable:
                return readable
        raise LogError(f"event log at {self.path} has format version {version!r}; this build reads "
                       f"versions {', '.join(map(str, READABLE_FORMAT_VERSIONS))}")

    def format_version(self) -> int:
        return self._format_version

    def _upgrade_to_seq(self) -> None:
        """Format 1 -> 2 in place: every stored row gets its seq, 1..N in time_us order, once.

        Chunk by chunk, each chunk's rows (JSON and zstd) and the progress (where to go on,
        the last seq given) in one batch, so a crash resumes after the last whole chunk; the
        format version moves to 2 (with the newest seq) only after the last row. The rows'
        other bytes are kept as they are. Damage stops it (LogCorruption: run jetstream repair,
        which works on format 1 logs; the next open resumes).
        """
        progress = self._meta.get(META_SEQ_UPGRADE)
        start, seq = _UPGRADE_PROGRESS.unpack(progress) if progress is not None else (0, 0)
        started = time.perf_counter()
        log.info("event=log_seq_upgrade_started path=%s from_time_us=%d seq=%d resumed=%s",
                 self.path, start, seq, progress is not None)
        iterator = self._events.iter(self._read_options)
        iterator.seek(encode_key(start))
        upgraded = 0
        while True:
            keys, values = [], []
            while iterator.valid() and len(keys) < SEQ_UPGRADE_CHUNK:
                keys.append(iterator.key())
                values.append(iterator.value())
                iterator.next()
            if not keys:
                self._raise_if_damaged(iterator, CF_EVENTS, start - 1, self._events)
                break
            seq = self._upgrade_chunk(keys, values, seq)
            start = decode_key(keys[-1]) + 1
            upgraded += len(keys)
            if self._on_upgrade_progress is not None:
                self._on_upgrade_progress(upgraded)
        batch = WriteBatch(raw_mode=True)
        batch.put(META_SEQ, _UNSIGNED.pack(seq), self._meta_handle)
        batch.put(META_FORMAT_VERSION, b"%d" % FORMAT_VERSION, self._meta_handle)
        batch.delete(META_SEQ_UPGRADE, self._meta_handle)
        sync = WriteOptions()
        sync.sync = True
        self._db.write(batch, sync)
        self._format_version = FORMAT_VERSION
        log.info("event=log_seq_upgraded path=%s rows=%d newest_seq=%d seconds=%.1f",
                 self.path, upgraded, seq, time.perf_counter() - started)

    def _upgrade_chunk(self, keys: list[bytes], values: list[bytes], seq: int) -> int:
        """One upgrade batch: these JSON rows and their zstd twins numbered from seq + 1; the last seq."""
        zstd_values = self._events_zstd.get(keys, read_opt=self._read_options)
        batch = WriteBatch(raw_mode=True)
        put, events_handle, zstd_handle = batch.put, self._events_handle, self._events_zstd_handle
        for key, value, zstd_value in zip(keys, values, zstd_values):
            if has_seq(value):  # cannot happen after a clean chunk boundary; keep its number
                seq = decode_seq(value)
                continue
            seq += 1
            put(key, upgrade_value(value, seq), events_handle)
            if zstd_value is not None and not has_seq(zstd_value):
                put(key, upgrade_value(zstd_value, seq), zstd_handle)
        put(META_SEQ_UPGRADE, _UPGRADE_PROGRESS.pack(decode_key(keys[-1]) + 1, seq), self._meta_handle)
        self._db.write(batch, self._write_options)
        return seq

    def _start_index(self, index_from: int) -> None:
        """Record that events from `index_from` on are indexed (a new log: all of them)."""
        batch = WriteBatch(raw_mode=True)
        batch.put(META_INDEX_FROM, _UNSIGNED.pack(index_from), self._meta_handle)
        sync = WriteOptions()
        sync.sync = True
        self._db.write(batch, sync)
        self._index_from = index_from

    def _read_or_create_instance_id(self) -> str:
        stored = self._meta.get(META_INSTANCE_ID)
        if stored:
            return stored.decode("ascii")
        created = uuid.uuid4().hex
        batch = WriteBatch(raw_mode=True)
        batch.put(META_INSTANCE_ID, created.encode("ascii"), self._meta_handle)
        sync = WriteOptions()
        sync.sync = True
        self._db.write(batch, sync)
        log.info("event=log_instance_id_created path=%s instance=%s", self.path, created)
        return created

    def instance_id(self) -> str:
        """The id this log was created with (32 hex digits), the same after every restart."""
        return self._instance_id

    def _read_gaps(self) -> list[dict]:
        value = self._meta.get(META_GAPS)
        if not value:
            return []
        try:
            gaps = json.loads(bytes(value))
        except ValueError as exc:
            raise LogError(f"event log at {self.path} has unreadable recorded gaps: {exc}") from exc
        return sorted(gaps, key=lambda gap: gap["from_time_us"])

    def gaps(self) -> list[dict]:
        """The ranges `jetstream repair` dropped (oldest first): events there are lost."""
        return list(self._gaps)

    def record_gaps(self, gaps: list[dict]) -> None:
        """Add `gaps` to the recorded ones, durably (jetstream repair, offline)."""
        merged = sorted(self._gaps + list(gaps), key=lambda gap: gap["from_time_us"])
        batch = WriteBatch(raw_mode=True)
        batch.put(META_GAPS, json.dumps(merged).encode(), self._meta_handle)
        sync = WriteOptions()
        sync.sync = True
        self._db.write(batch, sync)
        self._gaps = merged

    def _read_meta_int(self, key: bytes, layout: struct.Struct) -> int | None:
        value = self._meta.get(key)
        return None if value is None else layout.unpack(value)[0]

    # -- writing --------------------------------------------------------------------------------
    def append(self, events: Sequence[Event], relay_cursor: int | None,
               did_revs: dict[str, str] | None = None, *, stream_seq: int | None = None,
               seq_jump: bool = False) -> None:
        """Write `events` and `relay_cursor` atomically; durable in the WAL on return.

        Events must carry strictly increasing time_us above the high-water mark, and seqs
        newest_seq + 1, + 2, ... (SeqError otherwise). `seq_jump` (cluster mode, after stream
        messages expired unapplied) lets the first seq lie further on; it must still increase.
        A batch whose events all have seq 0 (built by hand: tools, tests; the daemon's
        sequencer and applier always number theirs) is numbered here, from newest_seq + 1.
        `append([], cursor)` only moves the cursor (frames that produce no events).
        `did_revs` (DID -> newest commit rev) goes into the same batch (--verify-signatures).
        `stream_seq` (cluster mode) is the stream message these events came from, stored in
        the same batch so a restarted node resumes applying right after it.
        """
        if not events and relay_cursor is None and not did_revs and stream_seq is None:
            return
        newest = self._check_increasing(events)
        if events and events[0].seq == 0:
            events = self._numbered(events)
        newest_seq = self._check_seqs(events, seq_jump)
        batch = WriteBatch(raw_mode=True)
        events_handle, zstd_handle, index_handle = self._events_handle, self._events_zstd_handle, self._index_handle
        v2_handle = self._events_v2_handle
        put = batch.put
        for key, json_value, zstd_value, collection_key, did_key, v2_value in encode_event_rows(events):
            put(key, json_value, events_handle)
            put(key, zstd_value, zstd_handle)
            put(collection_key, b"", index_handle)
            put(did_key, b"", index_handle)
            put(key, v2_value, v2_handle)
        if relay_cursor is not None:
            batch.put(META_RELAY_CURSOR, _SIGNED.pack(relay_cursor), self._meta_handle)
        if events:
            batch.put(META_HWM, _UNSIGNED.pack(newest), self._meta_handle)
            batch.put(META_SEQ, _UNSIGNED.pack(newest_seq), self._meta_handle)
        if stream_seq is not None:
            batch.put(META_STREAM_SEQ, _UNSIGNED.pack(stream_seq), self._meta_handle)
        if did_revs:
            for did, rev in did_revs.items():
                batch.put(did.encode(), rev.encode(), self._did_revs_handle)
        self._db.write(batch, self._write_options)
        self._hwm = newest
        self._newest_seq = newest_seq
        if relay_cursor is not None:
            self._relay_cursor = relay_cursor
        if stream_seq is not None:
            self._stream_seq = stream_seq

    def _check_increasing(self, events: Sequence[Event]) -> int:
        previous = self._hwm
        for event in events:
            time_us = event.time_us
            if not previous < time_us <= MAX_TIME_US:
                raise LogError(f"time_us {time_us} is not above the previous {previous} "
                               "(time_us must strictly increase; invariant 2)")
            previous = time_us
        return previous

    def _numbered(self, events: Sequence[Event]) -> list[Event]:
        if any(event.seq for event in events):
            raise SeqError("a batch mixes numbered and unnumbered (seq 0) events")
        first = self._newest_seq + 1
        return [event._replace(seq=first + index) for index, event in enumerate(events)]

    def _check_seqs(self, events: Sequence[Event], jump: bool) -> int:
        """The batch's newest seq; SeqError unless its seqs continue the log's without a gap."""
        previous = self._newest_seq
        if not events:
            return previous
        first = events[0].seq
        if first != previous + 1 and not (jump and first > previous):
            raise SeqError(f"seq {first} does not follow the log's newest seq {previous}")
        expected = first
        for event in events:
            if event.seq != expected:
                raise SeqError(f"seq {event.seq} where {expected} was due (seqs must have no gap)")
            expected += 1
        return expected - 1

    def trim_older_than(self, cutoff_time_us: int) -> None:
        """Delete every event with time_us < cutoff from both CFs and reclaim the space.

        delete_older_than then compact_trimmed, in the caller's thread; the daemon's
        TtlTrimmer runs the second half in a worker thread instead (it can take seconds).
        """
        trimmed = self.delete_older_than(cutoff_time_us)
        if trimmed is not None:
            self.compact_trimmed(trimmed)

    def delete_older_than(self, cutoff_time_us: int) -> TrimmedRanges | None:
        """Range-delete every event with time_us < cutoff (one small write); None if none is held.

        Readers stop seeing the events at once. The bytes stay on disk until compact_trimmed
        (or RocksDB's own compaction) reaches the returned ranges.
        The index loses every key of the buckets wholly below the cutoff; the few keys of
        the cutoff's own bucket (< 4.5 minutes) go with the next trim. Readers never see
        them: read_matching_after starts at the oldest row still held.
        The high-water mark and relay cursor live in `meta` and are kept.
        """
        oldest = self.oldest_time_us()
        if oldest is None or oldest >= cutoff_time_us:
            return None
        begin, end = encode_key(0), encode_key(min(cutoff_time_us, MAX_TIME_US))
        batch = WriteBatch(raw_mode=True)
        batch.delete_range(begin, end, self._events_handle)
        batch.delete_range(begin, end, self._events_zstd_handle)
        batch.delete_range(begin, end, self._events_v2_handle)
        index_ranges = self._index_trim_ranges(cutoff_time_us)
        for index_begin, index_end in index_ranges:
            batch.delete_range(index_begin, index_end, self._index_handle)
        kept_gaps = [gap for gap in self._gaps if gap["to_time_us"] >= cutoff_time_us]
        if len(kept_gaps) != len(self._gaps):  # a gap wholly below the cutoff is no loss a reader can meet
            batch.put(META_GAPS, json.dumps(kept_gaps).encode(), self._meta_handle)
        self._db.write(batch, self._write_options)
        self._gaps = kept_gaps
        log.info("event=log_trimmed cutoff_time_us=%d oldest_before=%d", cutoff_time_us, oldest)
        return TrimmedRanges((begin, end), tuple(index_ranges))

    def compact_trimmed(self, trimmed: TrimmedRanges) -> None:
        """Compact what delete_older_than removed, so the disk space comes back.

        Slow (measured ~1 s per 500k events) but releases the GIL, so it may run in a worker
        thread while the loop keeps serving; the log must not be closed until it returns.
        """
        # Range tombstones alone keep the bytes on disk until compaction reaches them; v1 never
        # compacted explicitly, so its disk use lagged its TTL.
        begin, end = trimmed.events
        self._events.compact_range(begin, end)
        self._events_zstd.compact_range(begin, end)
        self._events_v2.compact_range(begin, end)
        for index_begin, index_end in trimmed.index:
            self._index.compact_range(index_begin, index_end)

    @staticmethod
    def _index_trim_ranges(cutoff_time_us: int) -> list[tuple[bytes, bytes]]:
        below = index_bucket(min(cutoff_time_us, MAX_TIME_US))
        return [(encode_bucket_start(tag, 0), encode_bucket_start(tag, below))
                for tag in (INDEX_TAG_COLLECTION, INDEX_TAG_DID)]

    # -- per-DID commit revs (--verify-signatures) -------------------------------------------------
    def last_rev(self, did: str) -> str | None:
        """The newest commit rev stored for `did`, or None."""
        value = self._did_revs.get(did.encode())
        return None if value is None else value.decode("ascii", "replace")

    def trim_did_revs(self, keep: Callable[[str], bool], start: bytes = b"", limit: int = 10_000) -> bytes | None:
        """Delete up to `limit` scanned did_revs rows whose rev `keep` rejects, from key `start` on.

        Returns the key to continue from, or None when the scan reached the end (a caller walks
        the column family in slices so the event loop is never held for long).
        """
        batch = WriteBatch(raw_mode=True)
        deleted = scanned = 0
        for key, value in self._did_revs.items(from_key=start):
            if scanned >= limit:
                if deleted:
                    self._db.write(batch, self._write_options)
                return key
            scanned += 1
            if not keep(value.decode("ascii", "replace")):
                batch.delete(key, self._did_revs_handle)
                deleted += 1
        if deleted:
            self._db.write(batch, self._write_options)
        return None

    def did_rev_count_estimate(self) -> int:
        return self._did_revs.property_int_value("rocksdb.estimate-num-keys") or 0

    # -- reading --------------------------------------------------------------------------------
    def relay_cursor(self) -> int | None:
        """The relay seq stored with the last append that carried one; None if never."""
        return self._relay_cursor

    def relay(self) -> str | None:
        """Which relay (host) the relay cursor belongs to; None if never recorded."""
        value = self._meta.get(META_RELAY)
        return None if value is None else bytes(value).decode("utf-8", "replace")

    def switch_relay(self, relay: str, keep_cursor: bool) -> None:
        """Record `relay` as the cursor's owner; unless keep_cursor, drop the cursor in the same write.

        One batch, so a crash can never leave one relay's cursor recorded under another relay.
        """
        batch = WriteBatch(raw_mode=True)
        batch.put(META_RELAY, relay.encode("utf-8"), self._meta_handle)
        if not keep_cursor:
            batch.delete(META_RELAY_CURSOR, self._meta_handle)
        self._db.write(batch, self._write_options)
        if not keep_cursor:
            self._relay_cursor = None

    def stream_seq(self) -> int:
        """Cluster mode: the last stream message applied (0: none; never set in single-node mode)."""
        return self._stream_seq

    def bootstrap_pending(self) -> bool:
        """Cluster mode: a bootstrap from the archive began and has not recorded its stream seq yet."""
        return self._meta.get(META_BOOTSTRAP) is not None

    def begin_bootstrap(self) -> None:
        """Mark the log as being filled from the archive (durably, before its first event is written)."""
        batch = WriteBatch(raw_mode=True)
        batch.put(META_BOOTSTRAP, b"1", self._meta_handle)
        sync = WriteOptions()
        sync.sync = True
        self._db.write(batch, sync)

    def finish_bootstrap(self, stream_seq: int) -> None:
        """Record the stream message the archive's part ends before, and end the bootstrap, in one batch.

        With `stream_seq` 0 (the applier starts at the stream's first message) the mark stays until
        that message is applied, so a restart in between is not taken for a single-node log."""
        batch = WriteBatch(raw_mode=True)
        if stream_seq > 0:
            batch.put(META_STREAM_SEQ, _UNSIGNED.pack(stream_seq), self._meta_handle)
            batch.delete(META_BOOTSTRAP, self._meta_handle)
        else:
            batch.put(META_BOOTSTRAP, b"1", self._meta_handle)
        sync = WriteOptions()
        sync.sync = True
        self._db.write(batch, sync)
        if stream_seq > 0:
            self._stream_seq = stream_seq

    def hwm(self) -> int:
        """The largest time_us ever written (kept through trims); 0 for a new log."""
        return self._hwm

    def newest_seq(self) -> int:
        """The seq of the newest event ever written (kept through trims); 0 for a new log."""
        return self._newest_seq

    def oldest_seq(self) -> int | None:
        """The seq of the oldest event still held; None when none is."""
        row = self._edge_row(last=False)
        return None if row is None else decode_seq(row[1])

    def seq_at_or_after(self, time_us: int) -> int | None:
        """The seq of the first held event with time_us >= `time_us`; None when none is (a v2 µs cursor)."""
        row = self._first_row_from(max(time_us, 0))
        return None if row is None else decode_seq(row[1])

    def seq_at_or_before(self, time_us: int) -> int | None:
        """The seq of the last held event with time_us <= `time_us`; None when none is (below the log).

        A reader whose position is `time_us` learns the seq of the last event at or before it: the
        log holds every event after it exactly when its first row after `time_us` has the next seq.
        """
        if time_us < 0:
            return None
        iterator = self._events.iter(self._read_options)
        iterator.seek_for_prev(encode_key(min(time_us, MAX_TIME_US)))
        if iterator.valid():
            return decode_seq(iterator.value())
        self._raise_if_damaged(iterator, CF_EVENTS, None)
        return None

    def time_us_of_seq(self, seq: int) -> int | None:
        """The time_us of the first held event with seq >= `seq`; None when none is.

        Seq and time_us rise together, so a binary search over time_us finds it: ~log2(the
        held time span in µs), about 40 seeks for days of events, each reading one row's header.
        """
        oldest = self._edge_row(last=False)
        if oldest is None:
            return None
        oldest_time_us = decode_key(oldest[0])
        if decode_seq(oldest[1]) >= seq:
            return oldest_time_us
        newest = self._edge_row(last=True)
        if decode_seq(newest[1]) < seq:
            return None
        # With first(t) = the first row at or after t: seq(first(low)) < seq <= seq(first(high)).
        low, high = oldest_time_us, decode_key(newest[0])
        while high - low > 1:
            middle = (low + high) // 2
            row = self._first_row_from(middle)
            if decode_seq(row[1]) >= seq:
                high = middle
            else:
                low = max(middle, decode_key(row[0]))  # first() is the same row up to its time_us
        return decode_key(self._first_row_from(high)[0])

    def _first_row_from(self, time_us: int) -> tuple[bytes, bytes] | None:
        """(key, value) of the first JSON row with time_us >= `time_us`, checked; None past the end."""
        if time_us > MAX_TIME_US:
            return None
        iterator = self._events.iter(self._read_options)
        iterator.seek(encode_key(time_us))
        if iterator.valid():
            return iterator.key(), iterator.value()
        self._raise_if_damaged(iterator, CF_EVENTS, time_us - 1, self._events)
        return None

    def _edge_row(self, *, last: bool) -> tuple[bytes, bytes] | None:
        iterator = self._events.iter(self._read_options)
        if last:
            iterator.seek_to_last()
        else:
            iterator.seek_to_first()
        if iterator.valid():
            return iterator.key(), iterator.value()
        self._raise_if_damaged(iterator, CF_EVENTS, None)
        return None

    def v2_oldest(self) -> tuple[int, int] | None:
        """(time_us, seq) of the oldest event the v2 wire can replay (the first events_v2 row); None: none.

        Events stored before the log had events_v2 have no v2 record, so on a log that predates
        it this is above oldest_time_us until the TTL trim has passed them.
        """
        iterator = self._events_v2.iter(self._read_options)
        iterator.seek_to_first()
        if iterator.valid():
            return decode_key(iterator.key()), decode_seq(iterator.value())
        self._raise_if_damaged(iterator, CF_EVENTS_V2, None)
        return None

    def oldest_time_us(self) -> int | None:
        return self._edge_time_us(last=False)

    def newest_time_us(self) -> int | None:
        return self._edge_time_us(last=True)

    def _edge_time_us(self, *, last: bool) -> int | None:
        row = self._edge_row(last=last)
        return None if row is None else decode_key(row[0])

    def stored_event_bytes(self) -> int:
        """Bytes the two event column families hold: SST files plus memtables (not the WAL).

        What TTL trimming must shrink; range tombstones alone do not, compaction does.
        """
        total = 0
        for column_family in (self._events, self._events_zstd, self._events_v2):
            for name in ("rocksdb.total-sst-files-size", "rocksdb.cur-size-all-mem-tables"):
                total += column_family.property_int_value(name) or 0
        return total

    def count_estimate(self) -> int:
        """RocksDB's estimate of stored events (cheap, approximate after trims)."""
        return self._events.property_int_value("rocksdb.estimate-num-keys") or 0

    def _payload_column(self, compressed: bool, v2: bool):
        if v2:
            return CF_EVENTS_V2, self._events_v2
        return (CF_EVENTS_ZSTD, self._events_zstd) if compressed else (CF_EVENTS, self._events)

    def read_after(self, after_time_us: int, limit: int, compressed: bool, *, v2: bool = False) -> list[LogRow]:
        """Up to `limit` rows with time_us > after_time_us, ascending.

        Payload is the zstd frame when `compressed`, else the JSON; with `v2`, the event's v2
        record (only events stored since the log had events_v2 have one). Reads only
        what it returns (a seeked, bounded iterator), never the whole log.
        """
        start = max(after_time_us + 1, 0)
        if limit <= 0 or start > MAX_TIME_US:
            return []
        name, column_family = self._payload_column(compressed, v2)
        # A seeked iterator consumed lazily: decode_rows stops at `limit`. Not items(from_key=):
        # it ends silently at a damaged block. (Not ReadOptions.set_iterate_lower_bound either:
        # rocksdict 0.3.29 stores it as the UPPER bound, measured: lower=5 + seek_to_first
        # yields keys 0..4.)
        rows = decode_rows(self._checked_pairs(column_family, name, start, limit), limit)
        self.values_read += len(rows)
        if self._gaps:
            rows = self._stop_at_gap(after_time_us, rows, limit)
        return rows

    def json_payload_at(self, time_us: int) -> bytes | None:
        """The v1 JSON of the event stored at exactly `time_us`; None when none is (the archive
        sealer's fallback for fields an event's v2 record does not carry)."""
        value = self._events.get(encode_key(time_us), read_opt=self._read_options)
        if value is None:
            return None
        return decode_row(encode_key(time_us), value).payload

    def _checked_pairs(self, column_family, name: str, start: int, limit: int) -> list[tuple[bytes, bytes]]:
        """Up to `limit` (key, value) from time_us `start` on, the iterator's status checked at its end.

        Rows read before a damaged block are returned; the next read, which starts at the
        damage, raises LogCorruption: a reader gets every readable event before it.
        """
        iterator = column_family.iter(self._read_options)
        iterator.seek(encode_key(start))
        valid, key, value, step = iterator.valid, iterator.key, iterator.value, iterator.next
        pairs: list[tuple[bytes, bytes]] = []
        append = pairs.append
        while valid():
            append((key(), value()))
            if len(pairs) >= limit:
                return pairs
            step()
        if pairs:
            return pairs  # if the iterator ended on damage, the next read (starting there) reports it
        self._raise_if_damaged(iterator, name, start - 1, column_family)
        return pairs

    def _raise_if_damaged(self, iterator, name: str, after_time_us: int | None, column_family=None) -> None:
        """An iterator that ended: LogCorruption if it ended on an error, not at the end of the data."""
        try:
            iterator.status()
        except Exception as exc:  # noqa: BLE001 - rocksdict raises bare Exception
            to_time_us = None
            if column_family is not None and after_time_us is not None:
                following = self.next_readable_time_us(column_family, after_time_us)
                to_time_us = following - 1 if following is not None else self._hwm
            raise LogCorruption(self.path, name, str(exc),
                                None if after_time_us is None else after_time_us + 1, to_time_us) from exc

    def next_readable_time_us(self, column_family, after_time_us: int) -> int | None:
        """The first event above a damaged stretch that starts after `after_time_us`; None: none readable.

        A seek into a damaged block fails, a seek past it lands on the next readable key, so a
        binary search over seek targets finds where the damage ends (at most ~64 seeks). With
        several damaged blocks apart from each other it finds the end of one of them.
        """
        iterator = column_family.iter(self._read_options)

        def readable_from(time_us: int) -> tuple[bool, int | None]:
            iterator.seek(encode_key(min(time_us, MAX_TIME_US)))
            if iterator.valid():
                return True, decode_key(iterator.key())
            try:
                iterator.status()
            except Exception:  # noqa: BLE001 - a damaged block under this seek
                return False, None
            return True, None

        low, high = after_time_us + 1, max(self._hwm, after_time_us) + 1  # low: damaged; high: past the log
        found_ok, found = readable_from(high)
        if not found_ok:
            return None
        while high - low > 1:
            middle = (low + high) // 2
            ok, first = readable_from(middle)
            if ok:
                high, found = middle, first
            else:
                low = middle
        return found

    def _stop_at_gap(self, after_time_us: int, rows: list[LogRow], limit: int) -> list[LogRow]:
        """`rows` up to the first recorded gap after `after_time_us`; LogGap once a reader stands at it.

        A reader is at a gap when its position is inside one, or when nothing it can still read
        lies before the gap (the next row is past it, or the log ends and the reader goes live).
        """
        oldest = None
        for gap in self._gaps:
            if gap["to_time_us"] <= after_time_us:
                continue  # passed (a cursor beyond it, or a client that resumed past it)
            if oldest is None:
                oldest = self.oldest_time_us() or 0
            if gap["to_time_us"] < oldest:
                continue  # the TTL trim has passed it: what it lost would be gone by now anyway
            if gap["from_time_us"] <= after_time_us + 1:
                raise LogGap(gap)
            before = [row for row in rows if row.time_us < gap["from_time_us"]]
            if len(before) == len(rows) and len(rows) >= limit:
                return rows  # the gap is further on than this read reaches
            if before:
                return before
            raise LogGap(gap)
        return rows

    def index_from_time_us(self) -> int:
        """Events with time_us >= this are in the index; below it only a scan finds them."""
        return self._index_from

    def read_matching_after(self, after_time_us: int, limit: int, compressed: bool,
                            query: IndexQuery, *, v2: bool = False) -> list[LogRow] | None:
        """Up to `limit` rows with time_us > after_time_us whose collection (or did) hash is in `query`.

        A superset of what the filter behind `query` wants (hash collisions, and the other
        dimension of the filter, are the caller's to check), in ascending order; exactly the rows
        a full scan would pass to that filter. None when the range starts below the index
        (a log that predates it): the caller scans instead.
        """
        start = max(after_time_us + 1, 0)
        if start < self._index_from:
            return None
        oldest = self.oldest_time_us()
        if limit <= 0 or start > MAX_TIME_US or oldest is None:
            return []
        # Index keys of the trim's partial bucket may outlive their rows: start at a row that exists.
        start = max(start, oldest)
        name, column_family = self._payload_column(compressed, v2)
        rows: list[LogRow] = []
        while len(rows) < limit:
            times = self._index_times(query, start, limit - len(rows))
            if not times:
                break
            keys = [encode_key(time_us) for time_us in times]
            try:
                values = column_family.get(keys, read_opt=self._read_options)
            except Exception as exc:  # noqa: BLE001 - rocksdict raises bare Exception
                following = self.next_readable_time_us(column_family, start - 1)
                raise LogCorruption(self.path, name, str(exc), start,
                                    following - 1 if following is not None else self._hwm) from exc
            found = [(key, value) for key, value in zip(keys, values) if value is not None]
            rows += decode_rows(found, limit)
            self.values_read += len(found)
            start = times[-1] + 1
        if self._gaps:
            rows = self._stop_at_gap(after_time_us, rows, limit)
        return rows

    def _index_times(self, query: IndexQuery, start: int, limit: int) -> list[int]:
        """The first `limit` indexed time_us >= start under the query's hashes, ascending.

        Bucket by bucket (buckets are time-ordered), each of the query's names from its seek
        position; an empty stretch of buckets costs one seek.
        """
        times: list[int] = []
        iterator = self._index.iter(self._read_options)
        start_key = encode_key(start)
        bucket, last_bucket = index_bucket(start), index_bucket(self._hwm)
        tag = query.tag
        while bucket <= last_bucket and len(times) < limit:
            iterator.seek(encode_bucket_start(tag, bucket))
            if not iterator.valid():
                self._raise_if_damaged(iterator, CF_EVENTS_INDEX, start - 1)
                break
            key = iterator.key()
            if key[0] != tag:
                break
            bucket = index_bucket(decode_index_time_us(key))  # skip empty buckets in one seek
            found: list[int] = []
            for hashed in query.hashes:
                prefix = encode_index_prefix(tag, bucket, hashed)
                iterator.seek(prefix + start_key)
                taken = 0
                while taken < limit and iterator.valid():
                    key = iterator.key()
                    if key[:INDEX_PREFIX_SIZE] != prefix:
                        break
                    found.append(decode_index_time_us(key))
                    taken += 1
                    iterator.next()
                if not iterator.valid():
                    self._raise_if_damaged(iterator, CF_EVENTS_INDEX, start - 1)
            if found:
                found.sort()
                times += found[:limit - len(times)]
            bucket += 1
        return times

    # -- lifetime -------------------------------------------------------------------------------
    def column_families(self) -> dict:
        """The event column families by name (jetstream repair's scan reads them directly)."""
        return {CF_EVENTS: self._events, CF_EVENTS_ZSTD: self._events_zstd, CF_EVENTS_INDEX: self._index,
                CF_EVENTS_V2: self._events_v2}

    def flush(self) -> None:
        """Write every column family's memtable to a table file (tests, and jetstream repair)."""
        for column_family in (self._events, self._events_zstd, self._index, self._did_revs, self._meta,
                              self._events_v2):
            column_family.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Every column-family view and handle keeps the database (and its LOCK file) alive in
        # rocksdict, so all of them are closed or dropped before the database itself. After a
        # failed WAL write (disk full) every close raises "Writer has previous error": the
        # references are dropped anyway, which is what releases the LOCK.
        for column_family in (self._events, self._events_zstd, self._index, self._did_revs, self._events_v2,
                              self._meta, self._db):
            try:
                column_family.close()
            except Exception as exc:  # noqa: BLE001 - rocksdict raises bare Exception
                log.warning("event=log_close_error path=%s error=%r", self.path, str(exc))
        self._events = self._events_zstd = self._index = self._meta = self._did_revs = self._events_v2 = None
        self._events_handle = self._events_zstd_handle = self._index_handle = self._meta_handle = None
        self._events_v2_handle = None
        self._did_revs_handle = None
        self._db = None
        log.info("event=log_closed path=%s hwm=%d relay_cursor=%s", self.path, self._hwm, self._relay_cursor)

    def reopen(self) -> None:
        """Close and open the database again, then prove it takes a write (LogError if not).

        RocksDB keeps a failed WAL write as a sticky error ("Writer has previous error"), so
        after the disk was full the only way back is a fresh open; what the WAL held is replayed.
        """
        fsync = self._write_options.sync
        self.close()
        release_unreferenced()
        self._connect(fsync, create=False)
        try:
            probe = WriteBatch(raw_mode=True)
            probe.put(META_FORMAT_NAME, FORMAT_NAME, self._meta_handle)
            self._db.write(probe, self._write_options)
        except Exception as exc:  # noqa: BLE001
            raise LogError(f"event log at {self.path} still refuses writes: {exc}") from exc

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
