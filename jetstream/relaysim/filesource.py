"""A recorded frame file played in a loop as an endless, seq-addressable relay stream.

Owns: the mapping seq -> frame for a recording played `loops` times. Play k (0-based) of
the frame whose original seq is `s` is served as `first_seq + k*(span+1) + (s - first_seq)`,
where span = last_seq - first_seq of the file; a contiguous file therefore continues
seamlessly (play k of frame i has seq first_seq + k*N + i).
It must never decode frames: seqs are rewritten by byte splicing (seqpatch).
"""
from __future__ import annotations

import bisect
import logging
from pathlib import Path
from typing import Sequence

from jetstream.framefile import read_frames
from jetstream.relaysim.seqpatch import SeqSlot, find_seq_slot

log = logging.getLogger(__name__)


class FileSource:
    """Frames of a recording; `loops` = number of plays, 0 = forever."""

    def __init__(self, frames: str | Path | Sequence[bytes], loops: int = 0) -> None:
        if isinstance(frames, (str, Path)):
            frames = read_frames(frames)
        if loops < 0:
            raise ValueError(f"loops must be >= 0, got {loops}")
        self.loops = loops
        self._slots = _seq_slots(frames)
        self.first_seq = self._slots[0].seq
        self._offsets = [slot.seq - self.first_seq for slot in self._slots]
        self._index_of_offset = {offset: index for index, offset in enumerate(self._offsets)}
        self.period = self._offsets[-1] + 1  # span + 1

    @property
    def frame_count(self) -> int:
        return len(self._slots)

    @property
    def last_seq(self) -> int | None:
        """Seq of the very last frame served, or None when playing forever."""
        if self.loops == 0:
            return None
        return self.first_seq + (self.loops - 1) * self.period + self._offsets[-1]

    def next_seq_after(self, seq: int) -> int | None:
        """Smallest served seq > `seq`, or None once every play is done."""
        relative = max(seq + 1 - self.first_seq, 0)
        play, within = divmod(relative, self.period)
        index = bisect.bisect_left(self._offsets, within)
        if index == len(self._offsets):
            play, index = play + 1, 0
        if self.loops and play >= self.loops:
            return None
        return self.first_seq + play * self.period + self._offsets[index]

    def last_seq_at_or_before(self, seq: int) -> int | None:
        """Largest served seq <= `seq`, or None if `seq` precedes the first frame."""
        last = self.last_seq
        if last is not None and seq >= last:
            return last
        relative = seq - self.first_seq
        if relative < 0:
            return None
        play, within = divmod(relative, self.period)
        index = bisect.bisect_right(self._offsets, within) - 1
        # index >= 0 always: offset 0 (the first frame) is <= any `within`.
        return self.first_seq + play * self.period + self._offsets[index]

    def frame(self, seq: int) -> bytes:
        """The frame served as `seq`. KeyError if no frame has that seq."""
        relative = seq - self.first_seq
        play, within = divmod(relative, self.period)
        index = self._index_of_offset.get(within)
        if relative < 0 or index is None or (self.loops and play >= self.loops):
            raise KeyError(seq)
        return self._slots[index].with_seq(seq)


def _seq_slots(frames: Sequence[bytes]) -> list[SeqSlot]:
    """Each frame cut around its seq; frames without a seq are skipped, order is checked."""
    slots: list[SeqSlot] = []
    for position, frame in enumerate(frames):
        try:
            slot = find_seq_slot(frame)
        except ValueError as exc:
            log.warning("event=relay_sim_frame_skipped reason=%s position=%d", str(exc).replace(" ", "_"), position)
            continue
        if slots and slot.seq <= slots[-1].seq:
            raise ValueError(f"frame {position} has seq {slot.seq} after seq {slots[-1].seq}: seqs must increase")
        slots.append(slot)
    if not slots:
        raise ValueError("no frame with a seq in the recording")
    return slots
