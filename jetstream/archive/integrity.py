"""The check that every byte served from a segment is a byte that was sealed, done once per object version.

Owns: `ServedBytes`, which remembers, per segment version (name and the store's version token:
size:mtime_ns of a file, the ETag of an object), which regions of it have been checked, and checks
the ones a download is about to send: the header (equal to the header verified at listing), each
block (its u64 length prefix equal to the block index, its zstd frame decompressing to the indexed
size with its content checksum holding; the blocks must tile [256, footer_offset)), and the footer
(the header's xxh3 over header[12:] and the footer). The header checksum does not cover the
blocks, so listing alone cannot see a byte flipped inside a frame: this does, before the first
byte of that block is sent, from the very descriptor the bytes are sent from (the file, or the
cache's copy of the object). A region checked for a version is not checked again: steady-state
serving pays a set lookup, and the first serve of a block pays one decompression of it.
It must never send or cache bytes, never decide what to answer (it raises SegmentError naming the
damage; xrpc.py refuses the segment), and never read more than the blocks overlapping a range
(plus the footer when the range reaches it). What it cannot see: bytes that change in place without
the version changing (silent disk corruption after a region was checked, or a write between the
check and the send); `jetstream archive verify` reads everything again. The versions checked
whole are a set the caller may save and hand back (`complete_versions`, `trust`) so a restart does
not check them again: a version names its bytes (an ETag; a file's size and mtime).
"""
from __future__ import annotations

import bisect
import os
import threading
from typing import Callable, NamedTuple

from jetstream.archive.format import (
    FRAME_PREFIX_SIZE,
    HEADER_SIZE,
    MAX_DECODED_BYTES,
    BlockInfo,
    CorruptSegment,
    SegmentError,
    decode_u64,
    decompress_frame,
    encode_header,
    header_checksum,
)

MAX_PREAD = 8 << 20  # one pread of a footer at most; larger footers are read in pieces


class _State:
    """What has been checked of one segment version."""

    __slots__ = ("blocks", "starts", "header_ok", "footer_ok", "unchecked", "left", "tiling_error")

    def __init__(self, blocks: list[BlockInfo], footer_offset: int) -> None:
        self.blocks = blocks
        self.starts = [b.offset for b in blocks]
        self.header_ok = False
        self.footer_ok = False
        self.unchecked = bytearray(b"\x01" * len(blocks))  # 1: not checked yet
        self.left = len(blocks)
        self.tiling_error = _tiling_error(blocks, footer_offset)

    @property
    def complete(self) -> bool:
        return self.header_ok and self.footer_ok and not self.left


class Check(NamedTuple):
    """What must be read and checked before [offset, offset + length) of a version is sent."""

    state: _State
    start: int  # the span to have present (an object store's cache fetches it): [start, end)
    end: int
    header: bool
    blocks: tuple[int, ...]
    footer: bool


class ServedBytes:
    """Which regions of which segment versions were checked; thread-safe (checks run in threads)."""

    def __init__(self) -> None:
        self._states: dict[tuple[str, str], _State] = {}
        # Versions checked whole: here, or by an earlier run of this node (`trust`); their regions'
        # states are dropped. `changed` says the set grew or shrank since `complete_versions()`.
        self._whole: set[tuple[str, str]] = set()
        self.changed = False
        self._lock = threading.Lock()
        self.checked_blocks = 0
        self.checked_bytes = 0

    def complete(self, summary) -> bool:
        """Every region of this version was checked: nothing to do, no footer needed (the fast path)."""
        return (summary.name, summary.version) in self._whole

    def trust(self, versions) -> None:
        """(name, version) pairs an earlier run checked whole (the store's version names the bytes)."""
        with self._lock:
            self._whole.update((str(name), str(version)) for name, version in versions)

    def complete_versions(self) -> list[tuple[str, str]]:
        """Every version checked whole, to be remembered across restarts; clears `changed`."""
        with self._lock:
            self.changed = False
            return sorted(self._whole)

    def plan(self, summary, blocks: list[BlockInfo], offset: int, length: int) -> Check | None:
        """The regions of [offset, offset + length) not yet checked for this version, or None.

        `blocks` is the segment's block index (its listed footer). SegmentError when the blocks
        do not tile the block region (a byte there would belong to no block: nothing can check it)."""
        key = (summary.name, summary.version)
        if key in self._whole:
            return None
        with self._lock:
            state = self._states.get(key)
            if state is None:
                state = self._states[key] = _State(blocks, summary.header.footer_offset)
        footer_offset = summary.header.footer_offset
        end = offset + length
        header = offset < HEADER_SIZE and not state.header_ok
        pending: tuple[int, ...] = ()
        lo, hi = max(offset, HEADER_SIZE), min(end, footer_offset)
        if lo < hi:
            if state.tiling_error:
                raise CorruptSegment(state.tiling_error)
            first = max(0, bisect.bisect_right(state.starts, lo) - 1)
            last = bisect.bisect_left(state.starts, hi) - 1
            pending = tuple(i for i in range(first, last + 1) if state.unchecked[i])
        footer = end > footer_offset and not state.footer_ok
        if not (header or pending or footer):
            return None
        if header:
            start = 0
        elif pending:
            start = state.blocks[pending[0]].offset
        else:
            start = footer_offset
        if footer:
            stop = summary.size
        elif pending:
            last_block = state.blocks[pending[-1]]
            stop = last_block.offset + FRAME_PREFIX_SIZE + last_block.compressed_size
        else:
            stop = HEADER_SIZE
        return Check(state, start, stop, header, pending, footer)

    def run(self, check: Check, fd: int, summary) -> None:
        """Read and check the planned regions from `fd` (the object's bytes at their own offsets).

        Blocking: run it in a thread. SegmentError naming the first damage; OSError from the reads."""
        state = check.state
        if check.header:
            _check_header(fd, summary)
            state.header_ok = True
        for index in check.blocks:
            if state.unchecked[index]:
                checked = _check_block(fd, index, state.blocks[index])
                with self._lock:  # two requests may check one block at once: count it once
                    if state.unchecked[index]:
                        state.unchecked[index] = 0
                        state.left -= 1
                        self.checked_blocks += 1
                        self.checked_bytes += checked
        if check.footer:
            _check_footer(fd, summary)
            state.footer_ok = True
        if state.complete:
            self.mark_whole(summary)

    def mark_whole(self, summary) -> None:
        """Every region of this version was checked (here, or by the scrub's `check_whole`): serve and
        redirect it as such; its per-region state is dropped."""
        key = (summary.name, summary.version)
        with self._lock:
            if key not in self._whole:
                self._whole.add(key)
                self.changed = True
            self._states.pop(key, None)

    def retain(self, listed) -> None:
        """Forget every version not in `listed` ((name, version) pairs): gone, replaced or refused."""
        keep = set(listed)
        with self._lock:
            for key in [k for k in self._states if k not in keep]:
                del self._states[key]
            gone = self._whole - keep
            if gone:
                self._whole -= gone
                self.changed = True


def check_whole(fd: int, summary, blocks: list[BlockInfo], pace: Callable[[int], None] = lambda n: None) -> int:
    """Every region of one segment version read from `fd` and checked as serving checks it: the header,
    the blocks' tiling, each block's length prefix and zstd frame (content checksum, indexed size), and
    the footer under the header's checksum. Blocking (a thread); `pace(n)` is called after each region of
    n bytes is read (a caller's rate limit, or its stop). The bytes checked; CorruptSegment naming the
    first damage, OSError from the reads."""
    footer_offset = summary.header.footer_offset
    tiling = _tiling_error(blocks, footer_offset)
    if tiling:
        raise CorruptSegment(tiling)
    _check_header(fd, summary)
    pace(HEADER_SIZE)
    total = HEADER_SIZE
    for index, info in enumerate(blocks):
        checked = _check_block(fd, index, info)
        pace(checked)
        total += checked
    _check_footer(fd, summary)
    pace(summary.size - footer_offset)
    return total + summary.size - footer_offset


def _tiling_error(blocks: list[BlockInfo], footer_offset: int) -> str:
    expected = HEADER_SIZE
    for i, b in enumerate(blocks):
        if b.offset != expected:
            return f"block {i} starts at {b.offset}, the previous region ends at {expected}"
        expected = b.offset + FRAME_PREFIX_SIZE + b.compressed_size
    if expected != footer_offset:
        return f"blocks end at {expected}, the footer starts at {footer_offset}"
    return ""


def _pread_exact(fd: int, length: int, offset: int) -> bytes:
    parts = []
    while length > 0:
        chunk = os.pread(fd, min(length, MAX_PREAD), offset)
        if not chunk:
            raise CorruptSegment(f"short read: the file ends at {offset}, {length} bytes before the region does")
        parts.append(chunk)
        offset += len(chunk)
        length -= len(chunk)
    return b"".join(parts)


def _check_header(fd: int, summary) -> None:
    if _pread_exact(fd, HEADER_SIZE, 0) != encode_header(summary.header):
        raise CorruptSegment("header differs from the one verified at listing")


def _check_block(fd: int, index: int, info: BlockInfo) -> int:
    data = _pread_exact(fd, FRAME_PREFIX_SIZE + info.compressed_size, info.offset)
    prefix = decode_u64(data)
    if prefix != info.compressed_size:
        raise CorruptSegment(f"block {index}: length prefix {prefix}, block index says {info.compressed_size}")
    try:
        body = decompress_frame(memoryview(data)[FRAME_PREFIX_SIZE:],
                                limit=min(info.uncompressed_size, MAX_DECODED_BYTES))
    except SegmentError as exc:
        raise CorruptSegment(f"block {index} at offset {info.offset}: {exc}") from exc
    if len(body) != info.uncompressed_size:
        raise CorruptSegment(f"block {index}: decompressed to {len(body)} bytes, block index says "
                             f"{info.uncompressed_size}")
    return len(data)


def _check_footer(fd: int, summary) -> None:
    """The footer under the listed header's checksum (the header itself is checked where it is served:
    an object store's cache may hold the footer without the header)."""
    footer_offset = summary.header.footer_offset
    footer = _pread_exact(fd, summary.size - footer_offset, footer_offset)
    computed = header_checksum(encode_header(summary.header), footer)
    if computed != summary.checksum:
        raise CorruptSegment(f"checksum mismatch over the footer: computed xxh3 {computed:016x}, "
                             f"listed {summary.checksum:016x}")
