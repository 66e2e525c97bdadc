"""Pure-Python twin of jetstream/_core/frames.pyx: outgoing websocket frames, one transport write.

(The relay's incoming frames are jetstream/ingest/frames.py's.)

Owns: framing a batch of payloads as consecutive unmasked server-to-client websocket
frames (RFC 6455 §5.2: FIN set, opcode text or binary, 7/16/64-bit length, no mask) in
one bytes object, so a reader step costs one transport write (one send(2) when the
socket has room) instead of one per event. picows' own send() does exactly one
send(2) per message; bench/bench_fanout.py measures the difference.
It must never mask, fragment or compress (server frames are unmasked, v1 sends one
event per message, zstd payloads are already compressed), and never write anything
itself: the reader decides when the transport may take more bytes.
"""
from __future__ import annotations

import struct

OPCODE_TEXT = 0x1
OPCODE_BINARY = 0x2
_FIN = 0x80
_U16 = struct.Struct(">BBH")
_U64 = struct.Struct(">BBQ")


def frame_header(payload_size: int, binary: bool) -> bytes:
    """The 2, 4 or 10 header bytes of one unmasked final frame carrying payload_size bytes."""
    first = _FIN | (OPCODE_BINARY if binary else OPCODE_TEXT)
    if payload_size < 126:
        return bytes((first, payload_size))
    if payload_size < 65536:
        return _U16.pack(first, 126, payload_size)
    return _U64.pack(first, 127, payload_size)


def encode_frames(payloads: list[bytes], binary: bool) -> bytes:
    """Every payload as its own websocket message, concatenated in order."""
    parts: list[bytes] = []
    for payload in payloads:
        parts.append(frame_header(len(payload), binary))
        parts.append(payload)
    return b"".join(parts)
