"""Sans-I/O rendering of Jetstream v2's `subscribeEvents` text frames (xrpc.v1.json).

Owns: the exact bytes v2 sends for one event (`#commit`, `#identity`, `#account`, `#sync`),
for an `#info` advisory and for an error frame, as bluesky-social/jetstream renders them
(internal/subscribe/encoder.go EncodeV2 / EncodeV2Info / EncodeV2Error through the
lexgen-generated `AppendJSON` of api/jetstream/jetstreamsubscribeevents.go and atmos's
api/comatproto/syncsubscriberepos.go):
- every message frame is `{"$type":"message","payload":` + payload + `}`;
- a payload's fields come in bytewise name order (lexgen sorts them): `$type` first, then
  e.g. `cid, collection, did, operation, record, rev, rkey, seq, time` for a commit;
  optional fields (`cid`/`record` on deletes, `handle`, `status`, `#info`'s `message`) are
  left out, never null;
- strings are escaped by atmos `cbor.AppendJSONString` (encoding/json's escapes, but
  U+2028/U+2029 stay raw); `time` is the event's time_us as RFC 3339 UTC with exactly six
  fractional digits and `Z` (encoder.go wireTime);
- a commit's `record` is the v2 record JSON verbatim (`record_to_json_v2` of the record
  emitter) and its `cid` is the CIDv1 (dag-cbor, sha2-256) of the record block;
- `#identity`/`#account`/`#sync` wrap the relay's event (its own did, seq and time) with
  only the lexicon's fields; `#sync`'s `blocks` is `{"$bytes":…}`.

Shape: `seq` and `time` are the only parts a stored event does not know before it is
sequenced, and in every payload they sit at the end (`#sync`: `seq`, then `sync`, then
`time`). So ingest renders an event's `V2Parts` once, and `render(parts, seq, time_us)`
joins them with the two numbers, like PendingEvent's json_head/json_tail for v1.
It must never touch a socket, the log or the clock, and never decode relay frames (the
caller hands over the fields ingest decoded).
"""
from __future__ import annotations

import base64
import hashlib
import re
import struct
from typing import NamedTuple

MESSAGE_PREFIX = b'{"$type":"message","payload":'
_TYPE_PREFIX = b'{"$type":"network.bsky.jetstream.subscribeEvents#'
OPERATIONS = ("create", "update", "delete")
INFO_OUTDATED_CURSOR = "OutdatedCursor"
ERROR_CONSUMER_TOO_SLOW = "ConsumerTooSlow"
_MAX_TIME_US = (1 << 63) - 1  # Go's time.UnixMicro takes an int64


class V2Parts(NamedTuple):
    """An event's v2 frame around its seq and time: head + seq + tail + time + FRAME_END."""

    head: bytes  # b'{"$type":"message","payload":{"$type":"…#commit",…,"seq":'
    tail: bytes  # b',"time":"' (or, for #sync, b',"sync":{…},"time":"')


FRAME_END = b'"}}'


# ---------------------------------------------------------------------------
# strings and times
# ---------------------------------------------------------------------------

def _build_escapes() -> dict[int, str]:
    table = {c: "\\u%04x" % c for c in range(0x20)}
    table.update({ord("\b"): "\\b", ord("\f"): "\\f", ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t",
                  ord('"'): '\\"', ord("\\"): "\\\\",
                  ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026"})
    for bad_byte in range(0x80, 0x100):  # surrogateescape's stand-ins for invalid UTF-8 bytes
        table[0xDC00 + bad_byte] = "\\ufffd"
    return table


_ESCAPES = _build_escapes()
_NEEDS_ESCAPE = re.compile('["\\\\\x00-\x1f<>&\udc80-\udcff]')


def json_string(value: str | bytes) -> bytes:
    """`value` as atmos cbor.AppendJSONString writes it (quotes included).

    encoding/json's escapes (\\b \\f \\n \\r \\t, other controls as \\u00xx, < > & as
    \\u003c \\u003e \\u0026) except that U+2028/U+2029 stay raw; each byte of invalid
    UTF-8 becomes \\ufffd (a str's lone surrogates count as their invalid bytes).
    """
    raw = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else bytes(value)
    text = raw.decode("utf-8", "surrogateescape")
    if _NEEDS_ESCAPE.search(text) is None:
        return b'"' + raw + b'"'
    return b'"' + text.translate(_ESCAPES).encode("utf-8") + b'"'


_US_PER_DAY = 86_400_000_000
_last_day: list = [None, b""]  # one-entry memo: (day number, b"YYYY-MM-DDT"); days change rarely


def _date_prefix(day: int) -> bytes:
    """b"YYYY-MM-DDT" of a day count since 1970-01-01 (proleptic Gregorian, H. Hinnant's civil_from_days)."""
    z = day + 719_468
    era = z // 146_097
    day_of_era = z - era * 146_097
    year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36_524 - day_of_era // 146_096) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    month_index = (5 * day_of_year + 2) // 153
    day_of_month = day_of_year - (153 * month_index + 2) // 5 + 1
    month = month_index + 3 if month_index < 10 else month_index - 9
    year = year_of_era + era * 400 + (1 if month <= 2 else 0)
    return b"%04d-%02d-%02dT" % (year, month, day_of_month)


def wire_time(time_us: int) -> bytes:
    """encoder.go wireTime: time.UnixMicro(us).UTC().Format("2006-01-02T15:04:05.000000Z"), unquoted."""
    if not 0 <= time_us <= _MAX_TIME_US:
        raise ValueError(f"time_us out of range: {time_us}")
    day, within = divmod(time_us, _US_PER_DAY)
    if _last_day[0] != day:
        _last_day[1] = _date_prefix(day)
        _last_day[0] = day
    seconds, micros = divmod(within, 1_000_000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    return b"%s%02d:%02d:%02d.%06dZ" % (_last_day[1], hour, minute, second, micros)


def record_cid(block: bytes) -> str:
    """v2's commit `cid`: cbor.ComputeCID(CodecDagCBOR, block).String() (CIDv1, sha2-256, base32)."""
    cid = b"\x01\x71\x12\x20" + hashlib.sha256(block).digest()
    return "b" + base64.b32encode(cid).decode("ascii").rstrip("=").lower()


# ---------------------------------------------------------------------------
# event parts (rendered once at ingest) and the frame (per seq and time)
# ---------------------------------------------------------------------------

def _head(kind: str, fields: bytes) -> bytes:
    return MESSAGE_PREFIX + _TYPE_PREFIX + kind.encode("ascii") + b'"' + fields + b',"seq":'


_TIME_TAIL = b',"time":"'


def commit_parts(did: str, rev: str, operation: str, collection: str, rkey: str,
                 cid: str | None = None, record_json: bytes | None = None) -> V2Parts:
    """A `#commit` (JetstreamSubscribeEvents_Commit): `cid` and `record` only for create/update.

    record_json: record_to_json_v2(block) verbatim; cid: record_cid(block). A record the v2
    emitter rejects has no v2 frame at all: v2 counts an encode error and skips the event.
    """
    if operation not in OPERATIONS:
        raise ValueError(f"unknown operation {operation!r}")
    if (operation == "delete") != (record_json is None) or (cid is None) != (record_json is None):
        raise ValueError("cid and record come together, for create and update only")
    fields = [b""]
    if cid is not None:
        fields += [b',"cid":', json_string(cid)]
    fields += [b',"collection":', json_string(collection), b',"did":', json_string(did),
               b',"operation":', json_string(operation)]
    if record_json is not None:
        fields += [b',"record":', record_json]
    fields += [b',"rev":', json_string(rev), b',"rkey":', json_string(rkey)]
    return V2Parts(_head("commit", b"".join(fields)), _TIME_TAIL)


def identity_parts(did: str, upstream_seq: int, upstream_time: str, handle: str | None = None) -> V2Parts:
    """An `#identity`: the relay's event (did, handle if set, its seq and time) under `identity`."""
    upstream = [b'{"did":', json_string(did)]
    if handle is not None:
        upstream += [b',"handle":', json_string(handle)]
    upstream += [b',"seq":%d,"time":' % upstream_seq, json_string(upstream_time), b"}"]
    return V2Parts(_head("identity", b',"did":' + json_string(did) + b',"identity":' + b"".join(upstream)),
                   _TIME_TAIL)


def account_parts(did: str, active: bool, upstream_seq: int, upstream_time: str,
                  status: str | None = None) -> V2Parts:
    """An `#account`: the relay's event (active, did, its seq, status if set, its time) under `account`."""
    upstream = [b'{"active":true,"did":' if active else b'{"active":false,"did":', json_string(did),
                b',"seq":%d' % upstream_seq]
    if status is not None:
        upstream += [b',"status":', json_string(status)]
    upstream += [b',"time":', json_string(upstream_time), b"}"]
    return V2Parts(_head("account", b',"account":' + b"".join(upstream) + b',"did":' + json_string(did)),
                   _TIME_TAIL)


def sync_parts(did: str, rev: str, upstream_seq: int, upstream_time: str, blocks: bytes) -> V2Parts:
    """A `#sync`: seq comes before the relay's event here (field order), so `sync` is in the tail."""
    upstream = b"".join((b'{"blocks":{"$bytes":"', base64.b64encode(blocks).rstrip(b"="), b'"},"did":',
                         json_string(did), b',"rev":', json_string(rev), b',"seq":%d,"time":' % upstream_seq,
                         json_string(upstream_time), b"}"))
    return V2Parts(_head("sync", b',"did":' + json_string(did)), b',"sync":' + upstream + _TIME_TAIL)


def render(parts: V2Parts, seq: int, time_us: int) -> bytes:
    """The event's text frame once it has its seq (u64 from 1) and time_us."""
    return b"%s%d%s%s%s" % (parts.head, seq, parts.tail, wire_time(time_us), FRAME_END)


# ---------------------------------------------------------------------------
# frames that are not events
# ---------------------------------------------------------------------------

def info_frame(name: str, message: str = "") -> bytes:
    """EncodeV2Info: `#info` without seq (it does not move the cursor); an empty message is left out."""
    fields = b',"message":' + json_string(message) if message else b""
    return MESSAGE_PREFIX + _TYPE_PREFIX + b'info"' + fields + b',"name":' + json_string(name) + b"}}"


def error_frame(code: str, message: str = "") -> bytes:
    """EncodeV2Error: `{"$type":"error","error":…,"message":…}`; the connection closes after it."""
    fields = b',"message":' + json_string(message) if message else b""
    return b'{"$type":"error","error":' + json_string(code) + fields + b"}"


# ---------------------------------------------------------------------------
# storage form of the parts (what the log keeps per event beside its v1 JSON)
# ---------------------------------------------------------------------------

_HEAD_LENGTH = struct.Struct(">I")


def pack_parts(parts: V2Parts) -> bytes:
    """u32 BE len(head) | head | tail."""
    return _HEAD_LENGTH.pack(len(parts.head)) + parts.head + parts.tail


def unpack_parts(stored: bytes) -> V2Parts:
    if len(stored) < _HEAD_LENGTH.size:
        raise ValueError("stored v2 parts shorter than their length prefix")
    (head_length,) = _HEAD_LENGTH.unpack_from(stored)
    head_end = _HEAD_LENGTH.size + head_length
    if head_end > len(stored):
        raise ValueError("stored v2 parts truncated inside the head")
    return V2Parts(bytes(stored[_HEAD_LENGTH.size:head_end]), bytes(stored[head_end:]))


# ---------------------------------------------------------------------------
# the stored v2 record of an event (column family events_v2): its frame parts and its archive
# ---------------------------------------------------------------------------
#
# u8 RECORD_VERSION | u32 len(head) | u32 len(tail) | u8 len(cid) | head | tail | cid | payload
#
# head/tail: the event's V2Parts (empty: the event has no v2 frame, e.g. a record v2's decoder
# refuses, or an event stored by a leader that did not render v2). cid: the record's binary CID
# (CIDv1 dag-cbor sha2-256, as v2 computes it; empty for deletes and non-commits). payload: the
# raw archive bytes v2's segments keep: the record's DAG-CBOR block for a create/update, empty
# for a delete, the relay's event body (canonical DAG-CBOR) for #identity/#account/#sync.

RECORD_VERSION = 1
RECORD_HEAD = struct.Struct(">BIIB")  # version, len(head), len(tail), len(cid)
NO_FRAME_RECORD = RECORD_HEAD.pack(RECORD_VERSION, 0, 0, 0)  # no frame, no cid, no payload


class V2Record(NamedTuple):
    parts: V2Parts | None  # None: no v2 frame for this event
    cid: bytes
    payload: bytes


def pack_record(parts: V2Parts | None, cid: bytes = b"", payload: bytes = b"") -> bytes:
    head, tail = (b"", b"") if parts is None else parts
    return b"".join((RECORD_HEAD.pack(RECORD_VERSION, len(head), len(tail), len(cid)), head, tail, cid, payload))


def unpack_record(stored: bytes) -> V2Record:
    """The stored record; ValueError if it is not one of this layout."""
    try:
        version, head_length, tail_length, cid_length = RECORD_HEAD.unpack_from(stored)
    except struct.error as exc:
        raise ValueError(f"stored v2 record shorter than its header: {exc}") from None
    if version != RECORD_VERSION:
        raise ValueError(f"stored v2 record has version {version}")
    head_end = RECORD_HEAD.size + head_length
    tail_end = head_end + tail_length
    cid_end = tail_end + cid_length
    if cid_end > len(stored):
        raise ValueError("stored v2 record truncated")
    parts = (V2Parts(bytes(stored[RECORD_HEAD.size:head_end]), bytes(stored[head_end:tail_end]))
             if head_length else None)
    return V2Record(parts, bytes(stored[tail_end:cid_end]), bytes(stored[cid_end:]))


_unpack_record_head = RECORD_HEAD.unpack_from
_RECORD_HEAD_SIZE = RECORD_HEAD.size


def frame_of_record(stored: bytes, seq: int, time_us: int) -> bytes:
    """The event's v2 text frame from its stored record; b"" when it has none (v2 readers skip it).

    The replay and ingest hot path: the record's head and tail are sliced, not unpacked whole.
    """
    if not stored:
        return b""
    _, head_length, tail_length, _ = _unpack_record_head(stored)
    if not head_length:
        return b""
    head_end = _RECORD_HEAD_SIZE + head_length
    return b"%s%d%s%s%s" % (stored[_RECORD_HEAD_SIZE:head_end], seq, stored[head_end:head_end + tail_length],
                            wire_time(time_us), FRAME_END)
