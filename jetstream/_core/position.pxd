"""C-level surface of position.pyx."""
cimport cython
from libc.stdint cimport int64_t


# final: lets Cython call the cdef methods directly (no vtable) and inline them.
@cython.final
cdef class Position:
    cdef int64_t _value

    cdef int advance_c(self, int64_t expected, int64_t new) except -1
