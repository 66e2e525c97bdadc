"""C-level surface of fanout.pyx: the live fan-out step over caught-up readers."""
cimport cython
from libc.stdint cimport int64_t

from picows.picows cimport WSTransport

from jetstream._core.filter cimport EventFilter
from jetstream._core.position cimport Position
from jetstream._core.ring cimport LiveRing


# What one slot's turn in a pass ends with.
cdef enum Outcome:
    STAY = 0       # caught up: stays in the list
    HAND_BACK = 1  # its owner's Python reader takes over (tokens, log, more to read)
    GONE = 2       # closed, paused or detached: dropped without waking the owner


@cython.final
cdef class LiveSlot:
    cdef readonly object owner          # the SubscriberListener this slot serves
    cdef Position _position             # shared with the owner: one position, CAS-guarded
    cdef WSTransport _transport         # written through picows' C API, or None ...
    cdef object _write                  # ... then this callable takes the framed bytes
    cdef object _bucket                 # the owner's TokenBucket, or None (no rate limit)
    cdef EventFilter _filter            # None: every event
    cdef readonly bint compressed
    cdef readonly bint v2               # the v2 wire: v2 frames (events without one scanned past)
    cdef readonly Py_ssize_t max_message_size
    cdef readonly bint include_sync     # sync events (kind 3) are sent, not only scanned past
    cdef readonly bint live             # in a LiveFanout's list right now
    cdef public long long sent_events
    cdef public long long sent_bytes
    cdef public long long steps         # fan-out steps that scanned the ring for this slot


@cython.final
cdef class LiveFanout:
    cdef list _slots
    cdef Py_ssize_t _max_events
    cdef Py_ssize_t _max_bytes
    cdef unsigned char* _buffer
    cdef Py_ssize_t _buffer_capacity
    # Per framed event of the current slot: its time_us, then (at +max_events) where its
    # frame ends in the buffer, then (at +2*max_events) the payload bytes up to it.
    cdef int64_t* _positions
    cdef int64_t _scanned_to            # the last ring entry the current slot's scan looked at
    cdef readonly long long passes

    cdef int _reserve(self, Py_ssize_t size) except -1
    cdef Outcome _serve(self, LiveRing ring, LiveSlot slot) except *
    cdef Py_ssize_t _frame_after(self, LiveRing ring, LiveSlot slot, int64_t start) except -1
    cdef int _send(self, LiveSlot slot, Py_ssize_t count) except -1
