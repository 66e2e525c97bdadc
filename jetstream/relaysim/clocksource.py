"""Seqs and frame times from the wall clock, so the fake relay restarts like a real one.

Owns: ClockSource, a FrameSource wrapper that shifts every seq of the wrapped source so
the first one is the wall clock at start (seconds × rate, or microseconds when rate is 0):
a relay-sim started again later issues only higher seqs than before, so a daemon's stored
cursor is in the past (OutdatedCursor, then history), never in a future the new relay
would take minutes to reach. Each frame's `time` is stamped with the wall-clock moment
the frame becomes available, so the daemon's relay lag reads the real delay (recorded
frames carry their original, years-old times).
It must never decode a frame: seq and time are spliced (seqpatch).
"""
from __future__ import annotations

import functools
import time
from datetime import datetime, timezone

from jetstream.relaysim.seqpatch import patch_seq_and_time
from jetstream.relaysim.timeline import FrameSource

# With rate 0 (as fast as readers pull) seqs count microseconds, which no reader outruns.
UNPACED_SEQS_PER_SECOND = 1_000_000


@functools.lru_cache(maxsize=4)
def _second_text(whole_seconds: int) -> str:
    return datetime.fromtimestamp(whole_seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def rfc3339_us(seconds: float) -> str:
    """'2026-11-29T15:04:22.156457Z' (the date part is formatted once per second: it is per frame)."""
    micros = int(seconds * 1_000_000)
    whole, fraction = divmod(micros, 1_000_000)
    return f"{_second_text(whole)}.{fraction:06d}Z"


class ClockSource:
    """`inner` with seqs shifted to start at the clock, and frame times stamped from it.

    `burst` seqs count as history already there at start (as Timeline treats them): they
    are placed in the past, so they too stay below any later run's seqs.
    """

    def __init__(self, inner: FrameSource, rate: float, burst: int = 0, wall_now: float | None = None) -> None:
        self.inner = inner
        self.rate = rate
        self.burst = burst
        self.wall_start = time.time() if wall_now is None else wall_now
        per_second = rate if rate > 0 else UNPACED_SEQS_PER_SECOND
        self.first_seq = int(self.wall_start * per_second) - burst
        self.offset = self.first_seq - inner.first_seq
        self.dids = getattr(inner, "dids", None)  # the fault injector names synthetic repos

    def did(self, index: int) -> str:
        return self.inner.did(index)

    @property
    def last_seq(self) -> int | None:
        last = self.inner.last_seq
        return None if last is None else last + self.offset

    def next_seq_after(self, seq: int) -> int | None:
        inner = self.inner.next_seq_after(seq - self.offset)
        return None if inner is None else inner + self.offset

    def last_seq_at_or_before(self, seq: int) -> int | None:
        inner = self.inner.last_seq_at_or_before(seq - self.offset)
        return None if inner is None else inner + self.offset

    def wall_time_of(self, seq: int) -> float:
        """When `seq` becomes available, in wall-clock seconds (Timeline's rule)."""
        if self.rate <= 0:
            return time.time()
        return self.wall_start + max(seq - self.first_seq - self.burst, 0) / self.rate

    def frame(self, seq: int) -> bytes:
        inner_seq = seq - self.offset
        return patch_seq_and_time(self.inner.frame(inner_seq), inner_seq, seq, rfc3339_us(self.wall_time_of(seq)))
