"""C-level surface of position.pyx."""
from libc.stdint cimport int64_t


cdef class Position:
    cdef int64_t _value

    cdef int advance_c(self, int64_t expected, int64_t new) except -1
