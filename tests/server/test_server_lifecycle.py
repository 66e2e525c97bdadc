"""Subscriber lifecycle: one log line at connect and one at disconnect; a failing connection
callback closes with a reason and is counted; clients facing such a server back off.

Real SubscribeServer over loopback, the project's client library as the client.
"""
from __future__ import annotations

import asyncio
import logging
import time

import pytest

from jetstream.client import Jetstream
from jetstream.client.protocol import Backoff
from jetstream.logfmt import message_of
from tests.server.server_helpers import Stack, settle
from tests.wsclient import connect

pytestmark = pytest.mark.timeout(60)


def lines_with(caplog, event: str) -> list[str]:
    """Messages as the daemon's text log writes them (values with spaces quoted)."""
    return [message_of(record) for record in caplog.records if f"event={event} " in record.getMessage()]


async def test_connect_and_disconnect_are_one_structured_line_each(tmp_path, expected_v1_lines, caplog):
    caplog.set_level(logging.INFO, logger="jetstream.server")
    stack = await Stack(tmp_path).start()
    try:
        query = "wantedCollections=app.bsky.feed.post&wantedCollections=app.bsky.graph.*&compress=false&cursor=5"
        transport, client = await connect(stack.url + "?" + query)
        await settle(lambda: stack.server.connected_count == 1)
        published = stack.publish(expected_v1_lines)
        wanted = [e for e in published if e.collection.startswith(("app.bsky.feed.post", "app.bsky.graph.")) or not e.collection]
        await client.wait_for_count(len(wanted))
        transport.send_close(1000, b"bye now")
        await settle(lambda: stack.server.connected_count == 0)
        await settle(lambda: lines_with(caplog, "subscriber_disconnected"))
    finally:
        await stack.stop()
    connected = lines_with(caplog, "subscriber_connected")
    assert len(connected) == 1, connected
    line = connected[0]
    assert "ip=127.0.0.1 " in line and "peer=127.0.0.1:" in line
    assert "cursor=5 " in line and "compress=False " in line and "collections=2 " in line
    assert "wanted_collections=app.bsky.feed.post,app.bsky.graph.* " in line and "wanted_dids=*" in line
    gone = lines_with(caplog, "subscriber_disconnected")
    assert len(gone) == 1, gone
    line = gone[0]
    sent_bytes = sum(len(e.json) for e in wanted)
    assert f"events_sent={len(wanted)} " in line and f"bytes_sent={sent_bytes} " in line, line
    assert "closed_by=client close_code=1000 " in line and 'close_reason="bye now"' in line, line
    assert "duration_s=" in line


async def test_failure_in_connect_callback_closes_with_a_reason_and_is_counted(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="jetstream.server")
    # A rate of 0 (the config refuses it; built directly here) makes the token bucket raise
    # inside on_ws_connected: a stand-in for any server bug at connect.
    stack = await Stack(tmp_path, max_sub_rate=0).start()
    try:
        transport, client = await connect(stack.url)
        await asyncio.wait_for(transport.wait_disconnected(), 10)
    finally:
        await stack.stop()
    assert client.close_code == 1011
    assert client.close_reason.startswith("internal error: ")
    assert stack.server.disconnects["internal_error"] == 1
    assert lines_with(caplog, "subscriber_failed")


async def test_client_backs_off_from_a_server_that_closes_every_connection_at_once(tmp_path):
    """Every upgrade succeeds and is closed at once with 1011: the reconnect rate stays bounded."""
    stack = await Stack(tmp_path, max_sub_rate=0).start()
    client = Jetstream(stack.url, backoff=Backoff(initial_s=0.1, maximum_s=1.0))
    consumer = asyncio.ensure_future(client.__anext__())
    window_s = 4.0
    started = time.monotonic()
    try:
        await asyncio.sleep(window_s)
    finally:
        consumer.cancel()
        await client.close()
        await asyncio.gather(consumer, return_exceptions=True)
        await stack.stop()
    elapsed = time.monotonic() - started
    # Delays 0.1, 0.2, 0.4, 0.8, 1, 1, ... (±20%): about 7 connections in 4 s. Without backoff
    # (the bug this pins) it was thousands. Generous bound for a loaded machine, and at least
    # two, so the test proves reconnecting still happens.
    assert 2 <= client.connections <= 12, (client.connections, elapsed)
    assert stack.server.disconnects["internal_error"] == client.connections
    assert client.backoff.attempt >= 2


async def test_client_resets_backoff_after_a_connection_that_delivered_events(tmp_path, expected_v1_lines):
    stack = await Stack(tmp_path).start()
    client = Jetstream(stack.url, backoff=Backoff(initial_s=5.0, maximum_s=5.0))
    try:
        client.backoff.attempt = 3  # as after earlier failures
        await client.connect()
        await settle(lambda: stack.server.connected_count == 1)
        stack.publish(expected_v1_lines[:3])
        for _ in range(3):
            await asyncio.wait_for(client.__anext__(), 10)
        for subscriber in stack.server.subscribers:
            subscriber.close(1001, "going away")
        (fourth,) = stack.publish(expected_v1_lines[3:4])
        # A healthy connection that ended: reconnect at once (no 5 s delay) and resume.
        event = await asyncio.wait_for(client.__anext__(), 4)
        assert event.raw == fourth.json
        assert client.connections == 2 and client.backoff.attempt == 0
    finally:
        await client.close()
        await stack.stop()
