"""The v2 wire (subscribeEvents) across cluster nodes and --workers: a seq cursor is portable.

Real nats-server processes, two `jetstream serve --cluster` nodes (b with one process or with
--workers 2), relay-sim. A client reads node a by seq cursor, then brings its last seq to node
b (held back with SIGSTOP so the cursor is ahead of what b has applied): what it gets there
must continue exactly where a stopped, byte for byte the same frames a client staying on a
receives. Every node renders the same v2 frames from the same stream messages.
"""
from __future__ import annotations

import json

import pytest

from tests.cluster.harness import applied, move_a_cursor, start_cluster, wait_for
from tests.cluster.test_cluster_nodes import rig  # noqa: F401 - rig is a fixture

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

    _, stayed = move_a_cursor(a, b, PATH, seq_of, time_us_of)  # v2's cursor is the seq
    assert [seq_of(frame) for frame in stayed] == list(range(1, len(stayed) + 1))
    if b_workers > 1:
        assert "event=cluster_cursor_wait_caught_up" in b.log_path.read_text(), "b held the client until it caught up"
