"""The sealed segments of an archive store, as the planner and the download handlers see them.

Owns: which `seg_<base36>.jss` objects of a store (a directory or an object store, store.py) are
served (sealed, and their header checksum verified over the whole footer when first seen), each
one's resident summary (index, name, size, version, mtime, header: seq and time bounds, counts, the
checksum that is its ETag, the segment DID bloom's shape), and a bounded least-recently-used cache
of footers (block index, segment and per-block DID blooms, collection index) loaded on demand. A
file that fails verification is reported (`Scan.corrupt`) and never listed; an active (unsealed)
file is skipped in silence, as v2's manifest does. `scan()` picks up segments sealed since the last
one (the writer calls it after each seal; the service also polls) and forgets files that have gone.
Every read goes through the store (ranges: the header, the footer, 64 bytes of a bloom), never a
whole object.
It must never write or delete a file, never decode a block, and never raise a problem itself:
it reports, its owner (xrpc.py's ArchiveService) decides. `scan()` may run in a thread while the
event loop reads: the list of entries is replaced whole, the cache is behind a lock.
"""
from __future__ import annotations

import bisect
import collections
import re
import struct
import threading
from dataclasses import dataclass
from typing import NamedTuple

from jetstream.archive import bloom as gloom
from jetstream.archive.format import (
    BLOCK_INDEX_ENTRY_SIZE,
    BLOOM_REGION_HEADER_SIZE,
    COLLECTION_INDEX_HEADER_SIZE,
    HEADER_SIZE,
    MAX_BLOCK_COUNT,
    ActiveSegment,
    BlockInfo,
    CorruptSegment,
    Header,
    InvalidFooter,
    SegmentError,
    decode_block_index,
    decode_bloom_region_header,
    decode_collection_index,
    decode_header,
    header_checksum,
)
from jetstream.archive.store import ArchiveStore, LocalStore, ObjectChanged, ObjectMissing, StoredObject, StoreError

_BLOOM_HEADER = struct.Struct("<BIQQ")  # gloom: version, k, num_blocks, count
_ONE = b"\x01"


class SegmentSummary(NamedTuple):
    """What stays in memory for every listed segment (a few hundred bytes)."""

    index: int
    name: str
    path: str  # the file to serve from when the store is a local directory, else ""
    size: int
    mtime_ns: int
    header: Header
    nonempty_blocks: int  # blocks holding at least one event (the match-all plan's density)
    bloom_k: int  # the segment DID bloom's shape, to probe it from disk when its footer is not cached
    bloom_blocks: int
    bloom_bits_offset: int  # file offset of the segment bloom's first 64-byte block (0: no bloom)
    version: str = ""  # the store's version token (ETag, or size:mtime of a file) when it was verified

    @property
    def checksum(self) -> int:
        return self.header.checksum


@dataclass(frozen=True)
class Footer:
    """One segment's footer in the shapes the planner tests in C-speed passes.

    Block sets are "byte masks": a bytes-like int where block i is the byte at bit 8*i, 1 when set.
    Two masks combine with `&` / `|`; the selected blocks are where the result's bytes are 1.
    """

    blocks: list[BlockInfo]
    min_seqs: list[int]
    max_seqs: list[int]
    nonempty: int  # byte mask of blocks with events
    collection_names: list[str]
    collection_masks: list[int]  # collection id -> byte mask of the blocks listing it
    segment_bloom_bits: bytes  # b"" when the segment has no DID bloom
    block_blooms: bytes  # the per-block bloom region after its 8-byte header
    block_bloom_size: int
    block_bloom_shape: tuple[int, int] | None  # (k, num_blocks) shared by every per-block bloom; None: mixed
    nbytes: int

    @property
    def block_count(self) -> int:
        return len(self.blocks)

    def window_mask(self, after_seq: int | None, before_seq: int | None) -> int:
        """Byte mask of the blocks that may hold a seq in (after_seq, before_seq] (blocks are seq-ordered)."""
        first = 0 if after_seq is None else bisect.bisect_right(self.max_seqs, after_seq)
        last = len(self.blocks) if before_seq is None else bisect.bisect_right(self.min_seqs, before_seq)
        if first >= last:
            return 0
        return int.from_bytes(bytes(first) + _ONE * (last - first), "little")


class Scan(NamedTuple):
    """What one scan found: files newly listed, files that failed verification (name -> reason), files gone,
    and files the store would not give (a network or permission failure, not their bytes)."""

    added: list[str]
    corrupt: dict[str, str]
    removed: list[str]
    unreadable: tuple[str, ...] = ()


def byte_mask(indices, count: int) -> int:
    marks = bytearray(count)
    for i in indices:
        marks[i] = 1
    return int.from_bytes(marks, "little")


_RUNS = re.compile(rb"\x01+")


def mask_ranges(mask: int, count: int) -> list[tuple[int, int]]:
    """The (first, last) runs of set blocks in a byte mask, ascending (v2's coalesceBlocks)."""
    if not mask:
        return []
    return [(m.start(), m.end() - 1) for m in _RUNS.finditer(mask.to_bytes(count, "little"))]


def mask_count(mask: int, count: int) -> int:
    return mask.to_bytes(count, "little").count(1) if mask else 0


class Manifest:
    """The listed segments of one store (or directory), ascending by index, with a footer cache."""

    def __init__(self, store: ArchiveStore | str, footer_cache_bytes: int = 256 << 20) -> None:
        self.store = LocalStore(store) if isinstance(store, str) else store
        self.directory = self.store.location
        self.footer_cache_bytes = footer_cache_bytes
        self._segments: tuple[SegmentSummary, ...] = ()
        self._by_index: dict[int, SegmentSummary] = {}
        # name -> (version, reason) of an object that failed verification, so an unchanged one is not re-read
        self._refused: dict[str, tuple[str, str]] = {}
        self._cache: collections.OrderedDict[int, Footer] = collections.OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()
        self._scan_lock = threading.Lock()
        self.scanned = False  # set after the first complete scan: the archive may be served

    # -- what readers see ----------------------------------------------------------------------

    @property
    def segments(self) -> tuple[SegmentSummary, ...]:
        return self._segments

    def get(self, index: int) -> SegmentSummary | None:
        return self._by_index.get(index)

    @property
    def corrupt(self) -> dict[str, str]:
        """Files refused at their last verification, name -> reason."""
        return {name: reason for name, (_, reason) in self._refused.items()}

    # -- scanning ------------------------------------------------------------------------------

    def scan(self) -> Scan:
        """List the store again: verify new objects, forget vanished ones. Safe to call from a thread.

        StoreError when the listing itself fails (the previous listing stays); an object that cannot
        be read for a reason other than its bytes is skipped this time (kept if it was listed)."""
        with self._scan_lock:
            return self._scan()

    def _scan(self) -> Scan:
        objects = self.store.list_segments()
        known = {s.name: s for s in self._segments}
        added, corrupt = [], {}
        kept: list[SegmentSummary] = []
        unreadable: set[str] = set()
        for obj in objects:
            name = obj.name
            old = known.get(name)
            if old is not None and old.version == obj.version:
                kept.append(old)
                continue
            refused = self._refused.get(name)
            if refused is not None and refused[0] == obj.version:
                corrupt[name] = refused[1]
                continue
            try:
                summary, footer = open_segment(self.store, obj)
            except ActiveSegment:
                continue  # not sealed yet: its writer will publish it
            except ObjectMissing:
                continue  # gone between listing and reading
            except StoreError:
                if old is not None:
                    kept.append(old)  # unreadable now (network): keep serving what was verified
                unreadable.add(name)
                continue
            except SegmentError as exc:
                reason = str(exc) or type(exc).__name__
                self._refused[name] = (obj.version, reason)
                corrupt[name] = reason
                continue
            self._refused.pop(name, None)
            self._drop_footer(obj.index)
            self._put_footer(obj.index, footer)
            kept.append(summary)
            added.append(name)
        kept, overlapping = _seq_ordered(kept)
        for summary in overlapping:
            reason = "seq range overlaps the previous segment's"
            self._refused[summary.name] = (summary.version, reason)
            corrupt[summary.name] = reason
            added = [name for name in added if name != summary.name]
        present = {obj.name for obj in objects}
        for name in list(self._refused):
            if name not in present:
                del self._refused[name]
        listed = {s.name for s in kept}
        removed = [name for name in known if name not in listed]
        for name in removed:
            self._drop_footer(known[name].index)
        self._segments = tuple(kept)
        self._by_index = {s.index: s for s in kept}
        self.scanned = True
        return Scan(added, corrupt, removed, tuple(sorted(unreadable)))

    def refused_versions(self) -> list[tuple[str, str, str]]:
        """(name, version, reason) of every file refused, sorted: at listing or since (`refuse`)."""
        return sorted((name, version, reason) for name, (version, reason) in self._refused.items())

    def refuse(self, summary: SegmentSummary, reason: str) -> None:
        """A listed file no longer matches what was verified (a download found it changed): unlist it."""
        with self._scan_lock:
            self._refused[summary.name] = (summary.version, reason)
            self._segments = tuple(s for s in self._segments if s.index != summary.index)
            self._by_index = {s.index: s for s in self._segments}
            self._drop_footer(summary.index)

    def forget(self, summary: SegmentSummary) -> None:
        """A listed object was replaced in the store (a download's If-Match failed): unlist it until the
        next scan verifies whatever is there now (its own version is refused or listed then)."""
        with self._scan_lock:
            self._segments = tuple(s for s in self._segments if s.index != summary.index)
            self._by_index = {s.index: s for s in self._segments}
            self._drop_footer(summary.index)

    # -- footers -------------------------------------------------------------------------------

    def footer(self, summary: SegmentSummary) -> Footer:
        """The segment's footer, from the cache or from its file (re-verified); SegmentError if it changed,
        StoreError if the store cannot be read."""
        with self._lock:
            cached = self._cache.get(summary.index)
            if cached is not None:
                self._cache.move_to_end(summary.index)
                return cached
        footer = load_footer(self.store, summary)
        self._put_footer(summary.index, footer)
        return footer

    def cached_footer(self, index: int) -> Footer | None:
        with self._lock:
            return self._cache.get(index)

    def resident_footer(self, index: int) -> Footer | None:
        """The cached footer or None, never reading the store; the caller marks what it used with
        `touch` (one lock for a whole plan instead of one per segment). A lone dict lookup needs no lock."""
        return self._cache.get(index)

    def touch(self, indices) -> None:
        """Mark these cached footers as just used (least-recently-used order), skipping evicted ones."""
        with self._lock:
            move = self._cache.move_to_end
            for index in indices:
                if index in self._cache:
                    move(index)

    def _put_footer(self, index: int, footer: Footer) -> None:
        with self._lock:
            if footer.nbytes > self.footer_cache_bytes or index in self._cache:
                return
            self._cache[index] = footer
            self._cached_bytes += footer.nbytes
            while self._cached_bytes > self.footer_cache_bytes:
                _, evicted = self._cache.popitem(last=False)
                self._cached_bytes -= evicted.nbytes

    def _drop_footer(self, index: int) -> None:
        with self._lock:
            old = self._cache.pop(index, None)
            if old is not None:
                self._cached_bytes -= old.nbytes

    @property
    def cached_bytes(self) -> int:
        return self._cached_bytes

    def segment_bloom_may_contain_any(self, summary: SegmentSummary, probe_sets: list[list[tuple[int, int]]]) -> bool:
        """Whether the segment bloom may hold any of the DIDs whose probes (bloom_probes) are given.

        From the cached footer, else one 64-byte read per distinct bloom block probed: a DID's bits
        all sit in one 512-bit block of the filter, so the whole filter need not be read.
        """
        if not summary.bloom_bits_offset:
            return True  # no bloom: cannot exclude (v2: a nil segment bloom does not short-circuit)
        footer = self.cached_footer(summary.index)
        if footer is not None:
            bits = footer.segment_bloom_bits
            return any(all(bits[byte] & bit for byte, bit in probes) for probes in probe_sets)
        read: dict[int, bytes] = {}
        try:
            for probes in probe_sets:
                start = (probes[0][0] // gloom.BLOCK_BYTES) * gloom.BLOCK_BYTES
                block = read.get(start)
                if block is None:
                    block = read[start] = self.store.read_range(summary.name, summary.bloom_bits_offset + start,
                                                                gloom.BLOCK_BYTES)
                if len(block) != gloom.BLOCK_BYTES:
                    return True  # truncated since listed: the footer load that follows reports it
                if all(block[byte - start] & bit for byte, bit in probes):
                    return True
        except StoreError:
            return True
        return False


# -- opening one file --------------------------------------------------------------------------

def _seq_ordered(summaries: list[SegmentSummary]) -> tuple[list[SegmentSummary], list[SegmentSummary]]:
    """v2's cross-segment invariant: ascending index = ascending, disjoint seq ranges (empty ones skipped).

    v2 refuses to start on a violation; here the offending segment is refused and the rest served.
    """
    kept, refused = [], []
    prev_max = None
    for s in summaries:
        if s.header.event_count:
            if prev_max is not None and s.header.min_seq <= prev_max:
                refused.append(s)
                continue
            prev_max = s.header.max_seq
        kept.append(s)
    return kept, refused


def _read_exact(store: ArchiveStore, name: str, size: int, offset: int, version: str | None) -> bytes:
    data = store.read_range(name, offset, size, version)
    if len(data) != size:
        raise CorruptSegment(f"short read: {len(data)} of {size} bytes at offset {offset}")
    return data


def _read_verified(store: ArchiveStore, obj: StoredObject) -> tuple[Header, bytes]:
    """(header, footer bytes) of a sealed object whose checksum holds; SegmentError otherwise (StoreError
    when the store cannot be read, ObjectChanged when the object is replaced while being read)."""
    size = obj.size
    if size < HEADER_SIZE:
        raise CorruptSegment(f"file is {size} bytes, shorter than the {HEADER_SIZE}-byte header")
    header_bytes = _read_exact(store, obj.name, HEADER_SIZE, 0, obj.version)
    header = decode_header(header_bytes)
    if not HEADER_SIZE <= header.footer_offset <= size:
        raise InvalidFooter(f"footer_offset {header.footer_offset} outside [{HEADER_SIZE}, {size}]")
    footer = _read_exact(store, obj.name, size - header.footer_offset, header.footer_offset, obj.version)
    computed = header_checksum(header_bytes[:4] + bytes(8) + header_bytes[12:], footer)
    if computed != header.checksum:
        raise SegmentError(f"checksum mismatch: computed xxh3 {computed:016x}, header has {header.checksum:016x}")
    return header, footer


def open_segment(store: ArchiveStore, obj: StoredObject) -> tuple[SegmentSummary, Footer]:
    """Verify a sealed object (header checksum over the footer, every footer region) and summarise it."""
    header, footer_bytes = _read_verified(store, obj)
    footer = parse_footer(header, footer_bytes)
    bloom_k = bloom_blocks = bloom_offset = 0
    if header.block_did_bloom_offset > header.did_bloom_offset:
        k, blocks = _bloom_shape(footer_bytes, header.did_bloom_offset - header.footer_offset)
        bloom_k, bloom_blocks = k, blocks
        bloom_offset = header.did_bloom_offset + gloom.HEADER_SIZE
    summary = SegmentSummary(obj.index, obj.name, store.local_path(obj.name) or "", obj.size, obj.mtime_ns, header,
                             mask_count(footer.nonempty, footer.block_count), bloom_k, bloom_blocks, bloom_offset,
                             obj.version)
    return summary, footer


def load_footer(store: ArchiveStore, summary: SegmentSummary) -> Footer:
    """Re-read a listed segment's footer; SegmentError when the object is no longer what was listed."""
    try:
        current = store.head(summary.name)
        if current.size != summary.size:
            raise CorruptSegment(f"file is {current.size} bytes, was {summary.size} when listed")
        header, footer_bytes = _read_verified(store, current)
    except ObjectChanged as exc:
        raise SegmentError(f"changed since it was listed: {exc}") from exc
    if header.checksum != summary.checksum:
        raise SegmentError(f"checksum is {header.checksum:016x}, was {summary.checksum:016x} when listed")
    return parse_footer(header, footer_bytes)


def _bloom_shape(footer_bytes: bytes, offset: int) -> tuple[int, int]:
    if offset + gloom.HEADER_SIZE > len(footer_bytes):
        raise InvalidFooter("segment DID bloom is truncated")
    version, k, num_blocks, _ = _BLOOM_HEADER.unpack_from(footer_bytes, offset)
    if version != gloom.SERIALIZE_VERSION or k not in gloom.PARTITIONS or not 0 < num_blocks:
        raise InvalidFooter(f"segment DID bloom header: version {version}, k {k}, {num_blocks} blocks")
    return k, num_blocks


def parse_footer(header: Header, footer: bytes) -> Footer:
    """Every footer region checked (as the reader does) and turned into planner shapes."""
    base = header.footer_offset
    size = base + len(footer)
    if header.block_index_offset != base or not (
            base <= header.did_bloom_offset <= header.block_did_bloom_offset <= header.collection_index_offset <= size):
        raise InvalidFooter("footer section offsets are out of order")
    if header.block_count > MAX_BLOCK_COUNT:
        raise InvalidFooter(f"block_count {header.block_count} exceeds {MAX_BLOCK_COUNT}")
    count = header.block_count
    index_len = count * BLOCK_INDEX_ENTRY_SIZE
    if base + index_len > header.did_bloom_offset:
        raise InvalidFooter("block index overruns the segment DID bloom")
    blocks = decode_block_index(footer[:index_len], count)
    _check_blocks(blocks, header)
    segment_bloom = footer[header.did_bloom_offset - base:header.block_did_bloom_offset - base]
    bloom_bits = b""
    if segment_bloom:
        bloom = gloom.Bloom.unmarshal(segment_bloom)  # CRC and shape checked once, here
        bloom_bits = bytes(bloom.bits)
    region = footer[header.block_did_bloom_offset - base:header.collection_index_offset - base]
    if len(region) < BLOOM_REGION_HEADER_SIZE:
        raise InvalidFooter("per-block bloom region is shorter than its header")
    bloom_count, bloom_size = decode_bloom_region_header(region)
    if bloom_count != count or BLOOM_REGION_HEADER_SIZE + count * bloom_size != len(region):
        raise InvalidFooter("per-block bloom region does not match the block count")
    block_blooms = region[BLOOM_REGION_HEADER_SIZE:]
    shape = _uniform_bloom_shape(block_blooms, count, bloom_size)
    if len(footer) - (header.collection_index_offset - base) < COLLECTION_INDEX_HEADER_SIZE:
        raise InvalidFooter("collection index region is too small")
    collections = decode_collection_index(footer[header.collection_index_offset - base:])
    if len(collections.block_ids) != count:
        raise InvalidFooter(f"collection index has {len(collections.block_ids)} blocks, header says {count}")
    per_collection: list[list[int]] = [[] for _ in collections.names]
    for block, ids in enumerate(collections.block_ids):
        for cid in ids:
            per_collection[cid].append(block)
    masks = [byte_mask(blocks_of, count) for blocks_of in per_collection]
    nonempty = byte_mask((i for i, b in enumerate(blocks) if b.event_count), count)
    nbytes = len(footer) + 64 * count + 64 * len(collections.names)
    min_seqs, max_seqs = _monotonic_bounds(blocks)
    return Footer(blocks, min_seqs, max_seqs, nonempty,
                  list(collections.names), masks, bloom_bits, block_blooms, bloom_size, shape, nbytes)


def _check_blocks(blocks: list[BlockInfo], header: Header) -> None:
    """Each block inside [256, footer), in file order, seq-disjoint and ascending (v2 reader.go), and
    (stricter than v2's reader, as its verify) inside the header's seq envelope."""
    footer_offset = header.footer_offset
    prev_end = HEADER_SIZE
    prev_max = None
    for i, b in enumerate(blocks):
        end = b.offset + 8 + b.compressed_size
        if b.offset < prev_end or end > footer_offset:
            raise InvalidFooter(f"block {i} spans [{b.offset}, {end}), outside [{prev_end}, {footer_offset})")
        if b.max_seq < b.min_seq:
            raise InvalidFooter(f"block {i} has max_seq below min_seq")
        if b.event_count:
            if prev_max is not None and b.min_seq <= prev_max:
                raise InvalidFooter(f"block {i} min_seq {b.min_seq} is not above the previous max_seq {prev_max}")
            if b.min_seq < header.min_seq or b.max_seq > header.max_seq:
                raise InvalidFooter(f"block {i} seqs [{b.min_seq}, {b.max_seq}] outside the header's")
            prev_max = b.max_seq
        prev_end = end


def _monotonic_bounds(blocks: list[BlockInfo]) -> tuple[list[int], list[int]]:
    """Per-block (min_seqs, max_seqs) for bisecting: an empty block (its envelope may be stale)
    takes the previous non-empty block's max, so both lists ascend; empty blocks are masked anyway."""
    mins, maxs = [], []
    prev = 0
    for b in blocks:
        if b.event_count:
            mins.append(b.min_seq)
            maxs.append(b.max_seq)
            prev = b.max_seq
        else:
            mins.append(prev)
            maxs.append(prev)
    return mins, maxs


def _uniform_bloom_shape(region: bytes, count: int, size: int) -> tuple[int, int] | None:
    """(k, num_blocks) when every per-block bloom has it and the size it implies, else None."""
    if not count or size < gloom.HEADER_SIZE + gloom.CHECKSUM_SIZE:
        return None
    shapes = {_BLOOM_HEADER.unpack_from(region, i * size)[:3] for i in range(count)}
    if len(shapes) != 1:
        return None
    version, k, num_blocks = shapes.pop()
    if (version != gloom.SERIALIZE_VERSION or k not in gloom.PARTITIONS
            or size != gloom.HEADER_SIZE + num_blocks * gloom.BLOCK_BYTES + gloom.CHECKSUM_SIZE):
        return None
    return k, num_blocks


# -- bloom probes ------------------------------------------------------------------------------

def bloom_probes(did_hash: int, num_blocks: int, k: int) -> list[tuple[int, int]]:
    """(byte offset in the filter's bits, bit mask) of each bit gloom tests for this hash."""
    base = (((did_hash >> 64) * num_blocks) >> 64) * gloom.BLOCK_BITS
    low = did_hash & 0xFFFFFFFFFFFFFFFF
    low = (low ^ (low >> 32)) & 0xFFFFFFFF
    out = []
    for offset, size in gloom._PROBES[k]:
        pos = base + offset + low % size
        out.append((pos >> 3, 1 << (pos & 7)))
    return out


# translate tables: byte -> 1 when it has the bit set, else 0
_BIT_TABLES = {1 << b: bytes(1 if v & (1 << b) else 0 for v in range(256)) for b in range(8)}


def block_bloom_mask(footer: Footer, did_hash: int) -> int:
    """Byte mask of the blocks whose DID bloom may hold the hash: one column pass per probed bit.

    Every per-block bloom of a segment has one shape, so a DID's probed bits sit at the same
    offsets in each: column j of the region (every bloom_size-th byte) is bit j of every block.
    """
    count = footer.block_count
    if not count:
        return 0
    size = footer.block_bloom_size
    region = footer.block_blooms
    if footer.block_bloom_shape is None:  # mixed shapes (never written by v2 or us): one filter at a time
        hits = []
        for i in range(count):
            try:
                bloom = gloom.Bloom.unmarshal(region[i * size:(i + 1) * size])
            except SegmentError:
                hits.append(i)  # unreadable bloom: include the block (no false negatives)
                continue
            if _bloom_has(bloom, did_hash):
                hits.append(i)
        return byte_mask(hits, count)
    k, num_blocks = footer.block_bloom_shape
    acc = -1
    for byte, bit in bloom_probes(did_hash, num_blocks, k):
        column = region[gloom.HEADER_SIZE + byte::size]
        acc &= int.from_bytes(column.translate(_BIT_TABLES[bit]), "little")
        if not acc:
            return 0
    return acc


def block_bloom_columns(did_hash: int, shape: tuple[int, int]) -> tuple[tuple[int, bytes], ...]:
    """(column start in a per-block bloom, translate table of the probed bit) for each bit gloom tests
    for this hash in blooms of `shape` (k, num_blocks): computed once per plan and shape, not per footer."""
    k, num_blocks = shape
    return tuple((gloom.HEADER_SIZE + byte, _BIT_TABLES[bit]) for byte, bit in bloom_probes(did_hash, num_blocks, k))


def block_mask_of_columns(footer: Footer, columns: tuple[tuple[int, bytes], ...], within: int = -1) -> int:
    """block_bloom_mask, restricted to the byte mask `within`, for a footer whose blooms have the shape
    `columns` was made for (block_bloom_columns). Once a single block is left its remaining bits are
    tested in place: a column pass costs the same for one block as for all of them."""
    region, size = footer.block_blooms, footer.block_bloom_size
    acc = within
    for n, (start, table) in enumerate(columns):
        acc &= int.from_bytes(region[start::size].translate(table), "little")
        if not acc:
            return 0
        if acc.bit_count() == 1:
            base = ((acc.bit_length() - 1) >> 3) * size
            for rest, rest_table in columns[n + 1:]:
                if not rest_table[region[base + rest]]:
                    return 0
            return acc
    return acc


def _bloom_has(bloom: gloom.Bloom, did_hash: int) -> bool:
    bits = bloom.bits
    return all(bits[byte] & bit for byte, bit in bloom_probes(did_hash, bloom.num_blocks, bloom.k))
