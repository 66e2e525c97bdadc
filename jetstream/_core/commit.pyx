# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""A #commit's ops -> v1 commit events: the fast twin of `jetstream/_py/commit.py`.

Owns: the same per-op rules, drops and event bytes as the reference (read its docstring),
with the per-op loop, the MST path check and the RFC 3339 check written as typed C
loops instead of regular expressions, the Cython record emitter and the C MST reader
(mst.pyx), and each event's v2 record (the `#commit` frame parts built inline from the same
fields, record_to_json_v2 of the block). Rare shapes (CIDv0 or non-dag-cbor CIDs, bad records) reach the same
reference helpers.
It must never do I/O, never read past a string, and never differ from the reference
on any input (tests/ingest/test_ingest_commit_fast.py).
"""
from hashlib import sha256 as _sha256

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t

from jetstream.events import KIND_COMMIT, PendingEvent
from jetstream.errors import FrameError, MstError, RecordError
from jetstream._py.car import verify_block as _verify_block
from jetstream._core.record_json import cid_to_string, go_json_string, record_to_json, record_to_json_v2
from jetstream._core.mst cimport MstReader, mst_key_ascii
from jetstream import wire_v2
from jetstream._core.v2frame import json_string as _v2_string, pack_record as _pack_record

cdef bytes _V2_COMMIT_HEAD = wire_v2.MESSAGE_PREFIX + b'{"$type":"network.bsky.jetstream.subscribeEvents#commit"'
cdef bytes _V2_TAIL = b',"time":"'
cdef bytes _DAG_CBOR_SHA256 = b"\x01\x71\x12\x20"

cdef int DAYS_IN_MONTH[12]
DAYS_IN_MONTH[:] = [31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
cdef object _KIND_COMMIT = KIND_COMMIT
cdef object _PendingEvent = PendingEvent

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object)
    void* PyUnicode_DATA(object)
    Py_ssize_t PyUnicode_GET_LENGTH(object)


cdef inline bint is_digit(uint8_t c) noexcept nogil:
    return 48 <= c <= 57


cdef inline int two_digits(const uint8_t* s, Py_ssize_t at) noexcept nogil:
    """The value of s[at:at+2] if both are digits, else -1."""
    if is_digit(s[at]) and is_digit(s[at + 1]):
        return (s[at] - 48) * 10 + (s[at + 1] - 48)
    return -1


cdef bint rfc3339_ascii(const uint8_t* s, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef int year, month, day, hour, minute, second, zone_hour, zone_minute
    if n < 20:
        return False
    for i in range(4):
        if not is_digit(s[i]):
            return False
    year = (s[0] - 48) * 1000 + (s[1] - 48) * 100 + (s[2] - 48) * 10 + (s[3] - 48)
    if s[4] != 45 or s[7] != 45 or s[10] != 84 or s[13] != 58 or s[16] != 58:  # - - T : :
        return False
    month, day = two_digits(s, 5), two_digits(s, 8)
    hour, minute, second = two_digits(s, 11), two_digits(s, 14), two_digits(s, 17)
    if month < 0 or day < 0 or hour < 0 or minute < 0 or second < 0:
        return False
    i = 19
    if s[i] == 46 or s[i] == 44:  # fraction: '.' or ',' then at least one digit
        i += 1
        if i >= n or not is_digit(s[i]):
            return False
        while i < n and is_digit(s[i]):
            i += 1
    if i >= n:
        return False
    if s[i] == 90:  # Z
        if i + 1 != n:
            return False
    elif s[i] == 43 or s[i] == 45:  # + or -
        if i + 6 != n or s[i + 3] != 58:
            return False
        zone_hour, zone_minute = two_digits(s, i + 1), two_digits(s, i + 4)
        # Go's general parser allows offsets up to 24h and 60m.
        if zone_hour < 0 or zone_minute < 0 or zone_hour > 24 or zone_minute > 60:
            return False
    else:
        return False
    if month < 1 or month > 12 or day < 1 or day > DAYS_IN_MONTH[month - 1]:
        return False
    if month == 2 and day == 29 and not (year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)):
        return False
    return hour <= 23 and minute <= 59 and second <= 59


def is_rfc3339(str value):
    """Would Go's time.Parse(time.RFC3339, value) succeed?"""
    if not PyUnicode_IS_ASCII(value):
        return False
    return rfc3339_ascii(<const uint8_t*>PyUnicode_DATA(value), PyUnicode_GET_LENGTH(value))


cpdef bint is_mst_key(str path):
    """v1's MST key rule for create/update paths: collection/rkey of [A-Za-z0-9_:.~-], <= 256."""
    if not PyUnicode_IS_ASCII(path):
        return False
    return mst_key_ascii(<const uint8_t*>PyUnicode_DATA(path), PyUnicode_GET_LENGTH(path))


cdef bint verify(bytes cid, block) except -1:
    cdef const uint8_t* c = <const uint8_t*>PyBytes_AS_STRING(cid)
    if PyBytes_GET_SIZE(cid) == 36 and c[0] == 1 and c[1] == 0x71 and c[2] == 0x12 and c[3] == 0x20:
        return _sha256(block).digest() == cid[4:]
    return _verify_block(cid, block)


cdef bytes _v2_record(bytes did_and_operation, bytes rev_and_rkey_key, str collection, str rkey, bytes cid,
                      str cid_text, object block):
    """A create/update's v2 record (the reference: _py/commit.py v2_commit_record)."""
    cdef bytes raw = bytes(block)
    cdef bytes record_json
    if not (PyBytes_GET_SIZE(cid) == 36 and cid.startswith(_DAG_CBOR_SHA256)):
        # v2 names the block by its dag-cbor sha2-256 CID whatever op.cid says (rare: raw/other codecs)
        cid = _DAG_CBOR_SHA256 + _sha256(raw).digest()
        cid_text = wire_v2.record_cid(raw)
    try:
        record_json = record_to_json_v2(raw)
    except RecordError:
        return _pack_record(None, cid, raw)
    # create/update paths passed the MST key rule: [A-Za-z0-9_:.~-] needs no JSON escape
    head = b"".join((_V2_COMMIT_HEAD, b',"cid":"', cid_text.encode("ascii"), b'","collection":"',
                     collection.encode("ascii"), did_and_operation, b'","record":', record_json, rev_and_rkey_key,
                     rkey.encode("ascii"), b'","seq":'))
    return _pack_record((head, _V2_TAIL), cid, raw)


def commit_events(str repo, str rev, list ops, blocks, list events, list drops, MstReader mst=None):
    """Append each op's event (or (reason, detail) drop) in op order; `mst`: as the reference."""
    cdef bytes head = b'{"did":' + go_json_string(repo) + b',"time_us":'
    cdef bytes commit_prefix = b',"kind":"commit","commit":{' + (b'"rev":' + go_json_string(rev) + b"," if rev else b"")
    cdef bytes v2_did = _v2_string(repo), v2_rev = _v2_string(rev)
    cdef bytes v2_create = b'","did":' + v2_did + b',"operation":"create'
    cdef bytes v2_update = b'","did":' + v2_did + b',"operation":"update'
    cdef bytes v2_rev_rkey = b',"rev":' + v2_rev + b',"rkey":"'
    cdef str action, path, collection, rkey, cid_text
    cdef bytes record_and_cid, operation, v2_record
    cdef list parts
    for op in ops:
        if not isinstance(op, dict):
            raise FrameError("bad_body", "type=#commit field=ops")
        action_value, path_value = (<dict>op).get("action"), (<dict>op).get("path")
        if type(action_value) is not str or type(path_value) is not str:
            raise FrameError("bad_body", "type=#commit field=ops")
        action, path = action_value, path_value
        if action == "delete":
            parts = path.split("/")
            if len(parts) < 2:
                drops.append(("bad_path", f"did={repo} path={path!r}"))
                continue
            operation = b"delete"
            record_and_cid = b""
            v2_record = _pack_record(wire_v2.commit_parts(repo, rev, "delete", parts[0], parts[1]))
        elif action == "create" or action == "update":
            if not is_mst_key(path):
                drops.append(("bad_path", f"did={repo} path={path!r}"))
                continue
            cid = (<dict>op).get("cid")
            if type(cid) is not bytes:
                drops.append(("missing_cid", f"did={repo} path={path!r}"))
                continue
            if mst is not None:
                try:
                    leaf = mst.leaf(path.encode("ascii"))
                except MstError as err:
                    drops.append(("mst_" + err.reason, f"did={repo} path={path!r}"))
                    continue
                if leaf != cid:
                    drops.append(("mst_cid_mismatch", f"did={repo} path={path!r}"))
                    continue
            block = blocks.get(cid)
            if block is None:
                drops.append(("missing_block", f"did={repo} path={path!r}"))
                continue
            if not verify(cid, block):
                drops.append(("cid_mismatch", f"did={repo} path={path!r}"))
                continue
            try:
                record = record_to_json(block)
            except RecordError as err:
                drops.append(("bad_record", f"did={repo} path={path!r} reason={err.reason}"))
                continue
            cid_text = cid_to_string(cid)
            record_and_cid = b',"record":' + record + b',"cid":"' + cid_text.encode("ascii") + b'"'
            operation = b"create" if action == "create" else b"update"
            parts = path.split("/")
            v2_record = _v2_record(v2_create if action == "create" else v2_update, v2_rev_rkey, parts[0], parts[1],
                                   cid, cid_text, block)
        else:
            drops.append(("unknown_action", f"did={repo} path={path!r} action={action!r}"))
            continue
        collection, rkey = parts[0], parts[1]
        out = [commit_prefix, b'"operation":"', operation, b'"']
        if collection:  # omitempty
            out += [b',"collection":', go_json_string(collection)]
        if rkey:
            out += [b',"rkey":', go_json_string(rkey)]
        out += [record_and_cid, b"}}"]
        events.append(_PendingEvent(repo, _KIND_COMMIT, collection, head, b"".join(out), v2_record))
