# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""CAR v1 reading in C: the fast twin of `jetstream/_py/car.py`.

Owns: the section loop of `read_car` (uvarint lengths, CID lengths, dict of CID ->
memoryview slice) on the raw bytes, with the common header and CID shapes recognised
byte by byte. Every rule, limit and CarError reason comes from the reference module;
rare shapes (a non-canonical header, CIDv0 or multi-byte varints inside a CID) go
through the reference helpers, so the two can never disagree.
It must never decode block contents, never copy block bytes (blocks are memoryview
slices of the input, made on access by `Blocks`) and never read past the input.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.sequence cimport PySequence_GetSlice
from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcmp

from jetstream._py import car as _ref
from jetstream._py.car import CarFile
from jetstream.errors import CarError

cdef uint64_t MAX_SECTION_BYTES = _ref.MAX_SECTION_BYTES
cdef uint64_t SATURATED = 0xFFFFFFFFFFFFFFFF
_parse_header = _ref.parse_header
_cid_length = _ref.cid_length
_verify_block = _ref.verify_block


cdef inline int read_length(const uint8_t* s, Py_ssize_t* pos, Py_ssize_t end, uint64_t* value) except -1:
    """Go binary.ReadUvarint as the reference reads it; values past 64 bits saturate (all are too long)."""
    cdef uint64_t result = 0
    cdef int shift = 0
    cdef uint8_t byte
    cdef bint overflow = False
    byte = s[pos[0]]
    if byte < 0x80:
        pos[0] += 1
        value[0] = byte
        return 0
    while pos[0] < end and shift < 70:
        byte = s[pos[0]]
        pos[0] += 1
        if shift >= 64 or (shift == 63 and (byte & 0x7F) > 1):
            overflow = True
        else:
            result |= (<uint64_t>(byte & 0x7F)) << shift
        if byte < 0x80:
            value[0] = SATURATED if overflow else result
            return 0
        shift += 7
    raise CarError("bad_varint")


cdef inline bint is_common_cid(const uint8_t* s, Py_ssize_t pos, Py_ssize_t end) noexcept nogil:
    return end - pos >= 36 and s[pos] == 1 and s[pos + 1] < 0x80 and s[pos + 2] == 0x12 and s[pos + 3] == 0x20


cdef const char* HEADER_PREFIX = b"\xa2eroots\x81\xd8\x2a\x58\x25\x00"
cdef const char* HEADER_SUFFIX = b"gversion\x01"


cdef object one_root_header(const uint8_t* s, Py_ssize_t pos, Py_ssize_t length):
    """The roots list of the canonical one-root header, or None for any other header."""
    if (length != 58 or memcmp(s + pos, HEADER_PREFIX, 13) != 0 or not is_common_cid(s, pos + 13, pos + 49)
            or memcmp(s + pos + 49, HEADER_SUFFIX, 9) != 0):
        return None
    return [PyBytes_FromStringAndSize(<const char*>s + pos + 13, 36)]


cdef class Blocks:
    """CID -> block bytes of one CAR, read-only; each block becomes a memoryview slice when asked for.

    Why not a dict of slices: a memoryview slice costs ~0.3 us and decoding reads about two of a
    commit's ~10 blocks, so slicing them all was half of read_car's time.
    """

    cdef bytes _data
    cdef dict _spans  # binary CID -> (start, end) in _data
    cdef object _view

    def __cinit__(self, bytes data, dict spans):
        self._data = data
        self._spans = spans
        self._view = None

    cdef object _slice(self, tuple span):
        if self._view is None:
            self._view = memoryview(self._data)
        return PySequence_GetSlice(self._view, span[0], span[1])

    def get(self, cid, default=None):
        span = self._spans.get(cid)
        return default if span is None else self._slice(span)

    def __getitem__(self, cid):
        return self._slice(self._spans[cid])

    def __contains__(self, cid):
        return cid in self._spans

    def __len__(self):
        return len(self._spans)

    def __iter__(self):
        return iter(self._spans)

    def keys(self):
        return self._spans.keys()

    def values(self):
        return [self._slice(span) for span in self._spans.values()]

    def items(self):
        return [(cid, self._slice(span)) for cid, span in self._spans.items()]

    def __eq__(self, other):
        try:
            return dict(self.items()) == dict(other.items())
        except AttributeError:
            return NotImplemented

    def __repr__(self):
        return f"Blocks({len(self._spans)} blocks)"


def read_car(data, bint verify=False):
    """Parse a CAR v1; CarError(reason) if malformed (or, with verify, any block's hash is wrong)."""
    if type(data) is not bytes:
        data = bytes(data)
    cdef bytes raw = data
    cdef const uint8_t* s = <const uint8_t*>PyBytes_AS_STRING(raw)
    cdef Py_ssize_t end = PyBytes_GET_SIZE(raw)
    cdef Py_ssize_t pos = 0, section_end, cid_len
    cdef uint64_t length
    if end == 0:
        raise CarError("empty")
    read_length(s, &pos, end, &length)
    if length == 0 or length > MAX_SECTION_BYTES or <uint64_t>(end - pos) < length:
        raise CarError("bad_header_length")
    roots = one_root_header(s, pos, <Py_ssize_t>length)
    if roots is None:
        roots = _parse_header(raw, pos, <Py_ssize_t>length)
    pos += <Py_ssize_t>length
    cdef dict spans = {}
    while pos < end:
        read_length(s, &pos, end, &length)
        if length == 0 or length > MAX_SECTION_BYTES or <uint64_t>(end - pos) < length:
            raise CarError("bad_section_length")
        section_end = pos + <Py_ssize_t>length
        if is_common_cid(s, pos, section_end):
            cid_len = 36
        else:
            cid_len = _cid_length(raw, pos, section_end)
            if cid_len < 0:
                raise CarError("bad_block_cid")
        cid = PyBytes_FromStringAndSize(<const char*>s + pos, cid_len)
        if verify and not _verify_block(cid, memoryview(raw)[pos + cid_len:section_end]):
            raise CarError("block_hash_mismatch")
        spans[cid] = (pos + cid_len, section_end)
        pos = section_end
    return CarFile(roots, Blocks(raw, spans))
