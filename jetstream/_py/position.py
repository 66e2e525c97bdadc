"""Pure-Python twin of jetstream/_core/position.pyx: a reader's delivered position.

Owns: the rule that a
position moves only by compare-and-set, from the value the step started with, never
backwards (docs/architecture.md §4.1): if a second writer ever appears it fails loudly instead of
silently reordering or skipping events.
It must never clamp, retry or "fix up" a conflicting advance: the conflict is the signal.
"""
from __future__ import annotations

from jetstream.errors import PositionConflict


class Position:
    """The time_us of the last event delivered on one connection."""

    __slots__ = ("_value",)

    def __init__(self, time_us: int) -> None:
        self._value = int(time_us)

    @property
    def value(self) -> int:
        return self._value

    def advance(self, expected: int, new: int) -> None:
        """Set the value to `new` iff it is still `expected` and `new >= expected`; else raise."""
        if self._value != expected:
            raise PositionConflict(f"position is {self._value}, step expected {expected} (second writer?)")
        if new < expected:
            raise PositionConflict(f"position may not move backwards: {expected} -> {new}")
        self._value = new

    def __repr__(self) -> str:
        return f"Position({self._value})"
