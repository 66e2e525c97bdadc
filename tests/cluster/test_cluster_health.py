"""A cluster node that cannot do its job says so: real nats-server processes, real `serve --cluster`
subprocesses, /healthz over HTTP.

- NATS unreachable (before joining, and after): one `cluster_nats_unreachable` warning per outage,
  /healthz 503 `cluster_not_joined` after --lease-ttl, back to 200 ok once it (re)joins.
- A node whose log diverged from the stream (its newest time_us above what the stream brings):
  its applier cannot apply; /healthz is 503 `cluster_apply_stuck` (never ok), the failure is
  warned once, not every second; `jetstream cluster reset-node` lets it re-sync and be ok again.
"""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from jetstream.log.store import EventLog
from tests.cluster.harness import REPO_ROOT, ClusterRig, CuttableProxy, wait_for
from tests.corpus_events import event_from_line

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SINGLE_SERVER = ("--cluster-replicas", "1")  # one nats-server: the stream and lease bucket have one replica


@pytest.fixture
def rig(tmp_path):
    rig = ClusterRig(tmp_path, nats_servers=1)
    yield rig
    rig.close()


def problem_kinds(node) -> list[str]:
    report = node.health() or {}
    return [problem["kind"] for problem in report.get("problems", [])]


def problem(node, kind: str) -> dict | None:
    report = node.health() or {}
    return next((p for p in report.get("problems", []) if p["kind"] == kind), None)


def status(node) -> str | None:
    return (node.health() or {}).get("status")


def log_count(node, text: str) -> int:
    return node.log_path.read_text().count(text)


@pytest.mark.parametrize("workers", [1, 2], ids=["one_process", "two_workers"])
def test_nats_unreachable_warns_once_per_outage_and_degrades_healthz_until_the_node_joins(rig, workers):
    # With --workers 2 the main process is the node; its workers answer /healthz with its problems.
    rig.start_nats()
    rig.start_relay("--synthetic", "true", "--rate", "100")
    proxy = CuttableProxy([server.client_port for server in rig.nats.servers])
    try:
        proxy.cut()  # NATS answers nothing through the proxy: the node cannot join
        a = rig.add_node("a", "--override-relay-cursor", "0", "--workers", str(workers), *SINGLE_SERVER,
                         nats_urls=proxy.url_list)
        wait_for(lambda: problem(a, "cluster_not_joined"), "/healthz to report the node not joined", 30)
        assert status(a) == "degraded"
        assert "has not joined the cluster" in problem(a, "cluster_not_joined")["detail"]
        time.sleep(2.0)  # many more connection attempts (every 0.25 s), still one warning
        assert log_count(a, "event=cluster_nats_unreachable ") == 1
        assert log_count(a, "event=health_degraded problem=cluster_not_joined") == 1

        proxy.restore()
        wait_for(lambda: status(a) == "ok" and a.cluster().get("role") == "leader", "the node to join and be ok", 30)
        assert problem_kinds(a) == []
        assert log_count(a, "event=health_recovered problem=cluster_not_joined") == 1
        cluster_id = a.cluster()["cluster_id"]
        wait_for(lambda: a.health()["instance"] == cluster_id, "clients to be shown the cluster's id", 10)
        # The log says which instance id clients see: the cluster's once joined.
        assert f"event=instance_id_served instance={cluster_id} source=cluster" in a.log_path.read_text()

        proxy.cut()  # a second outage, after joining
        wait_for(lambda: problem(a, "cluster_not_joined"), "/healthz to report the lost connection", 30)
        assert "lost its NATS connection" in problem(a, "cluster_not_joined")["detail"]
        assert log_count(a, "event=cluster_nats_unreachable ") == 2, "one warning per outage"
        proxy.restore()
        wait_for(lambda: status(a) == "ok", "the node to be ok after reconnecting", 30)
        assert log_count(a, "event=health_recovered problem=cluster_not_joined") == 2
        assert log_count(a, "event=task_failed") == 0
    finally:
        proxy.close()


def test_a_node_whose_log_diverged_from_the_stream_is_degraded_and_reset_node_brings_it_back(rig, expected_v1_lines):
    rig.start_nats()
    rig.start_relay("--synthetic", "true", "--rate", "200")
    a = rig.add_node("a", "--override-relay-cursor", "0", *SINGLE_SERVER)
    wait_for(lambda: a.cluster().get("role") == "leader", "a to lead", 30)
    b = rig.add_node("b", *SINGLE_SERVER)
    wait_for(lambda: (b.cluster().get("applied_stream_seq") or 0) >= 5, "b to apply", 30)
    rig.stop_node(b)
    # b's log gets an event an hour ahead of everything: what the stream brings next is not above it.
    with EventLog(str(b.data_dir), create=False) as event_log:
        ahead = event_log.hwm() + 3600 * 1_000_000
        applied_seq = event_log.stream_seq()
        event_log.append([event_from_line(expected_v1_lines[0], ahead)], None)

    rig.start_node(b)
    stuck = wait_for(lambda: problem(b, "cluster_apply_stuck"), "/healthz to report the stuck applier", 30)
    assert status(b) == "degraded"
    assert "time_us" in stuck["detail"] and "is not above the previous" in stuck["detail"], stuck
    assert "reset-node" in stuck["action"]
    assert b.cluster()["applied_stream_seq"] == applied_seq, "nothing applied onto the diverged log"
    time.sleep(3.0)  # the applier keeps retrying every second: one warning, the retries at debug
    assert log_count(b, "event=cluster_apply_restart ") == 1
    assert status(b) == "degraded", "never ok while the applier cannot apply"

    rig.stop_node(b)
    reset = subprocess.run([sys.executable, "-m", "jetstream.cli", "cluster", "reset-node",
                            "--data-dir", str(b.data_dir), "--yes"], cwd=REPO_ROOT, capture_output=True, text=True,
                           timeout=60)
    assert reset.returncode == 0, reset.stdout + reset.stderr
    assert "cluster node log, applied to stream seq" in reset.stdout
    rig.start_node(b)
    wait_for(lambda: (b.cluster().get("applied_stream_seq") or 0) > applied_seq and status(b) == "ok",
             "b to re-sync from the stream and be ok", 30)
    assert problem_kinds(b) == []
