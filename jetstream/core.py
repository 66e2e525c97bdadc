"""Former name of jetstream/implementation.py, kept so branches written against it still import.

Owns nothing: it re-exports the chosen implementations. New code imports
`jetstream.implementation`; this alias goes once no caller is left.
It must never choose an implementation itself.
"""
from __future__ import annotations

from jetstream.implementation import (  # noqa: F401  (re-exported)
    USING_CYTHON,
    EventFilter,
    LiveRing,
    Position,
    PositionConflict,
    encode_frames,
)

__all__ = ["EventFilter", "LiveRing", "Position", "PositionConflict", "USING_CYTHON", "encode_frames"]
