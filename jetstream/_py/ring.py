"""Pure-Python twin of jetstream/_core/ring.pyx: the live ring of the newest events.

Owns: a bounded, time_us-ordered window of sequenced events shared by every reader, and
the one read primitive readers use on it (`read_after`). Readers own their positions;
the ring keeps no per-reader state, so a reader that falls behind costs the ring nothing
(it simply stops being covered and reads the log instead, docs/architecture.md §4).
It must never block, never copy or re-encode payloads (the same bytes objects go to every
subscriber), and never scan more than `scan_limit` entries in one call.
One payload is made here, not by ingest: an event's v2 zstd form (`compress_v2`, the v2
dictionary) is made on the first compressed v2 read of it and kept in its slot, so it is made
at most once per event per process, and never while no compressed v2 reader is connected.
"""
from __future__ import annotations

from typing import Callable, Iterator

from jetstream.events import KIND_SYNC, Event

DEFAULT_SCAN_LIMIT = 65_536  # entries per read_after call; bounds one call's CPU time
JSON_FIELD = 4  # Event.json
ZSTD_FIELD = 5  # Event.zstd
SEQ_FIELD = 6  # Event.seq
V2_FIELD = 7  # Event.v2
V2_ZSTD_FIELD = 8  # Event.v2_zstd
HELD_FIELDS = 9  # the ring holds an Event up to v2_zstd: serving never needs the stored v2 record


class LiveRing:
    """A circular buffer of Events with strictly increasing time_us."""

    def __init__(self, capacity: int, floor_time_us: int = 0, scan_limit: int = DEFAULT_SCAN_LIMIT,
                 compress_v2: Callable[[bytes], bytes] | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if scan_limit < 1:
            raise ValueError(f"scan_limit must be >= 1, got {scan_limit}")
        self._capacity = capacity
        self._scan_limit = scan_limit
        self._slots: list[Event | None] = [None] * capacity
        self._times: list[int] = [0] * capacity
        self._head = 0  # slot of the oldest entry
        self._count = 0
        self._floor_time_us = floor_time_us
        self._newest_time_us = floor_time_us
        # frame -> its zstd form (v2 dictionary). None: no form is made, and compressed v2 readers
        # scan past events appended without one. The server sets its own on the ring it serves from.
        self.compress_v2 = compress_v2
        self.v2_zstd_made = 0  # zstd forms made by _v2_zstd_in (not appended with the event)

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def scan_limit(self) -> int:
        return self._scan_limit

    @property
    def floor_time_us(self) -> int:
        """Every event ever appended with time_us above this is still held."""
        return self._floor_time_us

    @property
    def newest_time_us(self) -> int:
        return self._newest_time_us

    def __len__(self) -> int:
        return self._count

    def covers(self, after_time_us: int) -> bool:
        return after_time_us >= self._floor_time_us

    def append(self, event: Event) -> None:
        time_us = event[0]
        if time_us <= self._newest_time_us:
            raise ValueError(f"time_us {time_us} is not above the newest {self._newest_time_us}")
        if not isinstance(event[JSON_FIELD], bytes) or not isinstance(event[ZSTD_FIELD], bytes):
            raise TypeError("event json and zstd payloads must be bytes")
        event = Event(*event[:HELD_FIELDS])
        if not isinstance(event.v2, bytes) or not isinstance(event.v2_zstd, bytes):
            raise TypeError("event v2 frames must be bytes")
        if self._count == self._capacity:
            self._evict_oldest()
        slot = self._slot(self._count)
        self._slots[slot] = event
        self._times[slot] = time_us
        self._count += 1
        self._newest_time_us = time_us

    def _evict_oldest(self) -> None:
        self._floor_time_us = self._times[self._head]
        self._slots[self._head] = None
        self._head = self._slot(1)
        self._count -= 1

    def _v2_zstd_in(self, slot: int) -> bytes:
        """The slot's v2 zstd form: the held one, else made now (and held for every later reader)."""
        event = self._slots[slot]
        if event.v2_zstd or not event.v2 or self.compress_v2 is None:
            return event.v2_zstd
        made = self.compress_v2(event.v2)
        if type(made) is not bytes:
            raise TypeError("compress_v2 must return bytes")
        self._slots[slot] = event._replace(v2_zstd=made)
        self.v2_zstd_made += 1
        return made

    def drop_before(self, time_us: int) -> int:
        """Evict every held event with time_us < `time_us`, oldest first; return how many.

        The TTL trimmer calls this with the cutoff it just trimmed the log at. It goes through
        the capacity-eviction path, so the floor rises exactly as if capacity had evicted the
        same events: a reader below it reads the (already trimmed) log. O(dropped).
        """
        dropped = 0
        while self._count > 0 and self._times[self._head] < time_us:
            self._evict_oldest()
            dropped += 1
        return dropped

    def _slot(self, index: int) -> int:
        return (self._head + index) % self._capacity

    def time_us_at(self, index: int) -> int:
        """time_us of the index-th held event, 0 = oldest."""
        return self._times[self._slot(self._checked_index(index))]

    def seq_at(self, index: int) -> int:
        """seq of the index-th held event, 0 = oldest (0: appended without one)."""
        event = self._slots[self._slot(self._checked_index(index))]
        return event[SEQ_FIELD] if len(event) > SEQ_FIELD else 0

    def event_at(self, index: int) -> Event:
        return self._slots[self._slot(self._checked_index(index))]

    def _checked_index(self, index: int) -> int:
        if not 0 <= index < self._count:
            raise IndexError(f"ring index {index} out of range 0..{self._count - 1}")
        return index

    def __iter__(self) -> Iterator[Event]:
        return (self._slots[self._slot(i)] for i in range(self._count))

    def first_index_after(self, after_time_us: int) -> int:
        """Index of the oldest held event with time_us > after_time_us (len(self) if none)."""
        low, high = 0, self._count
        while low < high:
            middle = (low + high) // 2
            if self._times[self._slot(middle)] > after_time_us:
                high = middle
            else:
                low = middle + 1
        return low

    def count_after(self, after_time_us: int) -> int:
        """Held events with time_us > after_time_us: a reader's lag in events while the
        ring covers it, and a lower bound (the ring's length) once it has fallen below."""
        return self._count - self.first_index_after(after_time_us)

    def read_after(
        self,
        after_time_us: int,
        event_filter,
        compressed: bool,
        max_events: int,
        max_bytes: int,
        max_message_size: int = 0,
        include_sync: bool = False,
        v2: bool = False,
    ) -> tuple[list[bytes], int]:
        """Payloads of the wanted events after `after_time_us`, and the position they reach.

        The position is the time_us of the last entry scanned, matched or not, so the
        caller never rescans what was filtered out and never skips what was not reached.
        Sync events (KIND_SYNC) are skipped unless `include_sync`; the filter's kinds axis
        applies to every event. `v2`: the v2 frames (their zstd form when `compressed`, made now
        if the event lacks it: _v2_zstd_in); an event without one is scanned past; the size cap
        is on the uncompressed frame.
        """
        if not self.covers(after_time_us):
            raise LookupError(f"ring floor {self._floor_time_us} is above position {after_time_us}")
        if max_events < 1 or max_bytes < 1:
            raise ValueError(f"max_events and max_bytes must be >= 1, got {max_events}, {max_bytes}")
        if event_filter is not None and event_filter.wants_all:
            event_filter = None
        field = ZSTD_FIELD if compressed else JSON_FIELD
        size_field = field
        if v2:
            field = V2_ZSTD_FIELD if compressed else V2_FIELD
            size_field = V2_FIELD
        payloads: list[bytes] = []
        collected_bytes = 0
        position = after_time_us
        start = self.first_index_after(after_time_us)
        stop = min(self._count, start + self._scan_limit)
        v2_compressed = v2 and compressed
        for index in range(start, stop):
            slot = self._slot(index)
            event = self._slots[slot]
            position = event[0]
            if event[2] == KIND_SYNC and not include_sync:
                continue
            if event_filter is not None and not (event_filter.wants_kind(event[2])
                                                 and event_filter.matches(event[1], event[3])):
                continue
            size = len(event[size_field])
            if v2 and size == 0:
                continue  # no v2 frame (a record v2 refuses)
            if 0 < max_message_size < size:
                continue
            if v2_compressed:
                payload = self._v2_zstd_in(slot)
                if not payload:
                    continue  # no form held and no compressor to make one: nothing to send
            else:
                payload = event[field]
            payloads.append(payload)
            collected_bytes += len(payload)
            if len(payloads) >= max_events or collected_bytes >= max_bytes:
                break
        return payloads, position
