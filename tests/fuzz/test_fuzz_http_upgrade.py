"""Fuzzing the HTTP upgrade handling over a real socket: random request lines, headers and
raw bytes sent to the real SubscribeServer on 127.0.0.1. For every input the server answers
with an HTTP response or closes the connection (it never hangs on a complete request and
never dies), and it keeps serving: `GET /` after each input, and a websocket subscriber
after the whole run receives a published event.

The server runs on its own uvloop thread so hypothesis can drive plain blocking sockets.
"""
from __future__ import annotations

import asyncio
import json
import socket
import threading

import pytest
import uvloop
from hypothesis import given
from hypothesis import strategies as st

from jetstream.compression import EventCompressor
from jetstream.events import KIND_COMMIT, Event
from jetstream.implementation import LiveRing
from jetstream.log.store import EventLog
from jetstream.server.app import SubscribeServer
from jetstream.server.settings import ServerSettings
from tests.fuzz.test_fuzz_strategies import fuzz_settings
from tests.wsclient import connect

pytestmark = pytest.mark.timeout(180)
ANSWER_TIMEOUT_S = 15.0  # generous: the machine is shared; a hang fails, slowness does not


class ServerThread:
    """A real log + ring + SubscribeServer served from a uvloop loop on a daemon thread."""

    def __init__(self, data_dir) -> None:
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.event_log = EventLog(str(data_dir))
        self.ring = LiveRing(1000, floor_time_us=self.event_log.hwm())
        self.server = SubscribeServer(self.event_log, self.ring, ServerSettings(max_sub_rate=1_000_000.0))

    def run(self, coroutine, timeout: float = ANSWER_TIMEOUT_S):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def start(self) -> "ServerThread":
        self.thread.start()
        self.run(self.server.start("127.0.0.1", 0))
        return self

    def publish(self, event: Event) -> None:
        def append() -> None:
            self.event_log.append([event], relay_cursor=None)
            self.ring.append(event)
            self.server.notify_new_events()
        self.loop.call_soon_threadsafe(append)

    def stop(self) -> None:
        self.run(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.event_log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    running = ServerThread(tmp_path_factory.mktemp("fuzz_http") / "log").start()
    yield running
    running.stop()


def exchange(port: int, request: bytes) -> bytes:
    """Send `request`, half-close, and read until the server closes; fail if it never does."""
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT_S) as sock:
        try:
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may refuse early and close: that is an answer too
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            except socket.timeout:
                raise AssertionError(f"no answer and no close within {ANSWER_TIMEOUT_S}s for {request[:200]!r}") from None
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


STATUS_SEEN: dict[bytes, int] = {}  # status line -> count, for the anti-vacuity test at the end


def assert_answered_or_closed(port: int, request: bytes) -> None:
    reply = exchange(port, request)
    status = reply.split(b"\r\n", 1)[0][:12]
    STATUS_SEEN[status] = STATUS_SEEN.get(status, 0) + 1
    assert reply == b"" or reply.startswith(b"HTTP/1.1 "), reply[:200]
    welcome = exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert welcome.startswith(b"HTTP/1.1 200") and welcome.endswith(b"Welcome to Jetstream"), welcome[:200]


def mostly(common, rare):
    """`common` three times in four: random input is mostly refused at the first byte,
    so valid shapes are favoured to reach the upgrade and routing code behind it."""
    return st.one_of(common, common, common, rare)


TOKEN = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12)
METHODS = mostly(st.sampled_from(("GET",) * 6 + ("POST", "HEAD", "OPTIONS", "CONNECT", "get")), TOKEN)
TARGETS = mostly(st.sampled_from(("/", "/subscribe", "/subscribe?wantedCollections=app.bsky.feed.post", "/healthz",
                           "/zstd-dictionary", "/subscribe?cursor=abc", "/nope", "*", "//", "/%zz")),
                 st.text(max_size=40))
# Weighted towards well-formed requests, so the deep paths (upgrade, routing) are reached.
VERSIONS = st.sampled_from(("HTTP/1.1",) * 6 + ("HTTP/1.0", "HTTP/2.0", "HTTP/9", "http/1.1", ""))
HEADER_NAMES = st.sampled_from(("Host", "Upgrade", "Connection", "Sec-WebSocket-Key", "Sec-WebSocket-Version",
                                "Sec-WebSocket-Extensions", "Socket-Encoding", "X-Forwarded-For", "X-Real-IP",
                                "Origin", "Content-Length", "Transfer-Encoding", "Expect")) | TOKEN
HEADER_VALUES = st.sampled_from(("websocket", "Upgrade", "upgrade, keep-alive", "13", "8", "dGhlIHNhbXBsZSBub25jZQ==",
                                 "zstd", "5", "chunked", "100-continue", "1.2.3.4", "")) | st.text(max_size=40)
HANDSHAKE = [("Host", "x"), ("Upgrade", "websocket"), ("Connection", "Upgrade"),
             ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13")]


@st.composite
def requests(draw) -> bytes:
    line_end = draw(st.sampled_from(("\r\n",) * 6 + ("\n", "\r")))
    handshake = HANDSHAKE if draw(st.booleans()) else HANDSHAKE[:draw(st.integers(0, len(HANDSHAKE)))]
    headers = handshake + draw(
        st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=6))
    lines = [f"{draw(METHODS)} {draw(TARGETS)} {draw(VERSIONS)}"] + [f"{name}: {value}" for name, value in headers]
    request = (line_end.join(lines) + line_end + line_end).encode("utf-8", "surrogateescape")
    return request + draw(st.binary(max_size=40))  # a body or garbage after the head


@fuzz_settings(600)
@given(requests())
def test_random_requests_are_answered_or_closed_and_the_server_keeps_serving(server, request):
    assert_answered_or_closed(server.server.port, request)


@fuzz_settings(400)
@given(st.binary(max_size=400))
def test_random_bytes_are_answered_or_closed_and_the_server_keeps_serving(server, raw):
    assert_answered_or_closed(server.server.port, raw)


def test_a_real_subscriber_is_served_after_the_fuzzing(server, expected_v1_lines):
    line = expected_v1_lines[0]
    parsed = json.loads(line)
    time_us = parsed["time_us"]
    event = Event(time_us, parsed["did"], KIND_COMMIT, parsed["commit"]["collection"], line,
                  EventCompressor().compress(line))
    _, listener = server.run(connect(f"ws://127.0.0.1:{server.server.port}/subscribe"))
    server.run(asyncio.sleep(0.2))
    server.publish(event)
    assert server.run(listener.wait_for_count(1, timeout=10), timeout=20) == [line]


def test_the_fuzzing_reached_upgrades_refusals_and_closes():
    statuses = {status[:12] for status in STATUS_SEEN}
    assert {b"HTTP/1.1 101", b"HTTP/1.1 400", b"HTTP/1.1 404", b""} <= statuses, STATUS_SEEN
