"""Pacing of deliveries: a token bucket per client IP, shared by its connections.

Owns: v1's per-IP limiter (`rate.NewLimiter(maxSubRate, burst=int(maxSubRate))`,
docs/protocol.md §8.1) as a token bucket that readers draw from per batch, and
the registry that hands each connection its IP's bucket (or, with
`--per-ip-limit=false`, a bucket of its own, as proposed in v1's PR 45:
https://github.com/bluesky-social/jetstream-legacy/pull/45).
It must never sleep or schedule anything: a reader asks how many events it may
send now and, if none, how long until the next one; the reader does the waiting.
"""
from __future__ import annotations

import time
from typing import Callable


class TokenBucket:
    """`rate` tokens per second, holding at most `burst`; starts full (like Go's rate.Limiter)."""

    __slots__ = ("rate", "burst", "_tokens", "_updated_at", "_clock")

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1, got rate={rate} burst={burst}")
        self.rate = float(rate)
        self.burst = float(burst)
        self._clock = clock
        self._tokens = self.burst
        self._updated_at = clock()

    def _refill(self) -> None:
        now = self._clock()
        elapsed = now - self._updated_at
        if elapsed > 0:
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        self._updated_at = now

    def available(self) -> int:
        """Whole tokens that could be taken now."""
        self._refill()
        return int(self._tokens)

    def take(self, wanted: int) -> int:
        """Take up to `wanted` whole tokens; returns how many were granted (maybe 0)."""
        self._refill()
        granted = min(int(wanted), int(self._tokens))
        if granted > 0:
            self._tokens -= granted
        return granted

    def give_back(self, unused: int) -> None:
        """Return tokens taken for a batch that sent fewer events than it was granted."""
        if unused > 0:
            self._tokens = min(self.burst, self._tokens + unused)

    def seconds_until_available(self, wanted: int = 1) -> float:
        """How long until `wanted` whole tokens are there (0 if they already are)."""
        self._refill()
        missing = min(float(wanted), self.burst) - self._tokens
        return max(0.0, missing / self.rate)

    @property
    def is_full(self) -> bool:
        self._refill()
        return self._tokens >= self.burst


class RateLimiterRegistry:
    """One TokenBucket per client IP, alive while the IP has connections.

    v1 kept every IP's limiter forever (its map was never pruned). Here a bucket is
    dropped once its IP has no connection and the bucket has refilled, so a client
    gains nothing by reconnecting (it would get a full bucket anyway) and memory is
    bounded by the IPs seen in the last burst/rate seconds.
    """

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic, *, per_ip: bool = True) -> None:
        self.rate = float(rate)
        self.per_ip = per_ip
        # v1: burst = int(maxSubRate); at least 1 so a rate below 1/s still sends.
        self.burst = max(1, int(rate))
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._connections: dict[str, int] = {}
        self._idle: set[str] = set()  # IPs without connections whose bucket is still refilling

    def acquire(self, ip: str) -> TokenBucket:
        if not self.per_ip:
            return TokenBucket(self.rate, self.burst, self._clock)  # the connection's own, never shared
        self._forget_idle_full_buckets()
        bucket = self._buckets.get(ip)
        if bucket is None:
            bucket = self._buckets[ip] = TokenBucket(self.rate, self.burst, self._clock)
        self._connections[ip] = self._connections.get(ip, 0) + 1
        self._idle.discard(ip)
        return bucket

    def release(self, ip: str) -> None:
        if not self.per_ip:
            return
        remaining = self._connections.get(ip, 0) - 1
        if remaining > 0:
            self._connections[ip] = remaining
            return
        self._connections.pop(ip, None)
        bucket = self._buckets.get(ip)
        if bucket is not None and bucket.is_full:
            del self._buckets[ip]
        elif bucket is not None:
            self._idle.add(ip)

    def _forget_idle_full_buckets(self) -> None:
        refilled = [ip for ip in self._idle if self._buckets[ip].is_full]
        for ip in refilled:
            self._idle.discard(ip)
            del self._buckets[ip]

    def __len__(self) -> int:
        return len(self._buckets)
