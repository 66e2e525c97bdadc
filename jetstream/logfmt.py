"""Log line formats: key=value text (default) or one JSON object per line.

Owns: turning our structured messages (`event=relay_reconnect attempt=3 delay_s=1.6`)
into either form. Messages stay key=value in the code; the JSON form parses those
pairs into fields, so both formats carry the same facts. It must never drop a line:
text that is not key=value ends up whole in the `msg` field.
"""
from __future__ import annotations

import json
import logging
import re
import sys

_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')
TEXT_FORMAT = "ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s"


def parse_pairs(message: str) -> dict[str, str]:
    """`a=1 b="x y"` -> {"a": "1", "b": "x y"}; anything else -> {"msg": message}."""
    pairs = {key: value[1:-1] if value.startswith('"') else value for key, value in _PAIR.findall(message)}
    return pairs or {"msg": message}


class JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = {"ts": self.formatTime(record), "level": record.levelname.lower(), "logger": record.name}
        fields.update(parse_pairs(record.getMessage()))
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        return json.dumps(fields, ensure_ascii=False)


def setup_logging(level: str, log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonLineFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
