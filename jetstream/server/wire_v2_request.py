"""Sans-I/O reading of a Jetstream v2 `subscribeEvents` upgrade request: bytes in, a decision out.

Owns: every rule that turns `GET /xrpc/network.bsky.jetstream.subscribeEvents?...` into either a
`V2Request` (what the client asked for) or a `Refusal` (the XRPC error envelope v2 answers
before the upgrade), with bluesky-social/jetstream's exact check order, error names, messages
and statuses (internal/subscribe/handler.go serve, filterv2.go ParseQueryV2, cursor.go
ResolveCursor; lexicons/network/bsky/jetstream/subscribeEvents.json):
- the query as Go's url.ParseQuery reads it, strictly: any malformed pair (bad %-escape, `;`),
  or more than 10,000 `&`-separated parameters (Go 1.26's urlmaxqueryparams), refuses the
  request (v1 dropped the bad pair instead);
- DID and NSID syntax as atmos (v2's atproto library) checks it;
- the cursor: below 10^15 a seq, at or above it unix microseconds, resolved against what this
  node can replay (`Retention`) into a `CursorPlan`; a seq below the floor is `CursorTooOld`, a
  time below it starts at the floor with an `#info OutdatedCursor` frame first;
- the `xrpc.v1.json` subprotocol, echoed only when the client offered exactly that token.
It must never touch a socket, the log or the clock (callers pass now_us and a Retention
snapshot), and never render event frames (wire_v2.py does).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from http import HTTPStatus
from typing import Mapping, NamedTuple

from jetstream import wire_v2
from jetstream.events import KIND_ACCOUNT, KIND_COMMIT, KIND_IDENTITY, KIND_SYNC
from jetstream.server.params import go_query_unescape

METHOD_PATH = b"/xrpc/network.bsky.jetstream.subscribeEvents"
SUBPROTOCOL = "xrpc.v1.json"

# Caps from the lexicon (maxLength), enforced on the raw repeated-parameter count.
MAX_KINDS = 4
MAX_DIDS = 10_000
MAX_COLLECTIONS = 100
# Go 1.26 net/url: ParseQuery refuses a query with more than this many "&"-separated parts
# (GODEBUG urlmaxqueryparams, default 10000), before parsing any of them.
GO_MAX_QUERY_PARAMS = 10_000
# cursor.go CursorSeqMaxThreshold: below it a cursor is a seq, at or above it unix µs.
CURSOR_SEQ_MAX = 10 ** 15
_UINT32_MAX = (1 << 32) - 1

KIND_CODES = {"commit": KIND_COMMIT, "identity": KIND_IDENTITY, "account": KIND_ACCOUNT, "sync": KIND_SYNC}

# Error names (the lexicon's, plus the XRPC standard ones v2 uses here).
INVALID_REQUEST = "InvalidRequest"
CURSOR_TOO_OLD = "CursorTooOld"
UNKNOWN_ZSTD_DICTIONARY = "UnknownZstdDictionary"
SERVICE_UNAVAILABLE = "ServiceUnavailable"

# Error texts v2 wraps its messages in (errors.go ErrInvalidOptions, cursor.go).
_INVALID_OPTIONS = "subscribe: invalid options"
_INVALID_CURSOR = "subscribe: invalid cursor"
_CURSOR_TOO_OLD = "subscribe: cursor too old"
V1_COMPRESSION_MESSAGE = ("compress=true / Socket-Encoding: zstd is the /subscribe (v1) opt-in; this endpoint "
                          "uses zstdDictionary=<id> with the dictionary from getZstdDictionary")
BAD_DICTIONARY_MESSAGE = "zstdDictionary must be a positive integer zstd dictionary ID"
OUTDATED_CURSOR_MESSAGE = "requested timestamp cursor below retention floor; starting at seq %d"


# ---------------------------------------------------------------------------
# Go's text forms: strconv.Quote (%q) and encoding/json strings
# ---------------------------------------------------------------------------

_QUOTE_ESCAPES = {7: "\\a", 8: "\\b", 12: "\\f", 10: "\\n", 13: "\\r", 9: "\\t", 11: "\\v",
                  ord('"'): '\\"', ord("\\"): "\\\\"}


def go_quote(text: str) -> str:
    """Go strconv.Quote: `text` (surrogateescape str = Go string bytes) as a Go string literal.

    Printable runes stay (Go's unicode.IsPrint is Python's isprintable: letters, marks, numbers,
    punctuation, symbols and the ASCII space); an invalid UTF-8 byte becomes \\xNN; controls
    \\a \\b \\f \\n \\r \\t \\v or \\xNN; other non-printables \\uXXXX or \\UXXXXXXXX.
    """
    out = ['"']
    for char in text:
        code = ord(char)
        if code in _QUOTE_ESCAPES:
            out.append(_QUOTE_ESCAPES[code])
        elif 0xDC80 <= code <= 0xDCFF:  # surrogateescape's stand-in for one invalid byte
            out.append("\\x%02x" % (code - 0xDC00))
        elif char.isprintable():
            out.append(char)
        elif code < 0x20 or code == 0x7F:
            out.append("\\x%02x" % code)
        elif 0xD800 <= code <= 0xDFFF:  # not a valid rune (cannot come from UTF-8 anyway)
            out.append("\\ufffd")
        elif code < 0x10000:
            out.append("\\u%04x" % code)
        else:
            out.append("\\U%08x" % code)
    out.append('"')
    return "".join(out)


def _build_json_escapes() -> dict[int, str]:
    table = {c: "\\u%04x" % c for c in range(0x20)}
    table.update({ord("\b"): "\\b", ord("\f"): "\\f", ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t",
                  ord('"'): '\\"', ord("\\"): "\\\\",
                  ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026",
                  0x2028: "\\u2028", 0x2029: "\\u2029"})
    for bad_byte in range(0x80, 0x100):  # surrogateescape stand-ins: Go writes one \ufffd per bad byte
        table[0xDC00 + bad_byte] = "\\ufffd"
    return table


_JSON_ESCAPES = _build_json_escapes()


def go_json_string(text: str) -> bytes:
    """`text` as Go 1.26 encoding/json (json.Marshal, HTML-safe) writes a string, quotes included."""
    return b'"' + text.translate(_JSON_ESCAPES).encode("utf-8", "surrogatepass") + b'"'


# ---------------------------------------------------------------------------
# refusals: the XRPC error envelope
# ---------------------------------------------------------------------------

class Refusal(NamedTuple):
    """An answer instead of the upgrade: status, headers of ours (no CORS, no length), body."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @property
    def error(self) -> str:
        """The envelope's error name (for counters and logs)."""
        return self.body[10:self.body.index(b'"', 10)].decode()


JSON_HEADERS = (("Content-Type", "application/json"),)


def xrpc_error(status: int, name: str, message: str) -> Refusal:
    """handler.go httpError on v2: json.Marshal({error, message,omitempty}), Content-Type application/json."""
    body = b'{"error":' + go_json_string(name)
    if message:
        body += b',"message":' + go_json_string(message)
    return Refusal(int(status), JSON_HEADERS, body + b"}")


def invalid_request(message: str) -> Refusal:
    return xrpc_error(HTTPStatus.BAD_REQUEST, INVALID_REQUEST, message)


def service_unavailable(reason: str) -> Refusal:
    """503 while this node cannot serve a subscriber yet (v2: bootstrap, warm-up)."""
    return xrpc_error(HTTPStatus.SERVICE_UNAVAILABLE, SERVICE_UNAVAILABLE, f"service not ready: {reason}")


def cursor_too_old(requested: int, floor_seq: int) -> Refusal:
    return xrpc_error(HTTPStatus.BAD_REQUEST, CURSOR_TOO_OLD,
                      f"{_CURSOR_TOO_OLD}: cursor {requested} below lookback floor {floor_seq}; "
                      "re-backfill from your last seq")


def unknown_dictionary(requested: int, current_id: int) -> Refusal:
    return xrpc_error(HTTPStatus.BAD_REQUEST, UNKNOWN_ZSTD_DICTIONARY,
                      f"unknown zstd dictionary id {requested}; current dictionary id is {current_id} "
                      "(fetch it via getZstdDictionary and reconnect)")


class _Invalid(Exception):
    """A rule broken while parsing; the message is v2's text. Never leaves this module."""


# ---------------------------------------------------------------------------
# the query string, as Go's url.ParseQuery reads it (errors are fatal on v2)
# ---------------------------------------------------------------------------

def _go_unescape_error(raw: bytes) -> str:
    """url.EscapeError for the first bad %-escape in `raw`: up to 3 bytes from the '%'."""
    index = 0
    while True:
        index = raw.index(b"%", index)
        pair = raw[index + 1:index + 3]
        if len(pair) < 2 or not _is_hex(pair[0]) or not _is_hex(pair[1]):
            return "invalid URL escape " + go_quote(raw[index:index + 3].decode("utf-8", "surrogateescape"))
        index += 3


def _is_hex(byte: int) -> bool:
    return byte in b"0123456789abcdefABCDEF"


def go_parse_query(raw_query: bytes) -> tuple[dict[str, list[str]], str | None]:
    """Go 1.26 url.ParseQuery: (values, the error's text or None).

    Too many parameters: nothing parsed. Otherwise every good pair is kept; the error is the
    last `;` pair's if any (Go overwrites it), else the first bad escape's.
    """
    params: dict[str, list[str]] = {}
    if raw_query.count(b"&") + 1 > GO_MAX_QUERY_PARAMS:
        return params, "number of URL query parameters exceeded limit"
    error: str | None = None
    semicolon = False
    for pair in raw_query.split(b"&"):
        if b";" in pair:
            semicolon = True
            continue
        if not pair:
            continue
        raw_key, _, raw_value = pair.partition(b"=")
        key = go_query_unescape(raw_key)
        value = go_query_unescape(raw_value) if key is not None else None
        if key is None or value is None:
            if error is None:
                error = _go_unescape_error(raw_key if key is None else raw_value)
            continue
        params.setdefault(key.decode("utf-8", "surrogateescape"), []).append(
            value.decode("utf-8", "surrogateescape"))
    if semicolon:
        error = "invalid semicolon separator in query"
    return params, error


def _first(params: Mapping[str, list[str]], name: str) -> str:
    """url.Values.Get: the first value, "" when absent."""
    values = params.get(name)
    return values[0] if values else ""


def parse_go_uint(text: str, bits: int) -> int | None:
    """strconv.ParseUint(text, 10, bits): ASCII digits only (no sign, no '_'), in range; else None."""
    if not text or not text.isascii() or not text.isdigit():
        return None
    if len(text.lstrip("0")) > 20:  # far past uint64, and int() refuses over 4300 digits
        return None
    value = int(text)
    return value if value < 1 << bits else None


_GO_INT = re.compile(r"[+-]?[0-9]+")


def parse_go_int64(text: str) -> int | None:
    """strconv.ParseInt(text, 10, 64); None on any failure."""
    if _GO_INT.fullmatch(text) is None or len(text.lstrip("+-").lstrip("0")) > 19:
        return None
    value = int(text)
    return value if -(1 << 63) <= value < 1 << 63 else None


# ---------------------------------------------------------------------------
# DID and NSID syntax (atmos ParseDID / ParseNSID, byte by byte)
# ---------------------------------------------------------------------------

_ALNUM = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_ALPHA = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_LOWER = frozenset(b"abcdefghijklmnopqrstuvwxyz")
_DID_IDENT = _ALNUM | frozenset(b"._:-%")
_LABEL_INNER = _ALNUM | frozenset(b"-")


def is_valid_did(text: str) -> bool:
    """atmos.ParseDID: did:<lowercase method>:<[A-Za-z0-9._:%-]+ not ending in ':' or '%'>, ≤ 2048 bytes."""
    raw = text.encode("utf-8", "surrogateescape")
    if not 0 < len(raw) <= 2048 or not raw.startswith(b"did:"):
        return False
    method_end = raw.find(b":", 4)
    if method_end <= 4 or not all(byte in _LOWER for byte in raw[4:method_end]):
        return False
    ident = raw[method_end + 1:]
    return bool(ident) and all(byte in _DID_IDENT for byte in ident) and raw[-1] not in b":%"


def _is_domain_label(label: bytes) -> bool:
    return (0 < len(label) <= 63 and label[0] in _ALNUM and label[-1] in _ALNUM
            and all(byte in _LABEL_INNER for byte in label[1:-1]))


def is_valid_nsid(text: str) -> bool:
    """atmos.ParseNSID: ≥ 3 segments, ≤ 317 bytes; domain labels as DNS (the first starts with a
    letter); the name segment a letter then letters/digits, 1-63."""
    raw = text.encode("utf-8", "surrogateescape")
    if not 0 < len(raw) <= 317:
        return False
    *domain, name = raw.split(b".")
    if len(domain) < 2 or not all(_is_domain_label(label) for label in domain) or domain[0][0] not in _ALPHA:
        return False
    return 0 < len(name) <= 63 and name[0] in _ALPHA and all(byte in _ALNUM for byte in name)


# ---------------------------------------------------------------------------
# the request
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class V2Request:
    """A subscribeEvents request v2 accepts (before its cursor is resolved against the log)."""

    kinds: frozenset[int] | None  # None: every kind (also kinds this build cannot name)
    dids: frozenset[str] | None  # None: every repo
    collections: tuple[str, ...] | None  # exact NSIDs and "prefix.*" entries; None: all
    max_message_size_bytes: int  # 0: no limit; compared with the uncompressed frame, envelope included
    zstd: bool  # binary frames, one zstd frame each with the v2 dictionary
    cursor_text: str  # url.Values.Get("cursor"): "" = live
    subprotocol: str | None  # SUBPROTOCOL when offered, else None (the 101 carries no header)


def negotiate_subprotocol(offered: list[str]) -> str | None:
    """handler.go negotiateSubprotocol: the exact token (case-sensitive) among the offers, else None."""
    for header in offered:
        for token in header.split(","):
            if token.strip() == SUBPROTOCOL:
                return SUBPROTOCOL
    return None


def parse_request(raw_query: bytes, socket_encoding: str, offered_subprotocols: list[str],
                  current_dictionary_id: int) -> V2Request | Refusal:
    """Everything handler.go serve checks before the cursor, in its order; never raises."""
    params, query_error = go_parse_query(raw_query)
    if query_error is not None:
        return invalid_request(f"{_INVALID_OPTIONS}: {query_error}")
    if _first(params, "compress") == "true" or "zstd" in socket_encoding:
        return invalid_request(V1_COMPRESSION_MESSAGE)
    zstd = False
    dictionary_text = _first(params, "zstdDictionary")
    if dictionary_text:
        dictionary_id = parse_go_uint(dictionary_text, 32)
        if not dictionary_id:
            return invalid_request(BAD_DICTIONARY_MESSAGE)
        if dictionary_id != current_dictionary_id:
            return unknown_dictionary(dictionary_id, current_dictionary_id)
        zstd = True
    try:
        kinds, dids, collections, max_size = _parse_filter(params)
    except _Invalid as exc:
        return invalid_request(f"{_INVALID_OPTIONS}: {exc}")
    return V2Request(kinds, dids, collections, max_size, zstd, _first(params, "cursor"),
                     negotiate_subprotocol(offered_subprotocols))


def _parse_filter(params: Mapping[str, list[str]]):
    """filterv2.go ParseQueryV2, check by check."""
    for legacy, modern in (("wantedDids", "dids"), ("wantedCollections", "collections")):
        if legacy in params:  # present at all, even empty: a migrating client must not get everything
            raise _Invalid(f"{legacy} is the legacy /subscribe parameter; use {modern}")
    if "requireHello" in params:
        raise _Invalid("requireHello is not supported on this endpoint; it is server-push only "
                       "(subscriber-sourced messages were removed)")
    kinds = _parse_kinds(params.get("kinds") or [])
    raw_dids = params.get("dids") or []
    raw_collections = params.get("collections") or []
    if len(raw_dids) > MAX_DIDS:
        raise _Invalid(f"too many dids values: {len(raw_dids)} > {MAX_DIDS}")
    if len(raw_collections) > MAX_COLLECTIONS:
        raise _Invalid(f"too many collections values: {len(raw_collections)} > {MAX_COLLECTIONS}")
    for did in raw_dids:
        if not is_valid_did(did):
            raise _Invalid(f"invalid DID: {did}")
    for entry in raw_collections:
        # A wildcard's head must be a valid NSID prefix: v2 probes it with a shortest name label.
        if entry.endswith(".*") and not is_valid_nsid(entry[:-2] + ".x"):
            raise _Invalid(f"invalid collection wildcard: {entry}")
    for entry in raw_collections:
        if not entry.endswith(".*") and not is_valid_nsid(entry):
            raise _Invalid(f"invalid collection: {entry}")
    collections = tuple(dict.fromkeys(raw_collections)) if raw_collections else None
    if collections is not None and kinds is not None and KIND_COMMIT not in kinds:
        raise _Invalid("collections filter can never apply: kinds excludes commit")
    dids = frozenset(raw_dids) if raw_dids else None
    return kinds, dids, collections, _parse_max_message_size(params)


def _parse_kinds(values: list[str]) -> frozenset[int] | None:
    if len(values) > MAX_KINDS:
        raise _Invalid(f"too many kinds values: {len(values)} > {MAX_KINDS}")
    if not values:
        return None
    for value in values:
        if value not in KIND_CODES:
            raise _Invalid(f"unknown kind {go_quote(value)} (valid: commit, identity, account, sync)")
    return frozenset(KIND_CODES[value] for value in values)


def _parse_max_message_size(params: Mapping[str, list[str]]) -> int:
    values = params.get("maxMessageSizeBytes")
    if values is None:
        return 0
    if len(values) != 1 or values[0] == "":
        raise _Invalid("maxMessageSizeBytes must be one unsigned 32-bit integer")
    size = parse_go_uint(values[0], 32)
    if size is None:
        raise _Invalid(f"invalid maxMessageSizeBytes {go_quote(values[0])}")
    return size


# ---------------------------------------------------------------------------
# the cursor
# ---------------------------------------------------------------------------

class Retention(NamedTuple):
    """What this node can replay right now (the caller's snapshot at the upgrade)."""

    floor_seq: int  # the lowest seq it can still replay; newest_seq + 1 when it holds nothing
    newest_seq: int  # 0: nothing sequenced yet
    oldest_time_us: int | None  # time_us of the event at floor_seq; None when it holds nothing


LIVE, FROM_SEQ, FROM_TIME = "live", "seq", "time"


class CursorPlan(NamedTuple):
    """Where a connection starts, and what it is told before the first event."""

    mode: str  # LIVE (the tip), FROM_SEQ (value = first seq, inclusive), FROM_TIME (value = time_us, inclusive)
    value: int = 0
    first_frames: tuple[bytes, ...] = ()  # uncompressed text frames (#info OutdatedCursor)


LIVE_PLAN = CursorPlan(LIVE)


def resolve_cursor(text: str, retention: Retention, now_us: int) -> CursorPlan | Refusal:
    """cursor.go ResolveCursor with v2's policy (RejectBelowFloor), against our retention."""
    if text == "":
        return LIVE_PLAN
    requested = parse_go_int64(text)
    if requested is None:
        return invalid_request(f"{_INVALID_CURSOR}: {go_quote(text)}")
    if requested < 0:
        return invalid_request(f"{_INVALID_CURSOR}: negative value {requested}")
    if requested < CURSOR_SEQ_MAX:
        if requested > retention.newest_seq:  # at or past the next seq to be assigned: the tip
            return LIVE_PLAN
        start = max(requested, 1)  # seq 0 is "nothing yet": from the first event
        if start < retention.floor_seq:
            return cursor_too_old(requested, retention.floor_seq)
        return CursorPlan(FROM_SEQ, start)
    if requested > now_us:
        return LIVE_PLAN
    if retention.oldest_time_us is not None and requested < retention.oldest_time_us:
        # A time cursor is v1's translation: it clamps to the floor (never refused) and says so.
        info = wire_v2.info_frame(wire_v2.INFO_OUTDATED_CURSOR, OUTDATED_CURSOR_MESSAGE % retention.floor_seq)
        return CursorPlan(FROM_SEQ, retention.floor_seq, (info,))
    return CursorPlan(FROM_TIME, requested)


def accept(raw_query: bytes, socket_encoding: str, offered_subprotocols: list[str], *,
           current_dictionary_id: int, retention: Retention, now_us: int,
           not_ready: str | None = None) -> tuple[V2Request, CursorPlan] | Refusal:
    """The whole pre-upgrade decision in v2's order: readiness, query, filters, cursor."""
    if not_ready is not None:
        return service_unavailable(not_ready)
    request = parse_request(raw_query, socket_encoding, offered_subprotocols, current_dictionary_id)
    if isinstance(request, Refusal):
        return request
    plan = resolve_cursor(request.cursor_text, retention, now_us)
    if isinstance(plan, Refusal):
        return plan
    return request, plan
