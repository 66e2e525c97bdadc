"""Relay websocket frame -> (header, body).

Owns: the one call that decodes a subscribeRepos frame (two concatenated DAG-CBOR
objects) with libipld, raising FrameError (jetstream/errors.py) when that is impossible.
It must never interpret the body (decode.py does) and never let a libipld error
escape as anything but FrameError: the daemon counts and skips those frames.
"""
from __future__ import annotations

import libipld

from jetstream.errors import FrameError


def split_frame(frame: bytes) -> tuple[dict, dict]:
    """The frame's header ({op, t}) and body maps; FrameError if it is not exactly two maps."""
    try:
        parts = libipld.decode_dag_cbor_multi(frame)
    except (ValueError, RecursionError) as err:  # libipld bounds nesting by the recursion limit
        raise FrameError("undecodable", str(err)) from None
    if len(parts) != 2:
        raise FrameError("wrong_part_count", str(len(parts)))
    header, body = parts
    if not isinstance(header, dict) or not isinstance(body, dict):
        raise FrameError("not_a_map")
    return header, body
