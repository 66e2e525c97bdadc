"""`jetstream serve --cluster` refuses what cannot work, at start-up, in one line (exit 2):

- an install without the NATS client (nats-py): the line names the fix;
- `--verify-signatures` beside it: refused like every other bad setting, before the log is
  opened or a port bound (no traceback);
- a data dir that served without --cluster: the line says which log it is and what to do (a
  fresh dir, or `jetstream cluster reset-node`), before any port is bound. reset-node refuses
  while a daemon holds the log and deletes nothing without --yes; after it, the node re-syncs
  from the stream and is ok.
Real subprocesses, a real relay-sim, a real nats-server.
"""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from jetstream.cluster.natsserver import free_port, stop_process
from tests.cluster.harness import REPO_ROOT, ClusterRig, healthz, wait_for
from tests.operator.test_startup_validation import assert_refused, defaults_for, run_serve

pytestmark = [pytest.mark.timeout(180)]


def test_an_install_without_the_nats_client_refuses_cluster_mode_in_one_line(tmp_path):
    # A `nats` that cannot be imported, first on the path: as an environment without nats-py.
    missing = tmp_path / "without_nats" / "nats"
    missing.mkdir(parents=True)
    (missing / "__init__.py").write_text('raise ModuleNotFoundError("No module named \'nats\'", name="nats")\n')
    result = run_serve(tmp_path, [*defaults_for(tmp_path, "cluster"), "--cluster", f"nats://127.0.0.1:{free_port()}"],
                       env={"PYTHONPATH": str(missing.parent)})
    assert_refused(result, "cluster", "pip install 'jetstream-py[cluster]'", tmp_path / "data")


@pytest.mark.parametrize("form", ["flag", "env"])
def test_cluster_with_verify_signatures_is_refused_before_anything_opens(tmp_path, form):
    cluster = f"nats://127.0.0.1:{free_port()}"
    if form == "flag":
        result = run_serve(tmp_path, [*defaults_for(tmp_path, ""), "--cluster", cluster, "--verify-signatures"])
    else:
        result = run_serve(tmp_path, defaults_for(tmp_path, ""),
                           env={"JETSTREAM_CLUSTER": cluster, "JETSTREAM_VERIFY_SIGNATURES": "true"})
    assert_refused(result, "verify-signatures", "not supported with --cluster", tmp_path / "data")


def reset_node(data_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jetstream.cli", "cluster", "reset-node", "--data-dir", str(data_dir),
                           *extra], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)


def test_a_single_node_data_dir_is_refused_in_cluster_mode_and_reset_node_lets_it_resync(tmp_path):
    rig = ClusterRig(tmp_path, nats_servers=1)
    try:
        rig.start_relay("--synthetic", "true", "--rate", "200")
        data_dir = tmp_path / "b" / "data"
        data_dir.parent.mkdir(parents=True)
        # The dir serves as a single node first.
        port = free_port()
        single = rig._spawn(["serve", "--ws-url", rig.relay_url, "--listen-addr", f"127.0.0.1:{port}",
                             "--metrics-listen-addr", "", "--data-dir", str(data_dir)], tmp_path / "single.log")
        try:
            wait_for(lambda: ((healthz(port) or {}).get("relay") or {}).get("cursor"), "the single node to ingest", 30)
            held = reset_node(data_dir, "--yes")
            assert held.returncode == 1 and "a daemon holds it" in held.stdout, held.stdout + held.stderr
        finally:
            stop_process(single, signal.SIGTERM, timeout=20)
        assert single.returncode == 0

        listen = free_port()
        refused = run_serve(tmp_path, ["--cluster", f"nats://127.0.0.1:{free_port()}", "--data-dir", str(data_dir),
                                       "--listen-addr", f"127.0.0.1:{listen}", "--metrics-listen-addr", "",
                                       "--ws-url", rig.relay_url])
        output = refused.stdout + refused.stderr
        assert refused.returncode == 2, output
        [line] = [line for line in output.splitlines() if "event=startup_failed" in line]
        assert "flag=--data-dir " in line and "single-node event log" in line, line
        assert f"jetstream cluster reset-node --data-dir {data_dir} --yes" in line and "fresh --data-dir" in line, line
        assert "Traceback" not in output
        for started in ("subscribe_server_listening", "daemon_started", "cluster_joined"):
            assert started not in output, output

        dry = reset_node(data_dir)
        assert dry.returncode == 1 and "single-node log" in dry.stdout and "nothing deleted" in dry.stdout, dry.stdout
        assert (data_dir / "CURRENT").exists(), "nothing is deleted without --yes"
        done = reset_node(data_dir, "--yes")
        assert done.returncode == 0, done.stdout + done.stderr
        assert data_dir.is_dir() and not any(data_dir.iterdir())

        # Now it joins a cluster and builds its log from the stream.
        rig.start_nats()
        a = rig.add_node("a", "--override-relay-cursor", "0", "--cluster-replicas", "1")
        wait_for(lambda: a.cluster().get("role") == "leader", "a to lead", 30)
        b = rig.add_node("b", "--cluster-replicas", "1")
        assert b.data_dir == data_dir
        wait_for(lambda: (b.cluster().get("applied_stream_seq") or 0) >= 5 and (b.health() or {}).get("status") == "ok",
                 "the reset node to apply the stream and be ok", 30)
    finally:
        rig.close()


def test_with_workers_a_single_node_log_is_refused_before_any_worker_starts(tmp_path, expected_v1_lines):
    from jetstream.log.store import EventLog
    from tests.corpus_events import event_from_line

    data_dir = tmp_path / "data"
    with EventLog(str(data_dir)) as event_log:  # what a single node's ingest leaves: events and a relay cursor
        event_log.append([event_from_line(expected_v1_lines[0], 1_700_000_000_000_000)], relay_cursor=42)
    result = run_serve(tmp_path, [*defaults_for(tmp_path, "data-dir"), "--data-dir", str(data_dir),
                                  "--cluster", f"nats://127.0.0.1:{free_port()}", "--workers", "2"])
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    [line] = [line for line in output.splitlines() if "event=startup_failed" in line]
    assert "single-node event log" in line and "relay cursor 42" in line and "reset-node" in line, line
    assert "Traceback" not in output and "worker_spawned" not in output, output
