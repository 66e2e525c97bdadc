"""A bounded local disk cache of segment byte ranges fetched from an object store.

Owns: one directory (wiped at start: which ranges of a file were complete is not kept across a
restart), holding one sparse file per cached segment version, filled in aligned chunks of
`chunk_bytes` (8 MiB: the atproto SDK reads segments in 8 MiB Range slices, so a slice is one
chunk) fetched from the store with If-Match on the listed version, so a replaced object is never
mixed into a file. `open_range()` makes a range present and hands back a descriptor to stream it
from; concurrent requests for the same chunk wait on one fetch. The bound (`max_bytes`) counts
the chunks present or being fetched; room is made by dropping whole segment files, least recently
used first (unlinking them: a descriptor already handed out keeps reading its bytes); when one
segment alone would pass the bound its file is started afresh. A single answer larger than the
whole bound is fetched into an unlinked temporary file that is freed when it has been sent.
It must never serve a byte it did not fetch for that exact object version, never block the event
loop on the store (fetches run in threads), and never hold a segment in memory.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field

from jetstream.archive.format import HEADER_SIZE, SegmentError, decode_header
from jetstream.archive.store import ArchiveStore

log = logging.getLogger(__name__)

DEFAULT_CHUNK_BYTES = 8 << 20


@dataclass(eq=False)
class _Entry:
    """One segment version's sparse file."""

    key: tuple[str, str]  # (name, version)
    path: str
    size: int
    fd: int  # read-write descriptor the fetches write through
    present: set[int] = field(default_factory=set)
    fetching: dict[int, asyncio.Future] = field(default_factory=dict)
    bytes: int = 0  # present + being fetched, as counted against the bound
    dropped: bool = False


class CacheStats:
    def __init__(self) -> None:
        self.hits = 0  # answers whose every chunk was present
        self.misses = 0  # answers that fetched at least one chunk
        self.fetched_bytes = 0
        self.evicted_segments = 0
        self.oversize = 0  # answers larger than the bound, fetched to a temporary file


class SegmentCache:
    def __init__(self, store: ArchiveStore, directory: str, max_bytes: int,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
        self.store = store
        self.directory = directory
        self.max_bytes = max_bytes
        self.chunk_bytes = chunk_bytes
        self.stats = CacheStats()
        self._entries: collections.OrderedDict[tuple[str, str], _Entry] = collections.OrderedDict()
        self._bytes = 0
        self._serial = 0
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory, exist_ok=True)

    @property
    def cached_bytes(self) -> int:
        return self._bytes

    async def open_range(self, name: str, version: str, size: int, offset: int, length: int,
                         header=None) -> int:
        """A new read-only descriptor holding [offset, offset + length) of the object at the same offsets
        (the caller closes it). StoreError / ObjectChanged when the store cannot give them; SegmentError
        when the fetched header is not `header` (the listed one)."""
        if length <= 0:
            raise ValueError("empty range")
        first, last = offset // self.chunk_bytes, (offset + length - 1) // self.chunk_bytes
        wanted = range(first, last + 1)
        if min(size, (last + 1) * self.chunk_bytes) - first * self.chunk_bytes > self.max_bytes:
            return await self._oversize(name, version, offset, length, header)
        entry = self._entry(name, version, size)
        missing = [c for c in wanted if c not in entry.present and c not in entry.fetching]
        need = sum(self._chunk_length(entry, c) for c in missing)
        if need and not self._make_room(entry, need):
            entry = self._restart(entry)
            missing = list(wanted)
            self._make_room(entry, sum(self._chunk_length(entry, c) for c in missing))  # fits: checked above
        reader = os.open(entry.path, os.O_RDONLY)  # before any eviction can unlink it
        try:
            if missing:
                self.stats.misses += 1
                await self._fetch(entry, missing)
            else:
                self.stats.hits += 1
            waits = [entry.fetching[c] for c in wanted if c in entry.fetching]
            if waits:
                await asyncio.gather(*waits)
            if any(c not in entry.present for c in wanted):
                raise SegmentError(f"{name}: a concurrent fetch of these bytes failed")
            if header is not None and first == 0:
                _check_header(reader, header, name)
        except BaseException:
            os.close(reader)
            raise
        if not entry.dropped:
            self._entries.move_to_end(entry.key)
        return reader

    # -- bookkeeping (event loop only) -----------------------------------------------------------

    def _chunk_length(self, entry: _Entry, chunk: int) -> int:
        start = chunk * self.chunk_bytes
        return max(0, min(self.chunk_bytes, entry.size - start))

    def _entry(self, name: str, version: str, size: int) -> _Entry:
        key = (name, version)
        entry = self._entries.get(key)
        if entry is not None:
            return entry
        for old_key in [k for k in self._entries if k[0] == name]:
            self._drop(self._entries[old_key])  # an older version of the object: never served again
        return self._new_entry(key, size)

    def _new_entry(self, key: tuple[str, str], size: int) -> _Entry:
        self._serial += 1
        path = os.path.join(self.directory, f"{key[0]}.{self._serial}.part")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(fd, size)  # sparse: only fetched chunks take space
        entry = _Entry(key, path, size, fd)
        self._entries[key] = entry
        return entry

    def _make_room(self, entry: _Entry, need: int) -> bool:
        """Drop least recently used files other than `entry` until `need` more bytes fit; reserve them."""
        for key in list(self._entries):
            if self._bytes + need <= self.max_bytes:
                break
            if key != entry.key:
                self._drop(self._entries[key])
        if self._bytes + need > self.max_bytes:
            return False
        self._bytes += need
        entry.bytes += need
        return True

    def _restart(self, entry: _Entry) -> _Entry:
        """The segment alone would pass the bound: start its file afresh (readers keep the old one)."""
        self._drop(entry)
        return self._new_entry(entry.key, entry.size)

    def _drop(self, entry: _Entry) -> None:
        if entry.dropped:
            return
        entry.dropped = True
        self._entries.pop(entry.key, None)
        self._bytes -= entry.bytes
        entry.bytes = 0
        self.stats.evicted_segments += 1
        try:
            os.unlink(entry.path)
        except OSError:
            pass
        if not entry.fetching:
            os.close(entry.fd)
            entry.fd = -1

    async def _fetch(self, entry: _Entry, chunks: list[int]) -> None:
        """Fetch the missing chunks, contiguous runs as one ranged GET each, in threads."""
        loop = asyncio.get_running_loop()
        for c in chunks:
            entry.fetching[c] = loop.create_future()
        runs = _runs(chunks)
        try:
            results = await asyncio.gather(*(self._fetch_run(entry, run) for run in runs), return_exceptions=True)
        finally:
            for c in chunks:
                future = entry.fetching.pop(c)
                if not future.done():
                    future.set_result(None)
            if entry.dropped and not entry.fetching and entry.fd >= 0:
                os.close(entry.fd)
                entry.fd = -1
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _fetch_run(self, entry: _Entry, run: tuple[int, int]) -> None:
        first, last = run
        start = first * self.chunk_bytes
        length = sum(self._chunk_length(entry, c) for c in range(first, last + 1))
        name, version = entry.key
        try:
            got = await asyncio.to_thread(self.store.read_range_into, name, start, length, entry.fd, version)
            if got != length:
                raise SegmentError(f"{name}: store gave {got} of {length} bytes at offset {start}")
        except BaseException:
            if not entry.dropped:
                entry.bytes -= length
                self._bytes -= length
            raise
        self.stats.fetched_bytes += length
        entry.present.update(range(first, last + 1))

    async def _oversize(self, name: str, version: str, offset: int, length: int, header) -> int:
        """An answer larger than the bound: fetched into an unlinked file, freed when its reader closes."""
        self.stats.oversize += 1
        self.stats.misses += 1
        fd, path = tempfile.mkstemp(dir=self.directory, prefix=".oversize-")
        os.unlink(path)
        try:
            got = await asyncio.to_thread(self.store.read_range_into, name, offset, length, fd, version)
            if got != length:
                raise SegmentError(f"{name}: store gave {got} of {length} bytes at offset {offset}")
            if header is not None and offset == 0:
                _check_header(fd, header, name)
        except BaseException:
            os.close(fd)
            raise
        self.stats.fetched_bytes += length
        return fd

    def close(self) -> None:
        for entry in list(self._entries.values()):
            self._drop(entry)


def _runs(chunks: list[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for c in sorted(chunks):
        if runs and runs[-1][1] == c - 1:
            runs[-1] = (runs[-1][0], c)
        else:
            runs.append((c, c))
    return runs


def _check_header(fd: int, header, name: str) -> None:
    data = os.pread(fd, HEADER_SIZE, 0)
    try:
        fetched = decode_header(data)
    except SegmentError as exc:
        raise SegmentError(f"{name}: fetched header does not decode: {exc}") from exc
    if fetched != header:
        raise SegmentError(f"{name}: fetched header differs from the one verified at listing")
