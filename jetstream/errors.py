"""The exceptions shared by the Cython core, its pure-Python twins and their callers.

Owns: one class per kind of refusal (a frame, a CAR, a record, an MST lookup, a position
step), each carrying a short `reason` token that the callers count and log. Both twins of
a routine raise the same class from here, so callers catch one type whichever twin runs,
and neither `jetstream._core` nor `jetstream._py` needs to import `jetstream.ingest`.
It must never import anything from the project: every layer imports it, it imports none.
"""
from __future__ import annotations


class FrameError(ValueError):
    """The relay frame cannot be used at all. `reason` is a short token; str(err) adds detail."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class CarError(ValueError):
    """The CAR is malformed; v1 dropped the whole commit. `reason` is a short token."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RecordError(ValueError):
    """The record is not valid atproto data; v1 dropped the op. `reason` is a short token."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MstError(ValueError):
    """The path has no verified leaf in this CAR; `reason` is a short token."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PositionConflict(RuntimeError):
    """A compare-and-set on a Position failed: stale expected value, or a backwards move."""


__all__ = ["CarError", "FrameError", "MstError", "PositionConflict", "RecordError"]
