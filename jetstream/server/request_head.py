"""Sans-I/O reading of one connection's HTTP request head: bytes in, a decision out.

Owns: the decision the front door (front.py) carries out for each connection, made from
the bytes received so far and nothing else: `NEED_MORE`; `Answer(response, reason)` for
what picows cannot answer (methods other than GET: echo's 405, CORS preflight and HEAD;
heads over `--max-request-bytes`: Go's 431; heads that would overrun the budget shared by
every unfinished head, `--max-pending-request-bytes`: 503 with Retry-After); `Local(...)` for
a request to one of the `LocalRoutes` the server answers itself without picows (the archive's
XRPC endpoints, any method but OPTIONS; a POST's body read up to `--archive-max-body-bytes`
by its Content-Length); or `HandOver(received, full_target)` for a GET (and a malformed head,
which picows answers itself), with the query moved aside when the head is too long for picows.
It must never touch a socket, a timer or the event loop (front.py does the I/O), never
parse subscriber options (params.py) and never route GETs (app.py does both).
"""
from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus

from jetstream.server import http

# picows refuses a head of 16 KiB or more (WSProtocol._http_max_size, not settable); a GET head
# at least this long reaches it with the query moved aside (see SubscribeServer._route).
PICOWS_MAX_HEAD_BYTES = 16 * 1024 - 1
_HEAD_END = b"\r\n\r\n"  # picows splits on this only, so a head ends here for both of us
# What Go writes for a head over MaxHeaderBytes (net/http server.go), then it closes.
TOO_LARGE_RESPONSE = (b"HTTP/1.0 431 Request Header Fields Too Large\r\nContent-Type: text/plain; charset=utf-8\r\n"
                      b"Connection: close\r\n\r\n431 Request Header Fields Too Large")
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


class NeedMore:
    """The head is not complete yet: keep reading."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_MORE"


NEED_MORE = NeedMore()


@dataclass(frozen=True)
class Answer:
    """Write `response`, then close. `reason` is what the server counts it under."""

    response: bytes
    reason: str  # request_too_large, method_not_get, server_busy


@dataclass(frozen=True)
class HandOver:
    """Give the connection to picows and feed it `received` (the head and anything after it).

    `full_target` is the original request target when `received` had its query cut so that
    picows accepts the head's length, else None.
    """

    received: bytes
    full_target: bytes | None


@dataclass(frozen=True)
class LocalRoutes:
    """Paths (decoded, no query) answered by the server itself, and the largest request body it reads."""

    paths: frozenset[bytes]
    max_body_bytes: int


@dataclass(frozen=True)
class Local:
    """A request for a LocalRoutes path, read whole. `body_error`: "too_large" (Content-Length over the
    limit) or "length_required" (a body without Content-Length): the body was not read; answer and close."""

    method: str
    target: bytes
    headers: dict[str, str]
    body: bytes
    body_error: str | None = None


Decision = NeedMore | Answer | HandOver | Local


class HeadReader:
    """Fed a connection's bytes until it decides; holds them against the shared budget meanwhile.

    After a decision other than NEED_MORE the reader is done and holds nothing; `release()`
    gives back what an undecided reader holds (the connection closed or timed out).
    """

    def __init__(self, max_request_bytes: int, budget: HeadBudget, local: LocalRoutes | None = None) -> None:
        self._max_request_bytes = max_request_bytes
        self._budget = budget
        self._local = local
        self._received = bytearray()
        self._waiting_body: tuple[Local, int, int] | None = None  # (the request, body start, body length)

    @property
    def held(self) -> int:
        return len(self._received)

    def feed(self, data: bytes) -> Decision:
        if not self._budget.take(len(data)):
            return self._decided(Answer(BUSY_RESPONSE, "server_busy"))
        searched = max(0, len(self._received) - len(_HEAD_END) + 1)  # scan each byte once, not per chunk
        self._received += data
        if self._waiting_body is not None:
            return self._body_decision()
        head_end = self._received.find(_HEAD_END, searched)
        if head_end < 0:
            if len(self._received) > self._max_request_bytes:
                return self._decided(Answer(TOO_LARGE_RESPONSE, "request_too_large"))
            return NEED_MORE
        if head_end + len(_HEAD_END) > self._max_request_bytes:
            return self._decided(Answer(TOO_LARGE_RESPONSE, "request_too_large"))
        received = bytes(self._received)
        if self._local is not None:
            local = local_request(received, head_end, self._local)
            if local is not None:
                return self._local_decision(local, head_end + len(_HEAD_END))
        return self._decided(decide_complete_head(received, head_end))

    def _local_decision(self, local: Local, body_start: int) -> Decision:
        length = _content_length(local.headers)
        if local.body_error is not None or not length:
            return self._decided(local)
        self._waiting_body = (local, body_start, length)
        return self._body_decision()

    def _body_decision(self) -> Decision:
        local, start, length = self._waiting_body
        if len(self._received) < start + length:
            return NEED_MORE
        body = bytes(self._received[start:start + length])
        self._waiting_body = None
        return self._decided(Local(local.method, local.target, local.headers, body))

    def release(self) -> None:
        self._budget.give_back(len(self._received))
        self._received = bytearray()

    def _decided(self, decision: Decision) -> Decision:
        self.release()
        return decision


def decide_complete_head(received: bytes, head_end: int) -> Answer | HandOver:
    """What to do with a connection whose head ends at `head_end` (the blank line's index)."""
    request_line = _request_line(received)
    if request_line is not None and request_line[0] != b"GET":
        method, target, _ = request_line
        headers = _parse_headers(received[:head_end])
        return Answer(answer_other_method(method, target, headers), "method_not_get")
    # GETs, and malformed heads, which picows answers itself as before this front door existed
    if head_end + len(_HEAD_END) <= PICOWS_MAX_HEAD_BYTES:
        return HandOver(received, None)
    if request_line is None:  # no query to move aside: picows would refuse the length
        return Answer(TOO_LARGE_RESPONSE, "request_too_large")
    shortened, removed = _without_query(received, request_line)
    if head_end - removed + len(_HEAD_END) > PICOWS_MAX_HEAD_BYTES:
        return Answer(TOO_LARGE_RESPONSE, "request_too_large")  # the headers alone are too long
    return HandOver(shortened, request_line[1])


def local_request(received: bytes, head_end: int, routes: LocalRoutes) -> Local | None:
    """The Local request a complete head starts, or None when its path is not one of `routes`.

    OPTIONS stays with answer_other_method (the CORS preflight every path gets).
    """
    request_line = _request_line(received)
    if request_line is None or request_line[0] == b"OPTIONS":
        return None
    method, target, _ = request_line
    path, _ = http.split_target(target)
    if path not in routes.paths:
        return None
    headers = _parse_headers(received[:head_end])
    error = None
    if "Transfer-Encoding" in headers:
        error = "length_required"  # chunked bodies are not read here; every XRPC client sends a length
    else:
        length = _content_length(headers)
        if length is None:
            error = "length_required"
        elif length > routes.max_body_bytes:
            error = "too_large"
    return Local(method.decode("latin-1"), target, headers, b"", error)


def request_target(received: bytes) -> bytes | None:
    """The request target of a complete head, or None if its first line is not a request line."""
    request_line = _request_line(received)
    return request_line[1] if request_line is not None else None


def _content_length(headers: dict[str, str]) -> int | None:
    """The Content-Length (0 when absent), None when it is not a plain decimal."""
    value = headers.get("Content-Length", "0").strip()
    return int(value) if value.isdigit() and len(value) < 19 else None


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
