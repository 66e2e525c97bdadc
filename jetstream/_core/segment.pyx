# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""A sealed segment block's rows, decoded and rendered in C: fast twin of jetstream/_py/segment.py.

Owns: the archive replay's per-event work written as typed loops:
- `decode_block`: a block body's columns -> SegmentEvent rows in one pass (no struct tuples, no
  per-column lists), each row allocated once and filled in place;
- a commit row's wire bytes straight from its fields, with no op dict, no one-op commit call and
  no stored v2 record on the way: `commit_v1_json` (v1's JSON), `commit_v2_frame` (v2's frame) and
  `commit_pending` (the PendingEvent ingest made, for the cluster bootstrap, which stores it).
  The rules are the reference's (read jetstream/_py/segment.py and jetstream/_py/commit.py):
  a create/update row is an event only if its path passes v1's MST key rule and v1's record
  emitter takes its block; its CID is the dag-cbor sha2-256 CID of the block; v2 has no frame for
  a block its own emitter refuses. The CID's sha-256 is computed in C with the CPU's SHA
  extensions where it has them (x86-64), else by hashlib.
The fast path takes the rows every writer makes: plain-ASCII did and rev (nothing to escape),
plain collection and rkey without '/', seq and witnessed_at within int64. Any other row, and any
block the decoder would refuse, goes to the reference, so errors and edge cases are its own.
It must never produce a byte the reference would not (tests/archive/test_render_fast.py), never
read past a buffer, and never render an identity/account/sync row (ValueError, as the reference).
"""
from hashlib import sha256 as _sha256

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.long cimport PyLong_FromLongLong, PyLong_FromUnsignedLongLong
from cpython.object cimport PyTypeObject
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_GET_ITEM, PyTuple_SET_ITEM
from cpython.unicode cimport PyUnicode_CheckExact
from libc.stdint cimport int64_t, uint8_t, uint64_t
from libc.string cimport memcpy

from jetstream import wire_v2
from jetstream._core.commit import commit_events as _commit_events
from jetstream._core.record_json cimport record_to_json_v2
from jetstream._core.record_json import record_to_json
from jetstream._core.v2frame cimport _write_time
from jetstream._core.v2frame import frame_of_record as _frame_of_record, pack_record as _pack_record
from jetstream._py import segment as _ref
from jetstream.archive import format as _format
from jetstream.errors import RecordError
from jetstream.events import KIND_COMMIT, PendingEvent, render_json

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object)
    void* PyUnicode_DATA(object)
    Py_ssize_t PyUnicode_GET_LENGTH(object)
    object PyUnicode_New(Py_ssize_t size, Py_UCS4 maxchar)
    object PyUnicode_DecodeUTF8(const char* data, Py_ssize_t size, const char* errors)
    object PyType_GenericAlloc(PyTypeObject* type, Py_ssize_t nitems)
    void PyObject_GC_UnTrack(object)

# -- decode_block ------------------------------------------------------------------------------------

cdef object _SegmentEvent = _format.SegmentEvent
cdef object _decode_reference = _ref.decode_block
cdef Py_ssize_t _MAX_BLOCK_EVENTS = _format.MAX_BLOCK_EVENTS
cdef Py_ssize_t _FIXED_PER_EVENT = _format._FIXED_PER_EVENT
cdef Py_ssize_t _ROW_FIELDS = len(_format.SegmentEvent._fields)
cdef bint _KNOWN_KIND[256]
for _kind in range(256):
    _KNOWN_KIND[_kind] = _kind in _format.KIND_NAMES
# A row is allocated as its type allocates (a tuple subclass without a __dict__) and filled in
# place; anything else about SegmentEvent and rows are made by its own constructor.
cdef bint _ALLOC_ROWS = (
    (<PyTypeObject*>_SegmentEvent).tp_basicsize == (<PyTypeObject*>tuple).tp_basicsize
    and (<PyTypeObject*>_SegmentEvent).tp_itemsize == (<PyTypeObject*>tuple).tp_itemsize
    and _ROW_FIELDS == 9)


cdef inline uint64_t _le(const uint8_t* at, int size) noexcept nogil:
    cdef uint64_t value = 0
    cdef int i
    for i in range(size - 1, -1, -1):
        value = (value << 8) | at[i]
    return value


cdef bint _ascii(const uint8_t* data, Py_ssize_t size) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(size):
        if data[i] >= 0x80:
            return False
    return True


cdef inline object _text(const uint8_t* data, Py_ssize_t size, bint ascii):
    """One value of a string column (UnicodeDecodeError when it is not UTF-8)."""
    if not ascii:
        return PyUnicode_DecodeUTF8(<const char*>data, size, NULL)
    text = PyUnicode_New(size, 127)
    memcpy(PyUnicode_DATA(text), data, size)
    return text


cdef inline void _put(object row, Py_ssize_t index, object value):
    Py_INCREF(value)  # PyTuple_SET_ITEM steals a reference
    PyTuple_SET_ITEM(row, index, value)


def decode_block(body):
    """The events of an uncompressed block body; CorruptSegment on anything malformed (the reference's)."""
    if not PyBytes_CheckExact(body):
        return _decode_reference(body)
    cdef const uint8_t* data = <const uint8_t*>PyBytes_AS_STRING(body)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(body)
    if size < 4:
        return _decode_reference(body)
    cdef Py_ssize_t n = <Py_ssize_t>_le(data, 4)
    if n > _MAX_BLOCK_EVENTS or size - 4 < n * _FIXED_PER_EVENT:
        return _decode_reference(body)
    cdef const uint8_t* seqs = data + 4
    cdef const uint8_t* witnessed = seqs + 8 * n
    cdef const uint8_t* indexed = witnessed + 8 * n
    cdef const uint8_t* kinds = indexed + 8 * n
    cdef const uint8_t* collection_lens = kinds + n
    cdef const uint8_t* did_lens = collection_lens + n
    cdef const uint8_t* rkey_lens = did_lens + 2 * n
    cdef const uint8_t* rev_lens = rkey_lens + n
    cdef const uint8_t* payload_lens = rev_lens + n
    cdef Py_ssize_t i, collections_total = 0, dids_total = 0, rkeys_total = 0, revs_total = 0, payloads_total = 0
    for i in range(n):
        if not _KNOWN_KIND[kinds[i]]:
            return _decode_reference(body)
        collections_total += collection_lens[i]
        dids_total += <Py_ssize_t>_le(did_lens + 2 * i, 2)
        rkeys_total += rkey_lens[i]
        revs_total += rev_lens[i]
        payloads_total += <Py_ssize_t>_le(payload_lens + 4 * i, 4)
    cdef const uint8_t* collection_at = payload_lens + 4 * n
    if (collection_at - data) + collections_total + dids_total + rkeys_total + revs_total + payloads_total != size:
        return _decode_reference(body)
    cdef const uint8_t* did_at = collection_at + collections_total
    cdef const uint8_t* rkey_at = did_at + dids_total
    cdef const uint8_t* rev_at = rkey_at + rkeys_total
    cdef const uint8_t* payload_at = rev_at + revs_total
    cdef bint collections_ascii = _ascii(collection_at, collections_total)
    cdef bint dids_ascii = _ascii(did_at, dids_total)
    cdef bint rkeys_ascii = _ascii(rkey_at, rkeys_total)
    cdef bint revs_ascii = _ascii(rev_at, revs_total)
    cdef Py_ssize_t length
    cdef list rows = PyList_New(n)
    try:
        for i in range(n):
            length = collection_lens[i]
            collection = _text(collection_at, length, collections_ascii)
            collection_at += length
            length = <Py_ssize_t>_le(did_lens + 2 * i, 2)
            did = _text(did_at, length, dids_ascii)
            did_at += length
            length = rkey_lens[i]
            rkey = _text(rkey_at, length, rkeys_ascii)
            rkey_at += length
            length = rev_lens[i]
            rev = _text(rev_at, length, revs_ascii)
            rev_at += length
            length = <Py_ssize_t>_le(payload_lens + 4 * i, 4)
            payload = PyBytes_FromStringAndSize(<const char*>payload_at, length)
            payload_at += length
            seq = PyLong_FromUnsignedLongLong(_le(seqs + 8 * i, 8))
            witnessed_at = PyLong_FromLongLong(<int64_t>_le(witnessed + 8 * i, 8))
            indexed_at = PyLong_FromLongLong(<int64_t>_le(indexed + 8 * i, 8))
            kind = kinds[i]
            if _ALLOC_ROWS:
                row = PyType_GenericAlloc(<PyTypeObject*>_SegmentEvent, 9)
                _put(row, 0, seq)
                _put(row, 1, witnessed_at)
                _put(row, 2, indexed_at)
                _put(row, 3, kind)
                _put(row, 4, did)
                _put(row, 5, collection)
                _put(row, 6, rkey)
                _put(row, 7, rev)
                _put(row, 8, payload)
                # Only ints, str and bytes inside: it can be in no cycle, so the collector need
                # not walk it (CPython untracks such tuples itself, but only once a collection
                # has walked them: 4,096 a block made young collections the decode's main cost).
                PyObject_GC_UnTrack(row)
            else:
                row = _SegmentEvent(seq, witnessed_at, indexed_at, kind, did, collection, rkey, rev, payload)
            Py_INCREF(row)
            PyList_SET_ITEM(rows, i, row)
    except UnicodeDecodeError:
        return _decode_reference(body)  # a value that is not UTF-8: the reference's CorruptSegment
    return rows


# -- commit rows ---------------------------------------------------------------------------------------

cdef int _CREATE = _format.KIND_CREATE
cdef int _UPDATE = _format.KIND_UPDATE
cdef int _DELETE = _format.KIND_DELETE
cdef int _CREATE_RESYNC = _format.KIND_CREATE_RESYNC
cdef object _MAX_INT64 = (1 << 63) - 1
cdef Py_ssize_t _MST_KEY_MAX = 256  # jetstream._py.mst.MST_KEY_MAX
cdef bytes _DAG_CBOR_SHA256 = b"\x01\x71\x12\x20"
cdef bytes _V2_PREFIX = wire_v2.MESSAGE_PREFIX + b'{"$type":"network.bsky.jetstream.subscribeEvents#commit"'
cdef object _KIND_COMMIT = KIND_COMMIT
cdef object _PendingEvent = PendingEvent
cdef const char* _B32 = b"abcdefghijklmnopqrstuvwxyz234567"
cdef enum:
    CID_SIZE = 36
    CID_TEXT_SIZE = 59  # "b" + base32 of 36 bytes (288 bits -> 58 digits)
    MAX_PIECES = 32

from jetstream._py import mst as _mst
assert _mst.MST_KEY_MAX == _MST_KEY_MAX


cdef struct Row:
    int kind
    const char* did
    Py_ssize_t did_size
    const char* collection
    Py_ssize_t collection_size
    const char* rkey
    Py_ssize_t rkey_size
    const char* rev
    Py_ssize_t rev_size
    bint path_ok  # create/update: collection/rkey passes v1's MST key rule
    int64_t time_us
    uint64_t seq


cdef struct Pieces:
    const char* data[MAX_PIECES]
    Py_ssize_t size[MAX_PIECES]
    int count
    Py_ssize_t total


cdef inline void _add(Pieces* p, const char* data, Py_ssize_t size) noexcept nogil:
    p.data[p.count] = data
    p.size[p.count] = size
    p.count += 1
    p.total += size


cdef inline void _add_bytes(Pieces* p, bytes value) noexcept:
    _add(p, PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value))


cdef bytes _join(Pieces* p):
    cdef bytes out = PyBytes_FromStringAndSize(NULL, p.total)
    cdef char* at = PyBytes_AS_STRING(out)
    cdef int i
    for i in range(p.count):
        memcpy(at, p.data[i], p.size[i])
        at += p.size[i]
    return out


cdef inline bint _plain(uint8_t c) noexcept nogil:
    """A byte that both wires' JSON strings copy as is (ASCII, no control, '"', '\\', '<', '>', '&')."""
    return 0x20 <= c < 0x80 and c != 34 and c != 92 and c != 60 and c != 62 and c != 38


cdef inline bint _key_char(uint8_t c) noexcept nogil:
    # [A-Za-z0-9_:.~-]: v1's MST key characters (jetstream/_core/mst.pyx), none needs a JSON escape
    return ((65 <= c <= 90) or (97 <= c <= 122) or (48 <= c <= 57) or c == 95 or c == 58 or c == 46
            or c == 126 or c == 45)


cdef inline bint _all_plain(const char* s, Py_ssize_t n, bint allow_slash) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        if not _plain(<uint8_t>s[i]) or (not allow_slash and s[i] == 47):
            return False
    return True


cdef inline bint _all_key_chars(const char* s, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    if n == 0:
        return False
    for i in range(n):
        if not _key_char(<uint8_t>s[i]):
            return False
    return True


cdef inline bint _ascii_text(object value, const char** data, Py_ssize_t* size):
    if not (PyUnicode_CheckExact(value) and PyUnicode_IS_ASCII(value)):
        return False
    data[0] = <const char*>PyUnicode_DATA(value)
    size[0] = PyUnicode_GET_LENGTH(value)
    return True


cdef bint _read_row(object event, Row* row, bint with_seq):
    """Fill `row` from a commit row on the fast path; False: the reference decides this row."""
    if type(event) is not _SegmentEvent:
        return False  # a plain tuple has no fields by name: the reference's AttributeError
    kind = <object>PyTuple_GET_ITEM(event, 3)
    if type(kind) is not int or not (kind == _CREATE or kind == _UPDATE or kind == _DELETE or kind == _CREATE_RESYNC):
        return False
    row.kind = kind
    time_us = <object>PyTuple_GET_ITEM(event, 1)
    if type(time_us) is not int or not 0 <= time_us <= _MAX_INT64:
        return False
    row.time_us = time_us
    if with_seq:
        seq = <object>PyTuple_GET_ITEM(event, 0)
        if type(seq) is not int or not 0 <= seq <= _MAX_INT64:
            return False
        row.seq = seq
    if not (_ascii_text(<object>PyTuple_GET_ITEM(event, 4), &row.did, &row.did_size)
            and _ascii_text(<object>PyTuple_GET_ITEM(event, 7), &row.rev, &row.rev_size)
            and _all_plain(row.did, row.did_size, True) and _all_plain(row.rev, row.rev_size, True)):
        return False
    collection = <object>PyTuple_GET_ITEM(event, 5)
    rkey = <object>PyTuple_GET_ITEM(event, 6)
    if not (PyUnicode_CheckExact(collection) and PyUnicode_CheckExact(rkey)):
        return False
    if row.kind == _DELETE:
        # The reference splits "collection/rkey" on '/': a part holding one is its business.
        return (_ascii_text(collection, &row.collection, &row.collection_size)
                and _ascii_text(rkey, &row.rkey, &row.rkey_size)
                and _all_plain(row.collection, row.collection_size, False)
                and _all_plain(row.rkey, row.rkey_size, False))
    if not PyBytes_CheckExact(<object>PyTuple_GET_ITEM(event, 8)):
        return False
    row.path_ok = (_ascii_text(collection, &row.collection, &row.collection_size)
                   and _ascii_text(rkey, &row.rkey, &row.rkey_size)
                   and row.collection_size + 1 + row.rkey_size <= _MST_KEY_MAX
                   and _all_key_chars(row.collection, row.collection_size)
                   and _all_key_chars(row.rkey, row.rkey_size))
    return True


cdef void _cid_text(char* out, const uint8_t* cid) noexcept nogil:
    """go-cid String() of a 36-byte CIDv1: "b" + lower base32 without padding (CID_TEXT_SIZE bytes)."""
    cdef uint64_t acc = 0
    cdef int bits = 0, i
    cdef Py_ssize_t at = 1
    out[0] = b'b'
    for i in range(CID_SIZE):
        acc = ((acc << 8) | cid[i]) & 0xFFFF
        bits += 8
        while bits >= 5:
            bits -= 5
            out[at] = _B32[(acc >> bits) & 31]
            at += 1
    if bits > 0:
        out[at] = _B32[(acc << (5 - bits)) & 31]


cdef inline Py_ssize_t _write_decimal(char* out, uint64_t value) noexcept nogil:
    cdef char digits[24]
    cdef Py_ssize_t size = 0, i
    while True:
        digits[size] = <char>(48 + value % 10)
        size += 1
        value //= 10
        if value == 0:
            break
    for i in range(size):
        out[i] = digits[size - 1 - i]
    return size


cdef const char* _operation(int kind) noexcept nogil:
    if kind == _UPDATE:
        return b"update"
    if kind == _DELETE:
        return b"delete"
    return b"create"


cdef void _v1_head(Pieces* p, Row* row) noexcept:
    """PendingEvent.json_head: b'{"did":"…","time_us":'."""
    _add(p, b'{"did":"', 8)
    _add(p, row.did, row.did_size)
    _add(p, b'","time_us":', 12)


cdef void _v1_tail(Pieces* p, Row* row, bytes record, const char* cid_text) noexcept:
    """PendingEvent.json_tail: the commit object (omitempty rev, collection, rkey)."""
    _add(p, b',"kind":"commit","commit":{', 27)
    if row.rev_size:
        _add(p, b'"rev":"', 7)
        _add(p, row.rev, row.rev_size)
        _add(p, b'",', 2)
    _add(p, b'"operation":"', 13)
    _add(p, _operation(row.kind), 6)
    _add(p, b'"', 1)
    if row.collection_size:
        _add(p, b',"collection":"', 15)
        _add(p, row.collection, row.collection_size)
        _add(p, b'"', 1)
    if row.rkey_size:
        _add(p, b',"rkey":"', 9)
        _add(p, row.rkey, row.rkey_size)
        _add(p, b'"', 1)
    if record is not None:
        _add(p, b',"record":', 10)
        _add_bytes(p, record)
        _add(p, b',"cid":"', 8)
        _add(p, cid_text, CID_TEXT_SIZE)
        _add(p, b'"', 1)
    _add(p, b"}}", 2)


cdef void _v2_head(Pieces* p, Row* row, bytes record_v2, const char* cid_text) noexcept:
    """The #commit frame up to its seq (wire_v2.commit_parts' head); a delete has no cid or record."""
    _add_bytes(p, _V2_PREFIX)
    if record_v2 is not None:
        _add(p, b',"cid":"', 8)
        _add(p, cid_text, CID_TEXT_SIZE)
        _add(p, b'"', 1)
    _add(p, b',"collection":"', 15)
    _add(p, row.collection, row.collection_size)
    _add(p, b'","did":"', 9)
    _add(p, row.did, row.did_size)
    _add(p, b'","operation":"', 15)
    _add(p, _operation(row.kind), 6)
    _add(p, b'"', 1)
    if record_v2 is not None:
        _add(p, b',"record":', 10)
        _add_bytes(p, record_v2)
    _add(p, b',"rev":"', 8)
    _add(p, row.rev, row.rev_size)
    _add(p, b'","rkey":"', 10)
    _add(p, row.rkey, row.rkey_size)
    _add(p, b'","seq":', 8)


# -- sha-256 of a record block ---------------------------------------------------------------------------
# The block's CID is its sha-256. hashlib costs ~0.8 µs a call, nearly all of it the OpenSSL context
# around ~0.15 µs of hashing; x86-64 CPUs with the SHA extensions hash here in C directly. Elsewhere
# (another CPU or compiler) `_fast_sha256` answers 0 and hashlib does it. Every CID the fast path
# writes is compared with the reference's hashlib one (tests/archive/test_render_fast.py).
cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    #include <cpuid.h>
    #include <immintrin.h>
    static const uint32_t jss_sha256_k[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

    __attribute__((target("sha,sse4.1,ssse3")))
    static void jss_sha256_blocks(uint32_t state[8], const uint8_t* data, size_t blocks) {
        const __m128i swap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
        __m128i tmp = _mm_loadu_si128((const __m128i*)&state[0]);
        __m128i state1 = _mm_loadu_si128((const __m128i*)&state[4]);
        tmp = _mm_shuffle_epi32(tmp, 0xB1);
        state1 = _mm_shuffle_epi32(state1, 0x1B);
        __m128i state0 = _mm_alignr_epi8(tmp, state1, 8);  /* ABEF */
        state1 = _mm_blend_epi16(state1, tmp, 0xF0);       /* CDGH */
        while (blocks--) {
            __m128i abef = state0, cdgh = state1, w[4], m, k;
            int i;
            for (i = 0; i < 16; i++) {
                if (i < 4) {
                    m = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i*)(data + 16 * i)), swap);
                } else {
                    m = _mm_sha256msg1_epu32(w[(i - 4) & 3], w[(i - 3) & 3]);
                    m = _mm_add_epi32(m, _mm_alignr_epi8(w[(i - 1) & 3], w[(i - 2) & 3], 4));
                    m = _mm_sha256msg2_epu32(m, w[(i - 1) & 3]);
                }
                w[i & 3] = m;
                k = _mm_add_epi32(m, _mm_loadu_si128((const __m128i*)&jss_sha256_k[4 * i]));
                state1 = _mm_sha256rnds2_epu32(state1, state0, k);
                state0 = _mm_sha256rnds2_epu32(state0, state1, _mm_shuffle_epi32(k, 0x0E));
            }
            state0 = _mm_add_epi32(state0, abef);
            state1 = _mm_add_epi32(state1, cdgh);
            data += 64;
        }
        tmp = _mm_shuffle_epi32(state0, 0x1B);              /* FEBA */
        state1 = _mm_shuffle_epi32(state1, 0xB1);           /* DCHG */
        state0 = _mm_blend_epi16(tmp, state1, 0xF0);        /* DCBA */
        state1 = _mm_alignr_epi8(state1, tmp, 8);           /* HGFE */
        _mm_storeu_si128((__m128i*)&state[0], state0);
        _mm_storeu_si128((__m128i*)&state[4], state1);
    }

    static int jss_sha_ni_checked = 0, jss_sha_ni = 0;

    static int jss_have_sha_ni(void) {
        unsigned int a, b, c, d;
        if (!jss_sha_ni_checked) {
            jss_sha_ni_checked = 1;
            if (__get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 19)) && (c & (1u << 9))
                    && __get_cpuid_count(7, 0, &a, &b, &c, &d) && (b & (1u << 29)))
                jss_sha_ni = 1;
        }
        return jss_sha_ni;
    }

    /* sha-256 of data[0:size] into out (32 bytes); 0 when this CPU cannot (the caller uses hashlib). */
    static int jss_fast_sha256(const uint8_t* data, size_t size, uint8_t* out) {
        uint32_t state[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                             0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
        uint8_t last[128];
        size_t full = size / 64, rest = size % 64, tail_blocks, i;
        uint64_t bits = (uint64_t)size * 8;
        if (!jss_have_sha_ni())
            return 0;
        jss_sha256_blocks(state, data, full);
        memset(last, 0, sizeof(last));
        memcpy(last, data + full * 64, rest);
        last[rest] = 0x80;
        tail_blocks = rest < 56 ? 1 : 2;
        for (i = 0; i < 8; i++)
            last[tail_blocks * 64 - 1 - i] = (uint8_t)(bits >> (8 * i));
        jss_sha256_blocks(state, last, tail_blocks);
        for (i = 0; i < 8; i++) {
            out[4 * i] = (uint8_t)(state[i] >> 24);
            out[4 * i + 1] = (uint8_t)(state[i] >> 16);
            out[4 * i + 2] = (uint8_t)(state[i] >> 8);
            out[4 * i + 3] = (uint8_t)state[i];
        }
        return 1;
    }
    #else
    static int jss_fast_sha256(const uint8_t* data, size_t size, uint8_t* out) {
        (void)data; (void)size; (void)out;
        return 0;
    }
    #endif
    """
    int jss_fast_sha256(const uint8_t* data, size_t size, uint8_t* out) nogil


cdef void _digest(bytes payload, char* cid, char* cid_text) except *:
    """The block's CID: binary into `cid`, text into `cid_text`."""
    cdef bytes digest
    memcpy(cid, PyBytes_AS_STRING(_DAG_CBOR_SHA256), 4)
    if not jss_fast_sha256(<const uint8_t*>PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload),
                           <uint8_t*>cid + 4):
        digest = _sha256(payload).digest()
        memcpy(cid + 4, PyBytes_AS_STRING(digest), 32)
    _cid_text(cid_text, <const uint8_t*>cid)


cdef object _v1_record(object payload):
    """v1's record JSON; None when v1's emitter refuses it (ingest dropped such an op: no event)."""
    try:
        return record_to_json(payload)
    except Exception:  # noqa: BLE001 - the reference's one-op commit turns any failure into no event
        return None


cdef object _reference_pending(object event):
    """The reference's one-op commit, run through the Cython commit emitter (same events, faster)."""
    return _ref.one_op_commit(event, _commit_events)


def commit_v1_json(event):
    """v1's exact JSON bytes for a commit row (time_us = the row's witnessed_at); None: no v1 event."""
    cdef Row row
    cdef Pieces p
    cdef char time_text[24]
    cdef char cid[CID_SIZE]
    cdef char cid_text[CID_TEXT_SIZE]
    cdef object record = None
    if not _read_row(event, &row, False):
        pending = _reference_pending(event)
        return None if pending is None else render_json(pending, event.witnessed_at)
    if row.kind != _DELETE:
        if not row.path_ok:
            return None
        payload = <object>PyTuple_GET_ITEM(event, 8)
        _digest(payload, cid, cid_text)
        record = _v1_record(payload)
        if record is None:
            return None
    p.count = 0
    p.total = 0
    _v1_head(&p, &row)
    _add(&p, time_text, _write_decimal(time_text, <uint64_t>row.time_us))
    _v1_tail(&p, &row, record, cid_text)
    return _join(&p)


def commit_v2_frame(event):
    """v2's exact `subscribeEvents` frame for a commit row; b"" when it has none."""
    cdef Row row
    cdef Pieces p
    cdef char seq_text[24]
    cdef char time_text[48]
    cdef char cid[CID_SIZE]
    cdef char cid_text[CID_TEXT_SIZE]
    cdef object record_v2 = None
    if not _read_row(event, &row, True):
        pending = _reference_pending(event)
        return b"" if pending is None else _frame_of_record(pending.v2_record, event.seq, event.witnessed_at)
    if row.kind != _DELETE:
        if not row.path_ok:
            return b""
        payload = <object>PyTuple_GET_ITEM(event, 8)
        _digest(payload, cid, cid_text)
        if _v1_record(payload) is None:
            return b""  # no event at all (ingest dropped the op), so no frame either
        try:
            record_v2 = record_to_json_v2(payload)
        except RecordError:
            return b""  # v2 refuses the record: an event without a frame
        except Exception:  # noqa: BLE001 - as the reference: any other failure is no event
            return b""
    p.count = 0
    p.total = 0
    _v2_head(&p, &row, record_v2, cid_text)
    _add(&p, seq_text, _write_decimal(seq_text, row.seq))
    _add(&p, b',"time":"', 9)
    _add(&p, time_text, _write_time(time_text, row.time_us))
    _add(&p, b'"}}', 3)
    return _join(&p)


def commit_pending(event):
    """The PendingEvent ingest made for a commit row (its v2 record included); None when it made none."""
    cdef Row row
    cdef Pieces head, tail, v2
    cdef char cid[CID_SIZE]
    cdef char cid_text[CID_TEXT_SIZE]
    cdef object record = None, record_v2 = None
    if not _read_row(event, &row, False):
        return _reference_pending(event)
    if row.kind != _DELETE:
        if not row.path_ok:
            return None
        payload = <object>PyTuple_GET_ITEM(event, 8)
        _digest(payload, cid, cid_text)
        record = _v1_record(payload)
        if record is None:
            return None
        try:
            record_v2 = record_to_json_v2(payload)
        except RecordError:
            record_v2 = None  # v2 refuses the record: stored without a frame
        except Exception:  # noqa: BLE001 - as the reference: any other failure is no event
            return None
    head.count = head.total = tail.count = tail.total = v2.count = v2.total = 0
    _v1_head(&head, &row)
    _v1_tail(&tail, &row, record, cid_text)
    if row.kind == _DELETE:
        _v2_head(&v2, &row, None, cid_text)
        v2_record = _pack_record((_join(&v2), b',"time":"'))
    elif record_v2 is None:
        v2_record = _pack_record(None, PyBytes_FromStringAndSize(cid, CID_SIZE), payload)
    else:
        _v2_head(&v2, &row, record_v2, cid_text)
        v2_record = _pack_record((_join(&v2), b',"time":"'), PyBytes_FromStringAndSize(cid, CID_SIZE), payload)
    return _PendingEvent(<object>PyTuple_GET_ITEM(event, 4), _KIND_COMMIT, <object>PyTuple_GET_ITEM(event, 5),
                         _join(&head), _join(&tail), v2_record)


# -- commit_record_fields (the archive writer's per-event parse) ---------------------------------------

cdef object _record_fields_reference = _ref.commit_record_fields
cdef object _KIND_CREATE_OBJ = _format.KIND_CREATE
cdef object _KIND_UPDATE_OBJ = _format.KIND_UPDATE
cdef object _KIND_DELETE_OBJ = _format.KIND_DELETE
cdef Py_ssize_t _RECORD_HEADER = wire_v2.RECORD_HEAD.size  # >BIIB: the reads below take its fields at 1, 5, 9
assert _RECORD_HEADER == 10
cdef const char* _OPERATION_AT = b',"operation":"'
cdef const char* _REV_AT = b',"rev":'
cdef const char* _RKEY_AT = b',"rkey":'
cdef const char* _SEQ_AT = b',"seq":'


cdef inline bint _same(const char* data, const char* text, Py_ssize_t size) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(size):
        if data[i] != text[i]:
            return False
    return True


cdef Py_ssize_t _find(const char* data, Py_ssize_t size, const char* text, Py_ssize_t length) noexcept nogil:
    """bytes.find(text) within data[:size], -1 when absent."""
    cdef Py_ssize_t i
    for i in range(size - length + 1):
        if data[i] == text[0] and _same(data + i, text, length):
            return i
    return -1


cdef Py_ssize_t _rfind(const char* data, Py_ssize_t end, const char* text, Py_ssize_t length) noexcept nogil:
    """bytes.rfind(text, 0, end), -1 when absent."""
    cdef Py_ssize_t i
    for i in range(end - length, -1, -1):
        if data[i] == text[0] and _same(data + i, text, length):
            return i
    return -1


cdef inline bint _plain_quoted(const char* data, Py_ssize_t size) noexcept nogil:
    """A JSON string with nothing escaped and only ASCII inside: its value is data[1:size-1] as is."""
    cdef Py_ssize_t i
    if size < 2 or data[0] != 34 or data[size - 1] != 34:
        return False
    for i in range(1, size - 1):
        if data[i] == 92 or <uint8_t>data[i] >= 0x80:
            return False
    return True


def commit_record_fields(record):
    """(kind, rev, rkey, payload) of a #commit's stored v2 record, as the reference's
    `commit_record_fields`; the usual shape (plain ASCII rev and rkey, a known operation) in C,
    anything else by the reference itself."""
    cdef const char* data
    cdef const char* head
    cdef Py_ssize_t size, head_length, tail_length, cid_length, payload_at
    cdef Py_ssize_t operation, rkey_at, rev_at, end
    cdef object kind
    if not PyBytes_CheckExact(record) or PyBytes_GET_SIZE(record) < _RECORD_HEADER:
        return _record_fields_reference(record)
    data = PyBytes_AS_STRING(record)
    size = PyBytes_GET_SIZE(record)
    head_length = <Py_ssize_t>((<uint64_t>(<uint8_t>data[1]) << 24) | (<uint64_t>(<uint8_t>data[2]) << 16) |
                               (<uint64_t>(<uint8_t>data[3]) << 8) | <uint8_t>data[4])
    tail_length = <Py_ssize_t>((<uint64_t>(<uint8_t>data[5]) << 24) | (<uint64_t>(<uint8_t>data[6]) << 16) |
                               (<uint64_t>(<uint8_t>data[7]) << 8) | <uint8_t>data[8])
    cid_length = <uint8_t>data[9]
    payload_at = _RECORD_HEADER + head_length + tail_length + cid_length
    if head_length == 0 or payload_at > size:
        return _record_fields_reference(record)
    head = data + _RECORD_HEADER
    if head_length < 7 or not _same(head + head_length - 7, _SEQ_AT, 7):
        return _record_fields_reference(record)
    end = head_length - 7
    operation = _find(head, end, _OPERATION_AT, 14)
    if operation < 0:
        return _record_fields_reference(record)
    operation += 14
    if operation + 7 <= end and _same(head + operation, b'create"', 7):
        kind = _KIND_CREATE_OBJ
    elif operation + 7 <= end and _same(head + operation, b'update"', 7):
        kind = _KIND_UPDATE_OBJ
    elif operation + 7 <= end and _same(head + operation, b'delete"', 7):
        kind = _KIND_DELETE_OBJ
    else:
        return _record_fields_reference(record)
    rkey_at = _rfind(head, end, _RKEY_AT, 8)
    rev_at = _rfind(head, rkey_at, _REV_AT, 7) if rkey_at >= 0 else -1
    if rev_at < 0 or not _plain_quoted(head + rev_at + 7, rkey_at - rev_at - 7) \
            or not _plain_quoted(head + rkey_at + 8, end - rkey_at - 8):
        return _record_fields_reference(record)
    return (kind, _text(<const uint8_t*>head + rev_at + 8, rkey_at - rev_at - 9, True),
            _text(<const uint8_t*>head + rkey_at + 9, end - rkey_at - 10, True),
            PyBytes_FromStringAndSize(data + payload_at, size - payload_at))
