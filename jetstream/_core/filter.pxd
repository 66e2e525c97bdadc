"""C-level surface of filter.pyx: interned ids and the per-subscriber filter."""
cimport cython
from libc.stdint cimport uint8_t, uint32_t, uint64_t


cdef struct IdTable:
    # Open-addressing set (or map when `verdicts` is set) of u64 ids; 0 marks an empty slot.
    uint64_t* keys
    uint8_t* verdicts
    Py_ssize_t mask
    Py_ssize_t used


# match_ids verdicts: a prefix filter that has not seen a collection id yet answers
# MATCH_UNKNOWN, and the caller fetches the collection string for learn_collection.
cdef enum:
    MATCH_NO = 0
    MATCH_YES = 1
    MATCH_UNKNOWN = -1


cpdef uint64_t did_id(str did) except? 0
cpdef uint64_t collection_id(str collection) except? 0


# final: no subclass can override the cdef methods, so same-module calls skip the vtable
# (calls from other modules, e.g. ring -> filter.match_ids, stay one indirect call).
@cython.final
cdef class EventFilter:
    cdef IdTable _wanted_dids
    cdef IdTable _exact_collections
    cdef IdTable _collection_memo
    cdef tuple _collection_prefixes
    cdef bint _filters_dids
    cdef bint _filters_collections
    cdef bint _has_prefixes
    cdef readonly bint wants_all
    cdef readonly uint32_t kind_mask  # v2's kinds axis: bit k admits kind code k (ALL_KINDS: unset)

    cdef int match_ids(self, uint64_t did_key, uint64_t collection_key) noexcept nogil
    cdef bint learn_collection(self, uint64_t collection_key, str collection) except -1
    cpdef bint wants_kind(self, int kind)
