"""Writes one `.jss` segment: events in, a sealed, published file out.

Owns: the active (temporary) segment file, the block being filled, the running footer
metadata (block index, DID sets, collection table) and the seal protocol: flush the last block,
append the footer, write the header with its checksum, fsync, rename to the published name,
fsync the directory. It must never decide when to cut a block by time or when to seal (the
caller owns those clocks and limits), never resume a half-written file (the active segment is
rebuilt from the durable log after a crash: the daemon only feeds it events already in RocksDB)
and never hold events it has not been given.

The output is what v2's writer produces from the same events and the same block cuts: the same
header fields, the same decompressed block bodies and the same footer, except that compressed
bytes may differ between zstd implementations (so do the offsets and the checksum that follow
from them). One deliberate difference: a segment never ends at an exact multiple of
`CLIENT_SLICE_BYTES` (8 MiB): the atproto SDK reads getSegment in 8 MiB Range slices and stops at
the first short one, so on such a size its next request starts at EOF, gets the 416 HTTP says
(v2 answers the same) and fails. When the footer would end there, the segment DID bloom gets one
more 64-byte filter block (a valid gloom filter of the same DIDs, a little sparser): 64 bytes more,
read by every reader as any other bloom size.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import NamedTuple

from jetstream.archive import bloom
from jetstream.archive.bloom import Bloom, key_hash
from jetstream.archive.format import (
    DEFAULT_BLOCK_EVENTS,
    MAX_BLOCK_EVENTS,
    MAX_DECODED_BYTES,
    SENTINEL_BY_KIND,
    VERSION,
    BlockInfo,
    CollectionIndex,
    Header,
    InvalidEvent,
    SegmentError,
    SegmentEvent,
    active_header,
    encode_block_columns,
    encode_block_index,
    encode_bloom_region,
    encode_collection_index,
    encode_header,
    encode_u64,
    header_checksum,
    new_compressor,
    validate_event,
)

CLIENT_SLICE_BYTES = 8 << 20  # atproto_jetstream's SEGMENT_CHUNK_BYTES: its getSegment Range slice


@dataclass(frozen=True)
class SegmentOptions:
    block_events: int = DEFAULT_BLOCK_EVENTS  # a block is cut when it holds this many events
    zstd_level: int = 3  # v2 uses klauspost's SpeedDefault, about zstd level 3
    fsync: bool = True  # fsync the file and its directory at seal (never per block: the log has them)


class SealResult(NamedTuple):
    path: str
    header: Header
    size_bytes: int


class SegmentWriter:
    """Append events in seq order; `cut_block()` at will; `seal()` publishes the file.

    Not thread-safe: one caller owns a writer. After seal() or abort() the writer is closed.
    """

    def __init__(self, path_tmp: str, first_seq: int, options: SegmentOptions | None = None):
        self.options = options or SegmentOptions()
        if not 1 <= self.options.block_events <= MAX_BLOCK_EVENTS:
            raise ValueError(f"block_events must be 1..{MAX_BLOCK_EVENTS}")
        self.path_tmp = path_tmp
        self.first_seq = first_seq
        self._compressor = new_compressor(self.options.zstd_level)
        # Unbuffered: each cut block reaches the page cache at once, so the active file on disk
        # is always whole blocks (what v2 calls an active segment). fsync waits for seal().
        self._file = open(path_tmp, "xb", buffering=0)  # noqa: SIM115 -- held open until seal/abort
        self._broken: Exception | None = None
        self._write(active_header())
        self._offset = len(active_header())
        self._closed = False
        self._last_seq = first_seq - 1
        self._blocks: list[BlockInfo] = []
        self._event_count = 0
        self._min_witnessed: int | None = None
        self._max_witnessed: int | None = None
        self._segment_dids: dict[str, int] = {}
        self._block_dids_list: list[dict[str, int]] = []
        self._collection_ids: dict[str, int] = {}
        self._collection_counts: list[int] = []
        self._block_collection_ids: list[list[int]] = []
        self._reset_pending()

    # -- state the caller steers by ------------------------------------------------------------

    @property
    def size_bytes(self) -> int:
        """Bytes written to the file so far (header and cut blocks; not the pending block)."""
        return self._offset

    @property
    def pending_events(self) -> int:
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        """The uncompressed size of the payloads waiting in the pending block."""
        return self._pending_payload_bytes

    @property
    def event_count(self) -> int:
        return self._event_count + len(self._pending)

    @property
    def block_count(self) -> int:
        return len(self._blocks)

    @property
    def last_seq(self) -> int:
        """The seq of the last event added (first_seq - 1 before any)."""
        return self._last_seq

    # -- writing -------------------------------------------------------------------------------

    def add(self, event: SegmentEvent) -> None:
        """Buffer one event; cuts the block when it reaches options.block_events.

        `event` is a SegmentEvent or a tuple in its field order. InvalidEvent (nothing written)
        when it does not fit the format or its seq is not above the previous one; the caller
        counts and skips it, as v2 does.
        """
        if self._closed or self._broken is not None:
            self._check_open()
        did_bytes, collection_bytes, rkey_bytes, rev_bytes = validate_event(event)
        seq, witnessed, indexed, kind, did, collection, _, _, payload = event
        if seq <= self._last_seq:
            raise InvalidEvent(f"seq {seq} is not above the previous seq {self._last_seq}")
        self._last_seq = seq
        payload = bytes(payload)
        self._pending.append((seq, witnessed, indexed, kind, did_bytes, collection_bytes, rkey_bytes, rev_bytes,
                              payload))
        self._pending_payload_bytes += len(payload)
        dids = self._pending_dids
        if did and did not in dids:
            dids[did] = key_hash(did)
        # First-seen order across the segment = first-seen order within the first block that has
        # the name; the real collection is interned before the kind's sentinel (v2 seal.go).
        counts = self._pending_collections
        if collection:
            counts[collection] = counts.get(collection, 0) + 1
        sentinel = SENTINEL_BY_KIND.get(kind)
        if sentinel is not None and sentinel not in counts:
            counts[sentinel] = 0
        if len(self._pending) >= self.options.block_events:
            self.cut_block()

    def cut_block(self) -> BlockInfo | None:
        """Compress and write the pending block (the caller's time-based cut); None if empty."""
        self._check_open()
        n = len(self._pending)
        if n == 0:
            return None
        columns = list(zip(*self._pending))
        body = encode_block_columns(*columns)
        if len(body) > MAX_DECODED_BYTES:
            raise SegmentError(f"block body is {len(body)} bytes, past the {MAX_DECODED_BYTES}-byte limit")
        frame = self._compressor.compress(body)
        seqs, witnessed = columns[0], columns[1]
        info = BlockInfo(self._offset, len(frame), len(body), n, seqs[0], seqs[-1], min(witnessed), max(witnessed))
        self._write(encode_u64(len(frame)) + frame)
        self._offset += 8 + len(frame)
        self._blocks.append(info)
        self._event_count += n
        self._fold_pending_metadata(info)
        self._reset_pending()
        return info

    def seal(self, final_path: str | None = None) -> SealResult:
        """Cut the last block, write footer and header, fsync, publish under final_path.

        final_path defaults to path_tmp without its ".tmp" suffix. The rename is atomic: a
        reader sees either no file or the whole sealed one.
        """
        self._check_open()
        if final_path is None:
            if not self.path_tmp.endswith(".tmp"):
                raise ValueError("seal() needs final_path when path_tmp does not end in .tmp")
            final_path = self.path_tmp[:-len(".tmp")]
        finished = self.finish()
        try:
            os.replace(self.path_tmp, final_path)
            if self.options.fsync:
                _fsync_dir(os.path.dirname(os.path.abspath(final_path)))
        except OSError as exc:
            self._broken = exc
            raise
        return finished._replace(path=final_path)

    def finish(self) -> SealResult:
        """Seal in place: cut the last block, footer, header, fsync, close; the file stays at path_tmp.

        For a caller that publishes the file itself (jetstream/archive/sealer.py: a no-clobber
        link into the archive directory, or an upload); seal() is finish() plus the rename.
        """
        self._check_open()
        self.cut_block()
        footer, header = self._build_footer()
        unsigned = encode_header(header)
        header = header._replace(checksum=header_checksum(unsigned, footer))
        self._write(footer)
        try:
            # Footer durable before the header names it; the header is the seal (v2 seal.go).
            if self.options.fsync:
                os.fsync(self._file.fileno())
            self._file.seek(0)
            self._write(encode_header(header))
            if self.options.fsync:
                os.fsync(self._file.fileno())
            self._file.close()
            self._closed = True
        except OSError as exc:
            self._broken = exc
            raise
        return SealResult(self.path_tmp, header, self._offset + len(footer))

    def abort(self) -> None:
        """Close and delete the temporary file (nothing is published)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._file.close()
        except OSError:
            pass
        try:
            os.unlink(self.path_tmp)
        except FileNotFoundError:
            pass

    def __enter__(self) -> SegmentWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.abort()  # a writer left unsealed by an exception publishes nothing

    # -- internals -----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise SegmentError("segment writer is closed")
        if self._broken is not None:
            # A failed write may have left a torn block: the file can only be aborted and
            # rebuilt from the log, never appended to again.
            raise SegmentError(f"segment writer failed earlier: {self._broken}")

    def _write(self, data: bytes) -> None:
        try:
            view = memoryview(data)
            while view:
                view = view[self._file.write(view):]
        except OSError as exc:
            self._broken = exc
            raise

    def _reset_pending(self) -> None:
        self._pending: list[tuple] = []  # (seq, witnessed, indexed, kind, did, collection, rkey, rev, payload)
        self._pending_payload_bytes = 0
        self._pending_dids: dict[str, int] = {}  # DID -> its bloom hash, computed once
        self._pending_collections: dict[str, int] = {}

    def _fold_pending_metadata(self, info: BlockInfo) -> None:
        if self._min_witnessed is None or info.min_witnessed_at < self._min_witnessed:
            self._min_witnessed = info.min_witnessed_at
        if self._max_witnessed is None or info.max_witnessed_at > self._max_witnessed:
            self._max_witnessed = info.max_witnessed_at
        self._segment_dids.update(self._pending_dids)
        self._block_dids_list.append(self._pending_dids)
        ids = self._collection_ids
        counts = self._collection_counts
        block_ids = []
        for name, n in self._pending_collections.items():
            cid = ids.get(name)
            if cid is None:
                cid = ids[name] = len(counts)
                counts.append(0)
            counts[cid] += n
            block_ids.append(cid)
        self._block_collection_ids.append(sorted(block_ids))

    def _build_footer(self) -> tuple[bytes, Header]:
        """Block index | segment DID bloom | per-block DID blooms | collection index (v2 seal.go)."""
        block_index = encode_block_index(self._blocks)
        segment_bloom_filter = bloom.build_from_hashes(self._segment_dids.values())
        segment_bloom = segment_bloom_filter.marshal()
        # Every per-block bloom is sized for the largest block's distinct DIDs (at least 1), so
        # they share one size and the reader finds block i's by multiplication.
        capacity = max([1] + [len(d) for d in self._block_dids_list])
        block_blooms = encode_bloom_region(
            [bloom.build_from_hashes(d.values(), capacity).marshal() for d in self._block_dids_list])
        names = list(self._collection_ids)
        collection_index = encode_collection_index(
            CollectionIndex(names, self._collection_counts, self._block_collection_ids), self._compressor)
        footer_offset = self._offset
        size = footer_offset + len(block_index) + len(segment_bloom) + len(block_blooms) + len(collection_index)
        if size % CLIENT_SLICE_BYTES == 0:
            segment_bloom = _one_block_larger(segment_bloom_filter, self._segment_dids.values()).marshal()
        did_bloom_offset = footer_offset + len(block_index)
        block_did_bloom_offset = did_bloom_offset + len(segment_bloom)
        collection_index_offset = block_did_bloom_offset + len(block_blooms)
        blocks = self._blocks
        header = Header(
            version=VERSION, block_count=len(blocks), event_count=self._event_count,
            unique_did_count=len(self._segment_dids),
            min_seq=blocks[0].min_seq if blocks else 0, max_seq=blocks[-1].max_seq if blocks else 0,
            min_witnessed_at=self._min_witnessed or 0, max_witnessed_at=self._max_witnessed or 0,
            footer_offset=footer_offset, did_bloom_offset=did_bloom_offset,
            block_did_bloom_offset=block_did_bloom_offset, collection_index_offset=collection_index_offset,
            block_index_offset=footer_offset, checksum=0)
        return block_index + segment_bloom + block_blooms + collection_index, header


def _one_block_larger(filter_: Bloom, hashes) -> Bloom:
    """The same keys in a filter of one more 64-byte block (same k): its marshalled form is 64 bytes longer."""
    larger = Bloom(filter_.num_blocks + 1, filter_.k)
    larger.add_hashes(hashes)
    return larger


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
