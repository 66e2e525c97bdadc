"""The layout of one stream message: a group-commit batch of sequenced events.

Owns: encoding a batch (the relay cursor after it, then each event's time_us, seq, kind,
did, collection, JSON and zstd bytes) and decoding it back into `Event`s, byte for byte.
Layout, big-endian: b"JSB2", i64 relay cursor (-1: the batch moved no cursor), u32
count, then per event a `>QQBHHII` head (time_us, seq, kind, did, collection, JSON and zstd
lengths) followed by those four byte strings. b"JSB1" (written before events had a seq)
is the same without the seq; it decodes with seq 0, which the applier numbers itself.
It must never assign time_us or seq, or re-render JSON: every node stores exactly these bytes.
"""
from __future__ import annotations

import struct
from typing import NamedTuple, Sequence

from jetstream.events import Event

MAGIC = b"JSB2"
MAGIC_NO_SEQ = b"JSB1"
_HEAD = struct.Struct(">4sqI")
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
    return _HEAD.size + sum(_EVENT.size + len(e.did) + len(e.collection) + len(e.json) + len(e.zstd)
                            for e in events)


def encode_batch(events: Sequence[Event], relay_cursor: int | None) -> bytes:
    parts = [_HEAD.pack(MAGIC, NO_CURSOR if relay_cursor is None else relay_cursor, len(events))]
    append, pack = parts.append, _EVENT.pack
    for time_us, did, kind, collection, json, zstd, seq in events:
        did_bytes, collection_bytes = did.encode(), collection.encode()
        append(pack(time_us, seq, kind, len(did_bytes), len(collection_bytes), len(json), len(zstd)))
        append(did_bytes)
        append(collection_bytes)
        append(json)
        append(zstd)
    return b"".join(parts)


def decode_batch(data: bytes) -> Batch:
    """The batch in `data`; WireError if it is not one (never an unrelated exception)."""
    try:
        magic, cursor, count = _HEAD.unpack_from(data, 0)
        if magic == MAGIC:
            layout = _EVENT
        elif magic == MAGIC_NO_SEQ:
            layout = _EVENT_NO_SEQ
        else:
            raise WireError(f"bad magic {magic!r}")
        offset = _HEAD.size
        events: list[Event] = []
        append, unpack_from, event_size, make_event = events.append, layout.unpack_from, layout.size, tuple.__new__
        with_seq = layout is _EVENT
        seq = 0
        for _ in range(count):
            if with_seq:
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
            append(make_event(Event, (time_us, did, kind, collection, json, zstd, seq)))
        if offset != len(data):
            raise WireError(f"{len(data) - offset} trailing bytes")
    except (struct.error, UnicodeDecodeError) as exc:
        raise WireError(str(exc)) from exc
    return Batch(None if cursor == NO_CURSOR else cursor, events)
