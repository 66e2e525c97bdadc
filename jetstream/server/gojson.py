"""Go `encoding/json` decoding, emulated for the two client message shapes.

Owns: turning a client's text frame into the values Go's `json.Unmarshal` would
produce for v1's `SubscriberSourcedMessage` and `SubscriberOptionsUpdatePayload`,
and the exact error texts Go would return (they reach clients as close reasons,
docs/protocol.md §5.3). Syntax is checked first over the whole input, as Go's
`checkValid` does, so a syntax error always wins over a type error; after that
the first type mismatch is reported, as Go's `saveError` keeps the first.
It must never do I/O or validate NSIDs/DIDs (params.py does that).
"""
from __future__ import annotations

import re
import sys
import unicodedata
from dataclasses import dataclass
from typing import Any

UNEXPECTED_END = "unexpected end of JSON input"
# Go's scanner refuses a 10,001st open bracket ("exceeded max depth"). The parser recurses
# two frames per level, so parse() lifts Python's recursion limit to fit (3.11 keeps pure
# Python calls off the C stack).
MAX_NESTING_DEPTH = 10_000
_RECURSION_NEEDED = 2 * MAX_NESTING_DEPTH + 200
# Sets of byte values, so peek()'s -1 at the end of input is simply "not a member".
_WHITESPACE = frozenset(b" \t\r\n")
_STRING_STOP = re.compile(rb'["\\\x00-\x1f]')  # a string's end, an escape, or a byte Go rejects
_DIGITS = frozenset(b"0123456789")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_SIMPLE_ESCAPES = {ord('"'): '"', ord("\\"): "\\", ord("/"): "/", ord("b"): "\b",
                   ord("f"): "\f", ord("n"): "\n", ord("r"): "\r", ord("t"): "\t"}
_GO_QUOTE_ESCAPES = {7: "\\a", 8: "\\b", 12: "\\f", 10: "\\n", 13: "\\r", 9: "\\t", 11: "\\v"}


class GoJSONError(ValueError):
    """What Go's json.Unmarshal returns; str(error) is Go's message text."""


@dataclass(frozen=True)
class JSONValue:
    """One parsed value: kind is Go's name for it in type errors; raw is its exact bytes."""

    kind: str  # "object" | "array" | "string" | "number" | "bool" | "null"
    value: Any  # list[(key, JSONValue)] | list[JSONValue] | str | number text | bool | None
    # A zero-copy view: copying each value's bytes made nested input cost depth x size
    # (a 1 MB message 300 levels deep took 300 MB and seconds of event-loop time).
    raw: memoryview


def _quote_char(byte: int) -> str:
    """Go's scanner quoteChar: the offending byte as Go prints it in a syntax error."""
    if byte == ord("'"):
        return "'\\''"
    if byte == ord('"'):
        return "'\"'"
    char = chr(byte)  # Go: string(rune(c)), so 0x80-0xFF are the Latin-1 code points
    if byte in _GO_QUOTE_ESCAPES:
        return f"'{_GO_QUOTE_ESCAPES[byte]}'"
    if byte < 0x20 or byte == 0x7F:
        return f"'\\x{byte:02x}'"
    if char == " " or unicodedata.category(char)[0] in "LMNPS":
        return f"'{char}'"
    return f"'\\u{byte:04x}'"


class _Parser:
    """Recursive descent that fails at the same byte, with the same words, as Go's scanner."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.view = memoryview(data)
        self.pos = 0
        self.depth = 0

    def fail(self, context: str) -> GoJSONError:
        if self.pos >= len(self.data):
            return GoJSONError(UNEXPECTED_END)
        return GoJSONError(f"invalid character {_quote_char(self.data[self.pos])} {context}")

    def peek(self) -> int:
        return self.data[self.pos] if self.pos < len(self.data) else -1

    def skip_whitespace(self) -> None:
        data, pos = self.data, self.pos
        while pos < len(data) and data[pos] in _WHITESPACE:
            pos += 1
        self.pos = pos

    def parse_document(self) -> JSONValue:
        value = self.parse_value()
        self.skip_whitespace()
        if self.pos < len(self.data):
            raise self.fail("after top-level value")
        return value

    def parse_value(self) -> JSONValue:
        self.skip_whitespace()
        start = self.pos
        char = self.peek()
        if char == ord("{") or char == ord("["):
            self.depth += 1
            if self.depth > MAX_NESTING_DEPTH:
                raise self.fail("exceeded max depth")
            if char == ord("{"):
                kind, value = "object", self.parse_object()
            else:
                kind, value = "array", self.parse_array()
            self.depth -= 1
        elif char == ord('"'):
            kind, value = "string", self.parse_string()
        elif char == ord("-") or char in _DIGITS:
            kind, value = "number", self.parse_number()
        elif char == ord("t"):
            kind, value = "bool", self.parse_literal(b"true", True)
        elif char == ord("f"):
            kind, value = "bool", self.parse_literal(b"false", False)
        elif char == ord("n"):
            kind, value = "null", self.parse_literal(b"null", None)
        else:
            raise self.fail("looking for beginning of value")
        return JSONValue(kind, value, self.view[start:self.pos])

    def parse_object(self) -> list[tuple[str, JSONValue]]:
        self.pos += 1
        members: list[tuple[str, JSONValue]] = []
        self.skip_whitespace()
        if self.peek() == ord("}"):
            self.pos += 1
            return members
        while True:
            self.skip_whitespace()
            if self.peek() != ord('"'):
                raise self.fail("looking for beginning of object key string")
            key = self.parse_string()
            self.skip_whitespace()
            if self.peek() != ord(":"):
                raise self.fail("after object key")
            self.pos += 1
            members.append((key, self.parse_value()))
            self.skip_whitespace()
            char = self.peek()
            if char == ord(","):
                self.pos += 1
            elif char == ord("}"):
                self.pos += 1
                return members
            else:
                raise self.fail("after object key:value pair")

    def parse_array(self) -> list[JSONValue]:
        self.pos += 1
        elements: list[JSONValue] = []
        self.skip_whitespace()
        if self.peek() == ord("]"):
            self.pos += 1
            return elements
        while True:
            elements.append(self.parse_value())
            self.skip_whitespace()
            char = self.peek()
            if char == ord(","):
                self.pos += 1
            elif char == ord("]"):
                self.pos += 1
                return elements
            else:
                raise self.fail("after array element")

    def parse_literal(self, word: bytes, value: Any) -> Any:
        self.pos += 1
        for expected in word[1:]:
            if self.peek() != expected:
                raise self.fail(f"in literal {word.decode()} (expecting '{chr(expected)}')")
            self.pos += 1
        return value

    def skip_digits(self) -> None:
        while self.peek() in _DIGITS:
            self.pos += 1

    def parse_number(self) -> str:
        start = self.pos
        if self.peek() == ord("-"):
            self.pos += 1
            if self.peek() not in _DIGITS:
                raise self.fail("in numeric literal")
        if self.peek() == ord("0"):
            self.pos += 1
        else:
            self.skip_digits()
        if self.peek() == ord("."):
            self.pos += 1
            if self.peek() not in _DIGITS:
                raise self.fail("after decimal point in numeric literal")
            self.skip_digits()
        if self.peek() in (ord("e"), ord("E")):
            self.pos += 1
            if self.peek() in (ord("+"), ord("-")):
                self.pos += 1
            if self.peek() not in _DIGITS:
                raise self.fail("in exponent of numeric literal")
            self.skip_digits()
        return self.data[start:self.pos].decode("ascii")

    def parse_string(self) -> str:
        """Scan a string and decode it as Go does (bad UTF-8 and lone surrogates become U+FFFD)."""
        self.pos += 1
        data = self.data
        pieces: list[str] = []
        run_start = self.pos
        while True:
            # Jump to the next byte that matters: a per-byte loop cost ~0.2 s per MB of
            # string on the event loop.
            stop = _STRING_STOP.search(data, self.pos)
            if stop is None:
                self.pos = len(data)
                raise GoJSONError(UNEXPECTED_END)
            self.pos = stop.start()
            char = data[self.pos]
            if char == ord('"'):
                pieces.append(data[run_start:self.pos].decode("utf-8", "replace"))
                self.pos += 1
                return _join_surrogates("".join(pieces))
            if char < 0x20:
                raise self.fail("in string literal")
            if char == ord("\\"):
                pieces.append(data[run_start:self.pos].decode("utf-8", "replace"))
                pieces.append(self.parse_escape())
                run_start = self.pos

    def parse_escape(self) -> str:
        self.pos += 1
        char = self.peek()
        if char in _SIMPLE_ESCAPES:
            self.pos += 1
            return _SIMPLE_ESCAPES[char]
        if char != ord("u"):
            raise self.fail("in string escape code")
        self.pos += 1
        for _ in range(4):
            if self.peek() not in _HEX:
                raise self.fail("in \\u hexadecimal character escape")
            self.pos += 1
        return chr(int(self.data[self.pos - 4:self.pos], 16))


def _join_surrogates(text: str) -> str:
    """Pair \\uD8xx\\uDCxx escapes into one code point; a lone surrogate becomes U+FFFD (Go's rule)."""
    if not any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def parse(data: bytes) -> JSONValue:
    """Parse one JSON document, or raise GoJSONError with Go's syntax error text."""
    limit = sys.getrecursionlimit()
    if limit < _RECURSION_NEEDED:
        sys.setrecursionlimit(_RECURSION_NEEDED)
    try:
        return _Parser(data).parse_document()
    finally:
        if limit < _RECURSION_NEEDED:
            sys.setrecursionlimit(limit)


def _type_error(value: JSONValue, struct: str, field: str, go_type: str) -> str:
    return f"json: cannot unmarshal {value.kind} into Go struct field {struct}.{field} of type {go_type}"


def _field_for(key: str, names: tuple[str, ...]) -> str | None:
    """The struct field a member key sets: exact name first, else case-insensitive (Go's rule)."""
    if key in names:
        return key
    folded = key.casefold()
    return next((name for name in names if name.casefold() == folded), None)


def _top_level_type_error(value: JSONValue, go_type: str) -> GoJSONError:
    return GoJSONError(f"json: cannot unmarshal {value.kind} into Go value of type {go_type}")


@dataclass(frozen=True)
class SourcedMessage:
    """v1's `SubscriberSourcedMessage{Type string; Payload json.RawMessage}`."""

    type: str
    payload: bytes  # b"" when absent, as Go leaves a nil RawMessage


def unmarshal_sourced_message(data: bytes) -> SourcedMessage:
    document = parse(data)
    if document.kind == "null":
        return SourcedMessage("", b"")
    if document.kind != "object":
        raise _top_level_type_error(document, "server.SubscriberSourcedMessage")
    type_text, payload, errors = "", b"", []
    for key, value in document.value:
        field = _field_for(key, ("type", "payload"))
        if field == "payload":
            payload = bytes(value.raw)  # json.RawMessage keeps any value verbatim, null included
        elif field == "type" and value.kind == "string":
            type_text = value.value
        elif field == "type" and value.kind != "null":
            errors.append(_type_error(value, "SubscriberSourcedMessage", "type", "string"))
    if errors:
        raise GoJSONError(errors[0])
    return SourcedMessage(type_text, payload)


@dataclass(frozen=True)
class OptionsUpdatePayload:
    """v1's `SubscriberOptionsUpdatePayload`; None means the field was absent or null."""

    wanted_collections: list[str] | None
    wanted_dids: list[str] | None
    max_message_size_bytes: int
    heartbeat_seconds: int | None = None  # not v1: absent or null -> None (unchanged)


_PAYLOAD_STRUCT = "SubscriberOptionsUpdatePayload"
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


def _string_list(value: JSONValue | None, field: str, errors: list[str]) -> list[str] | None:
    if value is None or value.kind == "null":
        return None
    if value.kind != "array":
        errors.append(_type_error(value, _PAYLOAD_STRUCT, field, "[]string"))
        return None
    strings: list[str] = []
    for element in value.value:
        if element.kind == "string":
            strings.append(element.value)
        else:
            # Go appends the element's zero value ("" for null and for a mismatch) and goes on.
            strings.append("")
            if element.kind != "null":
                errors.append(_type_error(element, _PAYLOAD_STRUCT, field, "string"))
    return strings


def _go_int(value: JSONValue | None, field: str, errors: list[str]) -> int:
    if value is None or value.kind == "null":
        return 0
    if value.kind != "number":
        errors.append(_type_error(value, _PAYLOAD_STRUCT, field, "int"))
        return 0
    text = value.value
    # The length check first: int() refuses strings over 4300 digits (a ValueError, not an answer).
    if any(c in text for c in ".eE") or len(text.lstrip("-")) > 19 or not _INT64_MIN <= int(text) <= _INT64_MAX:
        errors.append(f"json: cannot unmarshal number {text} into Go struct field "
                      f"{_PAYLOAD_STRUCT}.{field} of type int")
        return 0
    return int(text)


def unmarshal_options_update(payload: bytes) -> OptionsUpdatePayload:
    """Decode an options_update payload; raise GoJSONError with the first error Go would report."""
    document = parse(payload)
    if document.kind == "null":
        return OptionsUpdatePayload(None, None, 0)
    if document.kind != "object":
        raise _top_level_type_error(document, "server." + _PAYLOAD_STRUCT)
    names = ("wantedCollections", "wantedDids", "maxMessageSizeBytes", "heartbeatSeconds")
    errors: list[str] = []
    decoded: dict[str, Any] = {}
    decoders = {names[0]: _string_list, names[1]: _string_list, names[2]: _go_int, names[3]: _optional_go_int}
    # Go decodes members in document order, so the first error is the first member's.
    for key, value in document.value:
        field = _field_for(key, names)
        if field is not None:
            decoded[field] = decoders[field](value, field, errors)
    if errors:
        raise GoJSONError(errors[0])
    return OptionsUpdatePayload(decoded.get(names[0]), decoded.get(names[1]), decoded.get(names[2], 0),
                                decoded.get(names[3]))


def _optional_go_int(value: JSONValue | None, field: str, errors: list[str]) -> int | None:
    """An int field that is not v1's (heartbeatSeconds): null stays None, i.e. "unchanged"."""
    if value is None or value.kind == "null":
        return None
    return _go_int(value, field, errors)
