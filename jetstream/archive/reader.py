"""Reads and verifies sealed `.jss` segments, ours or v2's.

Owns: opening a sealed segment (header checksum and every footer offset checked before anything
is trusted), reading one block's raw frame or its events, iterating every event, and the footer
a planner needs (block index, segment and per-block DID blooms, collection index); and
`verify()`, the full check behind a future `jetstream archive verify`.
It must never write, and never raise anything but SegmentError (format.py) on bad bytes: a
corrupt or hostile segment is reported, not crashed on.

A reader works over a file (`SegmentReader.open(path)`) or over bytes in memory
(`SegmentReader.from_bytes(data)`); both read through `pread(offset, size)`, so an object-store
reader with range requests can be added later.
"""
from __future__ import annotations

import os
from typing import Iterator, NamedTuple

from jetstream.archive.bloom import Bloom
from jetstream.archive.format import (
    BLOCK_INDEX_ENTRY_SIZE,
    BLOOM_REGION_HEADER_SIZE,
    COLLECTION_INDEX_HEADER_SIZE,
    FRAME_PREFIX_SIZE,
    HEADER_SIZE,
    MAX_BLOCK_COUNT,
    MAX_DECODED_BYTES,
    SENTINEL_BY_KIND,
    BlockInfo,
    BlockOutOfRange,
    ChecksumMismatch,
    CollectionIndex,
    CorruptSegment,
    Header,
    InvalidBlockIndex,
    InvalidFooter,
    SegmentError,
    SegmentEvent,
    decode_block,
    decode_block_index,
    decode_bloom_region_header,
    decode_collection_index,
    decode_header,
    decode_u64,
    decompress_frame,
    header_checksum,
)


class _FileSource:
    def __init__(self, path: str):
        self._fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self._fd).st_size

    def pread(self, offset: int, size: int) -> bytes:
        try:
            data = os.pread(self._fd, size, offset)
        except OSError as exc:
            raise SegmentError(f"read of {size} bytes at offset {offset} failed: {exc}") from exc
        if len(data) != size:
            raise CorruptSegment(f"short read: {len(data)} of {size} bytes at offset {offset}")
        return data

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _BytesSource:
    def __init__(self, data: bytes):
        self._data = bytes(data)
        self.size = len(self._data)

    def pread(self, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0 or offset + size > self.size:
            raise CorruptSegment(f"read of {size} bytes at offset {offset} is past the end ({self.size})")
        return self._data[offset:offset + size]

    def close(self) -> None:
        pass


class SegmentReader:
    """A sealed segment's metadata in memory; blocks and per-block blooms read on demand."""

    def __init__(self, source, name: str = "<bytes>", verify_checksum: bool = True):
        self._source = source
        self.name = name
        try:
            self._load(verify_checksum)
        except BaseException:
            source.close()
            raise

    @classmethod
    def open(cls, path: str, verify_checksum: bool = True) -> SegmentReader:
        try:
            source = _FileSource(path)
        except OSError as exc:
            raise SegmentError(f"cannot open segment {path}: {exc}") from exc
        return cls(source, path, verify_checksum)

    @classmethod
    def from_bytes(cls, data: bytes, verify_checksum: bool = True) -> SegmentReader:
        return cls(_BytesSource(data), "<bytes>", verify_checksum)

    def close(self) -> None:
        self._source.close()

    def __enter__(self) -> SegmentReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def size(self) -> int:
        return self._source.size

    # -- open ----------------------------------------------------------------------------------

    def _load(self, verify_checksum: bool) -> None:
        size = self._source.size
        if size < HEADER_SIZE:
            raise CorruptSegment(f"file is {size} bytes, shorter than the {HEADER_SIZE}-byte header")
        header_bytes = self._source.pread(0, HEADER_SIZE)
        header = decode_header(header_bytes)
        _check_header_offsets(header, size)
        if header.block_count > MAX_BLOCK_COUNT:
            raise InvalidFooter(f"block_count {header.block_count} exceeds {MAX_BLOCK_COUNT}")
        index_len = header.block_count * BLOCK_INDEX_ENTRY_SIZE
        if header.block_index_offset + index_len > header.did_bloom_offset:
            raise InvalidFooter("block index overruns the segment DID bloom")
        blocks = decode_block_index(self._source.pread(header.block_index_offset, index_len), header.block_count)
        _check_block_index(blocks, header.footer_offset)
        count, bloom_size = decode_bloom_region_header(
            self._source.pread(header.block_did_bloom_offset, BLOOM_REGION_HEADER_SIZE))
        if count != header.block_count:
            raise InvalidFooter(f"bloom region has {count} blooms, header says {header.block_count} blocks")
        region = header.collection_index_offset - header.block_did_bloom_offset
        if BLOOM_REGION_HEADER_SIZE + count * bloom_size != region:
            raise InvalidFooter("per-block bloom region does not fill its space in the footer")
        if verify_checksum:
            footer = self._source.pread(header.footer_offset, size - header.footer_offset)
            unsigned = header_bytes[:4] + bytes(8) + header_bytes[12:]
            computed = header_checksum(unsigned, footer)
            if computed != header.checksum:
                raise ChecksumMismatch(f"computed xxh3 {computed:016x}, header has {header.checksum:016x}")
        if size - header.collection_index_offset < COLLECTION_INDEX_HEADER_SIZE:
            raise InvalidFooter("collection index region is too small")
        collections = decode_collection_index(
            self._source.pread(header.collection_index_offset, size - header.collection_index_offset))
        if len(collections.block_ids) != header.block_count:
            raise InvalidFooter(f"collection index has {len(collections.block_ids)} blocks, header says "
                                f"{header.block_count}")
        segment_bloom_len = header.block_did_bloom_offset - header.did_bloom_offset
        self.segment_bloom: Bloom | None = (
            Bloom.unmarshal(self._source.pread(header.did_bloom_offset, segment_bloom_len))
            if segment_bloom_len else None)
        self.header: Header = header
        self.blocks: list[BlockInfo] = blocks
        self.collections: CollectionIndex = collections
        self._bloom_size = bloom_size

    # -- blocks --------------------------------------------------------------------------------

    def _block_info(self, index: int) -> BlockInfo:
        if not 0 <= index < len(self.blocks):
            raise BlockOutOfRange(f"block {index} of {len(self.blocks)}")
        return self.blocks[index]

    def read_block_frame(self, index: int) -> bytes:
        """Block `index`'s stored zstd frame without its length prefix (what getBlock serves)."""
        info = self._block_info(index)
        return self._source.pread(info.offset + FRAME_PREFIX_SIZE, info.compressed_size)

    def read_block_body(self, index: int) -> bytes:
        info = self._block_info(index)
        body = decompress_frame(self.read_block_frame(index), limit=min(info.uncompressed_size, MAX_DECODED_BYTES))
        if len(body) != info.uncompressed_size:
            raise CorruptSegment(f"block {index} decompressed to {len(body)} bytes, index says "
                                 f"{info.uncompressed_size}")
        return body

    def read_block(self, index: int) -> list[SegmentEvent]:
        events = decode_block(self.read_block_body(index))
        if len(events) != self.blocks[index].event_count:
            raise CorruptSegment(f"block {index} holds {len(events)} events, index says "
                                 f"{self.blocks[index].event_count}")
        return events

    def iter_events(self) -> Iterator[SegmentEvent]:
        for index in range(len(self.blocks)):
            yield from self.read_block(index)

    # -- footer for a planner ------------------------------------------------------------------

    def block_bloom(self, index: int) -> Bloom:
        self._block_info(index)
        offset = self.header.block_did_bloom_offset + BLOOM_REGION_HEADER_SIZE + index * self._bloom_size
        return Bloom.unmarshal(self._source.pread(offset, self._bloom_size))

    def block_blooms(self) -> list[Bloom]:
        if not self.blocks:
            return []
        region = self._source.pread(self.header.block_did_bloom_offset + BLOOM_REGION_HEADER_SIZE,
                                    len(self.blocks) * self._bloom_size)
        size = self._bloom_size
        return [Bloom.unmarshal(region[i * size:(i + 1) * size]) for i in range(len(self.blocks))]

    def blocks_for_did(self, did: str) -> list[int]:
        """Blocks that may hold `did` (no false negatives; bloom false positives possible)."""
        if not self.blocks or (self.segment_bloom is not None and not self.segment_bloom.might_contain(did)):
            return []
        return [i for i, b in enumerate(self.block_blooms()) if b.might_contain(did)]

    def blocks_for_collections(self, names) -> list[int]:
        """Blocks whose collection index names any of `names` (exact names, sentinels included)."""
        wanted = {i for i, name in enumerate(self.collections.names) if name in set(names)}
        return [b for b, ids in enumerate(self.collections.block_ids) if wanted.intersection(ids)]

    def collection_counts(self) -> dict[str, int]:
        return dict(zip(self.collections.names, self.collections.counts))


def _check_header_offsets(h: Header, size: int) -> None:
    if h.footer_offset < HEADER_SIZE or h.footer_offset > size:
        raise InvalidFooter(f"footer_offset {h.footer_offset} outside [{HEADER_SIZE}, {size}]")
    if h.block_index_offset != h.footer_offset:
        raise InvalidFooter(f"block_index_offset {h.block_index_offset} != footer_offset {h.footer_offset}")
    if not (h.block_index_offset <= h.did_bloom_offset <= h.block_did_bloom_offset
            <= h.collection_index_offset <= size):
        raise InvalidFooter("footer section offsets are out of order")
    if h.collection_index_offset - h.block_did_bloom_offset < BLOOM_REGION_HEADER_SIZE:
        raise InvalidFooter("per-block bloom region is shorter than its header")


def _check_block_index(blocks: list[BlockInfo], footer_offset: int) -> None:
    """Each block inside [256, footer), in file order, seq-disjoint and ascending (v2 reader.go)."""
    prev_end = HEADER_SIZE
    prev_max_seq = None
    for i, b in enumerate(blocks):
        end = b.offset + FRAME_PREFIX_SIZE + b.compressed_size
        if b.offset < prev_end or end > footer_offset:
            raise InvalidBlockIndex(f"block {i} spans [{b.offset}, {end}), outside [{prev_end}, {footer_offset})")
        if b.max_seq < b.min_seq or b.max_witnessed_at < b.min_witnessed_at:
            raise InvalidBlockIndex(f"block {i} has max below min")
        if b.event_count:
            if prev_max_seq is not None and b.min_seq <= prev_max_seq:
                raise InvalidBlockIndex(f"block {i} min_seq {b.min_seq} is not above the previous max_seq "
                                        f"{prev_max_seq}")
            prev_max_seq = b.max_seq
        prev_end = end


class VerifyReport(NamedTuple):
    path: str
    header: Header
    blocks: int
    events: int


def verify(path_or_bytes) -> VerifyReport:
    """Check everything a segment promises; SegmentError naming the first broken promise.

    Header and footer checksum; footer offsets; the blocks exactly tile [256, footer_offset),
    each length prefix equal to its index entry; every frame's zstd content checksum and sizes;
    each block's events inside its index entry's bounds; seq strictly ascending over the whole
    segment; counts, seq and time bounds equal to the header's; and the footer re-derived from
    the rows: collection table and counts, each block's collection set, no DID bloom false
    negative.
    """
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        reader = SegmentReader.from_bytes(bytes(path_or_bytes))
    else:
        reader = SegmentReader.open(os.fspath(path_or_bytes))
    with reader:
        return _verify(reader)


def _verify(r: SegmentReader) -> VerifyReport:
    h = r.header
    expected_offset = HEADER_SIZE
    first_seq = last_seq = None
    events_total = 0
    segment_dids: set[str] = set()
    counts: dict[str, int] = {}
    block_blooms = r.block_blooms()
    min_w = max_w = None
    for i, info in enumerate(r.blocks):
        if info.offset != expected_offset:
            raise InvalidBlockIndex(f"block {i} starts at {info.offset}, the previous block ends at {expected_offset}")
        prefix = decode_u64(r._source.pread(info.offset, FRAME_PREFIX_SIZE))
        if prefix != info.compressed_size:
            raise CorruptSegment(f"block {i} length prefix {prefix} != index compressed_size {info.compressed_size}")
        expected_offset = info.offset + FRAME_PREFIX_SIZE + info.compressed_size
        events = r.read_block(i)
        block_dids: set[str] = set()
        block_names: set[str] = set()
        for ev in events:
            if last_seq is None:
                first_seq = ev.seq
            elif ev.seq <= last_seq:
                raise CorruptSegment(f"block {i}: seq {ev.seq} is not above the previous seq {last_seq}")
            last_seq = ev.seq
            if not (info.min_seq <= ev.seq <= info.max_seq
                    and info.min_witnessed_at <= ev.witnessed_at <= info.max_witnessed_at):
                raise CorruptSegment(f"block {i}: seq {ev.seq} / witnessed_at {ev.witnessed_at} outside the "
                                     f"block index bounds")
            min_w = ev.witnessed_at if min_w is None else min(min_w, ev.witnessed_at)
            max_w = ev.witnessed_at if max_w is None else max(max_w, ev.witnessed_at)
            if ev.did:
                block_dids.add(ev.did)
            if ev.collection:
                counts[ev.collection] = counts.get(ev.collection, 0) + 1
                block_names.add(ev.collection)
            sentinel = SENTINEL_BY_KIND.get(ev.kind)
            if sentinel is not None:
                counts.setdefault(sentinel, 0)
                block_names.add(sentinel)
        events_total += len(events)
        segment_dids |= block_dids
        listed = {r.collections.names[c] for c in r.collections.block_ids[i]}
        if listed != block_names:
            raise InvalidFooter(f"block {i}: collection index lists {sorted(listed)}, rows have {sorted(block_names)}")
        for did in block_dids:
            if not block_blooms[i].might_contain(did):
                raise InvalidFooter(f"block {i}: DID bloom misses {did}")
    if expected_offset != h.footer_offset:
        raise InvalidBlockIndex(f"blocks end at {expected_offset}, footer starts at {h.footer_offset}")
    if events_total != h.event_count or len(segment_dids) != h.unique_did_count:
        raise InvalidFooter(f"rows: {events_total} events, {len(segment_dids)} DIDs; header: {h.event_count}, "
                            f"{h.unique_did_count}")
    # Rows must lie inside the header's envelope; v2's compaction keeps historical envelopes, so
    # equality is not required (v2 verify.go).
    if events_total and not (h.min_seq <= first_seq and last_seq <= h.max_seq
                             and h.min_witnessed_at <= min_w and max_w <= h.max_witnessed_at):
        raise InvalidFooter("rows fall outside the header's seq or witnessed_at bounds")
    if r.collection_counts() != counts or len(set(r.collections.names)) != len(r.collections.names):
        raise InvalidFooter("collection table differs from the rows'")
    for did in segment_dids:
        if r.segment_bloom is None or not r.segment_bloom.might_contain(did):
            raise InvalidFooter(f"segment DID bloom misses {did}")
    return VerifyReport(r.name, h, len(r.blocks), events_total)
