"""The public listener's front door: the I/O around request_head.py's decisions.

Owns: each connection until its HTTP request head is read: feeding what arrives to a
HeadReader (request_head.py decides everything: 405/CORS/HEAD, 431, 503, or hand-over),
the handshake timer, writing an answer and closing (a local route's file range by the
FileSender's sendfile thread when one is free, else streamed here in 1 MiB reads under flow
control), and handing the transport to picows' protocol with the bytes already received.
picows alone hangs up at 16 KiB, so v1 clients with a few hundred `wantedDids` in the URL need
this door (`--max-request-bytes`).
It must never decide anything itself (the head reader does, without sockets, so it is
tested without them), and it must stay out of the way once a connection is handed over:
the transport then talks to picows directly, so the stream pays nothing for the front door.
"""
from __future__ import annotations

import asyncio
import logging
import os
from typing import Callable

from jetstream.server.file_send import FileSender, FileShort, SendStalled, SendStopped
from jetstream.server.request_head import NEED_MORE, Answer, HeadBudget, HeadReader, Local, LocalRoutes, request_target

log = logging.getLogger(__name__)


class FrontDoor(asyncio.Protocol):
    """One connection until its request head is complete; then picows' protocol, or our answer.

    `make_websocket_protocol(full_target)` builds the picows protocol that takes the
    connection over; `full_target` is the original request target when the head handed to
    picows had its query cut (else None). `count_answer(reason)` is told of every request
    answered here (`request_too_large`, `method_not_get`, `server_busy`). `file_sender` sends a local
    route's file range with sendfile in a thread when it has one free (else it is streamed here);
    `count_disconnect("archive_send_stalled")` is told of each such send given up on a client taking nothing.
    `hold_until(target)` may return a future to wait for before the hand-over (the archive's first listing
    at start-up, SubscribeServer._archive_listed); the wait lasts at most `handshake_timeout_s`.
    """

    def __init__(self, make_websocket_protocol: Callable[[bytes | None], asyncio.BaseProtocol],
                 max_request_bytes: int, handshake_timeout_s: float, budget: HeadBudget,
                 count_answer: Callable[[str], None] = lambda reason: None,
                 local: LocalRoutes | None = None, answer_local=None, file_sender: FileSender | None = None,
                 count_disconnect: Callable[[str], None] = lambda reason: None,
                 hold_until: Callable[[bytes], asyncio.Future | None] | None = None) -> None:
        self._make_websocket_protocol = make_websocket_protocol
        self._count_answer = count_answer
        self._head = HeadReader(max_request_bytes, budget, local)
        self._answer_local = answer_local
        self._file_sender = file_sender
        self._count_disconnect = count_disconnect
        self._handshake_timeout_s = handshake_timeout_s
        self._transport: asyncio.Transport | None = None
        self._timeout: asyncio.TimerHandle | None = None
        self._local_task: asyncio.Task | None = None
        self._stream = None  # the FileStream being sent
        self._hold_until = hold_until
        self._held: bytearray | None = None  # bytes received while the hand-over is held

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self._transport = transport
        if self._handshake_timeout_s > 0:
            self._timeout = asyncio.get_running_loop().call_later(self._handshake_timeout_s, self._timed_out)

    def data_received(self, data: bytes) -> None:
        if self._transport is None:
            return  # answered already; what follows the head is not read
        if self._held is not None:
            self._held += data  # handed over with the head once the hold ends
            return
        decision = self._head.feed(data)
        if decision is NEED_MORE:
            return
        if isinstance(decision, Answer):
            self._answer(decision)
        elif isinstance(decision, Local):
            self._serve_local(decision)
        else:
            self._hand_over_when_ready(decision.received, decision.full_target)

    def connection_lost(self, exc) -> None:
        self._cancel_timeout()
        self._transport = None
        self._head.release()
        if self._local_task is not None:
            self._local_task.cancel()  # its `finally` closes the file it was sending

    def pause_writing(self) -> None:
        if self._stream is not None:
            self._stream.paused = True

    def resume_writing(self) -> None:
        if self._stream is not None:
            self._stream.paused = False
            self._stream.resumed.set()

    # --- carrying out the decision ----------------------------------------------------------

    def _hand_over_when_ready(self, received: bytes, full_target: bytes | None) -> None:
        waiting = None
        if self._hold_until is not None:
            target = full_target or request_target(received)
            waiting = self._hold_until(target) if target is not None else None
        if waiting is None:
            self._hand_over(received, full_target)
            return
        self._cancel_timeout()  # the hold is bounded below; picows runs its own timeout after it
        self._held = bytearray(received)
        self._local_task = asyncio.ensure_future(self._hold_then_hand_over(waiting, full_target))

    async def _hold_then_hand_over(self, waiting: asyncio.Future, full_target: bytes | None) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(waiting), self._handshake_timeout_s or None)
        except asyncio.TimeoutError:
            pass  # the route decides without it (a 503 where the cursor may lie in the archive)
        self._local_task = None
        received, self._held = bytes(self._held), None
        if self._transport is not None:
            self._hand_over(received, full_target)

    def _hand_over(self, received: bytes, full_target: bytes | None) -> None:
        self._cancel_timeout()  # picows runs its own handshake timeout from here
        transport, self._transport = self._transport, None
        protocol = self._make_websocket_protocol(full_target)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        _feed(protocol, received)

    def _answer(self, answer: Answer) -> None:
        log.debug("event=http_answered reason=%s", answer.reason)
        self._count_answer(answer.reason)
        self._cancel_timeout()
        transport, self._transport = self._transport, None
        transport.write(answer.response)
        transport.close()

    def _serve_local(self, request: Local) -> None:
        """Answer a local route: the handler's head, then its bytes or its file range, then close."""
        self._cancel_timeout()
        transport, self._transport = self._transport, None
        self._local_task = asyncio.ensure_future(self._send_local(transport, request))

    async def _send_local(self, transport, request: Local) -> None:
        try:
            head, body = await self._answer_local(request)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the handler answers its own errors; this is a bug
            log.exception("event=local_request_failed")
            transport.close()
            return
        if not isinstance(body, (bytes, bytearray)):
            body = FileStream(*body)  # (fd, offset, length): ours to send and close
        if transport.is_closing():
            if isinstance(body, FileStream):
                body.close()
            return
        if isinstance(body, FileStream) and self._can_send_zero_copy(transport):
            await self._send_zero_copy(transport, head, body)
            return
        transport.write(head)
        if isinstance(body, FileStream):
            self._stream = body
            try:
                await body.send(transport)
            finally:
                body.close()
                self._stream = None
        elif body:
            transport.write(body)
        if request.body_error is not None and transport.can_write_eof():
            # The body was refused unread: closing now would reset the connection under a client still
            # sending it, before it reads our answer. Half-close, discard what comes, close later.
            transport.write_eof()
            asyncio.get_running_loop().call_later(self._handshake_timeout_s, transport.close)
            return
        transport.close()

    def _can_send_zero_copy(self, transport) -> bool:
        sender = self._file_sender
        return sender is not None and sender.available and _socket_fd(transport) >= 0

    async def _send_zero_copy(self, transport, head: bytes, body: FileStream) -> None:
        """The head and the range written by the file sender's thread (sendfile: no copy through Python).

        The transport is idle meanwhile: it has buffered nothing (the head goes with the range) and
        reading is paused, so the loop neither reads nor notices the peer's EOF and closes nothing.
        """
        transport.pause_reading()
        file_fd, body.fd = body.fd, -1  # the sender closes it
        try:
            await self._file_sender.send(_socket_fd(transport), head, file_fd, body.offset, body.remaining)
        except SendStalled as exc:
            log.warning("event=file_send_stalled detail=%s", exc)
            self._count_disconnect("archive_send_stalled")
            transport.abort()
            return
        except FileShort as exc:
            log.error("event=local_file_short detail=%s", exc)
            transport.abort()  # fewer bytes than the Content-Length promised: the client must see a failure
            return
        except SendStopped:
            transport.abort()
            return
        except OSError as exc:  # the client went away (EPIPE, ECONNRESET)
            log.debug("event=file_send_failed error=%r", exc)
            transport.abort()
            return
        transport.close()

    def _timed_out(self) -> None:
        self._timeout = None
        if self._transport is not None:
            log.debug("event=http_handshake_timeout received=%d", self._head.held)
            self._head.release()
            transport, self._transport = self._transport, None
            transport.close()

    def _cancel_timeout(self) -> None:
        if self._timeout is not None:
            self._timeout.cancel()
            self._timeout = None


class FileStream:
    """`length` bytes of an open file from `offset`, read in a thread chunk by chunk and written while the
    transport accepts them (pause_writing / resume_writing). Owns `fd`: closed when done or dropped."""

    CHUNK = 1 << 20

    def __init__(self, fd: int, offset: int, length: int) -> None:
        self.fd = fd
        self.offset = offset
        self.remaining = length
        self.paused = False
        self.resumed = asyncio.Event()

    async def send(self, transport) -> None:
        loop = asyncio.get_running_loop()
        while self.remaining > 0 and not transport.is_closing():
            if self.paused:
                self.resumed.clear()
                await self.resumed.wait()
                continue
            size = min(self.CHUNK, self.remaining)
            chunk = await loop.run_in_executor(None, os.pread, self.fd, size, self.offset)
            if not chunk:
                log.error("event=local_file_short remaining=%d", self.remaining)
                transport.abort()  # fewer bytes than the Content-Length promised: the client must see a failure
                return
            transport.write(chunk)
            self.offset += len(chunk)
            self.remaining -= len(chunk)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _socket_fd(transport) -> int:
    """The descriptor of the transport's socket, or -1 when it has none to give."""
    sock = transport.get_extra_info("socket")
    try:
        return sock.fileno() if sock is not None else -1
    except (AttributeError, OSError):
        return -1


def _feed(protocol, data: bytes) -> None:
    """Deliver `data` to a buffered protocol (picows reads through get_buffer/buffer_updated)."""
    view = memoryview(data)
    while view:
        buffer = protocol.get_buffer(len(view))
        size = min(len(buffer), len(view))
        buffer[:size] = view[:size]
        protocol.buffer_updated(size)
        view = view[size:]
