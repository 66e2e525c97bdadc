"""Retention: deleting events older than `--event-ttl` on a timer.

Owns: when trimming happens and what the cutoff is. Each pass range-deletes every event
with time_us < now - ttl (both column families), then compacts that range in a worker
thread so the disk space comes back without stalling the event loop (compaction takes
~1 s per 500k events and releases the GIL); v1 trimmed only while its liveness check
passed and never compacted, so a stalled relay also froze its disk use, and deleted bytes
lingered.
The same pass drops the expired events from the live ring (LiveRing.drop_before), so a
reader inside the ring is not served from memory what the log no longer holds.
With the archive writer on (`--archive`), the cutoff is also held at the first event not yet in a
sealed segment (`hold_time_us`, jetstream/archive/sealer.py): an unsealed event never leaves the
log, however old; a sealer that cannot write holds the trim back until it can.
It must never touch the relay cursor or the time_us high-water mark (they live in `meta`),
and a failed pass must never stop the daemon: it is counted, logged and retried next period.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from jetstream import metrics

log = logging.getLogger(__name__)

MIN_INTERVAL_S = 0.5
MAX_INTERVAL_S = 60.0


def trim_interval_s(event_ttl_s: float, configured_s: float = 0.0) -> float:
    """The configured period, or ttl/10 clamped to [0.5 s, 60 s] (24 h ttl -> once a minute)."""
    if configured_s > 0:
        return configured_s
    return min(MAX_INTERVAL_S, max(MIN_INTERVAL_S, event_ttl_s / 10))


class TtlTrimmer:
    """Trims `event_log` (and `ring`, if given) to `event_ttl_s` every `interval_s` seconds while run() runs."""

    def __init__(self, event_log, event_ttl_s: float, interval_s: float,
                 clock_s: Callable[[], float] = time.time, ring=None,
                 hold_time_us: Callable[[], int] | None = None) -> None:
        if event_ttl_s <= 0:
            raise ValueError(f"event ttl must be > 0, got {event_ttl_s}")
        self.event_log = event_log
        self.ring = ring
        self.event_ttl_s = event_ttl_s
        self.interval_s = interval_s
        self.clock_s = clock_s
        self.hold_time_us = hold_time_us  # events at or above it must stay (the first unsealed one)
        self.passes = 0
        self._compaction: asyncio.Future | None = None

    def cutoff_time_us(self) -> int:
        cutoff = int((self.clock_s() - self.event_ttl_s) * 1_000_000)
        if self.hold_time_us is not None:
            cutoff = min(cutoff, self.hold_time_us())
        return cutoff

    def trim_once(self) -> bool:
        """One whole pass, compaction included, in the caller's thread (tests, tools).

        False (counted and logged) if the log refused the delete.
        """
        passed, trimmed = self._delete_expired()
        if trimmed is not None:
            self._compact(trimmed)
        return passed

    def _delete_expired(self):
        """Delete from the log, then the ring: (passed, ranges to compact or None).

        Log and ring are trimmed in one synchronous call on the event loop, so no reader step
        runs in between: a reader the ring's new floor leaves behind reads the log from its
        own position and gets the first event at or after the cutoff, with no gap or repeat
        beyond the expired events. A failed pass leaves the ring alone too: the log would
        still serve those events to a reader below the floor, so dropping them from memory
        would only move readers to the slower path. The next pass drops both.
        """
        cutoff = self.cutoff_time_us()
        started = time.perf_counter()
        try:
            trimmed = self.event_log.delete_older_than(cutoff)
        except Exception as exc:  # noqa: BLE001 - trimming must never stop the daemon
            metrics.TTL_TRIMS.labels("failed").inc()
            log.error("event=ttl_trim_failed cutoff_time_us=%d error=%s", cutoff, repr(exc))  # no traceback kept
            return False, None
        ring_dropped = self.ring.drop_before(cutoff) if self.ring is not None else 0
        self.passes += 1
        metrics.TTL_TRIMS.labels("ok").inc()
        log.debug("event=ttl_trim_pass cutoff_time_us=%d ring_dropped=%d duration_s=%.4f",
                  cutoff, ring_dropped, time.perf_counter() - started)
        return True, trimmed

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            _, trimmed = self._delete_expired()
            if trimmed is not None:
                await self._compact_in_thread(trimmed)

    async def _compact_in_thread(self, trimmed) -> None:
        # Shielded: cancelling run() (daemon stop) must not orphan a thread still inside
        # RocksDB; wait_idle() lets the daemon finish it before closing the log.
        self._compaction = asyncio.ensure_future(asyncio.to_thread(self._compact, trimmed))
        await asyncio.shield(self._compaction)

    def _compact(self, trimmed) -> None:
        started = time.perf_counter()
        try:
            self.event_log.compact_trimmed(trimmed)
        except Exception as exc:  # noqa: BLE001 - the space comes back with RocksDB's own compaction
            log.error("event=ttl_compaction_failed error=%s", repr(exc))
            return
        log.debug("event=ttl_compaction_done duration_s=%.3f", time.perf_counter() - started)

    async def wait_idle(self) -> None:
        """Return once no compaction thread is running (call before closing the log)."""
        if self._compaction is not None:
            await asyncio.gather(self._compaction, return_exceptions=True)
