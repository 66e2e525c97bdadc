"""The reader's life cycle as one ReaderState, observed on real connections over loopback."""
from __future__ import annotations

import asyncio
import logging
import socket

import pytest
from picows import WSMsgType

from jetstream.server.subscriber import ReaderState
from tests.server.server_helpers import Stack, settle
from tests.wsclient import connect

pytestmark = pytest.mark.timeout(60)

UPGRADE = (b"GET /subscribe?cursor=0 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
           b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")


def only_subscriber(stack):
    (subscriber,) = stack.server.subscribers
    return subscriber


def test_states_are_small_stable_integers_for_a_c_level_switch():
    assert [(state.name, int(state)) for state in ReaderState] == [
        ("CONNECTING", 0), ("AWAITING_HELLO", 1), ("READING", 2), ("LIVE", 3),
        ("RATE_LIMITED", 4), ("PAUSED", 5), ("CLOSED", 6), ("ARCHIVE_READ", 7)]


async def test_hello_then_live_then_closed_with_each_transition_logged(tmp_path, expected_v1_lines, caplog):
    caplog.set_level(logging.DEBUG, logger="jetstream.server.subscriber")
    stack = await Stack(tmp_path).start()
    try:
        transport, client = await connect(stack.url + "?requireHello=true")
        await settle(lambda: stack.server.connected_count == 1)
        subscriber = only_subscriber(stack)
        assert subscriber.state is ReaderState.AWAITING_HELLO and subscriber.awaiting_hello
        stack.publish(expected_v1_lines[:5])
        await asyncio.sleep(0.1)
        assert client.payloads == [] and subscriber.state is ReaderState.AWAITING_HELLO
        transport.send(WSMsgType.TEXT, b'{"type":"options_update","payload":{}}')
        await settle(lambda: subscriber.state is ReaderState.LIVE)
        stack.publish(expected_v1_lines[5:8])
        await client.wait_for_count(3)
        await settle(lambda: subscriber.state is ReaderState.LIVE)
        served_by_pass = subscriber.live_slot.steps > 0  # the live fast path (server/live.py)
        transport.disconnect()
        await settle(lambda: subscriber.state is ReaderState.CLOSED)
        subscriber.pause_writing()  # CLOSED is final
        assert subscriber.state is ReaderState.CLOSED
    finally:
        await stack.stop()
    transitions = [record.getMessage() for record in caplog.records if "event=reader_state" in record.getMessage()]
    pairs = [(line.split("from=")[1].split()[0], line.split("to=")[1]) for line in transitions]
    assert pairs[:2] == [("CONNECTING", "AWAITING_HELLO"), ("AWAITING_HELLO", "READING")]
    # New events either wake the LIVE reader for a step of its own (LIVE -> READING) or, with
    # the live fast path on, reach it through the fan-out pass while it stays LIVE.
    assert ("READING", "LIVE") in pairs and (("LIVE", "READING") in pairs or served_by_pass)
    assert pairs[-1][1] == "CLOSED"


async def test_an_empty_bucket_is_rate_limited_and_then_reads_on(tmp_path, expected_v1_lines):
    stack = await Stack(tmp_path, max_sub_rate=200.0).start()
    try:
        lines = (expected_v1_lines * 4)[:400]
        stack.publish(lines)
        _, client = await connect(stack.url + "?cursor=0")
        await settle(lambda: stack.server.connected_count == 1)
        subscriber = only_subscriber(stack)
        seen = set()
        for _ in range(400):
            seen.add(subscriber.state)
            if ReaderState.RATE_LIMITED in seen and len(client.messages) > 250:
                break
            await asyncio.sleep(0.005)
        assert ReaderState.RATE_LIMITED in seen
        await client.wait_for_count(len(lines), timeout=20)
        await settle(lambda: subscriber.state is ReaderState.LIVE)
    finally:
        await stack.stop()


async def test_a_client_that_stops_reading_parks_the_reader_in_paused(tmp_path, expected_v1_lines):
    stack = await Stack(tmp_path).start()
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", stack.server.port))
        sock.send(UPGRADE)
        await settle(lambda: stack.server.connected_count == 1)
        subscriber = only_subscriber(stack)
        for _ in range(100):
            stack.publish(expected_v1_lines[:200])
            await asyncio.sleep(0.01)
            if subscriber.state is ReaderState.PAUSED:
                break
        assert subscriber.state is ReaderState.PAUSED and subscriber.pauses >= 1
        position = subscriber.position
        stack.publish(expected_v1_lines[:50])  # a wake-up does not step a paused reader
        await asyncio.sleep(0.05)
        assert subscriber.position == position and subscriber.state is ReaderState.PAUSED
    finally:
        sock.close()
        await stack.stop()
