"""The reader's pure rules: where a cursor starts, how lag is measured, when lag closes.

Sans-I/O pieces of jetstream/server/subscriber.py, driven with explicit clocks.
"""
from __future__ import annotations

import pytest

from jetstream.events import KIND_COMMIT, Event
from jetstream.implementation import LiveRing
from jetstream.server.subscriber import LagPolicy, initial_position, lag_close_reason, lag_of


def test_cursor_rules_inclusive_numeric_everything_and_live():
    newest = 5_000
    assert initial_position(None, newest) == newest  # no cursor: live
    assert initial_position(4_000, newest) == 3_999  # inclusive: the event at 4000 is sent
    assert initial_position(0, newest) == 0 and initial_position(-7, newest) == 0  # everything retained
    # Between the newest logged event and now: live, not the whole log (v1's empty-pass quirk).
    assert initial_position(5_001, newest) == newest
    assert initial_position(9_999_999, newest) == newest


def ring_of(times: list[int], capacity: int) -> LiveRing:
    ring = LiveRing(capacity)
    for time_us in times:
        ring.append(Event(time_us, "did:plc:x", KIND_COMMIT, "app.bsky.feed.post", b"{}", b"z"))
    return ring


def test_lag_counts_ring_events_exactly_and_estimates_below_the_floor():
    ring = ring_of([1_000_000 * i for i in range(1, 21)], capacity=10)  # holds 11..20 s, floor 10 s
    assert lag_of(20_000_000, ring) == (0, 0.0)
    assert lag_of(15_000_000, ring) == (5, 5.0)
    events, seconds = lag_of(5_000_000, ring)  # 5 s below the floor at the ring's 1 event/s
    assert seconds == 15.0
    assert events == 10 + 5


def test_policy_is_off_with_zero_limits():
    policy = LagPolicy(0, 0, 0)
    assert not policy.enabled
    assert policy.observe(0.0, 10**9, 10**6, socket_bound=True) is None


def test_socket_bound_lag_over_the_limit_closes_after_the_grace_only():
    policy = LagPolicy(max_lag_events=100, grace_s=5)
    assert policy.observe(0.0, 500, 1.0, socket_bound=True) is None  # clock starts
    assert policy.observe(4.9, 600, 1.1, socket_bound=True) is None
    assert policy.observe(5.0, 700, 1.2, socket_bound=True) == "lag_events"


def test_lag_caused_by_the_server_never_starts_the_clock():
    policy = LagPolicy(max_lag_seconds=10, grace_s=1)
    for now in range(100):  # a replay paced by --max-sub-rate: far behind, never socket-bound
        assert policy.observe(float(now), 10**6, 3600.0 + now, socket_bound=False) is None


def test_dropping_under_the_limits_or_catching_up_restarts_the_grace():
    policy = LagPolicy(max_lag_seconds=10, grace_s=5)
    assert policy.observe(0.0, 1, 20.0, True) is None
    assert policy.observe(4.0, 1, 5.0, True) is None  # back under: clock stops
    assert policy.observe(6.0, 1, 20.0, True) is None  # restarts at 6
    assert policy.observe(10.0, 1, 19.0, True) is None  # catching up: restarts at 10
    assert policy.observe(14.9, 1, 25.0, True) is None
    assert policy.observe(15.0, 1, 26.0, True) == "lag_seconds"


def test_reset_forgets_a_running_clock():
    policy = LagPolicy(max_lag_events=1, grace_s=1)
    policy.observe(0.0, 5, 0.0, True)
    policy.reset()
    assert policy.observe(10.0, 5, 0.0, False) is None


def test_negative_limits_are_refused():
    with pytest.raises(ValueError):
        LagPolicy(-1, 0, 1)


def test_close_reason_fits_a_close_frame_and_says_why():
    reason = lag_close_reason("lag_seconds", 123_456_789, 86_400.0, 30)
    assert reason.startswith("consuming too slowly")
    assert "lag_seconds" in reason and len(reason.encode()) <= 123
