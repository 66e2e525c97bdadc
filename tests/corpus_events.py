"""Events built from the corpus' v1 JSON lines: shared by the server and hostile-client tests.

Each Event carries a real v1 line's bytes with a fresh time_us, so what the tests compare
is real v1 output, not strings the code under test produced.
"""
from __future__ import annotations

import json
import re

from jetstream.compression import EventCompressor
from jetstream.events import KIND_ACCOUNT, KIND_COMMIT, KIND_IDENTITY, KIND_SYNC, Event

_TIME_US = re.compile(rb'"time_us":\d+')
_KINDS = {"commit": KIND_COMMIT, "identity": KIND_IDENTITY, "account": KIND_ACCOUNT, "sync": KIND_SYNC}
_COMPRESSOR = EventCompressor()


def event_from_line(line: bytes, time_us: int) -> Event:
    """A sequenced Event carrying a corpus v1 line with its time_us replaced."""
    body = _TIME_US.sub(b'"time_us":%d' % time_us, line, count=1)
    parsed = json.loads(body)
    collection = parsed["commit"]["collection"] if parsed["kind"] == "commit" else ""
    return Event(time_us, parsed["did"], _KINDS[parsed["kind"]], collection, body, _COMPRESSOR.compress(body))


def time_us_of(payload: bytes) -> int:
    return json.loads(payload)["time_us"]
