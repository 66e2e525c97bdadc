"""Connection limits over real sockets: per-IP cap, proxy headers, buckets, oversize frames, hello and pong deadlines."""
from __future__ import annotations

import asyncio
import json
import time

import pytest
from picows import WSCloseCode, WSMsgType

from jetstream.implementation import LiveRing
from jetstream.log.store import EventLog
from jetstream.server import http
from jetstream.server.app import SubscribeServer, hello_timeout_reason
from jetstream.server.settings import ServerSettings
from tests.server.server_helpers import event_from_line, http_get, settle
from tests.wsclient import connect

pytestmark = pytest.mark.timeout(60)

WS_HEADERS = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


class Served:
    """A real log + ring + SubscribeServer with the given server settings."""

    def __init__(self, tmp_path, **settings) -> None:
        self.event_log = EventLog(str(tmp_path / "log"))
        self.ring = LiveRing(100_000, floor_time_us=self.event_log.hwm())
        settings.setdefault("max_sub_rate", 1_000_000.0)
        self.server = SubscribeServer(self.event_log, self.ring, ServerSettings(**settings))
        self.next_time_us = 1_700_000_000_000_000

    async def __aenter__(self) -> "Served":
        await self.server.start("127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.server.close()
        self.event_log.close()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.port}/subscribe"

    def publish(self, lines: list[bytes]) -> None:
        events = []
        for line in lines:
            self.next_time_us += 3
            events.append(event_from_line(line, self.next_time_us))
        self.event_log.append(events, relay_cursor=None)
        for event in events:
            self.ring.append(event)
        self.server.notify_new_events()


async def closed(listener, timeout: float = 10.0) -> None:
    await settle(lambda: listener.close_code is not None, timeout)


# --- client IP -------------------------------------------------------------------------------

@pytest.mark.parametrize("headers, expected", [
    ({"X-Forwarded-For": "203.0.113.7, 10.0.0.1"}, "203.0.113.7"),
    ({"X-Forwarded-For": " [2001:db8::1] , 10.0.0.1"}, "2001:db8::1"),
    ({"X-Forwarded-For": " 203.0.113.7 "}, " 203.0.113.7 "),  # echo returns a comma-less value untouched
    ({"X-Forwarded-For": ",203.0.113.7"}, ",203.0.113.7"),  # ... and one whose comma is first
    ({"X-Real-IP": "[2001:db8::2]"}, "2001:db8::2"),
    ({"X-Forwarded-For": "203.0.113.7", "X-Real-IP": "198.51.100.1"}, "203.0.113.7"),
    ({}, "127.0.0.1"),
])
def test_trusted_proxy_headers_follow_echo_real_ip(headers, expected):
    assert http.client_ip(headers, "127.0.0.1", trust_proxy_headers=True) == expected
    assert http.client_ip(headers, "127.0.0.1", trust_proxy_headers=False) == "127.0.0.1"


async def test_connections_beyond_the_per_ip_cap_get_429_before_the_upgrade(tmp_path):
    async with Served(tmp_path, max_conns_per_ip=2) as served:
        first, _ = await connect(served.url)
        await connect(served.url)
        await settle(lambda: served.server.connected_count == 2)
        status, headers, body = await http_get(served.server.port, "/subscribe", WS_HEADERS)
        assert (status, body) == (429, b"too many connections from 127.0.0.1 (limit 2 per IP)")
        assert headers["content-type"] == "text/plain; charset=UTF-8"
        assert served.server.refused_requests["too_many_connections"] == 1
        # Option errors keep v1's 400 even at the cap: validation comes first.
        status, _, body = await http_get(served.server.port, "/subscribe?cursor=x", WS_HEADERS)
        assert (status, body) == (400, b"invalid cursor: x")
        first.disconnect()
        await settle(lambda: served.server.connected_count == 1)
        _, third = await connect(served.url)
        await settle(lambda: served.server.connected_count == 2)
        assert third.close_code is None


async def test_proxy_headers_decide_the_ip_only_when_trusted(tmp_path):
    async with Served(tmp_path / "plain", max_conns_per_ip=1) as served:
        await connect(served.url, extra_headers={"X-Forwarded-For": "203.0.113.7"})
        await settle(lambda: served.server.connected_count == 1)
        status, _, body = await http_get(served.server.port, "/subscribe", dict(WS_HEADERS, **{"X-Forwarded-For": "198.51.100.9"}))
        assert (status, body) == (429, b"too many connections from 127.0.0.1 (limit 1 per IP)")
        assert served.server.connected_by_ip() == {"127.0.0.1": 1}

    async with Served(tmp_path / "proxied", max_conns_per_ip=1, trust_proxy_headers=True) as served:
        await connect(served.url, extra_headers={"X-Forwarded-For": "203.0.113.7, 10.0.0.1"})
        await connect(served.url, extra_headers={"X-Real-IP": "198.51.100.9"})
        await settle(lambda: served.server.connected_count == 2)
        assert served.server.connected_by_ip() == {"203.0.113.7": 1, "198.51.100.9": 1}
        status, _, body = await http_get(served.server.port, "/subscribe", dict(WS_HEADERS, **{"X-Forwarded-For": "203.0.113.7"}))
        assert (status, body) == (429, b"too many connections from 203.0.113.7 (limit 1 per IP)")


# --- rate buckets, measured over a few seconds -------------------------------------------------

RATE = 150.0
WINDOW_S = 2.0


async def replayed_counts(tmp_path, lines, per_ip_limit: bool) -> tuple[list[int], float]:
    """Two connections from one IP replaying a long log for WINDOW_S: events each received."""
    async with Served(tmp_path, max_sub_rate=RATE, per_ip_limit=per_ip_limit) as served:
        served.publish((lines * 40)[:3000])
        started = time.monotonic()
        clients = [await connect(served.url + "?cursor=0") for _ in range(2)]
        await asyncio.sleep(WINDOW_S)
        counts = [len(listener.messages) for _, listener in clients]
        return counts, time.monotonic() - started


async def test_one_ip_shares_one_bucket_by_default(tmp_path, expected_v1_lines):
    counts, elapsed = await replayed_counts(tmp_path, expected_v1_lines, per_ip_limit=True)
    burst = RATE  # v1: burst = int(rate)
    assert sum(counts) <= burst + RATE * elapsed
    assert sum(counts) >= burst  # the shared bucket was really drawn from


async def test_per_ip_limit_false_gives_each_connection_its_own_bucket(tmp_path, expected_v1_lines):
    counts, elapsed = await replayed_counts(tmp_path, expected_v1_lines, per_ip_limit=False)
    burst = RATE
    for count in counts:
        assert burst + RATE * (WINDOW_S - 1.0) <= count <= burst + RATE * elapsed
    assert sum(counts) > burst + RATE * elapsed  # more than one shared bucket could ever give


# --- client messages and deadlines ---------------------------------------------------------------

async def test_oversize_client_frame_is_closed_with_1009_and_counted(tmp_path):
    async with Served(tmp_path, max_client_message_bytes=1000) as served:
        transport, listener = await connect(served.url)
        at_limit = json.dumps({"type": "not_options", "pad": ""}).encode()
        at_limit = at_limit[:-2] + b"x" * (1000 - len(at_limit)) + b'"}'
        assert len(at_limit) == 1000
        transport.send(WSMsgType.TEXT, at_limit)  # ignored like any unknown type
        await asyncio.sleep(0.2)
        assert listener.close_code is None
        transport.send(WSMsgType.TEXT, b" " * 1001)
        await closed(listener)
        assert listener.close_code == WSCloseCode.MESSAGE_TOO_BIG
        await settle(lambda: served.server.connected_count == 0)
        assert served.server.disconnects["client_message_too_big"] == 1


async def test_require_hello_client_that_never_says_hello_is_closed_with_a_reason(tmp_path, expected_v1_lines):
    async with Served(tmp_path, hello_timeout_s=0.3) as served:
        _, silent = await connect(served.url + "?requireHello=true")
        polite_transport, polite = await connect(served.url + "?requireHello=true")
        polite_transport.send(WSMsgType.TEXT, b'{"type":"options_update","payload":{}}')
        await closed(silent)
        assert silent.close_code == WSCloseCode.POLICY_VIOLATION
        assert silent.close_reason == hello_timeout_reason(0.3)
        assert served.server.disconnects["hello_timeout"] == 1
        await asyncio.sleep(0.3)
        served.publish(expected_v1_lines[:3])
        await polite.wait_for_count(3)
        assert polite.close_code is None


async def test_client_that_never_answers_pings_is_closed_and_one_that_answers_stays(tmp_path):
    async with Served(tmp_path, ping_interval_s=0.3, pong_timeout_s=0.3) as served:
        _, mute = await connect(served.url, enable_auto_pong=False)
        _, answering = await connect(served.url)
        await closed(mute)
        assert mute.close_code == WSCloseCode.GOING_AWAY
        assert "ping" in mute.close_reason
        await settle(lambda: served.server.connected_count == 1)
        assert served.server.disconnects["pong_timeout"] == 1
        await asyncio.sleep(0.8)  # several more ping rounds
        assert answering.close_code is None and served.server.connected_count == 1
