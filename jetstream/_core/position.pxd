"""C-level surface of position.pyx."""
cimport cython
from libc.stdint cimport int64_t


# final: no subclass can override the cdef methods, so same-module calls skip the vtable
# (calls from other modules, e.g. ring -> filter.match_ids, stay one indirect call).
@cython.final
cdef class Position:
    cdef int64_t _value

    cpdef int advance(self, int64_t expected, int64_t new) except -1
