"""C-level surface of frames.pyx: batch framing for the reader's writes.

The header helpers are inline here so fanout.pyx frames a live step the same way.
"""
from libc.stdint cimport uint8_t


cdef inline Py_ssize_t frame_header_size(Py_ssize_t payload_size) noexcept nogil:
    if payload_size < 126:
        return 2
    if payload_size < 65536:
        return 4
    return 10


cdef inline Py_ssize_t write_frame_header(uint8_t* out, Py_ssize_t payload_size, uint8_t first) noexcept nogil:
    cdef int shift
    out[0] = first
    if payload_size < 126:
        out[1] = <uint8_t>payload_size
        return 2
    if payload_size < 65536:
        out[1] = 126
        out[2] = <uint8_t>(payload_size >> 8)
        out[3] = <uint8_t>payload_size
        return 4
    out[1] = 127
    for shift in range(8):
        out[2 + shift] = <uint8_t>((<unsigned long long>payload_size) >> (8 * (7 - shift)))
    return 10


cpdef bytes encode_frames(list payloads, bint binary)
