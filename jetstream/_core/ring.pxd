"""C-level surface of ring.pyx: the live ring shared by all readers."""
cimport cython
from cpython.object cimport PyObject
from libc.stdint cimport int64_t, uint64_t


# final: no subclass can override the cdef methods, so same-module calls skip the vtable
# (calls from other modules, e.g. ring -> filter.match_ids, stay one indirect call).
@cython.final
cdef class LiveRing:
    cdef Py_ssize_t _capacity
    cdef Py_ssize_t _scan_limit
    cdef Py_ssize_t _head   # slot of the oldest entry
    cdef Py_ssize_t _count
    cdef int64_t _floor_time_us
    cdef int64_t _newest_time_us
    cdef int64_t* _times
    cdef uint64_t* _seqs    # each event's seq (Event.seq; 0: not numbered)
    cdef uint64_t* _did_ids
    cdef uint64_t* _collection_ids
    # The event's fields per slot, as owned references (NULL when empty). Not Event tuples:
    # tuples are GC-tracked, and a full ring of them made each full collection ~60 ms.
    # str and bytes are never tracked, and C arrays are invisible to the collector.
    cdef int* _kinds
    cdef PyObject** _dids
    cdef PyObject** _collections
    cdef PyObject** _jsons
    cdef PyObject** _zstds
    cdef PyObject** _v2s        # the v2 wire's frame (b"": no v2 frame, v2 readers skip it)
    cdef PyObject** _v2_zstds   # its zstd form (v2 dictionary); b"" until the first compressed v2 read
    cdef dict _collection_id_cache
    cdef object _compress_v2     # frame -> its zstd form (v2 dictionary); None: none is made
    cdef public Py_ssize_t v2_zstd_made  # zstd forms made by v2_zstd_in (not appended with the event)

    cdef inline Py_ssize_t _slot(self, Py_ssize_t index) noexcept nogil
    cdef Py_ssize_t first_index_after(self, int64_t after_time_us) noexcept nogil
    cdef uint64_t _intern_collection(self, str collection) except? 0
    cdef void _evict_oldest(self) noexcept
    cdef void _clear_slot(self, Py_ssize_t slot) noexcept
    cdef object _event_in(self, Py_ssize_t slot)
    cdef object v2_zstd_in(self, Py_ssize_t slot)
    cdef Py_ssize_t _checked_index(self, Py_ssize_t index) except -1
