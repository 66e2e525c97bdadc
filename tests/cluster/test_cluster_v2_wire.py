"""The v2 wire (subscribeEvents) across cluster nodes and --workers: a seq cursor is portable.

Real nats-server processes, two `jetstream serve --cluster` nodes (b with one process or with
--workers 2), relay-sim. A client reads node a by seq cursor, then brings its last seq to node
b (held back with SIGSTOP so the cursor is ahead of what b has applied): what it gets there
must continue exactly where a stopped, byte for byte the same frames a client staying on a
receives. Every node renders the same v2 frames from the same stream messages.
"""
from __future__ import annotations

import asyncio
import json
import signal
import time

import pytest

from tests.cluster.harness import wait_for
from tests.cluster.test_cluster_nodes import applied, collect, rig, start_cluster  # noqa: F401 - rig is a fixture

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

PATH = "/xrpc/network.bsky.jetstream.subscribeEvents"


def seq_of(frame: bytes) -> int:
    return json.loads(frame)["payload"]["seq"]


def time_us_of(frame: bytes) -> int:
    from datetime import datetime

    text = json.loads(frame)["payload"]["time"]
    moment = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
    return int((moment - datetime(1970, 1, 1)).total_seconds()) * 1_000_000 + moment.microsecond


@pytest.mark.parametrize("b_workers", [1, 2], ids=["b_one_process", "b_two_workers"])
def test_a_v2_seq_cursor_moves_between_nodes_without_gap_or_duplicate(rig, b_workers):  # noqa: F811
    a, b = start_cluster(rig, rate=300, follower_args=("--workers", str(b_workers)))
    wait_for(lambda: applied(b) >= 5, "node b to apply the stream")

    async def scenario():
        stayer = asyncio.ensure_future(collect(f"{a.url}{PATH}?cursor=1", lambda l: len(l.messages) >= 1500, 60))
        first, _ = await collect(f"{a.url}{PATH}?cursor=1", lambda l: len(l.messages) >= 400, 30)
        b.process.send_signal(signal.SIGSTOP)
        try:
            held_since_us = time.time_ns() // 1000
            more, _ = await collect(f"{a.url}{PATH}?cursor={seq_of(first[-1]) + 1}",
                                    lambda l: l.payloads and time_us_of(l.payloads[-1]) > held_since_us + 300_000, 30)
            on_a = first + more
            moved = asyncio.ensure_future(
                collect(f"{b.url}{PATH}?cursor={seq_of(on_a[-1])}", lambda l: len(l.messages) >= 800, 60))
            await asyncio.sleep(1.0)
        finally:
            b.process.send_signal(signal.SIGCONT)
        on_b, listener = await moved
        return on_a, on_b, listener, await stayer

    on_a, on_b, listener_b, (stayed, _) = asyncio.run(scenario())
    assert listener_b.close_code is None, listener_b.close_reason
    assert on_b and on_b[0] == on_a[-1], "the cursor is inclusive: b starts with the event at the cursor"
    moved = on_a + on_b[1:]
    common = min(len(moved), len(stayed))
    assert common >= 1200
    assert moved[:common] == stayed[:common], "moving from a to b = staying on a"
    assert [seq_of(frame) for frame in stayed] == list(range(1, len(stayed) + 1))
    if b_workers > 1:
        assert "event=cluster_cursor_wait_caught_up" in b.log_path.read_text(), "b held the client until it caught up"
