"""The layout of one stream message: a group-commit batch of sequenced events.

Owns: encoding a batch (the relay cursor after it, then each event's time_us, seq, kind,
did, collection, JSON and zstd bytes) and decoding it back into `Event`s, byte for byte.
Layout, big-endian: b"JSB3", i64 relay cursor (-1: the batch moved no cursor), u32
count, then per event a `>QQBHHIII` head (time_us, seq, kind, did, collection, JSON, zstd and
v2 record lengths) followed by those five byte strings. b"JSB2" (written before events had a v2
record) is the same without the v2 record (its events are stored with a record without frame);
b"JSB1" (before events had a seq) also lacks the seq; it decodes with seq 0, which the applier
numbers itself. The v2 frame and its zstd form are not sent: every node renders them from the
record, seq and time_us (the applier; deterministic, so every node sends the same bytes).
It must never assign time_us or seq, or re-render JSON: every node stores exactly these bytes.
"""
from __future__ import annotations

import struct
from typing import NamedTuple, Sequence

from jetstream.events import Event

MAGIC = b"JSB3"
MAGIC_NO_V2 = b"JSB2"
MAGIC_NO_SEQ = b"JSB1"
_HEAD = struct.Struct(">4sqI")
_EVENT_V2 = struct.Struct(">QQBHHIII")
_EVENT = struct.Struct(">QQBHHII")
_EVENT_NO_SEQ = struct.Struct(">QBHHII")
NO_CURSOR = -1


class WireError(ValueError):
    """A stream message that is not a batch of this layout."""


class Batch(NamedTuple):
    relay_cursor: int | None
    events: list[Event]


def encoded_size(events: Sequence[Event]) -> int:
    """Bytes `encode_batch` will produce for these events (to cap message size)."""
    return _HEAD.size + sum(_EVENT_V2.size + len(e.did) + len(e.collection) + len(e.json) + len(e.zstd)
                            + len(e.v2_record) for e in events)


def encode_batch(events: Sequence[Event], relay_cursor: int | None) -> bytes:
    parts = [_HEAD.pack(MAGIC, NO_CURSOR if relay_cursor is None else relay_cursor, len(events))]
    append, pack = parts.append, _EVENT_V2.pack
    for event in events:
        time_us, did, kind, collection, json, zstd, seq = event[:7]
        record = event.v2_record
        did_bytes, collection_bytes = did.encode(), collection.encode()
        append(pack(time_us, seq, kind, len(did_bytes), len(collection_bytes), len(json), len(zstd), len(record)))
        append(did_bytes)
        append(collection_bytes)
        append(json)
        append(zstd)
        append(record)
    return b"".join(parts)


def decode_batch(data: bytes) -> Batch:
    """The batch in `data`; WireError if it is not one (never an unrelated exception)."""
    try:
        magic, cursor, count = _HEAD.unpack_from(data, 0)
        if magic == MAGIC:
            layout = _EVENT_V2
        elif magic == MAGIC_NO_V2:
            layout = _EVENT
        elif magic == MAGIC_NO_SEQ:
            layout = _EVENT_NO_SEQ
        else:
            raise WireError(f"bad magic {magic!r}")
        offset = _HEAD.size
        events: list[Event] = []
        append, unpack_from, event_size, make_event = events.append, layout.unpack_from, layout.size, tuple.__new__
        with_seq = layout is not _EVENT_NO_SEQ
        with_v2 = layout is _EVENT_V2
        seq = record_len = 0
        record = b""
        for _ in range(count):
            if with_v2:
                time_us, seq, kind, did_len, collection_len, json_len, zstd_len, record_len = unpack_from(data, offset)
            elif with_seq:
                time_us, seq, kind, did_len, collection_len, json_len, zstd_len = unpack_from(data, offset)
            else:
                time_us, kind, did_len, collection_len, json_len, zstd_len = unpack_from(data, offset)
            offset += event_size
            did = data[offset:offset + did_len].decode()
            offset += did_len
            collection = data[offset:offset + collection_len].decode()
            offset += collection_len
            json = data[offset:offset + json_len]
            offset += json_len
            zstd = data[offset:offset + zstd_len]
            offset += zstd_len
            if with_v2:
                record = data[offset:offset + record_len]
                offset += record_len
            append(make_event(Event, (time_us, did, kind, collection, json, zstd, seq, b"", b"", record)))
        if offset != len(data):
            raise WireError(f"{len(data) - offset} trailing bytes")
    except (struct.error, UnicodeDecodeError) as exc:
        raise WireError(str(exc)) from exc
    return Batch(None if cursor == NO_CURSOR else cursor, events)
