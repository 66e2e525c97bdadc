"""The public listener's plain-HTTP answers over real sockets (V1-REFERENCE §2.1, §2.3, §11.1)."""
from __future__ import annotations

import pytest

from server_helpers import Stack, http_get

pytestmark = pytest.mark.timeout(30)

WS_HEADERS = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}

COLLECTIONS_101 = "&".join(f"wantedCollections=app.test.c{i}" for i in range(101))
# 10,001 DIDs cannot travel in a query string here: picows caps the request head at 16 KiB
# (Go allowed 1 MiB). The DID cap is pinned over options_update in test_server_stream.py.

BAD_REQUESTS = [
    ("cursor=abc", b"invalid cursor: abc"),
    ("cursor=12.5", b"invalid cursor: 12.5"),
    ("wantedDids=bad", b"invalid subscriber options"),
    ("wantedCollections=app.bsky.feed.po*", b"invalid subscriber options: invalid collection: app.bsky.feed.po*"),
    ("wantedCollections=", b"invalid subscriber options: invalid collection: "),
    (COLLECTIONS_101, b"invalid subscriber options: too many wanted collections"),
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
