"""Cursor heartbeats: `{"kind":"heartbeat","time_us":T}` for clients that ask (heartbeatSeconds=N).

Owns: the heartbeat message's bytes (JSON, or one zstd frame for compressed clients) and
the rule of when one is due (`HeartbeatClock`, sans-I/O: the subscriber feeds it the
times it sends and asks it how long to wait). T is the reader's position: the time_us of
the last event the reader scanned, sent or filtered out, so every event at or below T that
the client's filter wants has already been written to its socket, ahead of the heartbeat.
A client with a sparse filter can store T as its cursor (resume with cursor=T+1).
It must never move a reader's position or send anything itself: the subscriber writes
the bytes through its own send path, between two reader steps.
"""
from __future__ import annotations

from functools import lru_cache

from jetstream.compression import EventCompressor


def heartbeat_json(time_us: int) -> bytes:
    return b'{"kind":"heartbeat","time_us":%d}' % time_us


@lru_cache(maxsize=4)
def _compressor_for(dictionary: bytes) -> EventCompressor:
    # The server's dictionary, so a compressed client decodes heartbeats like any event.
    return EventCompressor(dictionary or None)


def heartbeat_payload(time_us: int, compressed: bool, dictionary: bytes = b"") -> bytes:
    """The message for a heartbeat at `time_us`, framed like the client's events."""
    text = heartbeat_json(time_us)
    return _compressor_for(dictionary).compress(text) if compressed else text


class HeartbeatClock:
    """When the next heartbeat is due: `interval_s` after the last message sent, of any kind."""

    __slots__ = ("interval_s", "last_sent_s")

    def __init__(self, interval_s: float, now_s: float) -> None:
        self.interval_s = float(interval_s)
        self.last_sent_s = now_s

    def sent(self, now_s: float) -> None:
        self.last_sent_s = now_s

    def seconds_until_due(self, now_s: float) -> float:
        """0 when a heartbeat is due now, else how long until it is."""
        return max(0.0, self.last_sent_s + self.interval_s - now_s)
