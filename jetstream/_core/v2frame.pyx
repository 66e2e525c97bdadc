# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""A sequenced event's v2 text frame from its stored record: fast twin of jetstream/_py/v2frame.py.

Owns: `frame_of_record` (head + seq + tail + wire_time(time_us) + FRAME_END, written into one
bytes object in C) and `wire_time` (RFC 3339 UTC, exactly six fractional digits and `Z`), the
sequencer's and the replay's per-event v2 work; and ingest's per-commit v2 work, `json_string`
(a string as atmos writes it) and `pack_record` (the stored record). The layout of the stored
record and every byte of the frame are jetstream/wire_v2.py's; this module only writes them faster.
It must never produce a byte the pure-Python twin would not: inputs outside its fast path
(a record that is not bytes, a seq or time_us outside int64, a record shorter than its
header, a string that needs an escape, parts that are not two bytes) go to the twin, so
errors and edge cases are the twin's own.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.tuple cimport PyTuple_Check, PyTuple_GET_ITEM, PyTuple_GET_SIZE
from cpython.unicode cimport PyUnicode_CheckExact
from libc.stdint cimport int64_t, uint64_t
from libc.stdio cimport snprintf
from libc.string cimport memcpy

from jetstream import wire_v2

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object)
    void* PyUnicode_DATA(object)
    Py_ssize_t PyUnicode_GET_LENGTH(object)

cdef Py_ssize_t _RECORD_HEAD_SIZE = 10  # wire_v2.RECORD_HEAD: >BIIB
cdef int64_t _US_PER_DAY = 86_400_000_000
cdef int64_t _MAX_INT64 = 0x7FFFFFFFFFFFFFFF  # wire_v2._MAX_TIME_US: Go's time.UnixMicro takes an int64
cdef const char* _FRAME_END = b'"}}'  # wire_v2.FRAME_END
cdef Py_ssize_t _FRAME_END_SIZE = 3
cdef bytes _EMPTY = b""
cdef int _RECORD_VERSION = wire_v2.RECORD_VERSION

assert wire_v2.RECORD_HEAD.size == _RECORD_HEAD_SIZE and wire_v2.FRAME_END == _FRAME_END[:_FRAME_END_SIZE]

# One-entry memo of the date part, as in the twin: consecutive events share their day.
cdef int64_t _memo_day = -1
cdef char _memo_date[24]
cdef Py_ssize_t _memo_date_size = 0


cdef inline void _two_digits(char* out, int value) noexcept nogil:
    out[0] = <char>(48 + value // 10)
    out[1] = <char>(48 + value % 10)


cdef void _date_prefix(int64_t day) noexcept nogil:
    """b"YYYY-MM-DDT" of a day since 1970-01-01 into the memo (H. Hinnant's civil_from_days)."""
    global _memo_day, _memo_date_size
    cdef int64_t z = day + 719_468
    cdef int64_t era = z // 146_097  # z >= 0: time_us is never negative here
    cdef int64_t day_of_era = z - era * 146_097
    cdef int64_t year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36_524
                                - day_of_era // 146_096) // 365
    cdef int64_t day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    cdef int64_t month_index = (5 * day_of_year + 2) // 153
    cdef int day_of_month = <int>(day_of_year - (153 * month_index + 2) // 5 + 1)
    cdef int month = <int>(month_index + 3 if month_index < 10 else month_index - 9)
    cdef long long year = year_of_era + era * 400 + (1 if month <= 2 else 0)
    _memo_date_size = snprintf(_memo_date, sizeof(_memo_date), b"%04lld-%02d-%02dT", year, month, day_of_month)
    _memo_day = day


cdef Py_ssize_t _write_time(char* out, int64_t time_us) noexcept nogil:
    """wire_time(time_us) at `out` (0 <= time_us); the number of bytes written (at most 40)."""
    cdef int64_t day = time_us // _US_PER_DAY
    cdef int64_t within = time_us - day * _US_PER_DAY
    if day != _memo_day:
        _date_prefix(day)
    memcpy(out, _memo_date, _memo_date_size)
    cdef char* at = out + _memo_date_size
    cdef int64_t seconds = within // 1_000_000
    cdef int micros = <int>(within - seconds * 1_000_000)
    _two_digits(at, <int>(seconds // 3600))
    at[2] = b':'
    _two_digits(at + 3, <int>(seconds // 60 % 60))
    at[5] = b':'
    _two_digits(at + 6, <int>(seconds % 60))
    at[8] = b'.'
    cdef int place
    for place in range(14, 8, -1):
        at[place] = <char>(48 + micros % 10)
        micros //= 10
    at[15] = b'Z'
    return _memo_date_size + 16


cdef inline Py_ssize_t _decimal_size(uint64_t value) noexcept nogil:
    cdef Py_ssize_t size = 1
    while value >= 10:
        value //= 10
        size += 1
    return size


cdef inline void _write_decimal(char* out, Py_ssize_t size, uint64_t value) noexcept nogil:
    while size > 0:
        size -= 1
        out[size] = <char>(48 + value % 10)
        value //= 10


def wire_time(time_us):
    """encoder.go wireTime: time.UnixMicro(us).UTC().Format("2006-01-02T15:04:05.000000Z"), unquoted."""
    if type(time_us) is not int or not 0 <= time_us <= _MAX_INT64:
        return wire_v2.wire_time(time_us)  # the twin's ValueError (or its exact result for an int subclass)
    cdef char out[48]
    cdef Py_ssize_t size = _write_time(out, <int64_t>time_us)
    return PyBytes_FromStringAndSize(out, size)


cdef inline Py_ssize_t _u32_at(const unsigned char* at) noexcept nogil:
    return ((<Py_ssize_t>at[0]) << 24) | ((<Py_ssize_t>at[1]) << 16) | ((<Py_ssize_t>at[2]) << 8) | at[3]


def frame_of_record(stored, seq, time_us):
    """The event's v2 text frame from its stored record; b"" when it has none (v2 readers skip it)."""
    if (not PyBytes_CheckExact(stored) or type(seq) is not int or type(time_us) is not int
            or not 0 <= seq <= _MAX_INT64 or not 0 <= time_us <= _MAX_INT64):
        return wire_v2.frame_of_record(stored, seq, time_us)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(stored)
    if size == 0:
        return _EMPTY
    if size < _RECORD_HEAD_SIZE:
        return wire_v2.frame_of_record(stored, seq, time_us)  # the twin's struct.error
    cdef const unsigned char* record = <const unsigned char*>PyBytes_AS_STRING(stored)
    cdef Py_ssize_t head_length = _u32_at(record + 1), tail_length = _u32_at(record + 5)
    if head_length == 0:
        return _EMPTY
    # Clamped like the twin's slices: a truncated record yields what it holds.
    cdef Py_ssize_t head_end = min(_RECORD_HEAD_SIZE + head_length, size)
    cdef Py_ssize_t tail_end = min(head_end + tail_length, size)
    head_length = head_end - _RECORD_HEAD_SIZE
    tail_length = tail_end - head_end
    cdef uint64_t seq_value = <uint64_t>seq
    cdef Py_ssize_t seq_size = _decimal_size(seq_value)
    cdef char time_text[48]
    cdef Py_ssize_t time_size = _write_time(time_text, <int64_t>time_us)
    frame = PyBytes_FromStringAndSize(NULL, head_length + seq_size + tail_length + time_size + _FRAME_END_SIZE)
    cdef char* out = PyBytes_AS_STRING(frame)
    memcpy(out, record + _RECORD_HEAD_SIZE, head_length)
    out += head_length
    _write_decimal(out, seq_size, seq_value)
    out += seq_size
    memcpy(out, record + head_end, tail_length)
    out += tail_length
    memcpy(out, time_text, time_size)
    memcpy(out + time_size, _FRAME_END, _FRAME_END_SIZE)
    return frame


cdef bint _plain_ascii(const unsigned char* text, Py_ssize_t size) noexcept nogil:
    """True when no byte needs one of atmos' escapes: controls, '"', '\\', '<', '>', '&' (all ASCII)."""
    cdef Py_ssize_t index
    cdef unsigned char c
    for index in range(size):
        c = text[index]
        if c < 0x20 or c == 34 or c == 92 or c == 60 or c == 62 or c == 38:
            return False
    return True


def json_string(value):
    """`value` as atmos cbor.AppendJSONString writes it, quotes included (wire_v2.json_string)."""
    cdef Py_ssize_t size, index
    cdef const unsigned char* text
    if PyUnicode_CheckExact(value) and PyUnicode_IS_ASCII(value):
        text = <const unsigned char*>PyUnicode_DATA(value)
        size = PyUnicode_GET_LENGTH(value)
    elif PyBytes_CheckExact(value):
        text = <const unsigned char*>PyBytes_AS_STRING(value)
        size = PyBytes_GET_SIZE(value)
        for index in range(size):
            if text[index] >= 0x80:
                return wire_v2.json_string(value)  # UTF-8 to validate: the twin's rules
    else:
        return wire_v2.json_string(value)
    if not _plain_ascii(text, size):
        return wire_v2.json_string(value)
    quoted = PyBytes_FromStringAndSize(NULL, size + 2)
    cdef char* out = PyBytes_AS_STRING(quoted)
    out[0] = b'"'
    memcpy(out + 1, text, size)
    out[size + 1] = b'"'
    return quoted


cdef inline void _put_u32(char* at, Py_ssize_t value) noexcept nogil:
    at[0] = <char>((value >> 24) & 0xFF)
    at[1] = <char>((value >> 16) & 0xFF)
    at[2] = <char>((value >> 8) & 0xFF)
    at[3] = <char>(value & 0xFF)


def pack_record(parts, cid=b"", payload=b""):
    """u8 RECORD_VERSION | u32 len(head) | u32 len(tail) | u8 len(cid) | head | tail | cid | payload."""
    if parts is None:
        head = tail = _EMPTY
    elif PyTuple_Check(parts) and PyTuple_GET_SIZE(parts) == 2:
        head, tail = <object>PyTuple_GET_ITEM(parts, 0), <object>PyTuple_GET_ITEM(parts, 1)
    else:
        return wire_v2.pack_record(parts, cid, payload)
    if not (PyBytes_CheckExact(head) and PyBytes_CheckExact(tail) and PyBytes_CheckExact(cid)
            and PyBytes_CheckExact(payload)):
        return wire_v2.pack_record(parts, cid, payload)
    cdef Py_ssize_t head_size = PyBytes_GET_SIZE(head), tail_size = PyBytes_GET_SIZE(tail)
    cdef Py_ssize_t cid_size = PyBytes_GET_SIZE(cid), payload_size = PyBytes_GET_SIZE(payload)
    if cid_size > 0xFF or head_size > 0xFFFFFFFF or tail_size > 0xFFFFFFFF:
        return wire_v2.pack_record(parts, cid, payload)  # the twin's struct.error
    record = PyBytes_FromStringAndSize(NULL, _RECORD_HEAD_SIZE + head_size + tail_size + cid_size + payload_size)
    cdef char* out = PyBytes_AS_STRING(record)
    out[0] = <char>_RECORD_VERSION
    _put_u32(out + 1, head_size)
    _put_u32(out + 5, tail_size)
    out[9] = <char>cid_size
    out += _RECORD_HEAD_SIZE
    memcpy(out, PyBytes_AS_STRING(head), head_size)
    out += head_size
    memcpy(out, PyBytes_AS_STRING(tail), tail_size)
    out += tail_size
    memcpy(out, PyBytes_AS_STRING(cid), cid_size)
    memcpy(out + cid_size, PyBytes_AS_STRING(payload), payload_size)
    return record
