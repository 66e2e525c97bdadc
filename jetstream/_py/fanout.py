"""Pure-Python twin of jetstream/_core/fanout.pyx: the live fan-out step.

Owns: the list of readers that are live and caught up (one LiveSlot each) and `step`,
which, when a batch has landed in the ring, serves them all in one pass: per slot, the
wanted events after its position (LiveRing.read_after: filter, zstd or JSON payloads,
max message size), as many tokens from its bucket as there are events (one call, none
when nothing matched), one write of the framed batch, and a compare-and-set advance of
its position. A slot leaves the list, and its owner's own reader takes over, when the
step cannot finish: tokens ran short, the ring no longer covers it, more events follow
than a step may send, or the socket pushed back (the owner marks it not live).
It must never queue events per reader, never write to a slot that is not live, and
never move a position except by compare-and-set from the value the step started with.
"""
from __future__ import annotations

from picows import WSTransport

from jetstream._py.frames import encode_frames
from jetstream.errors import PositionConflict

# One step's bounds, the same as a reader's own step (server/subscriber.py).
STEP_MAX_EVENTS = 512
STEP_MAX_BYTES = 256 * 1024

STAY, HAND_BACK, GONE = 0, 1, 2  # how one slot's turn in a pass ends


class LiveSlot:
    """What the fan-out step needs of one reader; the owner keeps everything else."""

    __slots__ = ("owner", "_position", "_transport", "_write", "_bucket", "compressed", "v2", "_filter",
                 "max_message_size", "include_sync", "live", "sent_events", "sent_bytes", "steps")

    def __init__(self, owner, position, sink, bucket=None, compressed: bool = False, v2: bool = False) -> None:
        self.owner = owner
        self._position = position
        if isinstance(sink, WSTransport):
            self._transport, self._write = sink, sink.underlying_transport.write
        elif callable(sink):
            self._transport, self._write = None, sink
        else:
            raise TypeError("sink must be a picows WSTransport or a callable taking bytes")
        self._bucket = bucket
        self.compressed = bool(compressed)
        self.v2 = bool(v2)  # the v2 wire: v2 frames, events without one scanned past
        self._filter = None
        self.max_message_size = 0
        self.include_sync = False
        self.live = False
        self.sent_events = self.sent_bytes = self.steps = 0

    def set_options(self, event_filter, max_message_size: int, include_sync: bool = False) -> None:
        """The owner's current filter, message size cap and includeSync (an options_update lands between passes)."""
        self._filter = None if event_filter is None or event_filter.wants_all else event_filter
        self.max_message_size = int(max_message_size)
        self.include_sync = bool(include_sync)

    def leave(self) -> None:
        """Stop being served by the fan-out (paused, closed, or the owner reads on its own)."""
        self.live = False

    @property
    def position(self) -> int:
        return self._position.value


class LiveFanout:
    """The live slots, and the one pass that serves them all when new events land."""

    def __init__(self, max_events: int = STEP_MAX_EVENTS, max_bytes: int = STEP_MAX_BYTES) -> None:
        if max_events < 1 or max_bytes < 1:
            raise ValueError(f"max_events and max_bytes must be >= 1, got {max_events}, {max_bytes}")
        self._slots: list[LiveSlot] = []
        self._max_events = max_events
        self._max_bytes = max_bytes
        self.passes = 0

    def __len__(self) -> int:
        return sum(1 for slot in self._slots if slot.live)

    @property
    def listed(self) -> int:
        """Slots in the list (a slot that left is dropped at the next pass): O(1), unlike len()."""
        return len(self._slots)

    def join(self, slot: LiveSlot) -> None:
        """Serve `slot` from the next pass on (its owner's reader is caught up and idle)."""
        if slot.live:
            return
        slot.live = True
        # A slot that left during a pass may still be listed; the pass drops stale entries.
        if not any(listed is slot for listed in self._slots):
            self._slots.append(slot)

    def step(self, ring) -> list:
        """Serve every live slot once; return the owners handed back to their own reader."""
        slots, self._slots = self._slots, []  # slots joining during the pass (a write's callback) land here
        kept, handed_back = [], []
        self.passes += 1
        index = 0
        try:
            while index < len(slots):
                slot = slots[index]
                if slot.live:
                    outcome = self._serve(ring, slot)
                    if outcome == STAY and slot.live:
                        kept.append(slot)
                    elif outcome == HAND_BACK:
                        slot.live = False
                        handed_back.append(slot)
                    else:
                        slot.live = False
                index += 1  # after the turn: a turn that raised leaves its slot listed
        except BaseException:
            for slot in handed_back:  # not woken: keep them listed, the next pass hands them back again
                slot.live = True
                kept.append(slot)
            raise
        finally:
            # If a turn raised, that slot and those after it stay listed: none is forgotten.
            kept += slots[index:]
            kept += [slot for slot in self._slots if not any(listed is slot for listed in kept)]
            self._slots = kept
        return [slot.owner for slot in handed_back]

    def _serve(self, ring, slot: LiveSlot) -> int:
        transport = slot._transport
        if transport is not None and (transport.is_close_frame_sent or transport.is_disconnected):
            return GONE
        start = slot._position.value
        if not ring.covers(start):
            return HAND_BACK  # fell below the ring: the log reader takes over
        if start >= ring.newest_time_us:
            return STAY
        slot.steps += 1
        payloads, position = self._read(ring, slot, start, self._max_events)
        wanted = sent = len(payloads)
        if wanted and slot._bucket is not None:
            # One call per slot per pass, and none for a slot its filter gave nothing to.
            sent = slot._bucket.take(wanted)
            if sent < wanted:
                payloads, position = self._read(ring, slot, start, sent) if sent else ([], start)
        if sent:
            slot._write(encode_frames(payloads, slot.compressed))
            slot.sent_events += sent
            slot.sent_bytes += sum(map(len, payloads))
        if position != start:
            try:
                slot._position.advance(start, position)
            except PositionConflict:
                slot.owner.position_conflict(start, position)
                return GONE
        if sent < wanted or position < ring.newest_time_us:
            return HAND_BACK  # out of tokens, or more than one step may send: the owner's reader goes on
        return STAY

    def _read(self, ring, slot: LiveSlot, start: int, max_events: int):
        return ring.read_after(start, slot._filter, slot.compressed, max_events, self._max_bytes,
                               slot.max_message_size, slot.include_sync, slot.v2)
