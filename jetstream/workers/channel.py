"""The messages between the main process and one worker, over a Unix stream socketpair.

Owns: the framing (`[u32 length][u8 kind][body]`) and the message kinds:
  main -> worker   CONFIG  (first message: the worker's index and the daemon's settings, JSON)
                   WAKE    (u64: the newest time_us of a batch just made durable)
                   STATUS  (JSON: relay state and every worker, for the worker's /healthz)
  worker -> main   LISTENING (the worker serves; READY=1 waits for every worker's)
                   METRICS   (JSON: the worker's server counters, summed by the main /metrics)
A WAKE is a hint, not data: a worker that misses one catches up at the next (or at its own
poll), because it reads the log, never the message. So the main process never waits for a
worker: a worker whose socket is backed up simply does not get more WAKEs queued.
It must never carry events, and never block the main process's loop on a worker.
"""
from __future__ import annotations

import asyncio
import json
import struct

CONFIG = ord("C")
WAKE = ord("W")
STATUS = ord("S")
LISTENING = ord("L")
METRICS = ord("M")

_HEADER = struct.Struct(">IB")
FORCE_CATCH_UP = (1 << 64) - 1  # a WAKE no ring holds: the worker catches up whatever its ring has
_TIME_US = struct.Struct(">Q")
# Beyond this many bytes queued for a worker, WAKEs are not queued (it catches up later anyway).
MAX_QUEUED_BYTES = 1 << 20
MAX_MESSAGE_BYTES = 64 << 20


class ChannelClosed(Exception):
    """The other side has gone (EOF or a broken frame)."""


def encode(kind: int, body: bytes = b"") -> bytes:
    return _HEADER.pack(len(body) + 1, kind) + body


def encode_wake(newest_time_us: int) -> bytes:
    return encode(WAKE, _TIME_US.pack(newest_time_us))


def decode_wake(body: bytes) -> int:
    return _TIME_US.unpack(body)[0]


def encode_json(kind: int, value) -> bytes:
    return encode(kind, json.dumps(value, separators=(",", ":")).encode())


class Channel:
    """One end of the socketpair as asyncio streams: send without waiting, receive one message."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.dropped_wakes = 0

    @classmethod
    async def open(cls, sock) -> "Channel":
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_MESSAGE_BYTES)
        return cls(reader, writer)

    def send(self, message: bytes) -> bool:
        """Queue `message`; False when the other side is gone."""
        if self._writer.is_closing():
            return False
        self._writer.write(message)
        return True

    def send_wake(self, newest_time_us: int) -> None:
        if self._writer.is_closing():
            return
        if self._writer.transport.get_write_buffer_size() > MAX_QUEUED_BYTES:
            self.dropped_wakes += 1
            return
        self._writer.write(encode_wake(newest_time_us))

    async def receive(self) -> tuple[int, bytes]:
        """(kind, body) of the next message; ChannelClosed at EOF."""
        try:
            header = await self._reader.readexactly(_HEADER.size)
            length, kind = _HEADER.unpack(header)
            if not 1 <= length <= MAX_MESSAGE_BYTES:
                raise ChannelClosed(f"bad message length {length}")
            body = await self._reader.readexactly(length - 1)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise ChannelClosed(str(exc)) from exc
        return kind, body

    async def drain(self) -> None:
        try:
            await self._writer.drain()
        except ConnectionError:
            pass

    def close(self) -> None:
        self._writer.close()
