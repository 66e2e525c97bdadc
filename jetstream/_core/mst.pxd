"""C-level surface of mst.pyx (commit.pyx cimports the reader and the key rule)."""
cimport cython
from libc.stdint cimport uint8_t


cdef bint mst_key_ascii(const uint8_t* s, Py_ssize_t n) noexcept nogil


@cython.final
cdef class MstReader:
    cdef object blocks
    cdef bytes root
    cdef dict nodes  # node CID -> its verified block (canonical shape), or the reference's MstNode

    cdef bytes leaf(self, bytes key)
    cdef bytes _found  # the CID the last _scan found

    cdef int _scan(self, block, bytes key) except -3
    cdef object _fetch(self, bytes cid)
