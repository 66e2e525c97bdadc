"""The messages between the main process and one worker, over a Unix stream socketpair.

Owns: the framing (`[u32 length][u8 kind][body]`) and the message kinds:
  main -> worker   CONFIG  (first message: the worker's index and the daemon's settings, JSON)
                   ROWS    (a batch just made durable: the newest time_us before it, then its
                            events, byte for byte as the log holds them, each with its seq and
                            its v2 frame and v2 zstd form, rendered once by the main process)
                   WAKE    (u64: catch up with the log to at least this time_us)
                   STATUS  (JSON: relay state and every worker, for the worker's /healthz)
                   CURSOR_ANSWER (JSON {"id","caught_up","hwm"}: --cluster, the answer to a CURSOR_WAIT)
  worker -> main   LISTENING (the worker serves; READY=1 waits for every worker's)
                   METRICS   (JSON: the worker's server counters, summed by the main /metrics)
                   CURSOR_WAIT (JSON {"id","cursor"}: --cluster, a client's cursor is ahead of the
                            node's log; has the node caught up with the stream?)
                   LOG_DAMAGE (JSON: a reader met a damaged log, LogCorruption.describe(); the main
                            process logs it once, counts it and degrades every worker's /healthz)
ROWS spare every worker a RocksDB catch-up and two log reads per batch on the live path. They
are sent only after the batch is in the log, and they are an optimisation, not the record: a
worker whose socket is backed up gets none queued, and a worker that sees a ROWS whose "newest
before" is past its ring's newest knows it missed some and fills the gap from the log first.
So the main process never waits for a worker, and the log stays the only source of truth.
It must never send a batch before it is durable, and never block the main process's loop on a worker.
"""
from __future__ import annotations

import asyncio
import json
import struct

from jetstream.events import Event

CONFIG = ord("C")
ROWS = ord("R")
WAKE = ord("W")
STATUS = ord("S")
LISTENING = ord("L")
METRICS = ord("M")
CURSOR_WAIT = ord("G")
CURSOR_ANSWER = ord("A")
LOG_DAMAGE = ord("D")

_HEADER = struct.Struct(">IB")
FORCE_CATCH_UP = (1 << 64) - 1  # a WAKE no ring holds: the worker catches up whatever its ring has
_TIME_US = struct.Struct(">Q")
# ROWS: [u64 newest time_us before the batch][u32 events], then per event a head and its fields.
_ROWS_HEAD = struct.Struct(">QI")
# time_us, seq, kind, len(did), len(collection), len(json), len(zstd), len(v2 frame), len(v2 zstd)
_EVENT_HEAD = struct.Struct(">QQBHHIIII")
# Beyond this many bytes queued for a worker, nothing more is queued (it catches up from the log).
MAX_QUEUED_BYTES = 4 << 20
MAX_MESSAGE_BYTES = 64 << 20


class ChannelClosed(Exception):
    """The other side has gone (EOF or a broken frame)."""


def encode(kind: int, body: bytes = b"") -> bytes:
    return _HEADER.pack(len(body) + 1, kind) + body


def encode_wake(newest_time_us: int) -> bytes:
    return encode(WAKE, _TIME_US.pack(newest_time_us))


def decode_wake(body: bytes) -> int:
    return _TIME_US.unpack(body)[0]


def encode_rows(newest_before: int, events) -> bytes:
    """One durable batch for the workers' rings: `events` in time_us order, all fields verbatim."""
    parts = [b"", _ROWS_HEAD.pack(newest_before, len(events))]
    pack = _EVENT_HEAD.pack
    for event in events:
        did, collection = event.did.encode(), event.collection.encode()
        parts += (pack(event.time_us, event.seq, event.kind, len(did), len(collection), len(event.json),
                       len(event.zstd), len(event.v2), len(event.v2_zstd)),
                  did, collection, event.json, event.zstd, event.v2, event.v2_zstd)
    body = b"".join(parts)
    return _HEADER.pack(len(body) + 1, ROWS) + body


def decode_rows(body: bytes) -> tuple[int, list[Event]]:
    """(newest time_us before the batch, its events); ValueError for a body that does not add up."""
    position, events = _ROWS_HEAD.size, []
    view = memoryview(body)
    unpack = _EVENT_HEAD.unpack_from
    try:
        newest_before, count = _ROWS_HEAD.unpack_from(body, 0)
        for _ in range(count):
            (time_us, seq, kind, did_len, collection_len, json_len, zstd_len, v2_len,
             v2_zstd_len) = unpack(body, position)
            did_start = position + _EVENT_HEAD.size
            collection_start = did_start + did_len
            json_start = collection_start + collection_len
            zstd_start = json_start + json_len
            v2_start = zstd_start + zstd_len
            v2_zstd_start = v2_start + v2_len
            position = v2_zstd_start + v2_zstd_len
            if position > len(body):
                raise ValueError("event runs past the end of the message")
            events.append(Event(time_us, str(view[did_start:collection_start], "utf-8"), kind,
                                str(view[collection_start:json_start], "utf-8"),
                                body[json_start:zstd_start], body[zstd_start:v2_start], seq,
                                body[v2_start:v2_zstd_start], body[v2_zstd_start:position]))
    except struct.error as exc:
        raise ValueError(f"truncated rows message: {exc}") from None
    if position != len(body):
        raise ValueError(f"{len(body) - position} bytes after the last event")
    return newest_before, events


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
        self.send_unless_backed_up(encode_wake(newest_time_us))

    def send_unless_backed_up(self, message: bytes) -> None:
        """Queue a WAKE or ROWS unless the worker is that far behind: it then catches up from the log."""
        if self._writer.is_closing():
            return
        if self._writer.transport.get_write_buffer_size() > MAX_QUEUED_BYTES:
            self.dropped_wakes += 1
            return
        self._writer.write(message)

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
