# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Outgoing websocket frames, many messages in one transport write: fast twin of jetstream/_py/frames.py.

(The relay's incoming frames are jetstream/ingest/frames.py's.)

Owns: framing a batch of payloads as consecutive unmasked server frames (RFC 6455 §5.2)
into one bytes object with a single allocation: one pass sums the sizes, one pass writes
each header and memcpy's each payload. The reader hands the result to the transport in
one write (one send(2) when the socket has room; picows' send() does one per message).
It must never mask, fragment or compress, and never write to a transport itself.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_Check, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.object cimport PyObject
from libc.stdint cimport uint8_t
from libc.string cimport memcpy

OPCODE_TEXT = 0x1
OPCODE_BINARY = 0x2


def frame_header(Py_ssize_t payload_size, bint binary):
    """The header bytes of one unmasked final frame carrying payload_size bytes."""
    cdef uint8_t header[10]
    cdef Py_ssize_t size = write_frame_header(header, payload_size, 0x80 | (0x2 if binary else 0x1))
    return PyBytes_FromStringAndSize(<char*>header, size)


cpdef bytes encode_frames(list payloads, bint binary):
    """Every payload as its own websocket message, concatenated in order."""
    cdef Py_ssize_t count = PyList_GET_SIZE(payloads), index, size, total = 0
    cdef PyObject* payload
    for index in range(count):
        payload = PyList_GET_ITEM(payloads, index)
        if not PyBytes_Check(<object>payload):
            raise TypeError("payloads must be bytes")
        size = PyBytes_GET_SIZE(<object>payload)
        total += frame_header_size(size) + size
    cdef bytes frames = PyBytes_FromStringAndSize(NULL, total)
    cdef uint8_t* out = <uint8_t*>PyBytes_AS_STRING(frames)
    cdef uint8_t first = 0x80 | (0x2 if binary else 0x1)
    for index in range(count):
        payload = PyList_GET_ITEM(payloads, index)
        size = PyBytes_GET_SIZE(<object>payload)
        out += write_frame_header(out, size, first)
        memcpy(out, PyBytes_AS_STRING(<object>payload), size)
        out += size
    return frames
