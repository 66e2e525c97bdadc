"""Log line formats: key=value text (default) or one JSON object per line.

Owns: turning our structured messages (`event=relay_reconnect attempt=3 delay_s=1.6`)
into either form. Messages stay key=value in the code; the JSON form parses those
pairs into fields, so both formats carry the same facts. It must never drop a line:
text that is not key=value ends up whole in the `msg` field.
Text values with spaces are quoted (`error="Address already in use"`) so a line always
splits into its pairs; JSON fields keep their types (numbers, booleans, null).
Also: picows' own per-connection INFO lines are shown only at --log-level debug.
"""
from __future__ import annotations

import json
import logging
import re
import sys
import time

_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')
TEXT_FORMAT = "ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"
# %-conversions of a log message, to know which argument each one formats.
_CONVERSION = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[diouxXeEfFgGcrsa%]")
_NEEDS_QUOTES = re.compile(r'[\s"]|^$')
_INT = re.compile(r"-?\d+")
_FLOAT = re.compile(r"-?\d+\.\d*(?:[eE][-+]?\d+)?|-?\d+[eE][-+]?\d+")
_CONSTANTS = {"True": True, "true": True, "False": False, "false": False, "None": None, "null": None}


def quote(text: str) -> str:
    """A value as it goes into a key=value line: bare if it can be, else double-quoted and escaped."""
    return json.dumps(text, ensure_ascii=False) if _NEEDS_QUOTES.search(text) else text


def _quoted_args(record: logging.LogRecord) -> tuple | None:
    """record.args with each `key=%s` / `key=%r` value quoted when it has spaces (%r of text: always)."""
    args = record.args
    if not isinstance(args, tuple) or not args or not isinstance(record.msg, str):
        return None
    conversions = [match for match in _CONVERSION.finditer(record.msg) if match.group() != "%%"]
    if len(conversions) != len(args) or any("*" in m.group() or "(" in m.group() for m in conversions):
        return None
    quoted = []
    for match, arg in zip(conversions, args):
        kind = match.group()[-1]
        if kind not in "sr" or record.msg[match.start() - 1:match.start()] != "=":
            quoted.append(arg)
            continue
        text = arg if isinstance(arg, str) else (str(arg) if kind == "s" else repr(arg))
        needs = _NEEDS_QUOTES.search(text) or (kind == "r" and isinstance(arg, str))
        quoted.append(_Verbatim(json.dumps(text, ensure_ascii=False)) if needs else arg)
    return tuple(quoted)


class _Verbatim(str):
    """Already quoted: %r of it must not add Python's quotes around ours."""

    def __repr__(self) -> str:
        return str(self)


def message_of(record: logging.LogRecord) -> str:
    args = _quoted_args(record)
    if args is None:
        return record.getMessage()
    return str(record.msg) % args


def typed(value: str) -> object:
    """'3' -> 3, '1.5' -> 1.5, 'False' -> False, 'None' -> None; anything else unchanged."""
    if value in _CONSTANTS:
        return _CONSTANTS[value]
    if _INT.fullmatch(value):
        return int(value)
    if _FLOAT.fullmatch(value):
        return float(value)
    return value


def _unquote(value: str) -> str:
    try:
        return json.loads(value)
    except ValueError:
        return value[1:-1]


def parse_pairs(message: str) -> dict[str, str]:
    """`a=1 b="x y"` -> {"a": "1", "b": "x y"}; anything else -> {"msg": message}."""
    pairs = {key: _unquote(value) if value.startswith('"') else value for key, value in _PAIR.findall(message)}
    return pairs or {"msg": message}


def parse_typed_pairs(message: str) -> dict[str, object]:
    """parse_pairs, with bare values turned into numbers, booleans and null; quoted ones stay text."""
    pairs = {key: _unquote(value) if value.startswith('"') else typed(value) for key, value in _PAIR.findall(message)}
    return pairs or {"msg": message}


class TextLineFormatter(logging.Formatter):
    """`ts=2026-11-29T14:47:23.849Z level=INFO logger=… event=… key=value …` (UTC, no spaces in ts)."""

    converter = time.gmtime

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", self.converter(record.created)) + f".{int(record.msecs):03d}Z"

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = message_of(record)
        return super().formatMessage(record)


class JsonLineFormatter(logging.Formatter):
    converter = time.gmtime

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", self.converter(record.created)) + f".{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        fields = {"ts": self.formatTime(record), "level": record.levelname.lower(), "logger": record.name}
        fields.update(parse_typed_pairs(message_of(record)))
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        return json.dumps(fields, ensure_ascii=False)


def setup_logging(level: str, log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonLineFormatter())
    else:
        handler.setFormatter(TextLineFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    quiet_picows(level)


def quiet_picows(level: str) -> None:
    """picows logs every connection at INFO (`New connection accepted …`, `Disconnected`, no peer);
    our own subscriber_connected/subscriber_disconnected lines say more, so show picows' only at debug."""
    logging.getLogger("picows").setLevel(logging.DEBUG if level.lower() == "debug" else logging.WARNING)
