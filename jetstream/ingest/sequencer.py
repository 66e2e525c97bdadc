"""The sequencer: gives every event its time_us, its seq, final JSON and zstd bytes.

Owns: the one total order of events in this instance. time_us is
max(wall clock in µs, previous + 1), starting above the log's persisted
high-water mark, so it is unique and strictly increasing even when the wall
clock repeats or jumps back, and across restarts (docs/architecture.md §3.2; v1's
monotonic clock did the same within one process only). seq is previous + 1, starting
after the log's newest seq; unlike time_us it must have no gap in what is stored, so a
batch that fails to store hands its seqs back (`rewind_seq`).
Each event is rendered and compressed exactly once, here: its v1 JSON (and zstd form, which the
log stores) and, from the v2 record ingest made (jetstream/wire_v2.py), its v2 frame (seq and
time are the frame's only parts not known before this point). The v2 frame's zstd form is not
made here: the live ring makes it once per event on the first compressed v2 read (ring.pyx), so
ingest pays nothing for it while no compressed v2 subscriber is connected.
It must never write to the log or publish events: the pipeline does that, after
the write batch is durable.
"""
from __future__ import annotations

import time
from typing import Callable, Protocol, Sequence

from jetstream.events import Event, PendingEvent
from jetstream.implementation import frame_of_record
from jetstream.wire_v2 import NO_FRAME_RECORD


class Compressor(Protocol):
    def compress(self, json: bytes) -> bytes: ...


def wall_clock_us() -> int:
    return time.time_ns() // 1000


class Sequencer:
    """Hands out strictly increasing time_us values; single-threaded by design."""

    def __init__(self, hwm: int, clock_us: Callable[[], int] = wall_clock_us, *, last_seq: int = 0) -> None:
        self._last_time_us = hwm
        self._clock_us = clock_us
        self._last_seq = last_seq

    @property
    def last_seq(self) -> int:
        """The last seq handed out (the starting one before the first event)."""
        return self._last_seq

    def resume_seq(self, stored_seq: int) -> None:
        """Number the next event stored_seq + 1 (the log's newest seq), unless already beyond it."""
        if stored_seq > self._last_seq:
            self._last_seq = stored_seq

    def rewind_seq(self, stored_seq: int) -> None:
        """A batch failed to store: its seqs are handed out again, so what is stored has no gap."""
        self._last_seq = stored_seq

    @property
    def last_time_us(self) -> int:
        """The last value handed out (the starting hwm before the first one)."""
        return self._last_time_us

    def next_time_us(self) -> int:
        now_us = self._clock_us()
        time_us = now_us if now_us > self._last_time_us else self._last_time_us + 1
        self._last_time_us = time_us
        return time_us

    def sequence(self, pending: Sequence[PendingEvent], compressor: Compressor) -> list[Event]:
        """Assign time_us and seq in the given order, render the JSON and the v2 frame, compress the JSON once."""
        # The ingest hot path: next_time_us and Event() inlined (per-event calls were ~0.5 µs).
        events: list[Event] = []
        append, compress, clock, make_event = events.append, compressor.compress, self._clock_us, tuple.__new__
        frame_of, no_record = frame_of_record, NO_FRAME_RECORD
        last = self._last_time_us
        seq = self._last_seq
        try:
            for event in pending:
                now = clock()
                last = now if now > last else last + 1
                json = b"%s%d%s" % (event.json_head, last, event.json_tail)  # events.render_json, inlined
                record = event.v2_record or no_record
                append(make_event(Event, (last, event.did, event.kind, event.collection, json, compress(json),
                                          seq + 1, frame_of(record, seq + 1, last), b"", record)))
                seq += 1  # after the event is built: a raise leaves no seq handed out unused
        finally:
            self._last_time_us = last  # values handed out stay used even if compress raised
            self._last_seq = seq
        return events
