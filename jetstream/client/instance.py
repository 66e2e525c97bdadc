"""Noticing that a reconnect landed on another Jetstream instance, and what to do then.

Owns: the instance id a server announced (the 101's `Jetstream-Instance` header), the rule
for a switch (resume `switch_rewind_us` before the last event, because another instance
numbered the same events with its own time_us), and the memory of recently delivered
events by content, so the rewound window's events already delivered are dropped.
An event's content key is its JSON without `time_us`: the same relay op rendered by two
instances gives the same bytes. Identity and account events carry the relay's seq, so
two instances fed by different relays show them as different (they are then delivered
again, which is harmless for those kinds).
It must never touch a socket or the clock (sans-I/O).
"""
from __future__ import annotations

import collections
import re

INSTANCE_HEADER = "Jetstream-Instance"
# How far back to resume after a switch: the two instances' clocks and ingest delays differ
# by far less than this in practice, and the content keys drop what was already delivered.
DEFAULT_SWITCH_REWIND_US = 10_000_000
DEFAULT_REMEMBERED_EVENTS = 200_000
_TIME_US = re.compile(rb'"time_us":\d+')


def content_key(raw: bytes) -> int:
    """A hash of the event's JSON with its time_us removed (the same op on any instance)."""
    return hash(_TIME_US.sub(b"", raw, count=1))


class InstanceTracker:
    """The instance we are on, and the recently delivered events a switch must not repeat."""

    def __init__(self, switch_rewind_us: int = DEFAULT_SWITCH_REWIND_US,
                 max_remembered: int = DEFAULT_REMEMBERED_EVENTS) -> None:
        self.switch_rewind_us = switch_rewind_us
        self.max_remembered = max_remembered
        self.instance: str | None = None
        self.switches = 0
        self.duplicates_dropped = 0
        self._recent: collections.deque[tuple[int, int]] = collections.deque()  # (time_us, key)
        self._keys: collections.Counter[int] = collections.Counter()
        self._checking = False  # after a switch: drop events whose key was delivered before

    @property
    def enabled(self) -> bool:
        return self.switch_rewind_us > 0

    def is_switch(self, announced: str | None) -> bool:
        """True when `announced` names another instance than the one we were on."""
        return bool(self.enabled and announced and self.instance and announced != self.instance)

    def switch_cursor(self, last_time_us: int) -> int:
        return max(last_time_us - self.switch_rewind_us, 0)

    def connected(self, announced: str | None, switched: bool) -> None:
        if announced:
            self.instance = announced
        if switched:
            self.switches += 1
            self._checking = True

    def deliver(self, time_us: int, raw: bytes) -> bool:
        """False (counted) for an event delivered before a switch; else remember it and True."""
        if not self.enabled:
            return True
        key = content_key(raw)
        if self._checking and key in self._keys:
            self.duplicates_dropped += 1
            return False
        self._remember(time_us, key)
        return True

    def _remember(self, time_us: int, key: int) -> None:
        recent, keys = self._recent, self._keys
        recent.append((time_us, key))
        keys[key] += 1
        floor = time_us - self.switch_rewind_us
        while recent and (recent[0][0] < floor or len(recent) > self.max_remembered):
            _, old = recent.popleft()
            keys[old] -= 1
            if not keys[old]:
                del keys[old]
