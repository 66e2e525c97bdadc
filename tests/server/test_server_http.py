"""The public listener's plain-HTTP answers over real sockets (docs/protocol.md §2, §3.8)."""
from __future__ import annotations

import asyncio
import json

import pytest

from tests.server.server_helpers import Stack, http_get, settle
from tests.wsclient import connect

pytestmark = pytest.mark.timeout(30)

WS_HEADERS = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}

COLLECTIONS_101 = "&".join(f"wantedCollections=app.test.c{i}" for i in range(101))
# About 450 KB of query: far past picows' own 16 KiB head limit, inside Go's (and our) 1 MiB.
DIDS_10001 = "&".join(f"wantedDids=did:plc:{i:024d}" for i in range(10_001))

BAD_REQUESTS = [
    ("cursor=abc", b"invalid cursor: abc"),
    ("cursor=12.5", b"invalid cursor: 12.5"),
    ("wantedDids=bad", b"invalid subscriber options"),
    ("wantedCollections=app.bsky.feed.po*", b"invalid subscriber options: invalid collection: app.bsky.feed.po*"),
    ("wantedCollections=", b"invalid subscriber options: invalid collection: "),
    (COLLECTIONS_101, b"invalid subscriber options: too many wanted collections"),
    (DIDS_10001, b"invalid subscriber options: too many wanted DIDs"),
    ("wantedCollections=%C3%A9.x", "invalid subscriber options: invalid collection: é.x".encode()),
    ("wantedCollections=%FF.x", b"invalid subscriber options: invalid collection: \xff.x"),
]


async def with_stack(tmp_path, body):
    stack = await Stack(tmp_path).start()
    try:
        return await body(stack)
    finally:
        await stack.stop()


async def test_every_v1_400_text_before_the_upgrade(tmp_path):
    async def body(stack):
        for query, text in BAD_REQUESTS:
            # A real websocket handshake still gets the 400: validation runs before the upgrade.
            status, headers, payload = await http_get(stack.server.port, "/subscribe?" + query, WS_HEADERS)
            assert (status, payload) == (400, text), query[:60]
            assert headers["content-type"] == "text/plain; charset=UTF-8"
        assert stack.server.refused_requests["invalid_options"] == len(BAD_REQUESTS)
        assert stack.server.connected_count == 0
    await with_stack(tmp_path, body)


async def test_welcome_page_body_and_headers(tmp_path):
    async def body(stack):
        status, headers, payload = await http_get(stack.server.port, "/")
        assert (status, payload) == (200, b"Welcome to Jetstream")
        assert headers["content-type"] == "text/plain; charset=UTF-8"
        assert headers["content-length"] == "20"
        assert headers["vary"] == "Origin"
        assert "access-control-allow-origin" not in headers  # echo sets it only for requests with Origin
        status, headers, payload = await http_get(stack.server.port, "/?x=1", {"Origin": "https://example.com"})
        assert (status, payload) == (200, b"Welcome to Jetstream")
        assert headers["access-control-allow-origin"] == "*"
    await with_stack(tmp_path, body)


@pytest.mark.parametrize("target", ["/nope", "/subscribe/", "/xrpc/com.atproto.sync.subscribeRepos", "/metrics"])
async def test_unknown_paths_get_echo_404_json(tmp_path, target):
    async def body(stack):
        status, headers, payload = await http_get(stack.server.port, target, {"Origin": "https://a.example"})
        assert status == 404
        assert payload == b'{"message":"Not Found"}\n'
        assert headers["content-type"] == "application/json"
        assert headers["access-control-allow-origin"] == "*"
    await with_stack(tmp_path, body)


async def test_valid_subscribe_that_is_not_a_websocket_gets_gorillas_bad_request(tmp_path):
    async def body(stack):
        status, headers, payload = await http_get(stack.server.port, "/subscribe?wantedCollections=app.bsky.feed.post")
        assert (status, payload) == (400, b"Bad Request\n")
        assert headers["sec-websocket-version"] == "13"
        bad_key = dict(WS_HEADERS, **{"Sec-WebSocket-Key": "c2hvcnQ="})
        status, _, payload = await http_get(stack.server.port, "/subscribe", bad_key)
        assert (status, payload) == (400, b"Bad Request\n")
        assert stack.server.refused_requests["not_websocket"] == 2
    await with_stack(tmp_path, body)


async def test_percent_encoded_path_routes_like_echo(tmp_path):
    async def body(stack):
        status, _, payload = await http_get(stack.server.port, "/%73ubscribe?cursor=x")
        assert (status, payload) == (400, b"invalid cursor: x")
    await with_stack(tmp_path, body)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "get"])
@pytest.mark.parametrize("target", ["/", "/subscribe?cursor=1", "/healthz"])
async def test_other_methods_on_a_route_get_echo_405_with_allow(tmp_path, method, target):
    async def body(stack):
        status, headers, payload = await http_get(stack.server.port, target, {"Origin": "https://a.example"}, method)
        assert (status, payload) == (405, b'{"message":"Method Not Allowed"}\n')
        assert headers["allow"] == "OPTIONS, GET"
        assert headers["content-type"] == "application/json"
        assert headers["access-control-allow-origin"] == "*" and headers["vary"] == "Origin"
        status, _, payload = await http_get(stack.server.port, "/nope", None, method)
        assert (status, payload) == (404, b'{"message":"Not Found"}\n')
        assert stack.server.refused_requests["method_not_get"] == 2
    await with_stack(tmp_path, body)


async def test_head_gets_the_status_without_a_body(tmp_path):
    async def body(stack):
        status, headers, payload = await http_get(stack.server.port, "/", None, "HEAD")
        assert (status, payload) == (405, b"")
        assert headers["allow"] == "OPTIONS, GET" and headers["content-length"] == "0"
    await with_stack(tmp_path, body)


async def test_cors_preflight_is_answered_like_v1s_middleware(tmp_path):
    async def body(stack):
        preflight = {"Origin": "https://a.example", "Access-Control-Request-Method": "GET",
                     "Access-Control-Request-Headers": "x-custom, socket-encoding"}
        for target in ("/subscribe", "/", "/anything"):  # echo's middleware answers before routing
            status, headers, payload = await http_get(stack.server.port, target, preflight, "OPTIONS")
            assert (status, payload) == (204, b"")
            assert headers["access-control-allow-origin"] == "*"
            assert headers["access-control-allow-methods"] == "GET,HEAD,OPTIONS"
            assert headers["access-control-allow-headers"] == "x-custom, socket-encoding"
            assert headers["vary"] == "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
            assert "content-length" not in headers
        status, headers, _ = await http_get(stack.server.port, "/subscribe", None, "OPTIONS")
        assert status == 204 and headers["vary"] == "Origin" and "access-control-allow-origin" not in headers
    await with_stack(tmp_path, body)


async def test_a_long_query_of_wanted_dids_subscribes_and_is_honoured(tmp_path, expected_v1_lines):
    """v1 clients put every wanted DID in the URL; 500 of them (~22 KB) used to be refused here."""
    lines_by_did = {}
    for line in expected_v1_lines:
        lines_by_did.setdefault(json.loads(line)["did"], []).append(line)
    wanted = sorted(lines_by_did)[:3]
    filler = [f"did:plc:{i:024d}" for i in range(500)]
    query = "&".join(f"wantedDids={did}" for did in filler + wanted)
    assert len(query) > 20_000

    async def body(stack):
        _, listener = await connect(stack.url + "?" + query)
        await settle(lambda: stack.server.connected_count == 1)
        events = stack.publish(expected_v1_lines)
        expected = [event.json for event in events if event.did in wanted]
        assert len(expected) >= 3
        assert await listener.wait_for_count(len(expected)) == expected
    await with_stack(tmp_path, body)


async def test_request_heads_over_max_request_bytes_get_gos_431(tmp_path):
    small = await Stack(tmp_path / "small", max_request_bytes=4096).start()
    try:
        status, headers, payload = await http_get(small.server.port, "/subscribe?" + "a=1&" * 2000)
        assert (status, payload) == (431, b"431 Request Header Fields Too Large")
        assert headers["connection"] == "close"
        assert small.server.refused_requests["request_too_large"] == 1
    finally:
        await small.stop()

    async def body(stack):
        # headers alone too long for picows (16 KiB) are refused the same way, within the limit
        status, _, _ = await http_get(stack.server.port, "/", {"Cookie": "c" * 20_000})
        assert status == 431
        status, _, payload = await http_get(stack.server.port, "/?" + "a=1&" * 6000)  # long query, short headers
        assert (status, payload) == (200, b"Welcome to Jetstream")
        assert stack.server.refused_requests["request_too_large"] == 1
    await with_stack(tmp_path, body)


async def test_unfinished_heads_share_one_memory_budget_and_return_it(tmp_path):
    """Many connections each trickling a long head must not hold unbounded memory."""

    async def body(stack):
        budget = stack.server.pending_heads
        budget.limit = 64 * 1024
        port = stack.server.port
        holders = []
        for _ in range(3):  # 3 x 20 KB unfinished heads fit in 64 KiB
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /subscribe?" + b"a" * 20_000)
            holders.append((reader, writer))
        await settle(lambda: budget.held == 3 * 20_015)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /subscribe?" + b"b" * 20_000)
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 503 Service Unavailable") and b"Retry-After: 1" in answer
        assert stack.server.refused_requests["server_busy"] == 1
        for _, held in holders:
            held.close()
        await settle(lambda: budget.held == 0)  # closed connections give their bytes back
        status, _, payload = await http_get(port, "/?" + "c" * 30_000)  # room again, and a finished head is released
        assert (status, payload) == (200, b"Welcome to Jetstream")
        assert budget.held == 0
    await with_stack(tmp_path, body)
