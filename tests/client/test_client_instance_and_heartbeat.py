"""The client across a switch of instance (two real servers, one port), and with heartbeats.

Two SubscribeServers over two EventLogs hold the same corpus events, each numbered with its
own time_us (instance B's clock a few seconds behind A's), as two Jetstream instances fed
by one relay would. The client is cut off from A mid-stream and reconnects to B on the
same address: it must deliver every corpus event exactly once, in order.
"""
from __future__ import annotations

import asyncio
import json
import logging

import pytest

from jetstream.client import Backoff, HeartbeatEvent, Jetstream
from jetstream.client.instance import InstanceTracker, content_key
from tests.server.server_helpers import Stack, settle

pytestmark = pytest.mark.timeout(60)


def without_time_us(raw: bytes) -> dict:
    parsed = json.loads(raw)
    parsed.pop("time_us")
    return parsed


async def take(client: Jetstream, count: int, timeout: float = 20.0) -> list:
    events = []

    async def _take():
        async for event in client:
            events.append(event)
            if len(events) == count:
                return

    await asyncio.wait_for(_take(), timeout)
    return events


async def test_reconnect_to_another_instance_rewinds_and_drops_what_was_delivered(tmp_path, expected_v1_lines, caplog):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = Stack(tmp_path / "a"), Stack(tmp_path / "b")
    b.next_time_us = a.next_time_us - 3_000_000  # B's clock is 3 s behind A's
    await a.start()
    port = a.server.port
    a.publish(expected_v1_lines[:60])  # A had only these when it went away
    b.publish(expected_v1_lines)
    assert a.server.instance_id != b.server.instance_id
    client = Jetstream(f"ws://127.0.0.1:{port}", cursor=0, backoff=Backoff(initial_s=0.05, maximum_s=0.2))
    caplog.set_level(logging.WARNING, logger="jetstream.client.stream")
    try:
        first = await take(client, 60)
        assert client.instance == a.server.instance_id
        await a.stop()  # A goes away; B answers on the same address
        await b.server.start("127.0.0.1", port)
        rest = await take(client, len(expected_v1_lines) - 60)
        assert client.instance == b.server.instance_id
    finally:
        await client.close()
        await b.stop()
    delivered = first + rest
    assert [without_time_us(e.raw) for e in delivered] == [without_time_us(line) for line in expected_v1_lines]
    assert [e.raw for e in rest] == [e.json for e in list(b.ring)[60:]]  # B's own bytes after the switch
    assert client.instances.switches == 1
    # Resuming 1 s before A's last time_us would have found nothing on B (its clock is 3 s
    # behind): the switch rewound 10 s instead, and dropped the 60 events A had delivered.
    assert client.instances.duplicates_dropped == 60
    assert any("event=jetstream_instance_changed" in r.getMessage() and a.server.instance_id in r.getMessage()
               for r in caplog.records)


async def test_reconnect_to_the_same_instance_is_not_a_switch(tmp_path, expected_v1_lines):
    stack = await Stack(tmp_path).start()
    port = stack.server.port
    stack.publish(expected_v1_lines[:50])
    client = Jetstream(f"ws://127.0.0.1:{port}", cursor=0, backoff=Backoff(initial_s=0.05, maximum_s=0.2))
    try:
        first = await take(client, 50)
        for subscriber in stack.server.subscribers:
            subscriber.abort()
        stack.publish(expected_v1_lines[50:])
        rest = await take(client, len(expected_v1_lines) - 50)
    finally:
        await client.close()
        await stack.stop()
    assert [e.raw for e in first + rest] == [e.json for e in stack.ring]
    assert client.connections == 2 and client.instances.switches == 0


async def test_client_heartbeats_advance_the_resume_point_on_a_sparse_filter(tmp_path, expected_v1_lines):
    stack = await Stack(tmp_path).start()
    client = Jetstream(f"ws://127.0.0.1:{stack.server.port}", collections=["app.none.at.all"], heartbeat_seconds=1)
    try:
        await client.connect()
        await settle(lambda: stack.server.connected_count == 1)
        published = stack.publish(expected_v1_lines)
        events = await take(client, 3)  # identity, account (they pass collection filters), then a heartbeat
        assert [e.kind for e in events] == ["identity", "account", "heartbeat"]
        assert isinstance(events[-1], HeartbeatEvent) and events[-1].time_us == published[-1].time_us
        assert client.last_time_us == published[-1].time_us
        assert client.resume.cursor_for_next_connection() == published[-1].time_us - client.resume.rewind_us
    finally:
        await client.close()
        await stack.stop()


def test_content_key_ignores_time_us_only():
    line = b'{"did":"did:plc:a","time_us":17,"kind":"commit","commit":{"rev":"r","operation":"delete"}}'
    assert content_key(line) == content_key(line.replace(b"17", b"99"))
    assert content_key(line) != content_key(line.replace(b'"r"', b'"s"'))


def test_tracker_forgets_events_older_than_the_margin_and_caps_its_memory():
    tracker = InstanceTracker(switch_rewind_us=100, max_remembered=3)
    for t in range(5):
        assert tracker.deliver(t * 10, b'{"time_us":%d,"n":%d}' % (t * 10, t))
    assert len(tracker._recent) == 3
    tracker.connected("x", switched=True)
    assert not tracker.deliver(999, b'{"time_us":999,"n":4}')  # remembered: dropped
    assert tracker.deliver(999, b'{"time_us":999,"n":0}')  # forgotten (cap): delivered again
    assert not InstanceTracker(switch_rewind_us=0).is_switch("other")
