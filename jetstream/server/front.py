"""The public listener's front door: the I/O around request_head.py's decisions.

Owns: each connection until its HTTP request head is read: feeding what arrives to a
HeadReader (request_head.py decides everything: 405/CORS/HEAD, 431, 503, or hand-over),
the handshake timer, writing an answer and closing, and handing the transport to picows'
protocol with the bytes already received. picows alone hangs up at 16 KiB, so v1 clients
with a few hundred `wantedDids` in the URL need this door (`--max-request-bytes`).
It must never decide anything itself (the head reader does, without sockets, so it is
tested without them), and it must stay out of the way once a connection is handed over:
the transport then talks to picows directly, so the stream pays nothing for the front door.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Callable

from jetstream.server.request_head import NEED_MORE, Answer, HeadBudget, HeadReader

log = logging.getLogger(__name__)


class FrontDoor(asyncio.Protocol):
    """One connection until its request head is complete; then picows' protocol, or our answer.

    `make_websocket_protocol(full_target)` builds the picows protocol that takes the
    connection over; `full_target` is the original request target when the head handed to
    picows had its query cut (else None). `count_answer(reason)` is told of every request
    answered here (`request_too_large`, `method_not_get`, `server_busy`).
    """

    def __init__(self, make_websocket_protocol: Callable[[bytes | None], asyncio.BaseProtocol],
                 max_request_bytes: int, handshake_timeout_s: float, budget: HeadBudget,
                 count_answer: Callable[[str], None] = lambda reason: None) -> None:
        self._make_websocket_protocol = make_websocket_protocol
        self._count_answer = count_answer
        self._head = HeadReader(max_request_bytes, budget)
        self._handshake_timeout_s = handshake_timeout_s
        self._transport: asyncio.Transport | None = None
        self._timeout: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self._transport = transport
        if self._handshake_timeout_s > 0:
            self._timeout = asyncio.get_running_loop().call_later(self._handshake_timeout_s, self._timed_out)

    def data_received(self, data: bytes) -> None:
        if self._transport is None:
            return  # answered already; what follows the head is not read
        decision = self._head.feed(data)
        if decision is NEED_MORE:
            return
        if isinstance(decision, Answer):
            self._answer(decision)
        else:
            self._hand_over(decision.received, decision.full_target)

    def connection_lost(self, exc) -> None:
        self._cancel_timeout()
        self._transport = None
        self._head.release()

    # --- carrying out the decision ----------------------------------------------------------

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


def _feed(protocol, data: bytes) -> None:
    """Deliver `data` to a buffered protocol (picows reads through get_buffer/buffer_updated)."""
    view = memoryview(data)
    while view:
        buffer = protocol.get_buffer(len(view))
        size = min(len(buffer), len(view))
        buffer[:size] = view[:size]
        protocol.buffer_updated(size)
        view = view[size:]
