"""The one place that picks the Cython core or its pure-Python twins, for the whole process.

Owns: the choice (the `jetstream._core` extensions when they are built, else the
`jetstream._py` twins; `JETSTREAM_PURE_PYTHON=1` forces the twins, for tests and
debugging), and the names every caller imports the chosen routines by: the reader's
LiveRing, EventFilter, Position and encode_frames; the live fan-out's LiveFanout and
LiveSlot; ingest's read_car, commit_events, is_rfc3339, MstReader, go_json_string and
cid_to_string; the sequencer's and the replay's frame_of_record (the v2 frame); the archive's
decode_block (a segment block's rows) and its commit rows' commit_v1_json, commit_v2_frame and
commit_pending (jetstream/archive/render.py); the archive writer's commit_record_fields (a stored
v2 record -> the segment row's kind, rev, rkey and payload).
IMPLEMENTATION ("cython" or "python") and USING_CYTHON say which side was loaded.
It must never mix the sides: the Cython LiveRing reads the Cython EventFilter's interned-id
tables directly, and the Cython commit loop cimports the Cython MST reader, so either
every extension loads or none is used. No other module may import `jetstream._core`
or `jetstream._py` to choose for itself (the twins' own tests import both on purpose).
"""
from __future__ import annotations

import logging
import os

from jetstream.errors import PositionConflict

log = logging.getLogger(__name__)

PURE_PYTHON_ENV = "JETSTREAM_PURE_PYTHON"


def pure_python_requested(environ=os.environ) -> bool:
    """True when the environment asks for the pure-Python twins (1/true/yes/on)."""
    return environ.get(PURE_PYTHON_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _load_cython():
    from jetstream._core.car import read_car
    from jetstream._core.commit import commit_events, is_rfc3339
    from jetstream._core.fanout import LiveFanout, LiveSlot
    from jetstream._core.filter import EventFilter
    from jetstream._core.frames import encode_frames
    from jetstream._core.mst import MstReader
    from jetstream._core.position import Position
    from jetstream._core.record_json import cid_to_string, go_json_string
    from jetstream._core.ring import LiveRing
    from jetstream._core.segment import (
        commit_pending,
        commit_record_fields,
        commit_v1_json,
        commit_v2_frame,
        decode_block,
    )
    from jetstream._core.v2frame import frame_of_record

    return (LiveRing, EventFilter, Position, encode_frames, LiveFanout, LiveSlot,
            read_car, commit_events, is_rfc3339, MstReader, go_json_string, cid_to_string, frame_of_record,
            decode_block, commit_v1_json, commit_v2_frame, commit_pending, commit_record_fields)


def _load_python():
    from jetstream._py.car import read_car
    from jetstream._py.commit import commit_events, is_rfc3339
    from jetstream._py.fanout import LiveFanout, LiveSlot
    from jetstream._py.filter import EventFilter
    from jetstream._py.frames import encode_frames
    from jetstream._py.mst import MstReader
    from jetstream._py.position import Position
    from jetstream._py.record_json import cid_to_string, go_json_string
    from jetstream._py.ring import LiveRing
    from jetstream._py.segment import (
        commit_pending,
        commit_record_fields,
        commit_v1_json,
        commit_v2_frame,
        decode_block,
    )
    from jetstream._py.v2frame import frame_of_record

    return (LiveRing, EventFilter, Position, encode_frames, LiveFanout, LiveSlot,
            read_car, commit_events, is_rfc3339, MstReader, go_json_string, cid_to_string, frame_of_record,
            decode_block, commit_v1_json, commit_v2_frame, commit_pending, commit_record_fields)


def _choose():
    if pure_python_requested():
        log.info("event=implementation impl=python reason=%s", PURE_PYTHON_ENV)
        return "python", _load_python()
    try:
        return "cython", _load_cython()
    except ImportError as exc:  # not built (e.g. a source checkout before build_ext)
        log.warning("event=implementation_fallback impl=python reason=%s", exc)
        return "python", _load_python()


IMPLEMENTATION, _chosen = _choose()
USING_CYTHON = IMPLEMENTATION == "cython"
(LiveRing, EventFilter, Position, encode_frames, LiveFanout, LiveSlot,
 read_car, commit_events, is_rfc3339, MstReader, go_json_string, cid_to_string, frame_of_record,
 decode_block, commit_v1_json, commit_v2_frame, commit_pending, commit_record_fields) = _chosen
del _chosen

__all__ = [
    "IMPLEMENTATION", "PURE_PYTHON_ENV", "USING_CYTHON",
    "EventFilter", "LiveFanout", "LiveRing", "LiveSlot", "MstReader", "Position", "PositionConflict",
    "cid_to_string", "commit_events", "commit_pending", "commit_record_fields", "commit_v1_json", "commit_v2_frame",
    "decode_block",
    "encode_frames", "frame_of_record", "go_json_string", "is_rfc3339", "read_car",
]
