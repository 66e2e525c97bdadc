"""The public listener's front door: reads each connection's HTTP request head before picows does.

Owns: buffering a connection's request head up to `--max-request-bytes` (Go's 1 MiB default;
picows alone hangs up at 16 KiB, so v1 clients with a few hundred `wantedDids` in the URL were
refused) within a budget shared by every connection still sending its head
(`--max-pending-request-bytes`: many slow 1 MiB heads must not exhaust memory), answering what picows cannot (methods other than GET: echo's 405, CORS preflight
and HEAD; heads over the limit: Go's 431), and handing every GET to picows' protocol
unchanged, or with its query moved aside when the head is too long for picows.
It must never parse subscriber options (params.py) or route GETs (app.py does both), and it
must stay out of the way once a connection is handed over: the transport then talks to
picows directly, so the stream pays nothing for the front door.
"""
from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import Callable

from jetstream.server import http

log = logging.getLogger(__name__)

DEFAULT_MAX_REQUEST_BYTES = 1 << 20  # Go net/http DefaultMaxHeaderBytes, which v1 (echo) ran with
# picows refuses a head of 16 KiB or more (WSProtocol._http_max_size, not settable); a GET head
# at least this long reaches it with the query moved aside (see SubscribeServer._route).
PICOWS_MAX_HEAD_BYTES = 16 * 1024 - 1
_HEAD_END = b"\r\n\r\n"  # picows splits on this only, so a head ends here for both of us
_GET = b"GET "
# What Go writes for a head over MaxHeaderBytes (net/http server.go), then it closes.
TOO_LARGE_RESPONSE = (b"HTTP/1.0 431 Request Header Fields Too Large\r\nContent-Type: text/plain; charset=utf-8\r\n"
                      b"Connection: close\r\n\r\n431 Request Header Fields Too Large")
DEFAULT_MAX_PENDING_REQUEST_BYTES = 64 << 20
BUSY_RESPONSE = http.raw_response(HTTPStatus.SERVICE_UNAVAILABLE, b"too many pending requests\n",
                                  "text/plain; charset=utf-8", [("Retry-After", "1")])


class HeadBudget:
    """Bytes of unfinished request heads all connections may hold at once."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> bool:
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give_back(self, size: int) -> None:
        self.held -= size


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
        self._budget = budget
        self._count_answer = count_answer
        self._max_request_bytes = max_request_bytes
        self._handshake_timeout_s = handshake_timeout_s
        self._transport: asyncio.Transport | None = None
        self._received = bytearray()
        self._timeout: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self._transport = transport
        if self._handshake_timeout_s > 0:
            self._timeout = asyncio.get_running_loop().call_later(self._handshake_timeout_s, self._timed_out)

    def data_received(self, data: bytes) -> None:
        if self._transport is None:
            return  # answered already; what follows the head is not read
        if not self._budget.take(len(data)):
            self._answer(BUSY_RESPONSE, "server_busy")
            return
        searched = max(0, len(self._received) - len(_HEAD_END) + 1)  # scan each byte once, not per chunk
        self._received += data
        head_end = self._received.find(_HEAD_END, searched)
        if head_end < 0:
            if len(self._received) > self._max_request_bytes:
                self._answer(TOO_LARGE_RESPONSE, "request_too_large")
            return
        if head_end + len(_HEAD_END) > self._max_request_bytes:
            self._answer(TOO_LARGE_RESPONSE, "request_too_large")
            return
        received = bytes(self._received)
        self._release_buffer()
        self._dispatch(received, head_end)

    def connection_lost(self, exc) -> None:
        self._cancel_timeout()
        self._transport = None
        self._release_buffer()

    def _release_buffer(self) -> None:
        self._budget.give_back(len(self._received))
        self._received = bytearray()

    # --- what to do with a complete head ------------------------------------------------------

    def _dispatch(self, received: bytes, head_end: int) -> None:
        request_line = _request_line(received)
        if request_line is not None and request_line[0] != b"GET":
            method, target, _ = request_line
            headers = _parse_headers(received[:head_end])
            self._answer(answer_other_method(method, target, headers), "method_not_get")
            return
        # GETs, and malformed heads, which picows answers itself as before this front door existed
        self._hand_over(received, head_end, request_line)

    def _hand_over(self, received: bytes, head_end: int, request_line: tuple[bytes, bytes, bytes] | None) -> None:
        full_target = None
        if head_end + len(_HEAD_END) > PICOWS_MAX_HEAD_BYTES:
            if request_line is None:  # no query to move aside: picows would refuse the length
                self._answer(TOO_LARGE_RESPONSE, "request_too_large")
                return
            received, removed = _without_query(received, request_line)
            if head_end - removed + len(_HEAD_END) > PICOWS_MAX_HEAD_BYTES:
                self._answer(TOO_LARGE_RESPONSE, "request_too_large")  # the headers alone are too long
                return
            full_target = request_line[1]
        self._cancel_timeout()  # picows runs its own handshake timeout from here
        transport, self._transport = self._transport, None
        protocol = self._make_websocket_protocol(full_target)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        _feed(protocol, received)

    def _answer(self, response: bytes, reason: str) -> None:
        log.debug("event=http_answered reason=%s", reason)
        self._count_answer(reason)
        self._cancel_timeout()
        self._release_buffer()
        transport, self._transport = self._transport, None
        transport.write(response)
        transport.close()

    def _timed_out(self) -> None:
        self._timeout = None
        if self._transport is not None:
            log.debug("event=http_handshake_timeout received=%d", len(self._received))
            self._release_buffer()
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


def _request_line(received: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(method, target, version) of a complete head's first line, or None if it is not one."""
    parts = received[:received.index(b"\r\n")].split(b" ")
    if len(parts) == 3 and parts[0].isalpha() and parts[2].startswith(b"HTTP/"):
        return parts[0], parts[1], parts[2]
    return None


def _parse_headers(head: bytes) -> dict[str, str]:
    """Header name -> value (first one wins), names in canonical case for http.py's lookups."""
    headers: dict[str, str] = {}
    for line in head.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon:
            key = name.strip().decode("latin-1").title()
            headers.setdefault(key, value.strip().decode("latin-1"))
    return headers


def _without_query(received: bytes, request_line: tuple[bytes, bytes, bytes]) -> tuple[bytes, int]:
    """The request with its target's query removed, and how many bytes that removed."""
    method, target, version = request_line
    short_target = target.partition(b"?")[0]
    rest = received[received.index(b"\r\n"):]
    return b" ".join((method, short_target, version)) + rest, len(target) - len(short_target)


def answer_other_method(method: bytes, target: bytes, headers: dict[str, str]) -> bytes:
    """v1's answer (echo v4 + its CORS middleware) to a request whose method is not GET."""
    if method == b"OPTIONS":
        return http.raw_response(HTTPStatus.NO_CONTENT, b"", None, http.preflight_headers(headers))
    path, _ = http.split_target(target)
    extra = http.cors_headers(headers)
    if http.route_of(path) is http.Route.NOT_FOUND:
        status, body = HTTPStatus.NOT_FOUND, http.NOT_FOUND_BODY
    else:
        status, body = HTTPStatus.METHOD_NOT_ALLOWED, http.METHOD_NOT_ALLOWED_BODY
        extra.append(("Allow", http.ALLOW_GET))
    if method == b"HEAD":  # echo's error handler answers HEAD with c.NoContent(status)
        return http.raw_response(status, b"", None, extra)
    return http.raw_response(status, body, http.JSON_TYPE, extra)
