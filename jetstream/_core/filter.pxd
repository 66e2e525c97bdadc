"""C-level surface of filter.pyx: interned ids and the per-subscriber filter."""
from cpython.object cimport PyObject
from libc.stdint cimport uint8_t, uint64_t


cdef struct IdTable:
    # Open-addressing set (or map when `verdicts` is set) of u64 ids; 0 marks an empty slot.
    uint64_t* keys
    uint8_t* verdicts
    Py_ssize_t mask
    Py_ssize_t used


cdef uint64_t did_id(str did) except? 0
cdef uint64_t collection_id(str collection) except? 0


cdef class EventFilter:
    cdef IdTable _wanted_dids
    cdef IdTable _exact_collections
    cdef IdTable _collection_memo
    cdef tuple _collection_prefixes
    cdef bint _filters_dids
    cdef bint _filters_collections
    cdef bint _has_prefixes
    cdef readonly bint wants_all

    cdef bint matches_ids(self, uint64_t did_key, uint64_t collection_key, PyObject* collection) except -1
    cdef bint _learn_collection(self, uint64_t collection_key, str collection) except -1
