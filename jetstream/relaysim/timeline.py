"""When each relay frame exists, and where a new connection starts reading.

Owns: the broadcast clock of the fake relay (frame seq s becomes available at
start + (s - first_seq)/rate; rate 0 means "as fast as the fastest reader pulls"; with a
burst of K, the first K seqs are history already there at start and seq first_seq+K+j
comes at start + j/rate), the retention window, the cursor rules, and a small cache of
recently served frames.
It must never do I/O or hold per-connection state: connections keep their own position.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Protocol


class FrameSource(Protocol):
    """Seq-addressable frames. `last_seq` is None for an endless source."""

    first_seq: int

    @property
    def last_seq(self) -> int | None: ...

    def next_seq_after(self, seq: int) -> int | None: ...

    def last_seq_at_or_before(self, seq: int) -> int | None: ...

    def frame(self, seq: int) -> bytes: ...


@dataclass(frozen=True)
class StartPosition:
    """Where a connection starts: it is sent every frame with seq > `after_seq`."""

    after_seq: int
    outdated_cursor: bool  # the cursor asked for frames the relay no longer holds


def start_position(cursor: int | None, head_seq: int, oldest_held_seq: int) -> StartPosition:
    """Relay cursor rules for subscribeRepos.

    No cursor: live, from the head. A cursor older than what is held: from the oldest held
    frame (the caller sends #info OutdatedCursor first). Otherwise, exactly after the cursor,
    including a cursor in the future (the connection waits for live frames to reach it).
    """
    if cursor is None:
        return StartPosition(head_seq, False)
    if cursor < oldest_held_seq - 1:
        return StartPosition(oldest_held_seq - 1, True)
    return StartPosition(cursor, False)


class Timeline:
    """The relay's shared clock over a source; times are event-loop seconds."""

    def __init__(self, source: FrameSource, rate: float, *, retention: int | None = None,
                 burst: int = 0, cache_size: int = 4096) -> None:
        if rate < 0:
            raise ValueError(f"rate must be >= 0, got {rate}")
        if burst < 0:
            raise ValueError(f"burst must be >= 0, got {burst}")
        if retention is not None and retention < 1:
            raise ValueError(f"retention must be >= 1, got {retention}")
        self.source = source
        self.rate = rate
        self.retention = retention
        self.burst = burst
        self.start_time = 0.0
        self._highest_pulled = source.first_seq - 1  # the head when rate == 0
        self._cache: dict[int, bytes] = {}
        self._cache_order: deque[int] = deque()
        self._cache_size = cache_size

    def start(self, now: float) -> None:
        self.start_time = now

    def available_at(self, seq: int) -> float:
        """Loop time at which `seq` becomes available (start time when rate is 0)."""
        if self.rate == 0:
            return self.start_time
        return self.start_time + max(seq - self.source.first_seq - self.burst, 0) / self.rate

    def is_available(self, seq: int, now: float) -> bool:
        return self.rate == 0 or seq <= self._clock_bound(now)

    def head_seq(self, now: float) -> int:
        """Newest seq made available so far (first_seq - 1 before the first one)."""
        if self.rate == 0:
            return self._highest_pulled
        head = self.source.last_seq_at_or_before(self._clock_bound(now))
        return self.source.first_seq - 1 if head is None else head

    def oldest_held_seq(self, now: float) -> int:
        if self.retention is None:
            return self.source.first_seq
        return max(self.source.first_seq, self.head_seq(now) - self.retention + 1)

    def start_position(self, cursor: int | None, now: float) -> StartPosition:
        return start_position(cursor, self.head_seq(now), self.oldest_held_seq(now))

    def pull(self, seq: int) -> bytes:
        """The frame `seq` for sending; recent frames are shared by every connection."""
        frame = self._cache.get(seq)
        if frame is None:
            frame = self.source.frame(seq)
            self._remember(seq, frame)
        if seq > self._highest_pulled:
            self._highest_pulled = seq
        return frame

    def _clock_bound(self, now: float) -> int:
        # A tiny epsilon so that float error never holds back a frame due exactly now.
        return self.source.first_seq + self.burst + math.floor((now - self.start_time) * self.rate + 1e-9)

    def _remember(self, seq: int, frame: bytes) -> None:
        self._cache[seq] = frame
        self._cache_order.append(seq)
        if len(self._cache_order) > self._cache_size:
            self._cache.pop(self._cache_order.popleft(), None)
