"""DAG-CBOR record bytes -> Jetstream v1 (or v2) record JSON bytes (pure-Python reference).

Owns: the exact bytes v1 served for a record (indigo atdata `parseObject` followed by
goccy/go-json `Marshal` with HTML escaping), the Go string escaper, and the CID text
forms; and, in its own section at the end, the bytes Jetstream v2 sends for a record
(`record_to_json_v2`: atmos's DAG-CBOR decoder followed by Go encoding/json).
`jetstream/_core/record_json.pyx` is the fast twin; both must produce the same bytes and
the same `RecordError.reason` for every input (property-tested).
It must never go through libipld for records (CIDs and byte strings would become
indistinguishable, and invalid UTF-8 would be rejected), never recurse in Python
(nesting is walked with an explicit stack), and never do I/O.

Choices where v1's decoder (go-ipld-cbor) is lenient or undefined, kept identical in
the Cython twin:
- accepted leniently: non-minimal integer/length heads, map keys in any order (output
  is sorted bytewise anyway), half/single/double floats (only integral values pass),
  integers beyond int64 (they wrap like a Go int conversion), blob `size` < 0 (the
  atdata revision v1 ran did not check it).
- rejected (RecordError): indefinite-length items, CBOR tags other than 42, simple
  values other than false/true/null, duplicate map keys, non-text map keys, bytes
  after the top-level item, truncated input, malformed CIDs, and containers nested
  deeper than MAX_DEPTH (v1 had no bound; no real record comes close).
Reasons are short fixed tokens (see the RecordError raises) so the daemon can count them.
"""
from __future__ import annotations

import base64
import math
import re
import struct

from jetstream.errors import RecordError

MAX_RECORD_BYTES = 1024 * 1024  # atdata MAX_CBOR_RECORD_SIZE
MAX_STRING_BYTES = 1024 * 1024  # atdata MAX_RECORD_STRING_LEN
MAX_CONTAINER_LEN = 128 * 1024  # atdata MAX_CBOR_CONTAINER_LEN (elements, or map entries)
MAX_KEY_BYTES = 8192  # atdata MAX_OBJECT_KEY_LEN
# Containers nested deeper than this are rejected. The Cython twin recurses in C, so the
# bound also caps its stack use (~300 bytes per level); 2,048 is far above any real record.
MAX_DEPTH = 2048

_INT64_MIN = -(1 << 63)
_UINT64 = 1 << 64


# ---------------------------------------------------------------------------
# Go (goccy/go-json, HTML-safe) string escaping
# ---------------------------------------------------------------------------

def _build_escape_table() -> dict[int, str]:
    table = {c: "\\u%04x" % c for c in range(0x20)}
    table.update({
        ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t",
        ord('"'): '\\"', ord("\\"): "\\\\",
        ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026",
        0x2028: "\\u2028", 0x2029: "\\u2029",
    })
    # surrogateescape turns each invalid UTF-8 byte into U+DC80..U+DCFF; Go writes one
    # \ufffd per invalid byte. Valid UTF-8 can never decode to a lone surrogate.
    for bad_byte in range(0x80, 0x100):
        table[0xDC00 + bad_byte] = "\\ufffd"
    return table


_ESCAPE_TABLE = _build_escape_table()
_NEEDS_ESCAPE = re.compile('["\\\\\x00-\x1f<>&\u2028\u2029\udc80-\udcff]')


def _escape_decoded(text: str) -> bytes:
    if _NEEDS_ESCAPE.search(text) is not None:
        text = text.translate(_ESCAPE_TABLE)
    return b'"' + text.encode("utf-8", "surrogateescape") + b'"'


def go_json_string(value: str | bytes) -> bytes:
    """`value` as a quoted JSON string, byte-identical to goccy/go-json with HTML escaping.

    bytes are taken as Go string bytes (invalid UTF-8 -> one \\ufffd per bad byte);
    a str with lone surrogates is treated as their (invalid) UTF-8 bytes.
    """
    if isinstance(value, str):
        try:
            raw = value.encode("utf-8")
        except UnicodeEncodeError:
            raw = value.encode("utf-8", "surrogatepass")
        else:
            return _escape_decoded(value)
    else:
        raw = bytes(value)
    return _escape_decoded(raw.decode("utf-8", "surrogateescape"))


# ---------------------------------------------------------------------------
# CIDs (go-cid rules)
# ---------------------------------------------------------------------------

_B58_ALPHABET = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58_ALPHABET)}


def _base58btc_encode(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    out = bytearray()
    while number:
        number, digit = divmod(number, 58)
        out.append(_B58_ALPHABET[digit])
    zeros = len(data) - len(data.lstrip(b"\x00"))
    return (b"1" * zeros + bytes(reversed(out))).decode("ascii")


def _base58btc_decode(text: str) -> bytes | None:
    number = 0
    for char in text.encode("ascii", "replace"):
        digit = _B58_INDEX.get(char)
        if digit is None:
            return None
        number = number * 58 + digit
    zeros = len(text) - len(text.lstrip("1"))
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    return b"\x00" * zeros + body


def _read_uvarint(buf, pos: int, end: int) -> tuple[int, int]:
    """A minimal unsigned varint at buf[pos:end] (go-varint rules) -> (value, next); (-1, pos) if bad."""
    value = 0
    shift = 0
    for i in range(9):
        if pos + i >= end:
            return -1, pos
        byte = buf[pos + i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            if byte == 0 and i > 0:
                return -1, pos  # not minimally encoded
            return value, pos + i + 1
        shift += 7
    return -1, pos


def cid_length(buf, pos: int, end: int) -> int:
    """Length of the binary CID starting at buf[pos] (go-cid CidFromBytes), or -1 if malformed."""
    if end - pos > 2 and buf[pos] == 0x12 and buf[pos + 1] == 0x20:
        return 34 if end - pos >= 34 else -1  # CIDv0: a bare sha2-256 multihash
    version, at = _read_uvarint(buf, pos, end)
    if version != 1:
        return -1
    codec, at = _read_uvarint(buf, at, end)
    if codec < 0:
        return -1
    hash_code, at = _read_uvarint(buf, at, end)
    if hash_code < 0:
        return -1
    digest_len, at = _read_uvarint(buf, at, end)
    if digest_len < 0 or at + digest_len > end:
        return -1
    return at + digest_len - pos


def is_valid_cid(cid: bytes) -> bool:
    """go-cid Cast: the whole byte string is exactly one CID."""
    return len(cid) > 0 and cid_length(cid, 0, len(cid)) == len(cid)


def cid_to_string(cid: bytes) -> str:
    """go-cid String(): base58btc for CIDv0, multibase base32 lower ('b…') for CIDv1."""
    if len(cid) == 34 and cid[0] == 0x12 and cid[1] == 0x20:
        return _base58btc_encode(cid)
    return "b" + base64.b32encode(cid).decode("ascii").rstrip("=").lower()


def _decode_base32(text: str) -> bytes | None:
    if "=" in text:
        return None
    try:
        return base64.b32decode(text + "=" * (-len(text) % 8))
    except (ValueError, TypeError):
        return None


def _decode_base64(text: str, urlsafe: bool) -> bytes | None:
    if "=" in text or len(text) % 4 == 1:
        return None
    if urlsafe:
        text = text.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except ValueError:
        return None


def _decode_multibase(text: str) -> bytes | None:
    prefix, body = text[:1], text[1:]
    if prefix == "b":
        return _decode_base32(body.upper()) if body == body.lower() else None
    if prefix == "B":
        return _decode_base32(body) if body == body.upper() else None
    if prefix == "z":
        return _base58btc_decode(body)
    if prefix in ("f", "F"):
        try:
            return bytes.fromhex(body) if len(body) % 2 == 0 else None
        except ValueError:
            return None
    if prefix == "m":
        return _decode_base64(body, urlsafe=False)
    if prefix == "u":
        return _decode_base64(body, urlsafe=True)
    return None


def parse_cid_string(text: str | bytes) -> bytes | None:
    """go-cid Parse/Decode of a CID string -> binary CID, or None if it is not one.

    Supports CIDv0 ("Qm…", 46 chars) and the multibases records use in practice
    (b, B, z, f, F, m, u); the rarer go-multibase alphabets are rejected.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if "/ipfs/" in text:
        text = text.split("/ipfs/")[1]
    if len(text) < 2:
        return None
    if len(text) == 46 and text.startswith("Qm"):
        raw = _base58btc_decode(text)
    else:
        raw = _decode_multibase(text)
    if raw is None or not is_valid_cid(raw):
        return None
    return raw


def decode_go_base64(text: bytes) -> bytes | None:
    """Go base64.RawStdEncoding.DecodeString: no padding, CR/LF ignored, lax trailing bits."""
    try:
        body = text.decode("ascii").replace("\r", "").replace("\n", "")
    except UnicodeDecodeError:
        return None
    return _decode_base64(body, urlsafe=False)


def std_base64_nopad(data: bytes) -> bytes:
    return base64.b64encode(data).rstrip(b"=")


# ---------------------------------------------------------------------------
# The emitter
# ---------------------------------------------------------------------------

# What a parsed value is, as atdata sees it (decides how maps holding it are treated).
K_NULL, K_BOOL, K_INT, K_FLOAT, K_TEXT, K_BYTES, K_TAGCID = range(7)
K_ARRAY, K_MAP, K_LINKMAP, K_BYTESMAP, K_BLOB, K_LEGACYBLOB = range(7, 13)


class _Value:
    """One parsed item: its kind, its JSON bytes, and the raw payload maps need."""

    __slots__ = ("kind", "json", "raw")

    def __init__(self, kind: int, json: bytes, raw=None) -> None:
        self.kind = kind
        self.json = json
        self.raw = raw  # TEXT/BYTES: content bytes; TAGCID: CID bytes; INT/FLOAT: int


class _Container:
    """An open array or map (both modes): its items so far and how many are still to come."""

    __slots__ = ("is_map", "remaining", "items", "key")

    def __init__(self, is_map: bool, count: int) -> None:
        self.is_map = is_map
        self.remaining = count
        self.items: list = []  # arrays: item values; maps: (key bytes, item value)
        self.key: bytes | None = None


def _wrap_int64(value: int) -> int:
    """Go int conversion of a CBOR integer: out-of-range values wrap modulo 2**64."""
    value %= _UINT64
    return value - _UINT64 if value >= (1 << 63) else value


def _integral_float(value: float) -> int:
    """atdata parseFloat: only integral floats that survive a float64 -> int64 round trip."""
    if math.isfinite(value) and value == math.floor(value) and _INT64_MIN <= value < -_INT64_MIN:
        return int(value)
    raise RecordError("non_integral_float")


class _Reader:
    """The input being read, in v1's rules or (v2=True) in v2's (see the v2 section)."""

    __slots__ = ("buf", "pos", "end", "v2")

    def __init__(self, buf: bytes, v2: bool = False) -> None:
        self.buf = buf
        self.pos = 0
        self.end = len(buf)
        self.v2 = v2

    def head(self) -> tuple[int, int, int]:
        """(major type, additional info, argument) of the next item.

        v2 (atmos Decoder.readHeader) also wants minimal heads for major types 0-6 and only
        64-bit floats; v1 (go-ipld-cbor) takes any head size.
        """
        if self.pos >= self.end:
            raise RecordError("truncated")
        initial = self.buf[self.pos]
        self.pos += 1
        major, info = initial >> 5, initial & 0x1F
        if info < 24:
            return major, info, info
        if info == 31:
            raise RecordError("indefinite_length")
        if info > 27:
            raise RecordError("malformed_cbor")
        if self.v2 and major == 7 and info in (25, 26):
            raise RecordError("short_float")
        size = 1 << (info - 24)
        if self.pos + size > self.end:
            raise RecordError("truncated")
        argument = int.from_bytes(self.buf[self.pos:self.pos + size], "big")
        self.pos += size
        if self.v2 and major != 7 and argument < (24 if size == 1 else 1 << (4 * size)):
            raise RecordError("non_minimal")
        return major, info, argument

    def take(self, length: int) -> bytes:
        if length > self.end - self.pos:
            raise RecordError("truncated")
        start = self.pos
        self.pos += length
        return self.buf[start:start + length]


def _text_payload(reader: _Reader, length: int) -> bytes:
    if length > MAX_STRING_BYTES:
        raise RecordError("string_too_long")
    return reader.take(length)


def _link_json(cid: bytes) -> bytes:
    return b'{"$link":"' + cid_to_string(cid).encode("ascii") + b'"}'


def _cid_value(cid: bytes) -> _Value:
    return _Value(K_TAGCID, _link_json(cid), cid)


def _read_link(reader: _Reader, tag: int) -> bytes:
    """The binary CID a tag holds (tag 42: a byte string 0x00 + CID).

    v1 takes any CID go-cid casts; v2 (atmos readCIDLink) only a CIDv1 of the dag-cbor or
    raw codec with a sha2-256 digest.
    """
    if tag != 42:
        raise RecordError("unsupported_tag")
    major, _, length = reader.head()
    if major != 2:
        raise RecordError("bad_cid")
    if reader.v2 and length > V2_MAX_ITEM:
        raise RecordError("string_too_long")
    payload = reader.take(length)
    if reader.v2:
        valid = len(payload) == 37 and payload[0] == 0 and payload[1:5] in _V2_CID_PREFIXES
    else:
        valid = len(payload) > 0 and payload[0] == 0 and is_valid_cid(payload[1:])
    if not valid:
        raise RecordError("bad_cid")
    return payload[1:]


def _parse_simple(reader: _Reader, info: int, argument: int) -> _Value:
    if info == 20:
        return _Value(K_BOOL, b"false")
    if info == 21:
        return _Value(K_BOOL, b"true")
    if info == 22:
        return _Value(K_NULL, b"null")
    if info == 25:
        value = struct.unpack(">e", argument.to_bytes(2, "big"))[0]
    elif info == 26:
        value = struct.unpack(">f", argument.to_bytes(4, "big"))[0]
    elif info == 27:
        value = struct.unpack(">d", argument.to_bytes(8, "big"))[0]
    else:
        raise RecordError("unsupported_simple")
    number = _integral_float(value)
    return _Value(K_FLOAT, str(number).encode("ascii"), number)


def _finish_array(items: list[_Value]) -> _Value:
    return _Value(K_ARRAY, b"[" + b",".join([item.json for item in items]) + b"]")


def _finish_map(entries: list[tuple[bytes, _Value]]) -> _Value:
    """atdata parseMap on a decoded map: special shapes first, else keys sorted bytewise."""
    entries.sort(key=lambda entry: entry[0])
    for i in range(1, len(entries)):
        if entries[i][0] == entries[i - 1][0]:
            raise RecordError("duplicate_key")
    by_key = dict(entries)
    if b"$link" in by_key:
        return _link_map(by_key)
    if b"$bytes" in by_key:
        return _bytes_map(by_key)
    type_value = by_key.get(b"$type")
    if type_value is not None:
        if type_value.kind != K_TEXT:
            raise RecordError("bad_type")
        if type_value.raw == b"blob":
            return _blob(by_key)
        if not type_value.raw:
            raise RecordError("bad_type")
    if len(by_key) == 2 and b"mimeType" in by_key and b"cid" in by_key:
        return _legacy_blob(by_key)
    body = b",".join(go_json_string(key) + b":" + value.json for key, value in entries)
    return _Value(K_MAP, b"{" + body + b"}")


def _link_map(by_key: dict[bytes, _Value]) -> _Value:
    value = by_key[b"$link"]
    if len(by_key) != 1 or value.kind != K_TEXT:
        raise RecordError("bad_link")
    cid = parse_cid_string(value.raw)
    if cid is None:
        raise RecordError("bad_link")
    return _Value(K_LINKMAP, _cid_value(cid).json, cid)


def _bytes_map(by_key: dict[bytes, _Value]) -> _Value:
    value = by_key[b"$bytes"]
    if len(by_key) != 1 or value.kind != K_TEXT:
        raise RecordError("bad_bytes")
    data = decode_go_base64(value.raw)
    if data is None:
        raise RecordError("bad_bytes")
    return _Value(K_BYTESMAP, b'{"$bytes":"' + std_base64_nopad(data) + b'"}')


def _blob(by_key: dict[bytes, _Value]) -> _Value:
    if len(by_key) != 4:
        raise RecordError("bad_blob")
    size, mime_type, ref = by_key.get(b"size"), by_key.get(b"mimeType"), by_key.get(b"ref")
    if size is None or size.kind not in (K_INT, K_FLOAT):
        raise RecordError("bad_blob")
    if mime_type is None or mime_type.kind != K_TEXT:
        raise RecordError("bad_blob")
    if ref is None or ref.kind not in (K_TAGCID, K_LINKMAP):
        raise RecordError("bad_blob")
    json = (b'{"$type":"blob","ref":' + ref.json + b',"mimeType":' + mime_type.json
            + b',"size":' + size.json + b"}")
    return _Value(K_BLOB, json)


def _legacy_blob(by_key: dict[bytes, _Value]) -> _Value:
    mime_type, cid_value = by_key[b"mimeType"], by_key[b"cid"]
    if mime_type.kind != K_TEXT:
        raise RecordError("bad_legacy_blob")
    if cid_value.kind == K_TEXT:
        cid = parse_cid_string(cid_value.raw)
    elif cid_value.kind == K_TAGCID:
        cid = cid_value.raw
    elif cid_value.kind == K_BYTES:
        cid = cid_value.raw if is_valid_cid(cid_value.raw) else None
    else:
        cid = None
    if cid is None:
        raise RecordError("bad_legacy_blob")
    json = b'{"cid":"' + cid_to_string(cid).encode("ascii") + b'","mimeType":' + mime_type.json + b"}"
    return _Value(K_LEGACYBLOB, json)


def _parse_scalar_or_open(reader: _Reader, stack: list[_Container]) -> _Value | None:
    """Parse one item; containers are pushed on `stack` (None returned) unless empty."""
    major, info, argument = reader.head()
    if major == 0:
        number = _wrap_int64(argument)
        return _Value(K_INT, str(number).encode("ascii"), number)
    if major == 1:
        number = _wrap_int64(-1 - argument)
        return _Value(K_INT, str(number).encode("ascii"), number)
    if major == 2:
        payload = reader.take(argument)
        return _Value(K_BYTES, b'{"$bytes":"' + std_base64_nopad(payload) + b'"}', payload)
    if major == 3:
        payload = _text_payload(reader, argument)
        return _Value(K_TEXT, go_json_string(payload), payload)
    if major in (4, 5):
        if argument > MAX_CONTAINER_LEN:
            raise RecordError("container_too_long")
        if len(stack) + 1 > MAX_DEPTH:
            raise RecordError("too_deep")
        return _open_container(stack, major == 5, argument, _finish_container)
    if major == 6:
        return _cid_value(_read_link(reader, argument))
    return _parse_simple(reader, info, argument)


def _open_container(stack: list[_Container], is_map: bool, count: int, finish):
    """Push a container of `count` items on `stack` (None); an empty one is finished at once."""
    container = _Container(is_map, count)
    if count == 0:
        return finish(container)
    stack.append(container)
    return None


def _finish_container(container: _Container) -> _Value:
    return _finish_map(container.items) if container.is_map else _finish_array(container.items)


def _read_key(reader: _Reader, container: _Container) -> bytes:
    """The next key of the map `container`: text, at most the mode's key length.

    v2 (atmos readMap) also wants valid UTF-8, strictly after the previous key in DAG-CBOR
    order (shorter first, then bytewise), so a duplicate or out-of-order key fails here.
    """
    major, _, length = reader.head()
    if major != 3:
        raise RecordError("map_key_not_string")
    if length > (V2_MAX_ITEM if reader.v2 else MAX_KEY_BYTES):
        raise RecordError("key_too_long")
    key = reader.take(length)
    if reader.v2:
        try:
            key.decode("utf-8")
        except UnicodeDecodeError:
            raise RecordError("invalid_utf8") from None
        if container.items:
            previous = container.items[-1][0]
            if len(previous) == len(key) and previous == key:
                raise RecordError("duplicate_key")
            if (len(previous), previous) > (len(key), key):
                raise RecordError("unsorted_keys")
    return key


def _read_value(reader: _Reader, read_item, finish):
    """One whole value, nesting walked with an explicit stack (both modes).

    `read_item(reader, stack)` parses one item: a non-empty container is pushed on `stack`
    and None returned. `finish(container)` turns a complete container into its value.
    """
    stack: list[_Container] = []
    while True:
        if stack and stack[-1].is_map:
            stack[-1].key = _read_key(reader, stack[-1])
        value = read_item(reader, stack)
        while value is not None:  # deliver it upward, closing each container it completes
            if not stack:
                return value
            top = stack[-1]
            top.items.append((top.key, value) if top.is_map else value)
            top.remaining -= 1
            if top.remaining:
                value = None
            else:
                stack.pop()
                value = finish(top)


def record_to_json(block: bytes) -> bytes:
    """The JSON v1 emitted for a record block (DAG-CBOR), or RecordError(reason)."""
    block = bytes(block)
    if len(block) > MAX_RECORD_BYTES:
        raise RecordError("record_too_large")
    reader = _Reader(block)
    value = _read_value(reader, _parse_scalar_or_open, _finish_container)
    if reader.pos != reader.end:
        raise RecordError("trailing_bytes")
    if value.kind != K_MAP:
        raise RecordError("top_level_not_object")
    return value.json


# ---------------------------------------------------------------------------
# The v2 emitter: Jetstream v2's record JSON (atproto data model JSON)
# ---------------------------------------------------------------------------
#
# v2 (bluesky-social/jetstream internal/subscribe/encoder.go v2Commit) decodes the stored
# record block with github.com/jcalabro/atmos/cbor `NewDecoder(bytes.NewReader(b)).ReadValue()`
# and renders it with `cbor.ToJSON`, i.e. Go 1.26 encoding/json `Marshal` of the decoded
# value; lexgen's `AppendJSON` then copies those bytes into the frame verbatim. So:
# - accepted: exactly what atmos's streaming decoder accepts. ONE value is read: bytes after
#   it are ignored and the value need not be a map. Heads must be minimal (major types
#   0-6); map keys must be text in strict DAG-CBOR order (shorter first, then bytewise), so
#   a duplicate or out-of-order key fails; text and keys must be valid UTF-8; integers
#   must fit int64; floats must be 64-bit and finite; the only tag is 42, holding 0x00 + a
#   CIDv1 (dag-cbor or raw codec, sha2-256, 32-byte digest, minimal varints); the simple
#   values are false, true and null; byte/text lengths and element counts are at most
#   V2_MAX_ITEM; at most V2_MAX_DEPTH values deep (every value counts, the top one is 1).
#   There is no whole-record size limit.
# - rendered: objects with their keys sorted bytewise (Go sorts map keys as strings),
#   nothing special about `$type`/`$link`/`$bytes`/blob maps (a blob is a plain sorted
#   object), bytes as {"$bytes":"<std base64, no padding>"}, links as
#   {"$link":"b<base32 lower>"}, integers in decimal, floats as Go formats a float64, and
#   strings escaped like encoding/json: \" \\ \b \f \n \r \t, other controls as \u00XX,
#   < > & as \u003c \u003e \u0026, U+2028/U+2029 as \u2028 \u2029.
# A record v2 cannot decode is not sent: v2's subscriber loop counts an encode error,
# logs it and skips that event (internal/subscribe/handler.go); the stream goes on.
# The reading is v1's, shared: `_Reader.head`, `_read_key`, `_read_link` and `_read_value`
# apply each v2 rule above behind `reader.v2`; this section holds only what v2 alone does.

V2_MAX_ITEM = 1 << 20  # atmos cbor.MaxSize: byte/text length, array/map element count
V2_MAX_DEPTH = 128  # atmos cbor.MaxDepth
_V2_CID_PREFIXES = (b"\x01\x71\x12\x20", b"\x01\x55\x12\x20")  # CIDv1 dag-cbor / raw, sha2-256, 32


def _build_escape_table_v2() -> dict[int, str]:
    table = {c: "\\u%04x" % c for c in range(0x20)}
    table.update({
        ord("\b"): "\\b", ord("\f"): "\\f", ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t",
        ord('"'): '\\"', ord("\\"): "\\\\",
        ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026",
        0x2028: "\\u2028", 0x2029: "\\u2029",
    })
    return table


_ESCAPE_TABLE_V2 = _build_escape_table_v2()
_NEEDS_ESCAPE_V2 = re.compile('["\\\\\x00-\x1f<>&\u2028\u2029]')


def _v2_string(raw: bytes) -> bytes:
    """A CBOR text payload as encoding/json writes it; RecordError if it is not UTF-8."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RecordError("invalid_utf8") from None
    if _NEEDS_ESCAPE_V2.search(text) is None:
        return b'"' + raw + b'"'
    return b'"' + text.translate(_ESCAPE_TABLE_V2).encode("utf-8") + b'"'


def go_float_json(value: float) -> bytes:
    """A finite float64 as Go's encoding/json writes it (floatEncoder, bits=64).

    Shortest round-trip digits (Python's repr and Go's strconv -1 precision agree); fixed
    notation unless |value| < 1e-6 or >= 1e21, then exponent form with no padding of a
    negative exponent ("1e-7", "1.5e+300").
    """
    if value == 0.0:
        return b"-0" if math.copysign(1.0, value) < 0 else b"0"
    text = repr(abs(value))
    mantissa, _, exponent = text.partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = whole + fraction
    # The decimal exponent of digits[0] once leading zeros are gone (value = d.ddd x 10^point).
    point = len(whole) - 1 + (int(exponent) if exponent else 0)
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    digits = stripped.rstrip("0") or "0"
    sign = "-" if value < 0 else ""
    magnitude = abs(value)
    if magnitude < 1e-6 or magnitude >= 1e21:
        body = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return ("%s%se%s%d" % (sign, body, "-" if point < 0 else "+", abs(point))).encode("ascii")
    if point < 0:
        return ("%s0.%s%s" % (sign, "0" * (-point - 1), digits)).encode("ascii")
    whole_digits = digits[:point + 1].ljust(point + 1, "0")
    fraction_digits = digits[point + 1:]
    return (sign + whole_digits + ("." + fraction_digits if fraction_digits else "")).encode("ascii")


def _v2_simple(reader: _Reader, info: int, argument: int) -> bytes:
    if info == 20:
        return b"false"
    if info == 21:
        return b"true"
    if info == 22:
        return b"null"
    if info == 27:
        value = struct.unpack(">d", argument.to_bytes(8, "big"))[0]
        if not math.isfinite(value):
            raise RecordError("non_finite_float")
        return go_float_json(value)
    raise RecordError("unsupported_simple")


def _v2_finish(container: _Container) -> bytes:
    if not container.is_map:
        return b"[" + b",".join(container.items) + b"]"
    entries = sorted(container.items)  # keys are unique: the order check saw to that
    return b"{" + b",".join(_v2_string(key) + b":" + value for key, value in entries) + b"}"


def _v2_item(reader: _Reader, stack: list[_Container]) -> bytes | None:
    """atmos ReadValue for one item; a non-empty container is pushed on `stack` (None)."""
    if len(stack) + 1 > V2_MAX_DEPTH:
        raise RecordError("too_deep")
    major, info, argument = reader.head()
    if major == 0:
        if argument >= 1 << 63:
            raise RecordError("int_out_of_range")
        return b"%d" % argument
    if major == 1:
        if argument >= 1 << 63:
            raise RecordError("int_out_of_range")
        return b"%d" % (-1 - argument)
    if major == 2:
        if argument > V2_MAX_ITEM:
            raise RecordError("string_too_long")
        return b'{"$bytes":"' + std_base64_nopad(reader.take(argument)) + b'"}'
    if major == 3:
        if argument > V2_MAX_ITEM:
            raise RecordError("string_too_long")
        return _v2_string(reader.take(argument))
    if major in (4, 5):
        if argument > V2_MAX_ITEM:
            raise RecordError("container_too_long")
        return _open_container(stack, major == 5, argument, _v2_finish)
    if major == 6:
        return _link_json(_read_link(reader, argument))
    return _v2_simple(reader, info, argument)


def record_to_json_v2(block: bytes) -> bytes:
    """The record JSON Jetstream v2 sends for a record block, or RecordError(reason).

    Reads one value from the start of `block` (bytes after it are ignored, as v2's
    streaming decoder ignores them); see the section comment above for every rule.
    """
    return _read_value(_Reader(bytes(block), v2=True), _v2_item, _v2_finish)
