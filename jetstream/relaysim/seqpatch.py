"""Rewriting the `seq` of a recorded relay frame without touching any other byte.

Owns: locating the body's top-level "seq" value inside a frame (header item + body
map) and splicing in a new canonical unsigned integer.
It must never decode and re-encode a frame: libipld turns tag-42 CID links into plain
bytes, so a round trip would silently corrupt every link in the commit.
"""
from __future__ import annotations

from dataclasses import dataclass

from jetstream.relaysim.cbor import MAJOR_MAP, MAJOR_TEXT, MAJOR_UINT, encode_head, encode_uint, read_head, skip_item

_SEQ_KEY = b"seq"


@dataclass(frozen=True)
class SeqSlot:
    """A frame cut around its seq value: prefix + encode_uint(seq) + suffix == frame."""

    prefix: bytes
    seq: int
    suffix: bytes

    def with_seq(self, seq: int) -> bytes:
        return b"".join((self.prefix, encode_uint(seq), self.suffix))


def find_seq_slot(frame: bytes) -> SeqSlot:
    """Cut `frame` around the body's top-level "seq". ValueError if it has none."""
    body_start = skip_item(frame, 0)
    major, pairs, pos = read_head(frame, body_start)
    if major != MAJOR_MAP:
        raise ValueError(f"frame body is CBOR major type {major}, not a map")
    for _ in range(pairs):
        key_start = pos
        pos = skip_item(frame, pos)
        value_start = pos
        pos = skip_item(frame, pos)
        if _is_seq_key(frame, key_start, value_start):
            value_major, seq, _ = read_head(frame, value_start)
            if value_major != MAJOR_UINT:
                raise ValueError(f"frame seq is CBOR major type {value_major}, not an unsigned integer")
            return SeqSlot(frame[:value_start], seq, frame[pos:])
    raise ValueError("frame body has no seq")


def _is_seq_key(frame: bytes, key_start: int, key_end: int) -> bool:
    major, length, text_start = read_head(frame, key_start)
    return major == MAJOR_TEXT and length == len(_SEQ_KEY) and frame[text_start:key_end] == _SEQ_KEY


def patch_seq(frame: bytes, seq: int) -> bytes:
    """`frame` with its body's seq replaced by `seq`; every other byte unchanged."""
    return find_seq_slot(frame).with_seq(seq)


_TIME_KEY = b"time"


def patch_time(frame: bytes, time_text: str) -> bytes:
    """`frame` with its body's top-level "time" text replaced (same splice as patch_seq);
    unchanged when the body has no text "time" (error frames, #info)."""
    try:
        body_start = skip_item(frame, 0)
        major, pairs, pos = read_head(frame, body_start)
    except (ValueError, IndexError):
        return frame
    if major != MAJOR_MAP:
        return frame
    for _ in range(pairs):
        key_start = pos
        pos = skip_item(frame, pos)
        value_start = pos
        pos = skip_item(frame, pos)
        key_major, key_length, key_text = read_head(frame, key_start)
        if key_major == MAJOR_TEXT and frame[key_text:value_start] == _TIME_KEY:
            if read_head(frame, value_start)[0] != MAJOR_TEXT:
                return frame
            encoded = time_text.encode()
            return b"".join((frame[:value_start], encode_head(MAJOR_TEXT, len(encoded)), encoded, frame[pos:]))
    return frame


def patch_seq_and_time(frame: bytes, old_seq: int, new_seq: int, time_text: str) -> bytes:
    """patch_time(patch_seq(frame, new_seq), time_text), found by byte search instead of a CBOR walk.

    Canonical DAG-CBOR orders map keys by length, then bytes: the body's "seq" (3 letters)
    comes before its "time" (4), and both before "blocks", whose bytes hold the records. So
    the first `"seq": old_seq` is the body's, and the first "time" after it is the body's too.
    Anything unexpected falls back to the walking versions.
    """
    needle = b"\x63seq" + encode_uint(old_seq)
    seq_at = frame.find(needle)
    if seq_at < 0:
        return patch_time(patch_seq(frame, new_seq), time_text)
    seq_end = seq_at + len(needle)
    time_key_at = frame.find(_TIME_KEY_HEAD, seq_end)
    head = frame[:seq_at + 4] + encode_uint(new_seq)
    if time_key_at < 0:
        return head + frame[seq_end:]
    value_at = time_key_at + len(_TIME_KEY_HEAD)
    major, length, text_at = read_head(frame, value_at)
    if major != MAJOR_TEXT:
        return head + frame[seq_end:]
    encoded = time_text.encode()
    return b"".join((head, frame[seq_end:value_at], encode_head(MAJOR_TEXT, len(encoded)), encoded,
                     frame[text_at + length:]))


_TIME_KEY_HEAD = b"\x64time"
