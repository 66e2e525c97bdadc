"""The byte layout of one event in the log: its key and its value.

Owns: key encoding (time_us as 8-byte big-endian unsigned, so numeric order is
byte order: v1's decimal keys sorted lexicographically, docs/architecture.md §5.2) and
value encoding (a small header carrying kind, did and collection before the
payload, so replay can filter without parsing JSON).
It must never touch RocksDB or interpret the payload.

Value layout (all integers big-endian; log format 2):

    u8 (SEQ_FLAG | kind) | u64 seq | u16 len(did) | u16 len(collection) | did | collection | payload

seq is the event's number (the v2 wire's cursor): 1, 2, 3, ... in time_us order. Format 1
rows (written before seq existed) lack the flag and the seq:

    u8 kind | u16 len(did) | u16 len(collection) | did | collection | payload

so a row says which layout it has (kinds are < 0x80): `decode_row` reads both (jetstream
inspect, repair, and the in-place upgrade of a format 1 log); the replay hot path
(`decode_rows`) reads format 2 only and refuses the other.

Column family `events_v2` holds one row per event under the same key, with the same header and
the event's v2 record as payload (jetstream/wire_v2.py: its v2 frame around seq and time,
and the raw archive payload), written in the same batch since log format 2's v2 rows began.

Index key layout (column family `events_index`, empty values), one key per event and
index, so a narrow filtered replay reads only the rows of the names it wants:

    u8 tag ('c' collection, 'd' did) | u64 bucket | u64 xxh64(name) | u64 time_us

bucket = time_us >> INDEX_BUCKET_SHIFT (~4.5 minutes): it comes before the name so the TTL
trim can drop every index key below a bucket with one range delete per tag, without
visiting each name. Within one (tag, bucket, name) prefix keys are in time order.
Identity and account events are indexed under collection "" (they pass every
collection filter). A hash names a set that may hold a colliding name: readers still
apply the subscriber's filter to the rows the index points at.
"""
from __future__ import annotations

import struct
from typing import Iterable, NamedTuple

import xxhash

from jetstream.wire_v2 import NO_FRAME_RECORD

KEY_SIZE = 8
MAX_TIME_US = (1 << 64) - 1

_KEY = struct.Struct(">Q")
_HEADER = struct.Struct(">BQHH")
HEADER_FIXED_SIZE = _HEADER.size
SEQ_FLAG = 0x80  # set in a format 2 row's first byte: a seq follows
_HEADER_V1 = struct.Struct(">BHH")  # format 1 (no seq)


INDEX_TAG_COLLECTION = ord("c")
INDEX_TAG_DID = ord("d")
INDEX_BUCKET_SHIFT = 28  # 2**28 µs = 4.47 minutes per bucket
INDEX_PREFIX_SIZE = 17  # tag, bucket, name hash
INDEX_KEY_SIZE = INDEX_PREFIX_SIZE + KEY_SIZE
_INDEX_KEY = struct.Struct(">BQQQ")
_INDEX_PREFIX = struct.Struct(">BQQ")
_name_hash = xxhash.xxh64_intdigest


class RowError(ValueError):
    """A key or value that is not in this module's layout."""


class LogRow(NamedTuple):
    """One stored event as read back: payload is JSON or zstd bytes, as asked; seq 0: a format 1 row."""

    time_us: int
    did: str
    kind: int
    collection: str
    payload: bytes
    seq: int = 0


def encode_key(time_us: int) -> bytes:
    return _KEY.pack(time_us)


def decode_key(key: bytes) -> int:
    if len(key) != KEY_SIZE:
        raise RowError(f"event key must be {KEY_SIZE} bytes, got {len(key)}")
    return _KEY.unpack(key)[0]


def encode_header(kind: int, did: str, collection: str, seq: int) -> bytes:
    """The value prefix; built once per event and shared by its JSON and zstd rows."""
    did_bytes = did.encode()
    collection_bytes = collection.encode()
    return _HEADER.pack(SEQ_FLAG | kind, seq, len(did_bytes), len(collection_bytes)) + did_bytes + collection_bytes


def encode_value(kind: int, did: str, collection: str, payload: bytes, seq: int) -> bytes:
    return encode_header(kind, did, collection, seq) + payload


def encode_value_v1(kind: int, did: str, collection: str, payload: bytes) -> bytes:
    """A format 1 row (no seq): only to build old logs in tests and to check the upgrade."""
    did_bytes, collection_bytes = did.encode(), collection.encode()
    return _HEADER_V1.pack(kind, len(did_bytes), len(collection_bytes)) + did_bytes + collection_bytes + payload


def has_seq(value: bytes) -> bool:
    """Whether a stored value is a format 2 row (carries its seq)."""
    return bool(value) and value[0] & SEQ_FLAG != 0


def decode_header(value: bytes) -> tuple[int, str, str, int, int]:
    """(kind, did, collection, payload_offset, seq) without copying the payload; either format (seq 0: format 1)."""
    if has_seq(value):
        layout, fixed_size = _HEADER, HEADER_FIXED_SIZE
    else:
        layout, fixed_size = _HEADER_V1, _HEADER_V1.size
    if len(value) < fixed_size:
        raise RowError(f"event value shorter than its {fixed_size}-byte header")
    if layout is _HEADER:
        flagged, seq, did_len, collection_len = layout.unpack_from(value)
        kind = flagged & ~SEQ_FLAG
    else:
        kind, did_len, collection_len = layout.unpack_from(value)
        seq = 0
    did_end = fixed_size + did_len
    payload_offset = did_end + collection_len
    if payload_offset > len(value):
        raise RowError("event value truncated inside its did/collection header")
    try:
        did = value[fixed_size:did_end].decode()
        collection = value[did_end:payload_offset].decode()
    except UnicodeDecodeError as exc:
        raise RowError(f"event value header is not UTF-8: {exc}") from exc
    return kind, did, collection, payload_offset, seq


def decode_row(key: bytes, value: bytes) -> LogRow:
    kind, did, collection, payload_offset, seq = decode_header(value)
    return LogRow(decode_key(key), did, kind, collection, value[payload_offset:], seq)


def decode_seq(value: bytes) -> int:
    """The seq of a format 2 row, read from its header alone (0 for a format 1 row)."""
    if not has_seq(value) or len(value) < HEADER_FIXED_SIZE:
        return 0
    return _SEQ_AT_1.unpack_from(value, 1)[0]


_SEQ_AT_1 = struct.Struct(">Q")


def upgrade_value(value: bytes, seq: int) -> bytes:
    """A format 1 row's value as the format 2 row with `seq` (the did, collection and payload bytes kept)."""
    if has_seq(value):
        raise RowError("row already carries a seq")
    if len(value) < _HEADER_V1.size:
        raise RowError(f"event value shorter than its {_HEADER_V1.size}-byte header")
    return b"%c%s%s" % (SEQ_FLAG | value[0], _SEQ_AT_1.pack(seq), value[1:])


def decode_rows(pairs: Iterable[tuple[bytes, bytes]], limit: int) -> list[LogRow]:
    """Up to `limit` format 2 rows from (key, value) pairs, consuming no pair beyond the last row.

    The replay hot path: the same layout as `decode_row`, inlined, because per-row
    function calls and NamedTuple.__new__ were most of the cost (1.9 -> 1.2 µs/row measured).
    A format 1 row (no seq) is a RowError: the log is upgraded at open, so one here is damage.
    """
    rows: list[LogRow] = []
    if limit <= 0:
        return rows
    append, make_row = rows.append, tuple.__new__
    unpack_key, unpack_header, header_size = _KEY.unpack, _HEADER.unpack_from, HEADER_FIXED_SIZE
    try:
        for key, value in pairs:
            flagged, seq, did_len, collection_len = unpack_header(value)
            did_end = header_size + did_len
            payload_offset = did_end + collection_len
            if len(key) != KEY_SIZE or payload_offset > len(value) or flagged < SEQ_FLAG:
                raise RowError(f"malformed event row at key {key.hex()}")
            append(make_row(LogRow, (unpack_key(key)[0], value[header_size:did_end].decode(), flagged - SEQ_FLAG,
                                     value[did_end:payload_offset].decode(), value[payload_offset:], seq)))
            if len(rows) >= limit:
                break
    except (struct.error, UnicodeDecodeError) as exc:
        raise RowError(f"malformed event row: {exc}") from exc
    return rows


# -- the secondary index ------------------------------------------------------------------------

def index_bucket(time_us: int) -> int:
    return time_us >> INDEX_BUCKET_SHIFT


def name_hash(name: str) -> int:
    """The 64-bit hash a collection or did is indexed under (xxh64 of its UTF-8)."""
    return _name_hash(name.encode())


def encode_index_key(tag: int, hashed_name: int, time_us: int) -> bytes:
    return _INDEX_KEY.pack(tag, time_us >> INDEX_BUCKET_SHIFT, hashed_name, time_us)


def encode_index_prefix(tag: int, bucket: int, hashed_name: int) -> bytes:
    return _INDEX_PREFIX.pack(tag, bucket, hashed_name)


def decode_index_time_us(key: bytes) -> int:
    """The time_us an index key points at (its last 8 bytes)."""
    if len(key) != INDEX_KEY_SIZE:
        raise RowError(f"index key must be {INDEX_KEY_SIZE} bytes, got {len(key)}")
    return _KEY.unpack_from(key, INDEX_PREFIX_SIZE)[0]


def encode_bucket_start(tag: int, bucket: int) -> bytes:
    """The smallest index key of `tag` in `bucket` (a range-delete bound)."""
    return _INDEX_PREFIX.pack(tag, bucket, 0)


def encode_event_rows(events) -> list[tuple[bytes, bytes, bytes, bytes, bytes, bytes]]:
    """Per event: (key, JSON row value, zstd row value, collection index key, did index key, v2 row value).

    The v2 row (column family events_v2) has the same header; its payload is the event's v2 record
    (jetstream/wire_v2.py), NO_FRAME_RECORD when the event carries none.

    The append hot path: the layouts of encode_key, encode_header and encode_index_key,
    inlined (per-event function calls were most of the index's cost), with the few
    collection names' hashes memoised.
    """
    out = []
    append = out.append
    pack_key, pack_header, pack_index = _KEY.pack, _HEADER.pack, _INDEX_KEY.pack
    collection_hashes = _collection_hashes
    if len(collection_hashes) > 100_000:  # collections are few; bound it against a hostile relay
        collection_hashes.clear()
    tag_collection, tag_did, shift, flag = INDEX_TAG_COLLECTION, INDEX_TAG_DID, INDEX_BUCKET_SHIFT, SEQ_FLAG
    no_record = NO_FRAME_RECORD
    for event in events:
        time_us = event.time_us
        did_bytes = event.did.encode()
        collection = event.collection
        collection_bytes = collection.encode()
        collection_hash = collection_hashes.get(collection)
        if collection_hash is None:
            collection_hash = collection_hashes[collection] = _name_hash(collection_bytes)
        header = (pack_header(flag | event.kind, event.seq, len(did_bytes), len(collection_bytes))
                  + did_bytes + collection_bytes)
        bucket = time_us >> shift
        append((pack_key(time_us), header + event.json, header + event.zstd,
                pack_index(tag_collection, bucket, collection_hash, time_us),
                pack_index(tag_did, bucket, _name_hash(did_bytes), time_us),
                header + (event.v2_record or no_record)))
    return out


_collection_hashes: dict[str, int] = {}
