"""C-level surface of v2frame.pyx: the v2 `time` writer, for modules that write frames in C (segment.pyx)."""
from libc.stdint cimport int64_t


cdef Py_ssize_t _write_time(char* out, int64_t time_us) noexcept nogil
