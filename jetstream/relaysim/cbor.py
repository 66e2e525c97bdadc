"""The few DAG-CBOR routines the fake relay needs, written out by hand.

Owns: a canonical DAG-CBOR encoder (with CID links as tag 42, which libipld cannot
produce from Python values because it decodes links to plain bytes), and a minimal
item skipper that measures one encoded item without decoding it.
It must never be used by the daemon's ingest path: it is a fixture-building tool, tuned
for being obviously correct rather than fast.
"""
from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

MAJOR_UINT, MAJOR_NEGINT, MAJOR_BYTES, MAJOR_TEXT = 0, 1, 2, 3
MAJOR_ARRAY, MAJOR_MAP, MAJOR_TAG, MAJOR_SIMPLE = 4, 5, 6, 7

TAG_CID = 42
CODEC_DAG_CBOR = 0x71
MULTIHASH_SHA2_256 = 0x12


@dataclass(frozen=True)
class Link:
    """A CID link: `cid` is the binary CID (no multibase prefix), as libipld returns it."""

    cid: bytes


def cid_for_block(block: bytes) -> bytes:
    """CIDv1, dag-cbor codec, sha2-256: the only CID shape repo blocks use."""
    return bytes((0x01, CODEC_DAG_CBOR, MULTIHASH_SHA2_256, 0x20)) + hashlib.sha256(block).digest()


def encode_head(major: int, value: int) -> bytes:
    """Shortest-form item head: DAG-CBOR forbids non-minimal lengths and integers."""
    if value < 24:
        return bytes(((major << 5) | value,))
    if value < 0x100:
        return bytes(((major << 5) | 24, value))
    if value < 0x10000:
        return bytes(((major << 5) | 25,)) + struct.pack(">H", value)
    if value < 0x100000000:
        return bytes(((major << 5) | 26,)) + struct.pack(">I", value)
    if value < 0x10000000000000000:
        return bytes(((major << 5) | 27,)) + struct.pack(">Q", value)
    raise ValueError(f"integer out of CBOR range: {value}")


def encode_uint(value: int) -> bytes:
    if value < 0:
        raise ValueError(f"not an unsigned integer: {value}")
    return encode_head(MAJOR_UINT, value)


def _map_key_order(key: str) -> tuple[int, bytes]:
    # DAG-CBOR canonical order: shorter encoded keys first, then bytewise.
    raw = key.encode("utf-8")
    return len(raw), raw


def encode(value: object) -> bytes:
    """Canonical DAG-CBOR of str/bytes/int/bool/None/list/dict[str, ...]/Link values."""
    out = bytearray()
    _encode_into(out, value)
    return bytes(out)


def _encode_into(out: bytearray, value: object) -> None:
    if value is None:
        out.append(0xF6)
    elif value is True:
        out.append(0xF5)
    elif value is False:
        out.append(0xF4)
    elif isinstance(value, int):
        out += encode_head(MAJOR_UINT, value) if value >= 0 else encode_head(MAJOR_NEGINT, -1 - value)
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        out += encode_head(MAJOR_TEXT, len(raw))
        out += raw
    elif isinstance(value, (bytes, bytearray)):
        out += encode_head(MAJOR_BYTES, len(value))
        out += value
    elif isinstance(value, Link):
        # Tag 42 wraps the CID bytes behind the 0x00 "identity multibase" prefix.
        out += encode_head(MAJOR_TAG, TAG_CID)
        out += encode_head(MAJOR_BYTES, len(value.cid) + 1)
        out.append(0x00)
        out += value.cid
    elif isinstance(value, (list, tuple)):
        out += encode_head(MAJOR_ARRAY, len(value))
        for item in value:
            _encode_into(out, item)
    elif isinstance(value, dict):
        out += encode_head(MAJOR_MAP, len(value))
        for key in sorted(value, key=_map_key_order):
            if not isinstance(key, str):
                raise TypeError(f"DAG-CBOR map keys must be strings, got {type(key).__name__}")
            _encode_into(out, key)
            _encode_into(out, value[key])
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as DAG-CBOR")


def read_head(data: bytes, pos: int) -> tuple[int, int, int]:
    """(major, argument, position after the head). Indefinite lengths are rejected."""
    if pos >= len(data):
        raise ValueError(f"truncated CBOR at byte {pos}")
    initial = data[pos]
    major, info = initial >> 5, initial & 0x1F
    pos += 1
    if info < 24:
        return major, info, pos
    width = {24: 1, 25: 2, 26: 4, 27: 8}.get(info)
    if width is None:
        raise ValueError(f"unsupported CBOR additional info {info} at byte {pos - 1}")
    if pos + width > len(data):
        raise ValueError(f"truncated CBOR head at byte {pos - 1}")
    return major, int.from_bytes(data[pos : pos + width], "big"), pos + width


def skip_item(data: bytes, pos: int) -> int:
    """Position just after the CBOR item starting at `pos` (nested items included)."""
    pending = 1
    while pending:
        major, argument, pos = read_head(data, pos)
        pending -= 1
        if major in (MAJOR_BYTES, MAJOR_TEXT):
            pos += argument
            if pos > len(data):
                raise ValueError("truncated CBOR string")
        elif major == MAJOR_ARRAY:
            pending += argument
        elif major == MAJOR_MAP:
            pending += 2 * argument
        elif major == MAJOR_TAG:
            pending += 1
        # Unsigned/negative ints and simple values/floats are complete after their head.
    return pos
