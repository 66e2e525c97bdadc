"""The `.jss` version 1 sealed segment format, byte for byte as Jetstream v2 writes it.

Owns: the constants, the event kinds, the typed errors and the pure encoders/decoders of every
on-disk region: the 256-byte header, one block's columnar body and its zstd frame, the 52-byte
block index entries, the per-block bloom region header and the collection index. Also the
segment file name (`seg_<10 base36 digits>.jss`).
It must never open a file or keep state: writer.py and reader.py own the I/O.

Layout (all integers little-endian; v2 docs/README.md sections 3.1 and 3.2, segment/*.go):

    header (256 bytes): "jss0" | u64 checksum | u16 version | u32 block_count | u32 event_count
        | u32 unique_did_count | u64 min_seq | u64 max_seq | i64 min_witnessed_at
        | i64 max_witnessed_at | u64 footer_offset | u64 did_bloom_offset
        | u64 block_did_bloom_offset | u64 collection_index_offset | u64 block_index_offset
        | 158 zero bytes
    blocks, from offset 256: u64 frame_len | zstd frame (content checksum on) of the body
    footer, from footer_offset: block index (52 bytes a block) | segment DID bloom
        | per-block DID blooms (u32 count, u32 bloom_size, count * bloom_size bytes)
        | collection index (u32 collection_count, u32 block_count, u32 bitmask_len,
          u32 uncompressed_size, zstd(table of (u8 len, u32 count, nsid) + one bitmask a block))

    checksum = xxh3_64(header[12:256] + footer); 0 means "active, not sealed".

Block body: u32 n | n*u64 seq | n*i64 witnessed_at | n*i64 indexed_at | n*u8 kind
    | n*u8 collection_len | n*u16 did_len | n*u8 rkey_len | n*u8 rev_len | n*u32 payload_len
    | collections | dids | rkeys | revs | payloads   (plain concatenations, no varints)
"""
from __future__ import annotations

import struct
from typing import NamedTuple

import xxhash
import zstandard

MAGIC = b"jss0"
VERSION = 1
HEADER_SIZE = 256
FRAME_PREFIX_SIZE = 8
BLOCK_INDEX_ENTRY_SIZE = 52
BLOOM_REGION_HEADER_SIZE = 8
COLLECTION_INDEX_HEADER_SIZE = 16
DEFAULT_BLOCK_EVENTS = 4096

# Hostile-input ceilings (v2 segment/block.go, reader.go, zstd.go): a corrupt count or size must
# never drive an allocation beyond these.
MAX_BLOCK_EVENTS = 1 << 18
MAX_BLOCK_COUNT = 1 << 20
MAX_COLLECTION_COUNT = 1 << 20
MAX_DECODED_BYTES = 1 << 30

# Column widths (v2 segment/event.go): longer values do not fit their length column.
MAX_DID_BYTES = 0xFFFF
MAX_COLLECTION_BYTES = 0xFF
MAX_RKEY_BYTES = 0xFF
MAX_REV_BYTES = 0xFF
MAX_PAYLOAD_BYTES = 0xFFFFFFFF

# Event kinds (v2 segment/event.go Kind). Values are on disk.
KIND_CREATE = 1
KIND_UPDATE = 2
KIND_DELETE = 3
KIND_IDENTITY = 4
KIND_ACCOUNT = 5
KIND_SYNC = 6
KIND_CREATE_RESYNC = 7  # a Sync 1.1 resync replacement row (rendered as a create)
KIND_NAMES = {KIND_CREATE: "create", KIND_UPDATE: "update", KIND_DELETE: "delete", KIND_IDENTITY: "identity",
              KIND_ACCOUNT: "account", KIND_SYNC: "sync", KIND_CREATE_RESYNC: "create_resync"}
COMMIT_KINDS = frozenset((KIND_CREATE, KIND_UPDATE, KIND_DELETE, KIND_CREATE_RESYNC))

# DID-level markers carry no collection; the footer's collection index lists them under these
# reserved names (invalid NSIDs) so a collection-filtered plan still selects their blocks
# (v2 segment/sentinel.go). They are part of the on-disk format.
SENTINEL_BY_KIND = {KIND_ACCOUNT: "$account", KIND_IDENTITY: "$identity", KIND_SYNC: "$sync"}
SENTINEL_COLLECTIONS = frozenset(SENTINEL_BY_KIND.values())

SEGMENT_NAME_PREFIX = "seg_"
SEGMENT_NAME_SUFFIX = ".jss"
SEGMENT_NAME_DIGITS = 10
_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"

_HEADER = struct.Struct("<4sQHIIIQQqqQQQQQ")  # 98 bytes; the rest of the 256 is reserved zeros
_BLOCK_INDEX_ENTRY = struct.Struct("<QIIIQQqq")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_BLOOM_REGION_HEADER = struct.Struct("<II")
_COLLECTION_INDEX_HEADER = struct.Struct("<IIII")
_FIXED_PER_EVENT = 8 + 8 + 8 + 1 + 1 + 2 + 1 + 1 + 4
_U64_LIMIT = 1 << 64
_I64_MIN, _I64_LIMIT = -(1 << 63), 1 << 63


class SegmentError(Exception):
    """Anything wrong with a segment: the only exception the reader raises on bad bytes."""


class CorruptSegment(SegmentError):
    """Bytes that are not a segment: bad magic, short file, undecodable block."""


class ActiveSegment(SegmentError):
    """The checksum field is zero: the file was never sealed."""


class ChecksumMismatch(SegmentError):
    """The header's xxh3 disagrees with the header and footer bytes."""


class InvalidFooter(SegmentError):
    """The header's offsets or a footer region are inconsistent."""


class InvalidBlockIndex(SegmentError):
    """A block index entry points outside the block region or breaks seq order."""


class BlockOutOfRange(SegmentError):
    """A block number past block_count."""


class InvalidEvent(SegmentError):
    """An event the writer cannot store: unknown kind, a field too long, seq out of order."""


class SegmentEvent(NamedTuple):
    """One row of a segment block: exactly the columns v2 stores (no CID: it is the payload's hash)."""

    seq: int
    witnessed_at: int  # unix µs, when this node first saw the event
    indexed_at: int  # unix µs display time; 0 = fall back to witnessed_at
    kind: int
    did: str
    collection: str  # "" for identity/account/sync
    rkey: str
    rev: str
    payload: bytes  # record DAG-CBOR for create/update, b"" for delete, relay event body otherwise


class Header(NamedTuple):
    version: int
    block_count: int
    event_count: int
    unique_did_count: int
    min_seq: int
    max_seq: int
    min_witnessed_at: int
    max_witnessed_at: int
    footer_offset: int
    did_bloom_offset: int
    block_did_bloom_offset: int
    collection_index_offset: int
    block_index_offset: int
    checksum: int


class BlockInfo(NamedTuple):
    """One block index entry. `offset` is the file offset of the block's 8-byte length prefix."""

    offset: int
    compressed_size: int
    uncompressed_size: int
    event_count: int
    min_seq: int
    max_seq: int
    min_witnessed_at: int
    max_witnessed_at: int


class CollectionIndex(NamedTuple):
    names: list[str]  # collection id -> NSID (or sentinel), first-seen order
    counts: list[int]  # collection id -> events with that collection (sentinels count 0)
    block_ids: list[list[int]]  # block -> sorted collection ids present


# -- names -------------------------------------------------------------------------------------

def segment_name(index: int) -> str:
    """`seg_<index as 10 zero-padded base36 digits>.jss`; names sort in creation order."""
    if index < 0:
        raise ValueError("segment index must be >= 0")
    digits = ""
    while index:
        index, rem = divmod(index, 36)
        digits = _BASE36[rem] + digits
    return SEGMENT_NAME_PREFIX + digits.rjust(SEGMENT_NAME_DIGITS, "0") + SEGMENT_NAME_SUFFIX


def parse_segment_name(name: str) -> int | None:
    """The index a segment file name encodes, or None when it is not exactly that shape."""
    if not (name.startswith(SEGMENT_NAME_PREFIX) and name.endswith(SEGMENT_NAME_SUFFIX)):
        return None
    mid = name[len(SEGMENT_NAME_PREFIX):-len(SEGMENT_NAME_SUFFIX)]
    if len(mid) != SEGMENT_NAME_DIGITS or any(c not in _BASE36 for c in mid):
        return None
    index = int(mid, 36)
    return index if segment_name(index) == name else None


# -- header ------------------------------------------------------------------------------------

def active_header() -> bytes:
    """What an unsealed file starts with: the magic and 252 zero bytes (v2's active state)."""
    return MAGIC + bytes(HEADER_SIZE - len(MAGIC))


def encode_header(h: Header) -> bytes:
    fixed = _HEADER.pack(MAGIC, h.checksum, h.version, h.block_count, h.event_count, h.unique_did_count,
                         h.min_seq, h.max_seq, h.min_witnessed_at, h.max_witnessed_at, h.footer_offset,
                         h.did_bloom_offset, h.block_did_bloom_offset, h.collection_index_offset,
                         h.block_index_offset)
    return fixed + bytes(HEADER_SIZE - len(fixed))


def decode_header(buf: bytes) -> Header:
    if len(buf) < HEADER_SIZE:
        raise CorruptSegment(f"file is {len(buf)} bytes, shorter than the {HEADER_SIZE}-byte header")
    fields = _HEADER.unpack_from(buf)
    if fields[0] != MAGIC:
        raise CorruptSegment(f"bad magic {fields[0]!r}")
    if fields[1] == 0:
        raise ActiveSegment("checksum field is zero: the segment is active (unsealed)")
    if fields[2] != VERSION:
        raise InvalidFooter(f"header version {fields[2]}, want {VERSION}")
    return Header(fields[2], *fields[3:], checksum=fields[1])


def header_checksum(header_bytes: bytes, footer_bytes: bytes) -> int:
    """xxh3-64 over header[12:] (the checksum field zeroed is not covered) and the whole footer."""
    h = xxhash.xxh3_64()
    h.update(header_bytes[12:HEADER_SIZE])
    h.update(footer_bytes)
    return h.intdigest()


# -- blocks ------------------------------------------------------------------------------------

def validate_event(ev) -> tuple[bytes, bytes, bytes, bytes]:
    """The encoded (did, collection, rkey, rev) of an event that fits the columns, else InvalidEvent."""
    seq, witnessed_at, indexed_at, kind, did, collection, rkey, rev, payload = ev
    if kind not in KIND_NAMES:
        raise InvalidEvent(f"kind {kind} is not one of {sorted(KIND_NAMES)}")
    did, collection, rkey, rev = did.encode(), collection.encode(), rkey.encode(), rev.encode()
    if len(did) > MAX_DID_BYTES:
        raise InvalidEvent(f"did is {len(did)} bytes (max {MAX_DID_BYTES})")
    if len(collection) > MAX_COLLECTION_BYTES:
        raise InvalidEvent(f"collection is {len(collection)} bytes (max {MAX_COLLECTION_BYTES})")
    if len(rkey) > MAX_RKEY_BYTES:
        raise InvalidEvent(f"rkey is {len(rkey)} bytes (max {MAX_RKEY_BYTES})")
    if len(rev) > MAX_REV_BYTES:
        raise InvalidEvent(f"rev is {len(rev)} bytes (max {MAX_REV_BYTES})")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise InvalidEvent(f"payload is {len(payload)} bytes (max {MAX_PAYLOAD_BYTES})")
    if not 0 <= seq < _U64_LIMIT:
        raise InvalidEvent(f"seq {seq} is not an unsigned 64-bit integer")
    if not (_I64_MIN <= witnessed_at < _I64_LIMIT and _I64_MIN <= indexed_at < _I64_LIMIT):
        raise InvalidEvent(f"witnessed_at {witnessed_at} or indexed_at {indexed_at} is not a signed 64-bit integer")
    return did, collection, rkey, rev


def encode_block(events: list[SegmentEvent]) -> bytes:
    """The uncompressed columnar body of events (validated by the caller)."""
    encoded = [validate_event(ev) for ev in events]
    return encode_block_columns(
        [ev.seq for ev in events], [ev.witnessed_at for ev in events], [ev.indexed_at for ev in events],
        [ev.kind for ev in events], [e[0] for e in encoded], [e[1] for e in encoded],
        [e[2] for e in encoded], [e[3] for e in encoded], [bytes(ev.payload) for ev in events])


def encode_block_columns(seqs, witnessed, indexed, kinds, dids, collections, rkeys, revs, payloads) -> bytes:
    """The body from parallel columns of ints and already-encoded byte strings."""
    n = len(seqs)
    return b"".join((
        _U32.pack(n),
        struct.pack(f"<{n}Q", *seqs),
        struct.pack(f"<{n}q", *witnessed),
        struct.pack(f"<{n}q", *indexed),
        bytes(kinds),
        bytes(map(len, collections)),
        struct.pack(f"<{n}H", *map(len, dids)),
        bytes(map(len, rkeys)),
        bytes(map(len, revs)),
        struct.pack(f"<{n}I", *map(len, payloads)),
        b"".join(collections), b"".join(dids), b"".join(rkeys), b"".join(revs), b"".join(payloads),
    ))


def _split(blob: bytes, lengths, what: str) -> list[str]:
    """Slice a concatenated string column; ASCII (every atproto identifier) decodes once."""
    try:
        text = blob.decode()
    except UnicodeDecodeError as exc:
        raise CorruptSegment(f"block {what} column is not UTF-8") from exc
    out = []
    append = out.append
    pos = 0
    if len(text) == len(blob):
        for n in lengths:
            append(text[pos:pos + n])
            pos += n
        return out
    for n in lengths:
        try:
            append(blob[pos:pos + n].decode())
        except UnicodeDecodeError as exc:
            raise CorruptSegment(f"block {what} value is not UTF-8") from exc
        pos += n
    return out


def decode_block(body: bytes) -> list[SegmentEvent]:
    """The events of an uncompressed block body; CorruptSegment on anything malformed.

    Decoded by the chosen core (jetstream.implementation's decode_block: the Cython column
    decoder, or `decode_block_py`, its reference); both give the same rows and errors.
    """
    return _chosen_decoder()(body)


_decoder = None


def _chosen_decoder():
    # Looked up at the first call, not imported: jetstream.implementation loads the cores,
    # whose segment module imports this one.
    global _decoder
    if _decoder is None:
        from jetstream.implementation import decode_block as chosen

        _decoder = chosen
    return _decoder


def decode_block_py(body: bytes) -> list[SegmentEvent]:
    """The reference block decoder (jetstream._py.segment's decode_block): the rows, or CorruptSegment."""
    size = len(body)
    if size < 4:
        raise CorruptSegment("block body shorter than its event count")
    n = _U32.unpack_from(body)[0]
    if n > MAX_BLOCK_EVENTS or size - 4 < n * _FIXED_PER_EVENT:
        raise CorruptSegment(f"block claims {n} events in {size} bytes")
    off = 4
    seqs = struct.unpack_from(f"<{n}Q", body, off)
    off += 8 * n
    witnessed = struct.unpack_from(f"<{n}q", body, off)
    off += 8 * n
    indexed = struct.unpack_from(f"<{n}q", body, off)
    off += 8 * n
    kinds = body[off:off + n]
    off += n
    collection_lens = body[off:off + n]
    off += n
    did_lens = struct.unpack_from(f"<{n}H", body, off)
    off += 2 * n
    rkey_lens = body[off:off + n]
    off += n
    rev_lens = body[off:off + n]
    off += n
    payload_lens = struct.unpack_from(f"<{n}I", body, off)
    off += 4 * n
    for kind in set(kinds):
        if kind not in KIND_NAMES:
            raise CorruptSegment(f"block has unknown kind {kind}")
    totals = (sum(collection_lens), sum(did_lens), sum(rkey_lens), sum(rev_lens), sum(payload_lens))
    if off + sum(totals) != size:
        raise CorruptSegment(f"block columns need {off + sum(totals)} bytes, body is {size}")
    blobs = []
    for total in totals:
        blobs.append(body[off:off + total])
        off += total
    collections = _split(blobs[0], collection_lens, "collection")
    dids = _split(blobs[1], did_lens, "did")
    rkeys = _split(blobs[2], rkey_lens, "rkey")
    revs = _split(blobs[3], rev_lens, "rev")
    payload_blob = blobs[4]
    payloads = []
    pos = 0
    for length in payload_lens:
        payloads.append(payload_blob[pos:pos + length])
        pos += length
    make = SegmentEvent._make
    return [make(row) for row in zip(seqs, witnessed, indexed, kinds, dids, collections, rkeys, revs, payloads)]


def new_compressor(level: int = 3) -> zstandard.ZstdCompressor:
    """One zstd frame per block with its content checksum (v2: klauspost SpeedDefault, CRC on)."""
    return zstandard.ZstdCompressor(level=level, write_checksum=True, write_content_size=True)


def decompress_frame(frame: bytes, limit: int = MAX_DECODED_BYTES) -> bytes:
    """One zstd frame's content, at most `limit` bytes, its checksum checked; CorruptSegment otherwise."""
    try:
        params = zstandard.get_frame_parameters(frame)
    except zstandard.ZstdError as exc:
        raise CorruptSegment(f"not a zstd frame: {exc}") from exc
    if not params.has_checksum:
        raise CorruptSegment("zstd frame has no content checksum")
    if params.content_size != zstandard.CONTENTSIZE_UNKNOWN and params.content_size > limit:
        raise CorruptSegment(f"zstd frame claims {params.content_size} bytes (limit {limit})")
    try:
        return zstandard.ZstdDecompressor().decompress(frame, max_output_size=limit)
    except zstandard.ZstdError as exc:
        raise CorruptSegment(f"zstd frame does not decompress: {exc}") from exc


# -- footer ------------------------------------------------------------------------------------

def encode_block_index(infos: list[BlockInfo]) -> bytes:
    return b"".join(_BLOCK_INDEX_ENTRY.pack(*info) for info in infos)


def decode_block_index(buf: bytes, count: int) -> list[BlockInfo]:
    if len(buf) != count * BLOCK_INDEX_ENTRY_SIZE:
        raise InvalidBlockIndex(f"block index is {len(buf)} bytes, want {count * BLOCK_INDEX_ENTRY_SIZE}")
    return [BlockInfo._make(e) for e in _BLOCK_INDEX_ENTRY.iter_unpack(buf)]


def encode_bloom_region(blooms: list[bytes]) -> bytes:
    """The per-block bloom region: every marshalled bloom the same size, indexed by multiplication."""
    if not blooms:
        return bytes(BLOOM_REGION_HEADER_SIZE)
    size = len(blooms[0])
    if any(len(b) != size for b in blooms):
        raise SegmentError("per-block blooms differ in size")
    return _BLOOM_REGION_HEADER.pack(len(blooms), size) + b"".join(blooms)


def decode_bloom_region_header(buf: bytes) -> tuple[int, int]:
    if len(buf) < BLOOM_REGION_HEADER_SIZE:
        raise InvalidFooter("per-block bloom region header is truncated")
    return _BLOOM_REGION_HEADER.unpack_from(buf)


def encode_collection_index(index: CollectionIndex, compressor: zstandard.ZstdCompressor) -> bytes:
    count = len(index.names)
    bitmask_len = (count + 7) // 8
    parts = []
    for name, n in zip(index.names, index.counts):
        raw = name.encode()
        if len(raw) > MAX_COLLECTION_BYTES:
            raise InvalidEvent(f"collection {name!r} is longer than {MAX_COLLECTION_BYTES} bytes")
        parts.append(bytes((len(raw),)) + _U32.pack(n) + raw)
    for ids in index.block_ids:
        mask = bytearray(bitmask_len)
        for i in ids:
            mask[i >> 3] |= 1 << (i & 7)
        parts.append(bytes(mask))
    body = b"".join(parts)
    header = _COLLECTION_INDEX_HEADER.pack(count, len(index.block_ids), bitmask_len, len(body))
    return header + compressor.compress(body)


def decode_collection_index(buf: bytes) -> CollectionIndex:
    if len(buf) < COLLECTION_INDEX_HEADER_SIZE:
        raise InvalidFooter("collection index header is truncated")
    count, block_count, bitmask_len, uncompressed = _COLLECTION_INDEX_HEADER.unpack_from(buf)
    if count > MAX_COLLECTION_COUNT or block_count > MAX_BLOCK_COUNT or uncompressed > MAX_DECODED_BYTES:
        raise InvalidFooter(f"collection index claims {count} collections, {block_count} blocks, {uncompressed} bytes")
    if bitmask_len != (count + 7) // 8:
        raise InvalidFooter(f"bitmask_len {bitmask_len}, want {(count + 7) // 8} for {count} collections")
    try:
        body = decompress_frame(buf[COLLECTION_INDEX_HEADER_SIZE:], limit=uncompressed)
    except CorruptSegment as exc:
        raise InvalidFooter(f"collection index body: {exc}") from exc
    if len(body) != uncompressed:
        raise InvalidFooter(f"collection index body is {len(body)} bytes, header says {uncompressed}")
    names, counts = [], []
    off = 0
    for i in range(count):
        if off + 5 > len(body):
            raise InvalidFooter(f"collection table truncated at entry {i}")
        length = body[off]
        counts.append(_U32.unpack_from(body, off + 1)[0])
        off += 5
        if off + length > len(body):
            raise InvalidFooter(f"collection name truncated at entry {i}")
        try:
            names.append(body[off:off + length].decode())
        except UnicodeDecodeError as exc:
            raise InvalidFooter(f"collection name {i} is not UTF-8") from exc
        off += length
    if off + block_count * bitmask_len != len(body):
        raise InvalidFooter("collection bitmasks do not fill the collection index body")
    block_ids = []
    for _ in range(block_count):
        mask = int.from_bytes(body[off:off + bitmask_len], "little")
        off += bitmask_len
        if mask >> count:
            raise InvalidFooter("a block bitmask names a collection id past the table")
        ids = []
        while mask:
            low = mask & -mask
            ids.append(low.bit_length() - 1)
            mask ^= low
        block_ids.append(ids)
    return CollectionIndex(names, counts, block_ids)


def encode_u64(value: int) -> bytes:
    return _U64.pack(value)


def decode_u64(buf: bytes, offset: int = 0) -> int:
    return _U64.unpack_from(buf, offset)[0]
