"""Pure-Python twin of jetstream/_core/v2frame.pyx: a sequenced event's v2 text frame.

Owns nothing of its own: the frame (`frame_of_record`: head + seq + tail + wire_time + FRAME_END
from the stored record), `wire_time`, `json_string` and `pack_record` are jetstream/wire_v2.py's,
the reference every byte of the Cython twin is tested against (tests/core/test_core_v2frame.py).
This module only gives jetstream.implementation the same names on both sides.
It must never render anything differently from wire_v2.py.
"""
from __future__ import annotations

from jetstream.wire_v2 import frame_of_record, json_string, pack_record, wire_time

__all__ = ["frame_of_record", "json_string", "pack_record", "wire_time"]
