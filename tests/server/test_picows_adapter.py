"""The picows surface the server relies on beyond picows' documented API.

If a picows upgrade changes the constructor of WSProtocol, the private logger helper or the
close-handshake record, these fail with a message naming what moved, before any server
test fails in a confusing way.
"""
from __future__ import annotations

import inspect
import logging

import picows
import pytest
from picows import WSCloseCode
from picows.api import ws_create_server

from jetstream.server import picows_adapter
from jetstream.server.settings import ServerSettings
from tests.server.server_helpers import Stack, settle
from tests.wsclient import connect

pytestmark = pytest.mark.timeout(60)

WS_PROTOCOL_ARGUMENTS = ["None,           # host+port", "None,           # ws_path", "False,          # is_client_side",
                         "ws_listener_factory,", "_resolve_logger(logger_name, \"server\"),",
                         "disconnect_on_exception,", "websocket_handshake_timeout,",
                         "enable_auto_ping, auto_ping_idle_timeout, auto_ping_reply_timeout,",
                         "auto_ping_strategy,", "enable_auto_pong,", "max_frame_size,",
                         "None,            # extra_headers,", "read_buffer_init_size"]


def test_ws_create_server_still_builds_ws_protocol_with_the_arguments_we_pass_by_position():
    source = inspect.getsource(ws_create_server)
    start = source.index("WSProtocol(")
    call = source[start:source.index("\n        )", start)]
    lines = [line.strip() for line in call.splitlines()[1:]]
    assert lines == WS_PROTOCOL_ARGUMENTS, (
        f"picows {picows.__version__} changed WSProtocol's constructor; update "
        "jetstream/server/picows_adapter.server_protocol to the new order")


def test_the_private_logger_helper_still_resolves_names_under_picows():
    assert picows_adapter._resolve_logger("server.subscribe", "server") is logging.getLogger("picows.server.subscribe")


async def test_a_built_protocol_carries_our_settings_and_captures_the_peer():
    protocol = picows_adapter.server_protocol(
        lambda request: None, logger_name="server.subscribe", handshake_timeout_s=5.0, ping_interval_s=0,
        pong_timeout_s=30.0, max_frame_size=1000, read_buffer_init_size=1024)
    assert isinstance(protocol, picows_adapter.PeerAwareProtocol) and protocol.peer_ip == ""


async def test_closes_picows_sends_itself_are_read_from_the_close_handshake(tmp_path):
    stack = await Stack(tmp_path, max_client_message_bytes=100).start()
    try:
        transport, client = await connect(stack.url)
        await settle(lambda: stack.server.connected_count == 1)
        (subscriber,) = stack.server.subscribers
        assert picows_adapter.close_sent_by_picows(subscriber.transport) is None
        transport.send(picows.WSMsgType.TEXT, b" " * 101)
        await settle(lambda: client.close_code is not None)
        assert client.close_code == WSCloseCode.MESSAGE_TOO_BIG
        assert picows_adapter.close_sent_by_picows(subscriber.transport) == "client_message_too_big"
        await settle(lambda: stack.server.disconnects["client_message_too_big"] == 1)
    finally:
        await stack.stop()


async def test_a_peer_that_never_answers_pings_is_closed_with_the_reason_we_count(tmp_path):
    """picows' own wording of its auto-ping close is what close_sent_by_picows matches."""
    stack = await Stack(tmp_path, ping_interval_s=0.3, pong_timeout_s=0.3).start()
    try:
        _, mute = await connect(stack.url, enable_auto_pong=False)
        await settle(lambda: mute.close_code is not None)
        assert mute.close_reason.startswith(picows_adapter.PING_TIMEOUT_PREFIX), (
            f"picows {picows.__version__} words its ping timeout close differently: {mute.close_reason!r}")
        await settle(lambda: stack.server.disconnects["pong_timeout"] == 1)
    finally:
        await stack.stop()


def test_default_settings_keep_the_pong_wait_inside_the_ping_interval():
    assert ServerSettings(ping_interval_s=10, pong_timeout_s=30).effective_pong_timeout_s == 10
