"""Rewriting the `seq` of a recorded relay frame without touching any other byte.

Owns: locating the body's top-level "seq" value inside a frame (header item + body
map) and splicing in a new canonical unsigned integer.
It must never decode and re-encode a frame: libipld turns tag-42 CID links into plain
bytes, so a round trip would silently corrupt every link in the commit.
"""
from __future__ import annotations

from dataclasses import dataclass

from jetstream.relaysim.cbor import MAJOR_MAP, MAJOR_TEXT, MAJOR_UINT, encode_uint, read_head, skip_item

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
