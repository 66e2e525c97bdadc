"""A graceful stop (SIGTERM) of a cluster node leaves a log equal to the stream it saw.

The leader publishes a batch, then applies it from the stream like every node: a SIGTERM between
the two used to leave the leader's log short of its own last publishes (a restart applied them, so
nothing was lost, but a stopped node's data dir was not the stream's; seen once in a CI run, as a
follower holding one seq the stopped leader did not). The lease release's round trip usually gave
the applier time, so this test rarely failed before the stop waited for the apply; it pins the wait
(its log line) and the property. A later CI run failed it once more (the log one message short):
the stop cancelled a publish whose bytes had already left, and it landed after the stop asked the
stream for its last message; the stop now lets that publish be answered first
(tests/cluster/test_cluster_parts.py pins that step alone). Real nats-server processes, relay-sim at 2,000 frames/s.
"""
from __future__ import annotations

import pytest

from jetstream.log.store import EventLog
from tests.cluster.harness import wait_for
from tests.cluster.test_cluster_archive import stream_event_seq
from tests.cluster.test_cluster_nodes import applied, rig, start_cluster  # noqa: F401 - rig is a fixture

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def test_a_sigterm_leaves_the_leaders_log_equal_to_the_stream(rig):  # noqa: F811
    a, = start_cluster(rig, rate=2000, names=("a",))
    for stop in range(3):
        floor = applied(a) + 1000
        wait_for(lambda floor=floor: applied(a) >= floor, "a to ingest on", 60, 0.02)
        rig.stop_node(a)
        assert a.process.returncode == 0
        with EventLog(str(a.data_dir), create=False) as event_log:
            newest = event_log.newest_seq()
        assert newest == stream_event_seq(rig, newest=True), f"stop {stop}: the log holds the leader's own last publish"
        assert "event=cluster_stop_applied" in a.log_path.read_text()
        if stop < 2:
            rig.start_node(a)
            wait_for(lambda: a.cluster().get("role") == "leader", "a to lead again", 30)
