"""The readers' core types, from Cython when built, else from their pure-Python twins.

Owns: the single import point for LiveRing, EventFilter, Position, PositionConflict,
LiveFanout/LiveSlot (the live fan-out step) and encode_frames (the reader's batch framing),
and USING_CYTHON, which says which twin is loaded (the daemon logs it at start-up).
It must never mix twins: the Cython LiveRing needs the Cython EventFilter (it reads the
filter's interned-id tables directly), so all of them come from the same side.
"""
from __future__ import annotations

import logging

from jetstream._py.position import PositionConflict

log = logging.getLogger(__name__)

try:
    from jetstream._core.fanout import LiveFanout, LiveSlot
    from jetstream._core.filter import EventFilter
    from jetstream._core.pacing import encode_frames
    from jetstream._core.position import Position
    from jetstream._core.ring import LiveRing

    USING_CYTHON = True
except ImportError as exc:  # not built (e.g. a source checkout before build_ext)
    log.warning("event=core_fallback impl=python reason=%s", exc)
    from jetstream._py.fanout import LiveFanout, LiveSlot
    from jetstream._py.filter import EventFilter
    from jetstream._py.pacing import encode_frames
    from jetstream._py.position import Position
    from jetstream._py.ring import LiveRing

    USING_CYTHON = False

__all__ = ["EventFilter", "LiveFanout", "LiveRing", "LiveSlot", "Position", "PositionConflict", "USING_CYTHON", "encode_frames"]
