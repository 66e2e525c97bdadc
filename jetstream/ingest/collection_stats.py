"""Per-collection event counts for `GET /stats/collections`, kept by ingest.

Owns: counters of stored events by (collection, operation) in time buckets: 10-second
buckets for the last hour (the "minute" and "hour" windows) and hour buckets for the
retention window (--event-ttl), with running totals so a report costs a sum over at most
360 small buckets, never a log scan. Identity, account and sync events are counted by kind
under the collection "". Memory is bounded: at most --stats-max-collections names are
tracked, later ones are summed under OTHER_COLLECTIONS.
Counting happens once per written batch at ingest, so it costs nothing per subscriber.
The counts start when the daemon starts (they are not rebuilt from the log), and the
retention window is counted to the hour.
It must never read the log or hold events: only counts.
"""
from __future__ import annotations

import collections
import time
from typing import Callable

FINE_BUCKET_S = 10
FINE_BUCKETS = 360  # one hour
COARSE_BUCKET_S = 3600
MINUTE_S = 60
HOUR_S = 3600
OPERATIONS = ("create", "update", "delete")
KINDS = ("identity", "account", "sync")
OTHER_COLLECTIONS = "other"
DEFAULT_MAX_COLLECTIONS = 1000

Key = tuple[str, str]  # (collection, operation) for commits, ("", kind) for the other kinds


class _Bucket:
    __slots__ = ("start_s", "counts")

    def __init__(self, start_s: int) -> None:
        self.start_s = start_s
        self.counts: dict[Key, int] = {}

    def add(self, key: Key, amount: int) -> None:
        self.counts[key] = self.counts.get(key, 0) + amount


class CollectionStats:
    """Counts of written events per collection and operation over sliding windows."""

    def __init__(self, retention_s: float, max_collections: int = DEFAULT_MAX_COLLECTIONS,
                 clock_s: Callable[[], float] = time.time) -> None:
        self.retention_s = max(float(retention_s), 1.0)
        self.max_collections = max_collections
        self._clock_s = clock_s
        self.started_s = clock_s()
        self._fine: collections.deque[_Bucket] = collections.deque()
        self._coarse: collections.deque[_Bucket] = collections.deque()
        self._retained: dict[Key, int] = {}  # sums of the coarse buckets still held
        self._hour: dict[Key, int] = {}  # sums of the fine buckets still held (the last hour)
        self._since_start: dict[str, int] = {}  # collection -> events, for rates
        self.total_events = 0

    # -- counting (ingest) ----------------------------------------------------------------
    def record(self, counts: dict[Key, int]) -> None:
        """Count one written batch: {(collection, operation) or ("", kind): events}."""
        if not counts:
            return
        now = self._clock_s()
        fine, coarse = self._bucket(self._fine, FINE_BUCKET_S, now), self._bucket(self._coarse, COARSE_BUCKET_S, now)
        for (collection, action), amount in counts.items():
            if collection and collection not in self._since_start and len(self._since_start) >= self.max_collections:
                collection = OTHER_COLLECTIONS
            key = (collection, action)
            fine.add(key, amount)
            coarse.add(key, amount)
            self._retained[key] = self._retained.get(key, 0) + amount
            self._hour[key] = self._hour.get(key, 0) + amount
            if collection:
                self._since_start[collection] = self._since_start.get(collection, 0) + amount
            self.total_events += amount
        self._expire(now)

    @staticmethod
    def _bucket(buckets: collections.deque, width_s: int, now: float) -> _Bucket:
        start = int(now // width_s) * width_s
        if not buckets or buckets[-1].start_s < start:
            buckets.append(_Bucket(start))
        return buckets[-1]

    def _expire(self, now: float) -> None:
        fine_floor = int(now // FINE_BUCKET_S) * FINE_BUCKET_S - (FINE_BUCKETS - 1) * FINE_BUCKET_S
        while self._fine and self._fine[0].start_s < fine_floor:
            _subtract(self._hour, self._fine.popleft().counts)
        while self._coarse and self._coarse[0].start_s + COARSE_BUCKET_S <= now - self.retention_s:
            _subtract(self._retained, self._coarse.popleft().counts)

    # -- reporting (GET /stats/collections) -----------------------------------------------
    @staticmethod
    def _window_floor(seconds: int, now: float) -> int:
        """Start of the oldest 10-second bucket a window of `seconds` sums (the current one is partial)."""
        return int(now // FINE_BUCKET_S) * FINE_BUCKET_S - (seconds // FINE_BUCKET_S - 1) * FINE_BUCKET_S

    def _covered_s(self, now: float) -> dict[str, float]:
        """How many seconds each window's counts really span: a rate is a count over this, never over
        the window's nominal length (26 s after start the "minute" holds 26 s of events)."""
        retention_floor = int((now - self.retention_s) // COARSE_BUCKET_S) * COARSE_BUCKET_S
        floors = {"minute": self._window_floor(MINUTE_S, now), "hour": self._window_floor(HOUR_S, now),
                  "retention": retention_floor}
        return {name: round(max(now - max(floor, self.started_s), 0.001), 3) for name, floor in floors.items()}

    def _window(self, seconds: int, now: float) -> dict[Key, int]:
        floor = self._window_floor(seconds, now)
        summed: dict[Key, int] = {}
        for bucket in reversed(self._fine):
            if bucket.start_s < floor:
                break
            for key, amount in bucket.counts.items():
                summed[key] = summed.get(key, 0) + amount
        return summed

    def report(self) -> dict:
        now = self._clock_s()
        self._expire(now)
        # The hour and the retention are running sums: a report costs the same however busy
        # the hour was (it runs on the event loop, polled by every open /status page).
        windows = {"minute": self._window(MINUTE_S, now), "hour": self._hour, "retention": self._retained}
        per_collection: dict[str, dict] = {}
        totals = {name: dict.fromkeys(OPERATIONS + KINDS, 0) for name in windows}
        for window, counts in windows.items():
            for (collection, action), amount in counts.items():
                totals[window][action] = totals[window].get(action, 0) + amount
                if not collection:
                    continue
                entry = per_collection.get(collection)
                if entry is None:
                    entry = per_collection[collection] = {name: dict.fromkeys(OPERATIONS, 0) for name in windows}
                entry[window][action] = entry[window].get(action, 0) + amount
        for collection, entry in per_collection.items():
            entry["since_start"] = self._since_start.get(collection, 0)
        for window in totals.values():
            window["all"] = sum(window.values())
        return {
            "bucket_seconds": FINE_BUCKET_S,
            "windows_seconds": {"minute": MINUTE_S, "hour": HOUR_S, "retention": int(self.retention_s)},
            "covered_seconds": self._covered_s(now),
            "since_time_us": int(self.started_s * 1_000_000),
            "total_events": self.total_events,
            "totals": totals,
            "collections": per_collection,
            "max_collections": self.max_collections,
        }


def _subtract(totals: dict[Key, int], counts: dict[Key, int]) -> None:
    for key, amount in counts.items():
        left = totals[key] - amount
        if left:
            totals[key] = left
        else:
            del totals[key]
