# cython: language_level=3
"""A reader's delivered position, moved only by compare-and-set: fast twin of _py/position.py.

Owns: the CAS rule of docs/architecture.md §4.1 (a step advances the position from the value it started
with; a stale expected value or a backwards move raises PositionConflict (jetstream/errors.py), the class
the _py twin raises too, so callers catch one type whichever twin is loaded).
It must never clamp, retry or repair a conflicting advance.
"""
from libc.stdint cimport int64_t

from jetstream.errors import PositionConflict


cdef class Position:
    """The time_us of the last event delivered on one connection."""

    def __cinit__(self, int64_t time_us):
        self._value = time_us

    @property
    def value(self):
        return self._value

    cpdef int advance(self, int64_t expected, int64_t new) except -1:
        """Set the value to `new` iff it is still `expected` and `new >= expected`; else raise."""
        if self._value != expected:
            raise PositionConflict(f"position is {self._value}, step expected {expected} (second writer?)")
        if new < expected:
            raise PositionConflict(f"position may not move backwards: {expected} -> {new}")
        self._value = new
        return 0

    def __repr__(self):
        return f"Position({self._value})"
