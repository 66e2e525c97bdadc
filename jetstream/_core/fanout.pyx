# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The live fan-out step: fast twin of jetstream/_py/fanout.py.

Owns: the list of readers that are live and caught up (one LiveSlot each) and `step`,
which, when a batch has landed in the ring, walks them in one C loop: per slot, scan the
ring after its position over the interned ids (filter, zstd or JSON column, max message
size), frame the wanted payloads into one reused buffer, take that many tokens from its
bucket in one call, write the frames to the socket through picows' C API, and advance
the slot's position by compare-and-set. One Python pump per reader per batch becomes
one pass over all of them; a slot nothing matched for costs a scan and no call at all.

A slot leaves the list (and its owner's Python reader takes over) when the step cannot
finish its work: tokens ran short, the ring no longer covers its position, more events
follow than one step may send, or the socket pushed back (the owner's pause_writing
marks it not live). The owner puts it back once its own reader is caught up again.
It must never queue events per reader, never write to a slot that is not live, never
move a position except by compare-and-set from the value the step started with, and
never scan more than the ring's scan limit for one slot in one pass.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport PyObject
from libc.stdint cimport int64_t, uint8_t
from libc.string cimport memcpy

from picows.picows cimport WSTransport

from jetstream._core.filter cimport MATCH_NO, MATCH_UNKNOWN, EventFilter
from jetstream._core.frames cimport frame_header_size, write_frame_header
from jetstream._core.position cimport Position
from jetstream._core.ring cimport LiveRing

from jetstream._py.fanout import STEP_MAX_BYTES, STEP_MAX_EVENTS
from jetstream.errors import PositionConflict

cdef Py_ssize_t _INITIAL_BUFFER = 64 * 1024
cdef int _KIND_SYNC = 3  # jetstream.events.KIND_SYNC, as ring.pyx skips it
cdef uint8_t _FIRST_TEXT = 0x81
cdef uint8_t _FIRST_BINARY = 0x82


cdef class LiveSlot:
    """What the fan-out step needs of one reader; the owner keeps everything else."""

    def __cinit__(self, owner, Position position, sink, bucket=None, bint compressed=False, bint v2=False):
        self.owner = owner
        self._position = position
        if isinstance(sink, WSTransport):
            self._transport = <WSTransport>sink
            self._write = None
        elif callable(sink):
            self._transport = None
            self._write = sink
        else:
            raise TypeError("sink must be a picows WSTransport or a callable taking bytes")
        self._bucket = bucket
        self.compressed = compressed
        self.v2 = v2
        self._filter = None
        self.max_message_size = 0
        self.include_sync = False
        self.live = False

    def set_options(self, EventFilter event_filter, Py_ssize_t max_message_size, bint include_sync=False):
        """The owner's current filter, message size cap and includeSync (an options_update lands between passes)."""
        self._filter = None if event_filter is None or event_filter.wants_all else event_filter
        self.max_message_size = max_message_size
        self.include_sync = include_sync

    def leave(self):
        """Stop being served by the fan-out (paused, closed, or the owner reads on its own)."""
        self.live = False

    @property
    def position(self):
        return self._position.value


cdef class LiveFanout:
    """The live slots, and the one pass that serves them all when new events land."""

    def __cinit__(self, Py_ssize_t max_events=STEP_MAX_EVENTS, Py_ssize_t max_bytes=STEP_MAX_BYTES):
        if max_events < 1 or max_bytes < 1:
            raise ValueError(f"max_events and max_bytes must be >= 1, got {max_events}, {max_bytes}")
        self._slots = []
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._buffer = NULL
        self._buffer_capacity = 0
        self._positions = <int64_t*>PyMem_Malloc(max_events * 3 * sizeof(int64_t))
        if self._positions == NULL:
            raise MemoryError()
        self._reserve(_INITIAL_BUFFER)

    def __dealloc__(self):
        PyMem_Free(self._buffer)
        PyMem_Free(self._positions)

    def __len__(self):
        return sum(1 for slot in self._slots if (<LiveSlot>slot).live)

    @property
    def listed(self):
        """Slots in the list (a slot that left is dropped at the next pass): O(1), unlike len()."""
        return len(self._slots)

    def join(self, LiveSlot slot):
        """Serve `slot` from the next pass on (its owner's reader is caught up and idle)."""
        if slot.live:
            return
        slot.live = True
        # A slot that left during a pass may still be listed; the pass drops stale entries.
        if not any(listed is slot for listed in self._slots):
            self._slots.append(slot)

    cdef int _reserve(self, Py_ssize_t size) except -1:
        if size <= self._buffer_capacity:
            return 0
        cdef Py_ssize_t capacity = max(size, self._buffer_capacity * 2)
        cdef unsigned char* grown = <unsigned char*>PyMem_Realloc(self._buffer, capacity)
        if grown == NULL:
            raise MemoryError()
        self._buffer = grown
        self._buffer_capacity = capacity
        return 0

    def step(self, LiveRing ring):
        """Serve every live slot once; return the owners handed back to their own reader."""
        cdef list slots = self._slots
        cdef list kept = []
        cdef list handed_back = []
        cdef LiveSlot slot
        cdef Outcome outcome
        cdef Py_ssize_t index = 0, count = len(slots)
        self._slots = []  # slots joining during the pass (a write's callback) land here
        self.passes += 1
        try:
            while index < count:
                slot = <LiveSlot>slots[index]
                if slot.live:
                    outcome = self._serve(ring, slot)
                    if outcome == STAY and slot.live:
                        kept.append(slot)
                    elif outcome == HAND_BACK:
                        slot.live = False
                        handed_back.append(slot)
                    else:
                        slot.live = False
                index += 1  # after the turn: a turn that raised leaves its slot listed
        except BaseException:
            for entry in handed_back:  # not woken: keep them listed, the next pass hands them back again
                (<LiveSlot>entry).live = True
                kept.append(entry)
            raise
        finally:
            # If a turn raised, that slot and those after it stay listed: none is forgotten.
            kept.extend(slots[index:])
            for entry in self._slots:  # joined during the pass, not already kept
                if not any(listed is entry for listed in kept):
                    kept.append(entry)
            self._slots = kept
        return [(<LiveSlot>entry).owner for entry in handed_back]

    cdef Outcome _serve(self, LiveRing ring, LiveSlot slot) except *:
        cdef WSTransport transport = slot._transport
        if transport is not None and (transport.is_close_frame_sent or transport.is_disconnected):
            return GONE
        cdef int64_t start = slot._position._value
        if start < ring._floor_time_us:
            return HAND_BACK  # fell below the ring: the log reader takes over
        if start >= ring._newest_time_us:
            return STAY
        slot.steps += 1
        cdef Py_ssize_t wanted = self._frame_after(ring, slot, start)
        cdef Py_ssize_t sent = wanted
        cdef int64_t position = self._scanned_to
        if wanted > 0 and slot._bucket is not None:
            # One call per slot per pass, and none for a slot its filter gave nothing to.
            sent = slot._bucket.take(wanted)
            if sent < wanted:
                position = self._positions[sent - 1] if sent > 0 else start
        if sent > 0:
            self._send(slot, sent)
        if position != start:
            try:
                slot._position.advance(start, position)
            except PositionConflict:
                slot.owner.position_conflict(start, position)
                return GONE
        if sent < wanted or position < ring._newest_time_us:
            return HAND_BACK  # out of tokens, or more than one step may send: the owner's reader goes on
        return STAY

    cdef Py_ssize_t _frame_after(self, LiveRing ring, LiveSlot slot, int64_t start) except -1:
        """Frame the slot's wanted events after `start` into the buffer; how many were framed.

        Same rule as LiveRing.read_after: the scan position is the last entry looked at,
        matched or not, and the scan stops at max_events, max_bytes or the ring's scan limit.
        """
        cdef EventFilter event_filter = slot._filter
        cdef PyObject** column = ring._zstds if slot.compressed else ring._jsons
        cdef PyObject** size_column = column
        cdef bint v2 = slot.v2
        cdef bint v2_compressed = v2 and slot.compressed
        if v2:
            column = ring._v2s  # compressed: ring.v2_zstd_in, which makes the form an event lacks
            size_column = ring._v2s  # v2's cap bounds the uncompressed frame
        cdef uint8_t first = _FIRST_BINARY if slot.compressed else _FIRST_TEXT
        cdef Py_ssize_t max_message_size = slot.max_message_size
        cdef Py_ssize_t index = ring.first_index_after(start)
        cdef Py_ssize_t stop = min(ring._count, index + ring._scan_limit)
        cdef Py_ssize_t framed = 0, used = 0, payload_bytes = 0, size, header, ring_slot
        cdef int64_t* frame_ends = self._positions + self._max_events
        cdef int64_t* payload_ends = self._positions + 2 * self._max_events
        cdef PyObject* payload
        cdef int verdict
        self._scanned_to = start
        while index < stop:
            ring_slot = ring._slot(index)
            index += 1
            self._scanned_to = ring._times[ring_slot]
            if not slot.include_sync and ring._kinds[ring_slot] == _KIND_SYNC:
                continue  # scanned past, like a filtered event
            if event_filter is not None:
                if not (event_filter.kind_mask >> ring._kinds[ring_slot]) & 1:
                    continue  # v2's kinds axis (every bit is set for a v1 filter)
                verdict = event_filter.match_ids(ring._did_ids[ring_slot], ring._collection_ids[ring_slot])
                if verdict == MATCH_UNKNOWN:  # first sight of this collection by this filter
                    verdict = event_filter.learn_collection(ring._collection_ids[ring_slot],
                                                            <str>ring._collections[ring_slot])
                if verdict == MATCH_NO:
                    continue
            size = PyBytes_GET_SIZE(<object>size_column[ring_slot])
            if v2 and size == 0:
                continue  # no v2 frame (a record v2 refuses): scanned past
            if 0 < max_message_size < size:
                continue
            if v2_compressed:
                made = ring.v2_zstd_in(ring_slot)
                if PyBytes_GET_SIZE(made) == 0:
                    continue  # no form held and no compressor to make one: scanned past
                payload = <PyObject*>made  # held by the ring's slot from here on
            else:
                payload = column[ring_slot]
            size = PyBytes_GET_SIZE(<object>payload)
            header = frame_header_size(size)
            self._reserve(used + header + size)
            used += write_frame_header(self._buffer + used, size, first)
            memcpy(self._buffer + used, PyBytes_AS_STRING(<object>payload), size)
            used += size
            payload_bytes += size
            self._positions[framed] = self._scanned_to
            frame_ends[framed] = used
            payload_ends[framed] = payload_bytes
            framed += 1
            if framed >= self._max_events or payload_bytes >= self._max_bytes:
                break
        return framed

    cdef int _send(self, LiveSlot slot, Py_ssize_t count) except -1:
        """Write the first `count` framed events to the slot's socket in one write."""
        cdef Py_ssize_t size = self._positions[self._max_events + count - 1]
        if slot._transport is not None:
            # picows' own write path: send(2) straight away when nothing is queued, else the
            # transport's buffer (whose high-water mark calls the owner's pause_writing).
            slot._transport._fast_write(<char*>self._buffer, size)
        else:
            slot._write(PyBytes_FromStringAndSize(<char*>self._buffer, size))
        slot.sent_events += count
        slot.sent_bytes += self._positions[2 * self._max_events + count - 1]
        return 0
