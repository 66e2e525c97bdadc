# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""DAG-CBOR record bytes -> Jetstream v1 (or v2) record JSON bytes, in one pass over the block.

Owns: the fast twin of `jetstream/_py/record_json.py` (read that module's docstring for
the v1 rules and every lenient/strict choice, and its v2 section for Jetstream v2's
rendering; this file implements exactly the same ones, with the same RecordError
reasons, and takes its limits from there so the two can never drift). Both modes
(`record_to_json`, `record_to_json_v2`) run the same parse functions, compiled once per
mode through the fused type `Mode`: each rule difference is written once, as an
`if Mode is V2Mode:` that Cython decides at compile time, so neither mode's rules leak
into the other or cost it a branch. Values are written straight into one growable C
buffer; a map whose keys are not already in bytewise order is rewritten in place once
its entries are known.
It must never allocate Python objects on the common path (rare shapes - $link/$bytes
maps, legacy blobs, CIDv0 - go through the reference helpers), never recurse deeper
than MAX_DEPTH, and never read past the input buffer.
"""
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.math cimport NAN, floor, isinf, isnan, ldexp
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, qsort, realloc
from libc.string cimport memcmp, memcpy

from jetstream._py import record_json as _ref
from jetstream.errors import RecordError

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object unicode, Py_ssize_t* size) except NULL

cdef Py_ssize_t MAX_RECORD_BYTES = _ref.MAX_RECORD_BYTES
cdef uint64_t MAX_STRING_BYTES = _ref.MAX_STRING_BYTES
cdef uint64_t MAX_CONTAINER_LEN = _ref.MAX_CONTAINER_LEN
cdef uint64_t MAX_KEY_BYTES = _ref.MAX_KEY_BYTES
cdef Py_ssize_t MAX_DEPTH = _ref.MAX_DEPTH
cdef uint64_t V2_MAX_ITEM = _ref.V2_MAX_ITEM
cdef Py_ssize_t V2_MAX_DEPTH = _ref.V2_MAX_DEPTH

# Value kinds, numbered as in the reference module.
cdef enum:
    K_NULL = 0
    K_BOOL = 1
    K_INT = 2
    K_FLOAT = 3
    K_TEXT = 4
    K_BYTES = 5
    K_TAGCID = 6
    K_ARRAY = 7
    K_MAP = 8
    K_LINKMAP = 9
    K_BYTESMAP = 10
    K_BLOB = 11
    K_LEGACYBLOB = 12


cdef struct OutBuf:
    char* data
    Py_ssize_t len
    Py_ssize_t cap


cdef struct ValueInfo:
    int kind
    Py_ssize_t raw_start  # input offsets of the payload: TEXT/BYTES content, TAGCID CID bytes
    Py_ssize_t raw_end
    Py_ssize_t json_start  # output offsets of the value's JSON
    Py_ssize_t json_end


cdef struct Entry:
    const uint8_t* key
    Py_ssize_t key_len
    Py_ssize_t seg_start  # output offsets of `"key":value` (no comma)
    Py_ssize_t seg_end
    ValueInfo value


cdef struct Parser:
    const uint8_t* buf
    Py_ssize_t pos
    Py_ssize_t end
    OutBuf out
    Entry* entries  # one stack shared by all open maps: a map owns [base, top)
    Py_ssize_t entries_top
    Py_ssize_t entries_cap


# The two rule sets, as types: a function taking `Mode* mode` is compiled once for each, and
# `if Mode is V2Mode:` picks a rule at compile time. The pointer is only a type tag (NULL).
cdef struct V1Mode:
    char unused


cdef struct V2Mode:
    char unused


ctypedef fused Mode:
    V1Mode
    V2Mode


cdef V1Mode* V1 = NULL  # Jetstream v1: indigo atdata + goccy/go-json (lenient decoding)
cdef V2Mode* V2 = NULL  # Jetstream v2: atmos cbor.ReadValue + Go encoding/json (strict decoding)


# ---------------------------------------------------------------------------
# output buffer
# ---------------------------------------------------------------------------

cdef int ob_reserve(OutBuf* b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t need = b.len + extra
    cdef Py_ssize_t cap
    cdef char* grown
    if need <= b.cap:
        return 0
    cap = b.cap * 2 if b.cap else 256
    while cap < need:
        cap *= 2
    grown = <char*>realloc(b.data, cap)
    if grown == NULL:
        raise MemoryError()
    b.data = grown
    b.cap = cap
    return 0


cdef inline int ob_write(OutBuf* b, const char* s, Py_ssize_t n) except -1:
    if b.len + n > b.cap:
        ob_reserve(b, n)
    memcpy(b.data + b.len, s, n)
    b.len += n
    return 0


cdef inline int ob_byte(OutBuf* b, char c) except -1:
    if b.len + 1 > b.cap:
        ob_reserve(b, 1)
    b.data[b.len] = c
    b.len += 1
    return 0


cdef int ob_int(OutBuf* b, int64_t value) except -1:
    cdef char digits[24]
    cdef int n = 0
    cdef uint64_t magnitude
    if value < 0:
        magnitude = <uint64_t>0 - <uint64_t>value
    else:
        magnitude = <uint64_t>value
    while True:
        digits[23 - n] = <char>(48 + magnitude % 10)
        n += 1
        magnitude //= 10
        if magnitude == 0:
            break
    if value < 0:
        digits[23 - n] = b'-'
        n += 1
    return ob_write(b, &digits[24 - n], n)


cdef const char* B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
cdef const char* B32_LOWER = b"abcdefghijklmnopqrstuvwxyz234567"


cdef int ob_base64_nopad(OutBuf* b, const uint8_t* s, Py_ssize_t n) except -1:
    cdef Py_ssize_t i = 0
    cdef uint32_t triple
    cdef char* w
    ob_reserve(b, (n + 2) // 3 * 4)
    w = b.data + b.len
    while i + 3 <= n:
        triple = (<uint32_t>s[i] << 16) | (<uint32_t>s[i + 1] << 8) | s[i + 2]
        w[0] = B64_ALPHABET[(triple >> 18) & 63]
        w[1] = B64_ALPHABET[(triple >> 12) & 63]
        w[2] = B64_ALPHABET[(triple >> 6) & 63]
        w[3] = B64_ALPHABET[triple & 63]
        w += 4
        i += 3
    if n - i == 1:
        triple = <uint32_t>s[i] << 16
        w[0] = B64_ALPHABET[(triple >> 18) & 63]
        w[1] = B64_ALPHABET[(triple >> 12) & 63]
        w += 2
    elif n - i == 2:
        triple = (<uint32_t>s[i] << 16) | (<uint32_t>s[i + 1] << 8)
        w[0] = B64_ALPHABET[(triple >> 18) & 63]
        w[1] = B64_ALPHABET[(triple >> 12) & 63]
        w[2] = B64_ALPHABET[(triple >> 6) & 63]
        w += 3
    b.len = w - b.data
    return 0


cdef int ob_cid_string(OutBuf* b, const uint8_t* cid, Py_ssize_t n) except -1:
    """go-cid String(); CIDv1 in C (base32 lower), CIDv0 via the reference (base58)."""
    cdef Py_ssize_t i
    cdef uint64_t acc = 0
    cdef int bits = 0
    cdef bytes text
    if n == 34 and cid[0] == 0x12 and cid[1] == 0x20:
        text = _ref.cid_to_string(PyBytes_FromStringAndSize(<const char*>cid, n)).encode("ascii")
        return ob_write(b, PyBytes_AS_STRING(text), PyBytes_GET_SIZE(text))
    ob_reserve(b, 1 + (n * 8 + 4) // 5)
    b.data[b.len] = b'b'
    b.len += 1
    for i in range(n):
        acc = (acc << 8) | cid[i]
        bits += 8
        while bits >= 5:
            bits -= 5
            b.data[b.len] = B32_LOWER[(acc >> bits) & 31]
            b.len += 1
    if bits > 0:
        b.data[b.len] = B32_LOWER[(acc << (5 - bits)) & 31]
        b.len += 1
    return 0


# ---------------------------------------------------------------------------
# Go string escaping
# ---------------------------------------------------------------------------

# 0: copy as is; 1: needs an escape; 2: first byte of a UTF-8 sequence (validate).
cdef uint8_t ESCAPE_CLASS[256]
cdef int _init_escape_class():
    cdef int c
    for c in range(256):
        if c < 0x20 or c == 34 or c == 92 or c == 60 or c == 62 or c == 38:
            ESCAPE_CLASS[c] = 1
        elif c >= 0x80:
            ESCAPE_CLASS[c] = 2
        else:
            ESCAPE_CLASS[c] = 0
    return 0
_init_escape_class()

cdef const char* HEX_DIGITS = b"0123456789abcdef"


cdef inline Py_ssize_t utf8_sequence_length(const uint8_t* s, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """Length of the valid UTF-8 sequence at s[i] (Go utf8.DecodeRune rules), 0 if invalid."""
    cdef uint8_t c = s[i]
    cdef uint8_t lo = 0x80
    cdef uint8_t hi = 0xBF
    cdef Py_ssize_t need
    if c < 0xC2:
        return 0
    if c < 0xE0:
        need = 1
    elif c < 0xF0:
        need = 2
        if c == 0xE0:
            lo = 0xA0
        elif c == 0xED:
            hi = 0x9F
    elif c < 0xF5:
        need = 3
        if c == 0xF0:
            lo = 0x90
        elif c == 0xF4:
            hi = 0x8F
    else:
        return 0
    if i + need >= n:
        return 0  # truncated: every byte left is reported invalid on its own
    if s[i + 1] < lo or s[i + 1] > hi:
        return 0
    if need >= 2 and (s[i + 2] < 0x80 or s[i + 2] > 0xBF):
        return 0
    if need == 3 and (s[i + 3] < 0x80 or s[i + 3] > 0xBF):
        return 0
    return need + 1


cdef int ob_escape_byte(OutBuf* b, uint8_t c, Mode* mode) except -1:
    cdef char esc[6]
    if Mode is V2Mode:  # encoding/json (Go >= 1.22) writes \b and \f short; goccy, \u0008 and \u000c
        if c == 8:
            return ob_write(b, b"\\b", 2)
        if c == 12:
            return ob_write(b, b"\\f", 2)
    if c == 10:
        return ob_write(b, b"\\n", 2)
    if c == 13:
        return ob_write(b, b"\\r", 2)
    if c == 9:
        return ob_write(b, b"\\t", 2)
    if c == 34:
        return ob_write(b, b'\\"', 2)
    if c == 92:
        return ob_write(b, b"\\\\", 2)
    esc[0] = b'\\'
    esc[1] = b'u'
    esc[2] = b'0'
    esc[3] = b'0'
    esc[4] = HEX_DIGITS[c >> 4]
    esc[5] = HEX_DIGITS[c & 15]
    return ob_write(b, esc, 6)


cdef int ob_go_string(OutBuf* b, const uint8_t* s, Py_ssize_t n, Mode* mode) except -1:
    """`s` as a Go HTML-safe JSON string (quotes included): goccy/go-json's (v1), encoding/json's (v2).

    Invalid UTF-8: v1 writes one \\ufffd per invalid byte; v2 raises RecordError("invalid_utf8").
    """
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t run_start = 0
    cdef Py_ssize_t seq
    cdef uint8_t cls
    ob_reserve(b, n + 2)
    b.data[b.len] = b'"'
    b.len += 1
    while True:
        # Skip the run of bytes written as they are, four at a time while they last.
        while i + 4 <= n and (ESCAPE_CLASS[s[i]] | ESCAPE_CLASS[s[i + 1]] | ESCAPE_CLASS[s[i + 2]]
                              | ESCAPE_CLASS[s[i + 3]]) == 0:
            i += 4
        while i < n and ESCAPE_CLASS[s[i]] == 0:
            i += 1
        if i == n:
            break
        cls = ESCAPE_CLASS[s[i]]
        if cls == 2:
            seq = utf8_sequence_length(s, i, n)
            # U+2028 / U+2029 are E2 80 A8 / E2 80 A9; everything else valid stays raw.
            if seq == 3 and s[i] == 0xE2 and s[i + 1] == 0x80 and (s[i + 2] == 0xA8 or s[i + 2] == 0xA9):
                ob_write(b, <const char*>s + run_start, i - run_start)
                ob_write(b, b"\\u2028" if s[i + 2] == 0xA8 else b"\\u2029", 6)
                i += 3
                run_start = i
                continue
            if seq > 0:
                i += seq
                continue
            if Mode is V2Mode:
                return fail("invalid_utf8")
            else:
                ob_write(b, <const char*>s + run_start, i - run_start)
                ob_write(b, b"\\ufffd", 6)
                i += 1
                run_start = i
                continue
        ob_write(b, <const char*>s + run_start, i - run_start)
        ob_escape_byte(b, s[i], mode)
        i += 1
        run_start = i
    ob_write(b, <const char*>s + run_start, n - run_start)
    ob_byte(b, b'"')
    return 0


cdef bint utf8_valid(const uint8_t* s, Py_ssize_t n) noexcept nogil:
    """Go utf8.Valid."""
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t seq
    while i < n:
        if s[i] < 0x80:
            i += 1
            continue
        seq = utf8_sequence_length(s, i, n)
        if seq == 0:
            return False
        i += seq
    return True


# ---------------------------------------------------------------------------
# CBOR reading
# ---------------------------------------------------------------------------

cdef int fail(str reason) except -1:
    raise RecordError(reason)


cdef int read_head(Parser* p, int* major, int* info, uint64_t* argument, Mode* mode) except -1:
    """One CBOR item head. v2 (atmos Decoder.readHeader) also wants minimal heads for major
    types 0-6 and only 64-bit floats; v1 (go-ipld-cbor) takes any head size."""
    cdef uint8_t initial
    cdef int size
    cdef int k
    cdef uint64_t value = 0
    if p.pos >= p.end:
        return fail("truncated")
    initial = p.buf[p.pos]
    p.pos += 1
    major[0] = initial >> 5
    info[0] = initial & 0x1F
    if info[0] < 24:
        argument[0] = info[0]
        return 0
    if info[0] == 31:
        return fail("indefinite_length")
    if info[0] > 27:
        return fail("malformed_cbor")
    if Mode is V2Mode:
        if major[0] == 7 and (info[0] == 25 or info[0] == 26):
            return fail("short_float")
    size = 1 << (info[0] - 24)
    if p.pos + size > p.end:
        return fail("truncated")
    for k in range(size):
        value = (value << 8) | p.buf[p.pos + k]
    p.pos += size
    if Mode is V2Mode:
        if major[0] != 7:
            if (size == 1 and value < 24) or (size == 2 and value < 0x100) \
                    or (size == 4 and value < 0x10000) or (size == 8 and value < 0x100000000):
                return fail("non_minimal")
    argument[0] = value
    return 0


cdef inline int take(Parser* p, uint64_t length, Py_ssize_t* start) except -1:
    if length > <uint64_t>(p.end - p.pos):
        return fail("truncated")
    start[0] = p.pos
    p.pos += <Py_ssize_t>length
    return 0


cdef inline int read_uvarint(const uint8_t* s, Py_ssize_t* pos, Py_ssize_t end, uint64_t* value) noexcept nogil:
    cdef uint64_t result = 0
    cdef int i
    cdef uint8_t byte
    for i in range(9):
        if pos[0] + i >= end:
            return -1
        byte = s[pos[0] + i]
        result |= (<uint64_t>(byte & 0x7F)) << (7 * i)
        if byte < 0x80:
            if byte == 0 and i > 0:
                return -1
            pos[0] += i + 1
            value[0] = result
            return 0
    return -1


cdef bint cid_v1_is_valid(const uint8_t* s, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t pos = 0
    cdef uint64_t version, codec, hash_code, digest_len
    if read_uvarint(s, &pos, n, &version) < 0 or version != 1:
        return False
    if read_uvarint(s, &pos, n, &codec) < 0 or read_uvarint(s, &pos, n, &hash_code) < 0:
        return False
    if read_uvarint(s, &pos, n, &digest_len) < 0:
        return False
    return digest_len == <uint64_t>(n - pos)


cdef bint cid_bytes_valid(const uint8_t* s, Py_ssize_t n) noexcept nogil:
    if n > 2 and s[0] == 0x12 and s[1] == 0x20:
        return n == 34
    return n > 0 and cid_v1_is_valid(s, n)


cdef inline bint cid_v2_valid(const uint8_t* c, uint64_t length) noexcept nogil:
    """atmos readCIDLink: 0x00 + a 36-byte CIDv1 (dag-cbor or raw codec, sha2-256)."""
    return length == 37 and c[0] == 0 and c[1] == 1 and (c[2] == 0x71 or c[2] == 0x55) \
        and c[3] == 0x12 and c[4] == 0x20


cdef int parse_link(Parser* p, uint64_t tag, ValueInfo* info, Mode* mode) except -1:
    """Tag `tag`'s content, which must be a CID link (tag 42: a byte string 0x00 + CID)."""
    cdef int major = 0, minor = 0
    cdef uint64_t length = 0
    cdef Py_ssize_t start = 0
    if tag != 42:
        return fail("unsupported_tag")
    read_head(p, &major, &minor, &length, mode)
    if major != 2:
        return fail("bad_cid")
    if Mode is V2Mode:
        if length > V2_MAX_ITEM:
            return fail("string_too_long")
    take(p, length, &start)
    if Mode is V2Mode:
        if not cid_v2_valid(p.buf + start, length):
            return fail("bad_cid")
    else:
        if length == 0 or p.buf[start] != 0 or not cid_bytes_valid(p.buf + start + 1, <Py_ssize_t>length - 1):
            return fail("bad_cid")
    info.kind = K_TAGCID
    info.raw_start = start + 1
    info.raw_end = start + <Py_ssize_t>length
    ob_write(&p.out, b'{"$link":"', 10)
    ob_cid_string(&p.out, p.buf + info.raw_start, info.raw_end - info.raw_start)
    return ob_write(&p.out, b'"}', 2)


cdef double half_to_double(uint16_t h) noexcept nogil:
    cdef int exponent = (h >> 10) & 0x1F
    cdef int mantissa = h & 0x3FF
    cdef double value
    if exponent == 0:
        value = ldexp(mantissa, -24)
    elif exponent == 31:
        value = NAN  # inf or NaN: never an integral float either way
    else:
        value = ldexp(mantissa + 1024, exponent - 25)
    return -value if h & 0x8000 else value


cdef int parse_simple(Parser* p, int info, uint64_t argument, ValueInfo* vinfo, Mode* mode) except -1:
    cdef double value
    cdef float single
    cdef uint32_t bits32
    cdef bytes text
    if info == 20:
        vinfo.kind = K_BOOL
        return ob_write(&p.out, b"false", 5)
    if info == 21:
        vinfo.kind = K_BOOL
        return ob_write(&p.out, b"true", 4)
    if info == 22:
        vinfo.kind = K_NULL
        return ob_write(&p.out, b"null", 4)
    vinfo.kind = K_FLOAT
    if Mode is V2Mode:
        if info != 27:  # read_head refused the short floats
            return fail("unsupported_simple")
        memcpy(&value, &argument, 8)
        if isnan(value) or isinf(value):
            return fail("non_finite_float")
        # Floats are outside the atproto data model (no real record has one): the reference's
        # formatter is exact and this path is rare, so it is not duplicated in C.
        text = _ref.go_float_json(value)
        return ob_write(&p.out, PyBytes_AS_STRING(text), PyBytes_GET_SIZE(text))
    else:
        if info == 25:
            value = half_to_double(<uint16_t>argument)
        elif info == 26:
            bits32 = <uint32_t>argument
            memcpy(&single, &bits32, 4)
            value = single
        elif info == 27:
            memcpy(&value, &argument, 8)
        else:
            return fail("unsupported_simple")
        # atdata parseFloat: integral and inside int64 (a float64 -> int64 round trip).
        if isnan(value) or isinf(value) or value != floor(value) \
                or value < -9223372036854775808.0 or value >= 9223372036854775808.0:
            return fail("non_integral_float")
        return ob_int(&p.out, <int64_t>value)


# ---------------------------------------------------------------------------
# maps
# ---------------------------------------------------------------------------

cdef int compare_entry_keys(const void* a, const void* b) noexcept nogil:
    cdef const Entry* x = <const Entry*>a
    cdef const Entry* y = <const Entry*>b
    cdef Py_ssize_t n = x.key_len if x.key_len < y.key_len else y.key_len
    cdef int c = memcmp(x.key, y.key, n)
    if c != 0:
        return c
    return -1 if x.key_len < y.key_len else (1 if x.key_len > y.key_len else 0)


cdef int push_entry(Parser* p) except -1:
    cdef Py_ssize_t cap
    cdef Entry* grown
    if p.entries_top < p.entries_cap:
        p.entries_top += 1
        return 0
    cap = p.entries_cap * 2 if p.entries_cap else 64
    grown = <Entry*>realloc(p.entries, cap * sizeof(Entry))
    if grown == NULL:
        raise MemoryError()
    p.entries = grown
    p.entries_cap = cap
    p.entries_top += 1
    return 0


cdef Entry* find_key(Entry* entries, Py_ssize_t count, const char* key, Py_ssize_t key_len) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(count):
        if entries[i].key_len == key_len and memcmp(entries[i].key, key, key_len) == 0:
            return &entries[i]
    return NULL


cdef inline bytes raw_bytes(Parser* p, ValueInfo* v):
    return PyBytes_FromStringAndSize(<const char*>p.buf + v.raw_start, v.raw_end - v.raw_start)


cdef int write_from(OutBuf* out, const char* saved, Py_ssize_t base, Py_ssize_t start, Py_ssize_t end) except -1:
    return ob_write(out, saved + (start - base), end - start)


cdef int write_link_map(Parser* p, Entry* entries, Py_ssize_t count, ValueInfo* info) except -1:
    cdef Entry* link = find_key(entries, count, b"$link", 5)
    cdef object cid
    if count != 1 or link.value.kind != K_TEXT:
        return fail("bad_link")
    cid = _ref.parse_cid_string(raw_bytes(p, &link.value))
    if cid is None:
        return fail("bad_link")
    info.kind = K_LINKMAP
    ob_write(&p.out, b'{"$link":"', 10)
    ob_cid_string(&p.out, <const uint8_t*>PyBytes_AS_STRING(cid), PyBytes_GET_SIZE(cid))
    return ob_write(&p.out, b'"}', 2)


cdef int write_bytes_map(Parser* p, Entry* entries, Py_ssize_t count, ValueInfo* info) except -1:
    cdef Entry* value = find_key(entries, count, b"$bytes", 6)
    cdef object data
    if count != 1 or value.value.kind != K_TEXT:
        return fail("bad_bytes")
    data = _ref.decode_go_base64(raw_bytes(p, &value.value))
    if data is None:
        return fail("bad_bytes")
    info.kind = K_BYTESMAP
    ob_write(&p.out, b'{"$bytes":"', 11)
    ob_base64_nopad(&p.out, <const uint8_t*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
    return ob_write(&p.out, b'"}', 2)


cdef int write_blob(Parser* p, Entry* entries, Py_ssize_t count, const char* saved,
                    Py_ssize_t base, ValueInfo* info) except -1:
    cdef Entry* size
    cdef Entry* mime_type
    cdef Entry* ref
    if count != 4:
        return fail("bad_blob")
    size = find_key(entries, count, b"size", 4)
    mime_type = find_key(entries, count, b"mimeType", 8)
    ref = find_key(entries, count, b"ref", 3)
    if size == NULL or (size.value.kind != K_INT and size.value.kind != K_FLOAT):
        return fail("bad_blob")
    if mime_type == NULL or mime_type.value.kind != K_TEXT:
        return fail("bad_blob")
    if ref == NULL or (ref.value.kind != K_TAGCID and ref.value.kind != K_LINKMAP):
        return fail("bad_blob")
    info.kind = K_BLOB
    ob_write(&p.out, b'{"$type":"blob","ref":', 22)
    write_from(&p.out, saved, base, ref.value.json_start, ref.value.json_end)
    ob_write(&p.out, b',"mimeType":', 12)
    write_from(&p.out, saved, base, mime_type.value.json_start, mime_type.value.json_end)
    ob_write(&p.out, b',"size":', 8)
    write_from(&p.out, saved, base, size.value.json_start, size.value.json_end)
    return ob_byte(&p.out, b'}')


cdef int write_legacy_blob(Parser* p, Entry* entries, Py_ssize_t count, const char* saved,
                           Py_ssize_t base, ValueInfo* info) except -1:
    cdef Entry* mime_type = find_key(entries, count, b"mimeType", 8)
    cdef Entry* cid_entry = find_key(entries, count, b"cid", 3)
    cdef object cid = None
    cdef int kind = cid_entry.value.kind
    if mime_type.value.kind != K_TEXT:
        return fail("bad_legacy_blob")
    if kind == K_TEXT:
        cid = _ref.parse_cid_string(raw_bytes(p, &cid_entry.value))
    elif kind == K_TAGCID:
        cid = raw_bytes(p, &cid_entry.value)
    elif kind == K_BYTES:
        cid = raw_bytes(p, &cid_entry.value)
        if not cid_bytes_valid(p.buf + cid_entry.value.raw_start, cid_entry.value.raw_end - cid_entry.value.raw_start):
            cid = None
    if cid is None:
        return fail("bad_legacy_blob")
    info.kind = K_LEGACYBLOB
    ob_write(&p.out, b'{"cid":"', 8)
    ob_cid_string(&p.out, <const uint8_t*>PyBytes_AS_STRING(cid), PyBytes_GET_SIZE(cid))
    ob_write(&p.out, b'","mimeType":', 13)
    write_from(&p.out, saved, base, mime_type.value.json_start, mime_type.value.json_end)
    return ob_byte(&p.out, b'}')


cdef int write_sorted_map(Parser* p, Entry* entries, Py_ssize_t count, const char* saved,
                          Py_ssize_t base) except -1:
    cdef Py_ssize_t i
    ob_byte(&p.out, b'{')
    for i in range(count):
        if i:
            ob_byte(&p.out, b',')
        write_from(&p.out, saved, base, entries[i].seg_start, entries[i].seg_end)
    return ob_byte(&p.out, b'}')


cdef int rewrite_map(Parser* p, Entry* entries, Py_ssize_t count, Py_ssize_t base,
                     ValueInfo* info, Mode* mode) except -1:
    """Rewrite the map written at `base` once all its entries (sorted) are known: v1 (atdata
    parseMap) gives special shapes their form first; otherwise, and always in v2, sorted keys."""
    cdef Py_ssize_t saved_len = p.out.len - base
    cdef char* saved = <char*>malloc(saved_len if saved_len else 1)
    cdef Entry* type_entry
    if saved == NULL:
        raise MemoryError()
    memcpy(saved, p.out.data + base, saved_len)
    p.out.len = base
    try:
        if Mode is V1Mode:
            if find_key(entries, count, b"$link", 5) != NULL:
                return write_link_map(p, entries, count, info)
            if find_key(entries, count, b"$bytes", 6) != NULL:
                return write_bytes_map(p, entries, count, info)
            type_entry = find_key(entries, count, b"$type", 5)
            if type_entry != NULL:
                if type_entry.value.kind != K_TEXT:
                    return fail("bad_type")
                if type_entry.value.raw_end - type_entry.value.raw_start == 4 \
                        and memcmp(p.buf + type_entry.value.raw_start, b"blob", 4) == 0:
                    return write_blob(p, entries, count, saved, base, info)
                if type_entry.value.raw_end == type_entry.value.raw_start:
                    return fail("bad_type")
            if count == 2 and find_key(entries, count, b"mimeType", 8) != NULL \
                    and find_key(entries, count, b"cid", 3) != NULL:
                return write_legacy_blob(p, entries, count, saved, base, info)
        return write_sorted_map(p, entries, count, saved, base)
    finally:
        free(saved)


cdef bint is_special_entry(Entry* e, Py_ssize_t count) noexcept nogil:
    """Could this entry make atdata treat its map specially? (else the fast path applies)"""
    cdef Py_ssize_t type_len
    if e.key_len == 5 and memcmp(e.key, b"$link", 5) == 0:
        return True
    if e.key_len == 6 and memcmp(e.key, b"$bytes", 6) == 0:
        return True
    if e.key_len == 5 and memcmp(e.key, b"$type", 5) == 0:
        type_len = e.value.raw_end - e.value.raw_start
        return e.value.kind != K_TEXT or type_len == 0 or type_len == 4
    if count == 2:
        return (e.key_len == 3 and memcmp(e.key, b"cid", 3) == 0) or \
               (e.key_len == 8 and memcmp(e.key, b"mimeType", 8) == 0)
    return False


cdef int compare_canonical(const uint8_t* a, Py_ssize_t a_len, const uint8_t* b, Py_ssize_t b_len) noexcept nogil:
    """DAG-CBOR key order (atmos compareCBORKeys): shorter first, then bytewise."""
    if a_len != b_len:
        return -1 if a_len < b_len else 1
    return memcmp(a, b, a_len)


cdef int check_v2_key(Entry* previous, const uint8_t* key, Py_ssize_t key_len) except -1:
    """atmos readMap's key rules: valid UTF-8, strictly after `previous` (NULL: the first key)."""
    cdef int order
    if not utf8_valid(key, key_len):
        return fail("invalid_utf8")
    if previous != NULL:
        order = compare_canonical(previous.key, previous.key_len, key, key_len)
        if order == 0:
            return fail("duplicate_key")
        if order > 0:
            return fail("unsorted_keys")
    return 0


cdef int parse_map(Parser* p, uint64_t count, Py_ssize_t depth, ValueInfo* info, Mode* mode) except -1:
    """A map's `count` entries, written as an object with its keys in bytewise order.

    v1 (atdata parseMap) takes keys in any order and refuses duplicates once sorted; v2
    (atmos readMap) wants valid UTF-8 keys in strict DAG-CBOR order as they are read.
    """
    cdef Py_ssize_t base = p.out.len
    cdef Py_ssize_t first = p.entries_top
    cdef Py_ssize_t n = <Py_ssize_t>count
    cdef Py_ssize_t i
    cdef int major = 0, minor = 0
    cdef uint64_t key_len
    cdef Py_ssize_t key_start = 0
    cdef Entry* e
    cdef Entry* entries
    cdef ValueInfo value
    cdef bint in_order = True
    cdef bint special = False
    ob_byte(&p.out, b'{')
    for i in range(n):
        read_head(p, &major, &minor, &key_len, mode)
        if major != 3:
            return fail("map_key_not_string")
        if Mode is V2Mode:
            if key_len > V2_MAX_ITEM:
                return fail("key_too_long")
        elif key_len > MAX_KEY_BYTES:
            return fail("key_too_long")
        take(p, key_len, &key_start)
        if Mode is V2Mode:
            check_v2_key(&p.entries[first + i - 1] if i else NULL, p.buf + key_start, <Py_ssize_t>key_len)
        push_entry(p)
        e = &p.entries[p.entries_top - 1]
        e.key = p.buf + key_start
        e.key_len = <Py_ssize_t>key_len
        if i:
            ob_byte(&p.out, b',')
        e.seg_start = p.out.len
        ob_go_string(&p.out, e.key, e.key_len, mode)
        ob_byte(&p.out, b':')
        parse_item(p, depth, &value, mode)
        e = &p.entries[first + i]  # the child may have grown (moved) the entry stack
        e.value = value
        e.seg_end = p.out.len
        if i and in_order and compare_entry_keys(&p.entries[first + i - 1], e) >= 0:
            in_order = False
        if Mode is V1Mode:
            if not special and is_special_entry(e, n):
                special = True
    entries = &p.entries[first]
    if not in_order:
        qsort(entries, n, sizeof(Entry), compare_entry_keys)
        if Mode is V1Mode:  # (v2's key order check has refused duplicates already)
            for i in range(1, n):
                if compare_entry_keys(&entries[i - 1], &entries[i]) == 0:
                    p.entries_top = first
                    return fail("duplicate_key")
    info.kind = K_MAP
    if in_order and not special:
        ob_byte(&p.out, b'}')
    else:
        rewrite_map(p, entries, n, base, info, mode)
    p.entries_top = first
    return 0


# ---------------------------------------------------------------------------
# items
# ---------------------------------------------------------------------------

cdef int parse_item(Parser* p, Py_ssize_t depth, ValueInfo* info, Mode* mode) except -1:
    """One item inside `depth` open containers (v1: atdata parseObject's value rules; v2:
    atmos ReadValue's), its JSON written at info.json_start:json_end."""
    cdef int major = 0, minor = 0
    cdef uint64_t argument = 0
    cdef uint64_t i
    cdef Py_ssize_t start = 0
    cdef ValueInfo child
    if Mode is V2Mode:
        if depth >= V2_MAX_DEPTH:  # atmos counts every value, the top one is 1
            return fail("too_deep")
    info.json_start = p.out.len
    read_head(p, &major, &minor, &argument, mode)
    if major == 0 or major == 1:
        if Mode is V2Mode:
            if argument > <uint64_t>9223372036854775807:
                return fail("int_out_of_range")
        info.kind = K_INT
        # -1 - n for major 1; in v1 both wrap above int64 like a Go int conversion.
        ob_int(&p.out, <int64_t>argument if major == 0 else <int64_t>(~argument))
    elif major == 2 or major == 3:
        if Mode is V2Mode:
            if argument > V2_MAX_ITEM:
                return fail("string_too_long")
        elif major == 3 and argument > MAX_STRING_BYTES:
            return fail("string_too_long")
        take(p, argument, &start)
        info.raw_start = start
        info.raw_end = p.pos
        if major == 3:
            info.kind = K_TEXT
            ob_go_string(&p.out, p.buf + start, p.pos - start, mode)
        else:
            info.kind = K_BYTES
            ob_write(&p.out, b'{"$bytes":"', 11)
            ob_base64_nopad(&p.out, p.buf + start, p.pos - start)
            ob_write(&p.out, b'"}', 2)
    elif major == 4 or major == 5:
        if Mode is V2Mode:
            if argument > V2_MAX_ITEM:
                return fail("container_too_long")
        else:
            if argument > MAX_CONTAINER_LEN:
                return fail("container_too_long")
            if depth + 1 > MAX_DEPTH:
                return fail("too_deep")
        if major == 5:
            parse_map(p, argument, depth + 1, info, mode)
        else:
            info.kind = K_ARRAY
            ob_byte(&p.out, b'[')
            for i in range(argument):
                if i:
                    ob_byte(&p.out, b',')
                parse_item(p, depth + 1, &child, mode)
            ob_byte(&p.out, b']')
    elif major == 6:
        parse_link(p, argument, info, mode)
    else:
        parse_simple(p, minor, argument, info, mode)
    info.json_end = p.out.len
    return 0


cdef bytes emit(object block, Mode* mode):
    """The record JSON of `block` in `mode`, or RecordError(reason).

    v1 wants exactly one map filling a block of at most MAX_RECORD_BYTES; v2 reads one
    value of any kind from the start of the block and ignores the bytes after it.
    """
    cdef Parser p
    cdef ValueInfo top
    cdef Py_buffer view
    cdef bint have_view = False
    if type(block) is bytes:
        p.buf = <const uint8_t*>PyBytes_AS_STRING(block)
        p.end = PyBytes_GET_SIZE(block)
    else:
        PyObject_GetBuffer(block, &view, PyBUF_SIMPLE)
        have_view = True
        p.buf = <const uint8_t*>view.buf
        p.end = view.len
    p.pos = 0
    p.out.data = NULL
    p.out.len = 0
    p.out.cap = 0
    p.entries = NULL
    p.entries_top = 0
    p.entries_cap = 0
    try:
        if Mode is V1Mode:
            if p.end > MAX_RECORD_BYTES:
                raise RecordError("record_too_large")
        ob_reserve(&p.out, p.end + p.end // 2 + 64)
        parse_item(&p, 0, &top, mode)
        if Mode is V1Mode:
            if p.pos != p.end:
                raise RecordError("trailing_bytes")
            if top.kind != K_MAP:
                raise RecordError("top_level_not_object")
        return PyBytes_FromStringAndSize(p.out.data, p.out.len)
    finally:
        free(p.out.data)
        free(p.entries)
        if have_view:
            PyBuffer_Release(&view)


def record_to_json(block) -> bytes:
    """The JSON v1 emitted for a record block (DAG-CBOR), or RecordError(reason)."""
    return emit(block, V1)


cpdef bytes record_to_json_v2(object block):
    """The record JSON Jetstream v2 sends for a record block (DAG-CBOR), or RecordError(reason).

    One value is read from the start of `block`; bytes after it are ignored, as v2 ignores them.
    """
    return emit(block, V2)


def go_json_string(value) -> bytes:
    """`value` (str or bytes) as a goccy/go-json HTML-safe JSON string; see the reference."""
    cdef OutBuf out
    cdef const char* data
    cdef Py_ssize_t size
    if type(value) is str:
        try:
            data = PyUnicode_AsUTF8AndSize(value, &size)
        except UnicodeEncodeError:
            value = (<str>value).encode("utf-8", "surrogatepass")
            data = PyBytes_AS_STRING(value)
            size = PyBytes_GET_SIZE(value)
    else:
        if type(value) is not bytes:
            value = bytes(value)
        data = PyBytes_AS_STRING(value)
        size = PyBytes_GET_SIZE(value)
    out.data = NULL
    out.len = 0
    out.cap = 0
    try:
        ob_go_string(&out, <const uint8_t*>data, size, V1)
        return PyBytes_FromStringAndSize(out.data, out.len)
    finally:
        free(out.data)


def cid_to_string(cid) -> str:
    """go-cid String() of a binary CID (see the reference); no validation."""
    cdef OutBuf out
    cdef bytes raw = cid if type(cid) is bytes else bytes(cid)
    out.data = NULL
    out.len = 0
    out.cap = 0
    try:
        ob_cid_string(&out, <const uint8_t*>PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw))
        return (<bytes>PyBytes_FromStringAndSize(out.data, out.len)).decode("ascii")
    finally:
        free(out.data)
