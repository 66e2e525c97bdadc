"""Recorded relay frame files: zstd of ``[u32 little-endian length][frame bytes]...``.

Owns: reading and writing that container (the corpus format). Nothing else.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Iterable

import zstandard

_LENGTH = struct.Struct("<I")


def read_frames(path: str | Path) -> list[bytes]:
    """All frames of a recorded file, in order. Raises ValueError on a truncated file."""
    with open(path, "rb") as handle:
        raw = zstandard.ZstdDecompressor().stream_reader(handle).read()
    frames: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise ValueError(f"truncated length prefix at byte {offset} of {path}")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise ValueError(f"truncated frame at byte {offset} of {path}")
        frames.append(raw[offset : offset + length])
        offset += length
    return frames


def write_frames(path: str | Path, frames: Iterable[bytes]) -> None:
    body = b"".join(_LENGTH.pack(len(frame)) + frame for frame in frames)
    Path(path).write_bytes(zstandard.ZstdCompressor(level=10).compress(body))
