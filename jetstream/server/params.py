"""Subscriber options: the `/subscribe` query string and `options_update` messages.

Owns: every rule that turns client input into a SubscriberOptions value, with
Jetstream v1's exact check order and error texts (docs/protocol.md §3, §5):
Go `url.Values` query parsing, NSID/DID syntax (indigo's regexes), prefix rules,
count caps, Go `ParseInt` cursors, `maxMessageSizeBytes` coercions, and the
close reasons for bad client messages.
It must never do I/O, touch sockets, or read the clock (callers pass now_us).
Errors are values at this edge: BadRequest carries a 400 body, CloseConnection a
close reason.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, NamedTuple

from jetstream.server import gojson

MAX_WANTED_COLLECTIONS = 100
MAX_WANTED_DIDS = 10_000
MAX_CLOSE_REASON_BYTES = 123  # 125-byte control payload minus the 2-byte close code

INVALID_OPTIONS = "invalid subscriber options"

# indigo atproto/syntax at 20524de (the final v1). Python's `$` also matches before a
# trailing newline, so these are used with fullmatch, never match.
NSID_PATTERN = re.compile(
    r"[a-zA-Z]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
    r"(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)+"
    r"(\.[a-zA-Z]([a-zA-Z0-9]{0,62})?)"
)
NSID_MAX_LENGTH = 317
DID_PATTERN = re.compile(r"did:[a-z]+:[a-zA-Z0-9._:%-]*[a-zA-Z0-9._-]")
DID_MAX_LENGTH = 2048
_PLC_FAST_PATH_SUFFIX = re.compile(r"[a-zA-Z0-9]{24}")
_GO_INT = re.compile(r"[+-]?[0-9]+")
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


class BadRequest(Exception):
    """A `/subscribe` request refused before the upgrade; `text` is the exact 400 body."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class InvalidSubscriberOptions(Exception):
    """A filter rule broken; str() is v1's error text (`invalid subscriber options[: …]`)."""


class SubscriberFilters(NamedTuple):
    """What a subscriber wants. wanted_collections None = all; "x.*" entries are prefixes."""

    wanted_collections: tuple[str, ...] | None
    wanted_dids: frozenset[str]  # empty = all DIDs


ALL_EVENTS = SubscriberFilters(None, frozenset())


@dataclass(frozen=True)
class SubscriberOptions:
    filters: SubscriberFilters
    max_message_size_bytes: int  # 0 = no limit
    compress: bool
    require_hello: bool
    cursor: int | None  # None = live tail (absent, or later than now)
    # Additions v1 did not have; a client that does not ask gets v1's stream unchanged.
    heartbeat_seconds: int = 0  # 0 = no heartbeats
    include_sync: bool = False  # deliver kind "sync" events


# --- syntax ---------------------------------------------------------------------------------

def is_valid_nsid(text: str) -> bool:
    """indigo syntax.ParseNSID."""
    size = len(text.encode("utf-8", "surrogateescape"))
    return 0 < size <= NSID_MAX_LENGTH and NSID_PATTERN.fullmatch(text) is not None


def is_valid_did(text: str) -> bool:
    """indigo syntax.ParseDID, including its did:plc fast path (which never falls back to the regex)."""
    if len(text) == 32 and text.startswith("did:plc:"):
        return _PLC_FAST_PATH_SUFFIX.fullmatch(text, 8) is not None
    size = len(text.encode("utf-8", "surrogateescape"))
    return 0 < size <= DID_MAX_LENGTH and DID_PATTERN.fullmatch(text) is not None


def parse_go_int64(text: str) -> int | None:
    """Go strconv.ParseInt(text, 10, 64): optional sign, ASCII digits, no spaces; None on failure."""
    if _GO_INT.fullmatch(text) is None:
        return None
    if len(text.lstrip("+-").lstrip("0")) > 19:  # out of int64 range; and int() refuses > 4300 digits
        return None
    value = int(text)
    return value if _INT64_MIN <= value <= _INT64_MAX else None


def coerce_max_message_size(value: int | None) -> int:
    """v1: unparseable or negative -> 0, else truncated to uint32 (5000000000 -> 705032704)."""
    if value is None or value < 0:
        return 0
    return value % (1 << 32)


# --- filters (shared by the query string and options_update) --------------------------------

def parse_filters(wanted_collections: list[str] | None, wanted_dids: list[str] | None) -> SubscriberFilters:
    """v1 parseSubscriberOptions: collections left to right, then DIDs, then the two caps.

    Prefixes ("x.*") are not validated and not deduped (each counts toward the cap);
    full NSIDs are deduped. An empty or missing list means "all".
    """
    collections: tuple[str, ...] | None = None
    if wanted_collections:
        prefixes: list[str] = []
        full_nsids: dict[str, None] = {}  # insertion-ordered set
        for value in wanted_collections:
            if value.endswith(".*"):
                prefixes.append(value)
            elif is_valid_nsid(value):
                full_nsids[value] = None
            else:
                raise InvalidSubscriberOptions(f"{INVALID_OPTIONS}: invalid collection: {value}")
        collections = tuple(full_nsids) + tuple(prefixes)
        collection_count = len(full_nsids) + len(prefixes)
    else:
        collection_count = 0
    dids: set[str] = set()
    for value in wanted_dids or ():
        if not is_valid_did(value):
            raise InvalidSubscriberOptions(INVALID_OPTIONS)  # v1 gives no detail for DIDs
        dids.add(value)
    if len(dids) > MAX_WANTED_DIDS:
        raise InvalidSubscriberOptions(f"{INVALID_OPTIONS}: too many wanted DIDs")
    if collection_count > MAX_WANTED_COLLECTIONS:
        raise InvalidSubscriberOptions(f"{INVALID_OPTIONS}: too many wanted collections")
    return SubscriberFilters(collections, frozenset(dids))


# --- the query string -----------------------------------------------------------------------

_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


def go_query_unescape(raw: bytes) -> bytes | None:
    """Go url.QueryUnescape: '+' is a space, %XX decoded; a bad escape -> None."""
    if b"%" not in raw:
        return raw.replace(b"+", b" ")
    out = bytearray()
    i = 0
    while i < len(raw):
        byte = raw[i]
        if byte == 0x25:  # '%'
            pair = raw[i + 1:i + 3]
            if len(pair) != 2 or pair[0] not in _HEX_DIGITS or pair[1] not in _HEX_DIGITS:
                return None
            out.append(int(pair, 16))
            i += 3
        else:
            out.append(0x20 if byte == 0x2B else byte)
            i += 1
    return bytes(out)


def parse_query(raw_query: bytes) -> dict[str, list[str]]:
    """Go url.ParseQuery as echo's c.QueryParams() sees it (errors dropped, pair skipped).

    Values are str with undecodable bytes kept as surrogates, so a 400 body can echo
    the client's exact bytes back.
    """
    params: dict[str, list[str]] = {}
    for pair in raw_query.split(b"&"):
        if not pair or b";" in pair:  # Go >= 1.17 rejects ';' separators
            continue
        raw_key, _, raw_value = pair.partition(b"=")
        key, value = go_query_unescape(raw_key), go_query_unescape(raw_value)
        if key is None or value is None:
            continue
        params.setdefault(_to_text(key), []).append(_to_text(value))
    return params


def _to_text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def text_to_wire(text: str) -> bytes:
    """Inverse of the query decoding: the client's original bytes."""
    return text.encode("utf-8", "surrogateescape")


def _first(params: Mapping[str, list[str]], name: str) -> str:
    values = params.get(name)
    return values[0] if values else ""


def parse_subscribe_query(raw_query: bytes, socket_encoding: str, now_us: int) -> SubscriberOptions:
    """Validate a `/subscribe` request in v1's order; raise BadRequest with v1's 400 body."""
    params = parse_query(raw_query)
    max_size_text = _first(params, "maxMessageSizeBytes")
    max_message_size = coerce_max_message_size(parse_go_int64(max_size_text) if max_size_text else 0)
    require_hello = _first(params, "requireHello") == "true"
    compress = _first(params, "compress") == "true" or "zstd" in socket_encoding
    cursor = parse_cursor(_first(params, "cursor"), now_us)
    try:
        filters = parse_filters(params.get("wantedCollections"), params.get("wantedDids"))
    except InvalidSubscriberOptions as exc:
        raise BadRequest(str(exc)) from None
    # After v1's checks, so a request v1 refused is refused with v1's text.
    heartbeat_text = _first(params, "heartbeatSeconds")
    heartbeat_seconds = parse_heartbeat_seconds(heartbeat_text) if heartbeat_text else 0
    if heartbeat_seconds is None:
        raise BadRequest(f"invalid heartbeatSeconds: {heartbeat_text}")
    include_sync = _first(params, "includeSync") == "true"
    return SubscriberOptions(filters, max_message_size, compress, require_hello, cursor,
                             heartbeat_seconds, include_sync)


HEARTBEAT_MIN_SECONDS, HEARTBEAT_MAX_SECONDS = 1, 3600


def parse_heartbeat_seconds(text: str) -> int | None:
    """heartbeatSeconds: a decimal integer 1..3600, else None (the caller refuses it)."""
    value = parse_go_int64(text)
    if value is None or not HEARTBEAT_MIN_SECONDS <= value <= HEARTBEAT_MAX_SECONDS:
        return None
    return value


def parse_cursor(text: str, now_us: int) -> int | None:
    """v1: "" -> no cursor; ParseInt failure -> 400; later than now -> live tail (None)."""
    if text == "":
        return None
    cursor = parse_go_int64(text)
    if cursor is None:
        raise BadRequest(f"invalid cursor: {text}")
    return None if cursor > now_us else cursor


# --- client messages ------------------------------------------------------------------------

class OptionsUpdate(NamedTuple):
    filters: SubscriberFilters
    max_message_size_bytes: int  # honoured, unlike v1 (a deliberate fix, docs/protocol.md §9)
    heartbeat_seconds: int | None = None  # None: unchanged; 0: off; else 1..3600


class CloseConnection(NamedTuple):
    """The server must close with code 1000 and this reason (already cut to 123 bytes)."""

    reason: str


def truncate_close_reason(reason: str) -> str:
    """Cut to 123 UTF-8 bytes on a character boundary.

    v1 silently failed to send reasons over 123 bytes (the client saw 1006); we send
    the start of the text instead (a deliberate fix, docs/protocol.md §9).
    """
    encoded = reason.encode("utf-8", "replace")
    if len(encoded) <= MAX_CLOSE_REASON_BYTES:
        return reason
    return encoded[:MAX_CLOSE_REASON_BYTES].decode("utf-8", "ignore")


def _close(reason: str) -> CloseConnection:
    return CloseConnection(truncate_close_reason(reason))


def interpret_client_message(data: bytes) -> OptionsUpdate | CloseConnection | None:
    """One client text frame -> an options update, a close, or None (ignored, as v1 does)."""
    try:
        message = gojson.unmarshal_sourced_message(data)
    except gojson.GoJSONError as exc:
        return _close(f"failed to unmarshal subscriber sourced message: {exc}")
    if message.type != "options_update":
        return None
    try:
        payload = gojson.unmarshal_options_update(message.payload)
    except gojson.GoJSONError as exc:
        return _close(f"failed to unmarshal subscriber options update: {exc}")
    try:
        filters = parse_filters(payload.wanted_collections, payload.wanted_dids)
    except InvalidSubscriberOptions as exc:
        return _close(f"failed to parse subscriber options: {exc}")
    heartbeat = payload.heartbeat_seconds
    if heartbeat is not None and heartbeat != 0 and parse_heartbeat_seconds(str(heartbeat)) is None:
        return _close(f"failed to parse subscriber options: invalid heartbeatSeconds: {heartbeat}")
    return OptionsUpdate(filters, coerce_max_message_size(payload.max_message_size_bytes), heartbeat)
