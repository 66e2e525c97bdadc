"""Token bucket and per-IP registry (v1: rate.NewLimiter(maxSubRate, int(maxSubRate)), shared per IP)."""
from __future__ import annotations

import pytest

from jetstream.server.ratelimit import RateLimiterRegistry, TokenBucket


class ManualClock:
    """Time that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bucket_starts_full_and_grants_at_most_what_it_holds():
    clock = ManualClock()
    bucket = TokenBucket(10, 10, clock)
    assert bucket.take(4) == 4
    assert bucket.take(100) == 6
    assert bucket.take(1) == 0


def test_bucket_refills_at_rate_and_caps_at_burst():
    clock = ManualClock()
    bucket = TokenBucket(10, 10, clock)
    bucket.take(10)
    clock.now += 0.35
    assert bucket.available() == 3
    assert bucket.seconds_until_available(5) == pytest.approx(0.15)
    clock.now += 60
    assert bucket.available() == 10


def test_unused_tokens_can_be_given_back_up_to_burst():
    clock = ManualClock()
    bucket = TokenBucket(10, 10, clock)
    granted = bucket.take(8)
    bucket.give_back(granted - 3)  # the batch sent only 3 events
    assert bucket.available() == 7
    bucket.give_back(100)
    assert bucket.available() == 10


def test_invalid_rates_are_refused():
    with pytest.raises(ValueError):
        TokenBucket(0, 1)


def test_connections_from_one_ip_share_a_bucket_and_other_ips_do_not():
    registry = RateLimiterRegistry(5000, ManualClock())
    first, second, other = registry.acquire("10.0.0.1"), registry.acquire("10.0.0.1"), registry.acquire("10.0.0.2")
    assert first is second and first is not other
    assert first.burst == 5000


def test_sub_one_rate_still_has_a_burst_of_one():
    registry = RateLimiterRegistry(0.5, ManualClock())
    assert registry.acquire("10.0.0.1").take(5) == 1


def test_reconnecting_does_not_refill_a_drained_bucket():
    clock = ManualClock()
    registry = RateLimiterRegistry(10, clock)
    bucket = registry.acquire("10.0.0.1")
    bucket.take(10)
    registry.release("10.0.0.1")
    again = registry.acquire("10.0.0.1")
    assert again is bucket and again.available() == 0


def test_idle_full_buckets_are_forgotten():
    clock = ManualClock()
    registry = RateLimiterRegistry(10, clock)
    registry.acquire("10.0.0.1").take(10)
    registry.release("10.0.0.1")
    registry.acquire("10.0.0.2")
    registry.release("10.0.0.2")  # full: dropped at once
    assert len(registry) == 1
    clock.now += 5
    registry.acquire("10.0.0.3")
    assert len(registry) == 1  # 10.0.0.1 refilled while idle and was dropped
