# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The live ring of the newest events: fast twin of jetstream/_py/ring.py.

Owns: a bounded, time_us-ordered window of sequenced events shared by every reader, with
each event's did and collection interned to u64 ids once, at append (filter.pyx explains
the ids), and `read_after`, the one read primitive: binary search to the reader's
position, then a C loop over parallel arrays (time_us, did id, collection id) that
touches a Python object only for the events it returns. Readers own their positions; the
ring keeps no per-reader state (docs/architecture.md §4).
It must never block, never copy or re-encode payloads (the same bytes objects go to every
subscriber), and never scan more than `scan_limit` entries in one call, so one reader
cannot stall the event loop however sparse its filter.
One payload is made here, not by ingest: an event's v2 zstd form (`compress_v2`, the v2
dictionary) is made on the first compressed v2 read of it and kept in its slot, so it is made
at most once per event per process, and never while no compressed v2 reader is connected.
"""
from cpython.bytes cimport PyBytes_CheckExact, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Calloc, PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from cpython.tuple cimport PyTuple_Check, PyTuple_GET_ITEM, PyTuple_GET_SIZE
from cpython.unicode cimport PyUnicode_CheckExact
from libc.stdint cimport int64_t, uint64_t

from jetstream.events import Event

from jetstream._core.filter cimport MATCH_NO, MATCH_UNKNOWN, EventFilter, collection_id, did_id

DEFAULT_SCAN_LIMIT = 65_536  # same bound as the _py twin
cdef Py_ssize_t _DID_FIELD = 1
cdef Py_ssize_t _KIND_FIELD = 2
cdef Py_ssize_t _COLLECTION_FIELD = 3
cdef Py_ssize_t _JSON_FIELD = 4
cdef Py_ssize_t _ZSTD_FIELD = 5
cdef Py_ssize_t _SEQ_FIELD = 6
cdef Py_ssize_t _V2_FIELD = 7
cdef Py_ssize_t _V2_ZSTD_FIELD = 8
cdef bytes _EMPTY = b""
# Collections repeat constantly (a few dozen NSIDs carry almost all traffic): caching their
# ids saves an encode + hash per append. Bounded so invented names cannot grow it forever.
cdef Py_ssize_t _COLLECTION_CACHE_MAX = 4096
# jetstream.events.KIND_SYNC: held for includeSync=true readers, skipped for every other one.
cdef int _KIND_SYNC = 3


cdef class LiveRing:
    """A circular buffer of Events with strictly increasing time_us; same API as the _py twin."""

    def __cinit__(self, Py_ssize_t capacity, int64_t floor_time_us=0, Py_ssize_t scan_limit=DEFAULT_SCAN_LIMIT,
                  compress_v2=None):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if scan_limit < 1:
            raise ValueError(f"scan_limit must be >= 1, got {scan_limit}")
        self._capacity = capacity
        self._scan_limit = scan_limit
        self._head = 0
        self._count = 0
        self._floor_time_us = floor_time_us
        self._newest_time_us = floor_time_us
        self._collection_id_cache = {}
        self._compress_v2 = compress_v2
        self.v2_zstd_made = 0
        self._times = <int64_t*>PyMem_Malloc(capacity * sizeof(int64_t))
        self._seqs = <uint64_t*>PyMem_Malloc(capacity * sizeof(uint64_t))
        self._did_ids = <uint64_t*>PyMem_Malloc(capacity * sizeof(uint64_t))
        self._collection_ids = <uint64_t*>PyMem_Malloc(capacity * sizeof(uint64_t))
        self._kinds = <int*>PyMem_Malloc(capacity * sizeof(int))
        # zeroed: NULL marks an empty slot, and __dealloc__ may run on a half-built ring
        self._dids = <PyObject**>PyMem_Calloc(capacity, sizeof(PyObject*))
        self._collections = <PyObject**>PyMem_Calloc(capacity, sizeof(PyObject*))
        self._jsons = <PyObject**>PyMem_Calloc(capacity, sizeof(PyObject*))
        self._zstds = <PyObject**>PyMem_Calloc(capacity, sizeof(PyObject*))
        self._v2s = <PyObject**>PyMem_Calloc(capacity, sizeof(PyObject*))
        self._v2_zstds = <PyObject**>PyMem_Calloc(capacity, sizeof(PyObject*))
        if (self._times == NULL or self._seqs == NULL or self._did_ids == NULL or self._collection_ids == NULL
                or self._kinds == NULL or self._dids == NULL or self._collections == NULL or self._jsons == NULL
                or self._zstds == NULL or self._v2s == NULL or self._v2_zstds == NULL):
            raise MemoryError()

    def __dealloc__(self):
        cdef Py_ssize_t index
        if (self._dids != NULL and self._collections != NULL and self._jsons != NULL and self._zstds != NULL
                and self._v2s != NULL and self._v2_zstds != NULL):
            for index in range(self._count):
                self._clear_slot(self._slot(index))
        PyMem_Free(self._times)
        PyMem_Free(self._seqs)
        PyMem_Free(self._did_ids)
        PyMem_Free(self._collection_ids)
        PyMem_Free(self._kinds)
        PyMem_Free(self._dids)
        PyMem_Free(self._collections)
        PyMem_Free(self._jsons)
        PyMem_Free(self._zstds)
        PyMem_Free(self._v2s)
        PyMem_Free(self._v2_zstds)

    @property
    def capacity(self):
        return self._capacity

    @property
    def scan_limit(self):
        return self._scan_limit

    @property
    def floor_time_us(self):
        """Every event ever appended with time_us above this is still held."""
        return self._floor_time_us

    @property
    def newest_time_us(self):
        return self._newest_time_us

    @property
    def compress_v2(self):
        """frame -> its zstd form (v2 dictionary): how a compressed v2 read makes a form the event lacks.

        None: no form is made, and compressed v2 readers scan past events appended without one.
        The server sets its own (SubscribeServer) on the ring it serves from.
        """
        return self._compress_v2

    @compress_v2.setter
    def compress_v2(self, compress_v2):
        self._compress_v2 = compress_v2

    def __len__(self):
        return self._count

    def covers(self, int64_t after_time_us):
        return after_time_us >= self._floor_time_us

    cdef inline Py_ssize_t _slot(self, Py_ssize_t index) noexcept nogil:
        cdef Py_ssize_t slot = self._head + index
        return slot - self._capacity if slot >= self._capacity else slot

    def append(self, event):
        if not PyTuple_Check(event) or PyTuple_GET_SIZE(event) < 6:
            raise TypeError("append takes a jetstream.events.Event")
        # PyTuple_GET_ITEM: Event is a tuple subclass, and generic indexing on a subclass
        # goes through its Python-level __getitem__ (measured: half the cost of append).
        cdef int64_t time_us = <object>PyTuple_GET_ITEM(event, 0)
        if time_us <= self._newest_time_us:
            raise ValueError(f"time_us {time_us} is not above the newest {self._newest_time_us}")
        # Exact bytes and str: read_after reads sizes with PyBytes_GET_SIZE, and the ring's
        # references are invisible to the GC, which is only safe for objects without cycles.
        json, zstd = <object>PyTuple_GET_ITEM(event, _JSON_FIELD), <object>PyTuple_GET_ITEM(event, _ZSTD_FIELD)
        if not PyBytes_CheckExact(json) or not PyBytes_CheckExact(zstd):
            raise TypeError("event json and zstd payloads must be bytes")
        did = <object>PyTuple_GET_ITEM(event, _DID_FIELD)
        collection = <object>PyTuple_GET_ITEM(event, _COLLECTION_FIELD)
        if not PyUnicode_CheckExact(did) or not PyUnicode_CheckExact(collection):
            raise TypeError("event did and collection must be str")
        cdef int kind = <object>PyTuple_GET_ITEM(event, _KIND_FIELD)
        cdef uint64_t seq = <object>PyTuple_GET_ITEM(event, _SEQ_FIELD) if PyTuple_GET_SIZE(event) > _SEQ_FIELD else 0
        # The v2 frame and its zstd form (b"" when the event has none, or was built without them).
        cdef Py_ssize_t fields = PyTuple_GET_SIZE(event)
        v2 = <object>PyTuple_GET_ITEM(event, _V2_FIELD) if fields > _V2_FIELD else _EMPTY
        v2_zstd = <object>PyTuple_GET_ITEM(event, _V2_ZSTD_FIELD) if fields > _V2_ZSTD_FIELD else _EMPTY
        if not PyBytes_CheckExact(v2) or not PyBytes_CheckExact(v2_zstd):
            raise TypeError("event v2 frames must be bytes")
        cdef uint64_t did_key = did_id(did)
        cdef uint64_t collection_key = self._intern_collection(collection)
        if self._count == self._capacity:
            self._evict_oldest()
        cdef Py_ssize_t slot = self._slot(self._count)
        Py_INCREF(did)
        Py_INCREF(collection)
        Py_INCREF(json)
        Py_INCREF(zstd)
        Py_INCREF(v2)
        Py_INCREF(v2_zstd)
        self._v2s[slot] = <PyObject*>v2
        self._v2_zstds[slot] = <PyObject*>v2_zstd
        self._dids[slot] = <PyObject*>did
        self._collections[slot] = <PyObject*>collection
        self._jsons[slot] = <PyObject*>json
        self._zstds[slot] = <PyObject*>zstd
        self._kinds[slot] = kind
        self._times[slot] = time_us
        self._seqs[slot] = seq
        self._did_ids[slot] = did_key
        self._collection_ids[slot] = collection_key
        self._count += 1
        self._newest_time_us = time_us

    cdef uint64_t _intern_collection(self, str collection) except? 0:
        cached = self._collection_id_cache.get(collection)
        if cached is not None:
            return cached
        cdef uint64_t key = collection_id(collection)
        if len(self._collection_id_cache) >= _COLLECTION_CACHE_MAX:
            self._collection_id_cache.clear()
        self._collection_id_cache[collection] = key
        return key

    cdef void _evict_oldest(self) noexcept:
        self._floor_time_us = self._times[self._head]
        self._clear_slot(self._head)
        self._head = self._slot(1)
        self._count -= 1

    cdef void _clear_slot(self, Py_ssize_t slot) noexcept:
        Py_XDECREF(self._dids[slot])
        Py_XDECREF(self._collections[slot])
        Py_XDECREF(self._jsons[slot])
        Py_XDECREF(self._zstds[slot])
        Py_XDECREF(self._v2s[slot])
        Py_XDECREF(self._v2_zstds[slot])
        self._dids[slot] = self._collections[slot] = self._jsons[slot] = self._zstds[slot] = NULL
        self._v2s[slot] = self._v2_zstds[slot] = NULL

    cdef object _event_in(self, Py_ssize_t slot):
        """The Event held in `slot`, rebuilt from its fields (the same str and bytes objects; the
        stored v2 record is not held: serving never needs it)."""
        return Event(self._times[slot], <object>self._dids[slot], self._kinds[slot],
                     <object>self._collections[slot], <object>self._jsons[slot], <object>self._zstds[slot],
                     self._seqs[slot], <object>self._v2s[slot], <object>self._v2_zstds[slot])

    cdef object v2_zstd_in(self, Py_ssize_t slot):
        """The slot's v2 zstd form: the held one, else made now (and held for every later reader).

        b"" when the event has no v2 frame, or no form was appended and the ring has no compressor.
        """
        held = <object>self._v2_zstds[slot]
        if PyBytes_GET_SIZE(held) != 0 or self._compress_v2 is None:
            return held
        frame = <object>self._v2s[slot]
        if PyBytes_GET_SIZE(frame) == 0:
            return held
        made = self._compress_v2(frame)
        if not PyBytes_CheckExact(made):
            raise TypeError("compress_v2 must return bytes")
        Py_INCREF(made)
        Py_XDECREF(self._v2_zstds[slot])  # `held` keeps the old object alive until we return
        self._v2_zstds[slot] = <PyObject*>made
        self.v2_zstd_made += 1
        return made

    def drop_before(self, int64_t time_us):
        """Evict every held event with time_us < `time_us`, oldest first; return how many.

        The TTL trimmer calls this with the cutoff it just trimmed the log at. It goes through
        the capacity-eviction path, so the floor rises exactly as if capacity had evicted the
        same events: a reader below it reads the (already trimmed) log. O(dropped).
        """
        cdef Py_ssize_t dropped = 0
        while self._count > 0 and self._times[self._head] < time_us:
            self._evict_oldest()
            dropped += 1
        return dropped

    def time_us_at(self, Py_ssize_t index):
        """time_us of the index-th held event, 0 = oldest."""
        return self._times[self._slot(self._checked_index(index))]

    def seq_at(self, Py_ssize_t index):
        """seq of the index-th held event, 0 = oldest (0: appended without one)."""
        return self._seqs[self._slot(self._checked_index(index))]

    def event_at(self, Py_ssize_t index):
        return self._event_in(self._slot(self._checked_index(index)))

    cdef Py_ssize_t _checked_index(self, Py_ssize_t index) except -1:
        if not 0 <= index < self._count:
            raise IndexError(f"ring index {index} out of range 0..{self._count - 1}")
        return index

    def __iter__(self):
        return iter([self._event_in(self._slot(i)) for i in range(self._count)])

    cdef Py_ssize_t first_index_after(self, int64_t after_time_us) noexcept nogil:
        """Index of the oldest held event with time_us > after_time_us (count if none)."""
        cdef Py_ssize_t low = 0, high = self._count, middle
        while low < high:
            middle = (low + high) >> 1
            if self._times[self._slot(middle)] > after_time_us:
                high = middle
            else:
                low = middle + 1
        return low

    def count_after(self, int64_t after_time_us):
        """Held events with time_us > after_time_us: a reader's lag in events while the
        ring covers it, and a lower bound (the ring's length) once it has fallen below."""
        return self._count - self.first_index_after(after_time_us)

    def read_after(
        self,
        int64_t after_time_us,
        EventFilter event_filter,
        bint compressed,
        Py_ssize_t max_events,
        Py_ssize_t max_bytes,
        Py_ssize_t max_message_size=0,
        bint include_sync=False,
        bint v2=False,
    ):
        """Payloads of the wanted events after `after_time_us`, and the position they reach.

        The position is the time_us of the last entry scanned, matched or not, so the
        caller never rescans what was filtered out and never skips what was not reached.
        Sync events (kind 3) are skipped unless `include_sync`. The filter's kinds axis is
        checked on the kind code. `v2`: the v2 frames (or their zstd form, made now if the event
        lacks it: v2_zstd_in) instead of v1's; events without one are scanned past, and the size
        cap is on the uncompressed frame.
        """
        if after_time_us < self._floor_time_us:
            raise LookupError(f"ring floor {self._floor_time_us} is above position {after_time_us}")
        if max_events < 1 or max_bytes < 1:
            raise ValueError(f"max_events and max_bytes must be >= 1, got {max_events}, {max_bytes}")
        if event_filter is not None and event_filter.wants_all:
            event_filter = None
        cdef PyObject** payload_column = self._zstds if compressed else self._jsons
        cdef PyObject** size_column = payload_column
        cdef bint v2_compressed = v2 and compressed
        if v2:
            payload_column = self._v2s
            size_column = self._v2s
        cdef list payloads = []
        cdef Py_ssize_t collected = 0, collected_bytes = 0, size, slot, index
        cdef int64_t position = after_time_us
        cdef Py_ssize_t start = self.first_index_after(after_time_us)
        cdef Py_ssize_t stop = min(self._count, start + self._scan_limit)
        cdef PyObject* payload
        cdef int verdict
        for index in range(start, stop):
            slot = self._slot(index)
            position = self._times[slot]
            if not include_sync and self._kinds[slot] == _KIND_SYNC:
                continue
            if event_filter is not None:
                if not (event_filter.kind_mask >> self._kinds[slot]) & 1:
                    continue
                verdict = event_filter.match_ids(self._did_ids[slot], self._collection_ids[slot])
                if verdict == MATCH_UNKNOWN:  # first sight of this collection by this filter
                    verdict = event_filter.learn_collection(self._collection_ids[slot], <str>self._collections[slot])
                if verdict == MATCH_NO:
                    continue
            # a payload object is touched only now, for events this reader may send
            size = PyBytes_GET_SIZE(<object>size_column[slot])
            if v2 and size == 0:
                continue  # no v2 frame (a record v2 refuses)
            if 0 < max_message_size < size:
                continue
            if v2_compressed:
                made = self.v2_zstd_in(slot)
                if PyBytes_GET_SIZE(made) == 0:
                    continue  # no form held and no compressor to make one: nothing to send
                payload = <PyObject*>made  # held by the slot from here on
            else:
                payload = payload_column[slot]
            size = PyBytes_GET_SIZE(<object>payload)
            payloads.append(<object>payload)
            collected += 1
            collected_bytes += size
            if collected >= max_events or collected_bytes >= max_bytes:
                break
        return payloads, position
