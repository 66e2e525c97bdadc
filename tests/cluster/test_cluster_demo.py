"""`make cluster-demo` (python -m jetstream.cluster.demo): three nodes come up, exactly one leads,
all apply the same stream, and everything it started is gone when it stops: its processes
and its state dir (printed at start; kept, and said so, only with --keep)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

REPO_ROOT = Path(__file__).resolve().parents[2]
STATUS = re.compile(r"^  (node\d): (leader|follower)\s+applied seq=(\d+)", re.M)


def test_cluster_demo_runs_three_nodes_with_one_leader_and_leaves_nothing_behind():
    # The operator's own daemon (and relay-sim) settings are not the demo's: were they passed
    # on, these would stop every node and the relay at start-up.
    env = dict(os.environ, JETSTREAM_DEMO_SECONDS="14", PYTHONUNBUFFERED="1", JETSTREAM_EVENT_TTL="not-a-duration",
               RELAYSIM_RATE="-1")
    done = subprocess.run([sys.executable, "-m", "jetstream.cluster.demo"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=150)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    urls = re.findall(r"(node\d) \(pid (\d+)\) serving (ws://127\.0\.0\.1:\d+/subscribe)", out)
    assert [name for name, _, _ in urls] == ["node1", "node2", "node3"]
    last_status = out[out.rindex("cluster-demo: status"):]
    rows = STATUS.findall(last_status)
    assert len(rows) == 3, last_status
    assert sorted(role for _, role, _ in rows) == ["follower", "follower", "leader"]
    assert min(int(seq) for _, _, seq in rows) > 0, "every node applied the stream"
    assert out.rstrip().endswith("cluster-demo: stopped")
    state_dir = re.search(r"state and logs in (\S+) \(removed at exit", out).group(1)
    survivors = subprocess.run(["pgrep", "-f", state_dir], capture_output=True, text=True).stdout.split()
    assert survivors == [], "the demo's NATS servers and nodes are gone"
    for _, pid, _ in urls:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    assert not Path(state_dir).exists(), "the state dir (NATS data, logs, event logs) is removed at exit"


def test_cluster_demo_keep_keeps_the_state_dir_and_says_where():
    env = dict(os.environ, JETSTREAM_DEMO_SECONDS="0.5", PYTHONUNBUFFERED="1")
    done = subprocess.run([sys.executable, "-m", "jetstream.cluster.demo", "--keep"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stdout + done.stderr
    state_dir = re.search(r"state and logs kept in (\S+)", done.stdout).group(1)
    try:
        assert (Path(state_dir) / "node1.log").exists() and (Path(state_dir) / "nats").is_dir()
        assert done.stdout.rstrip().endswith("cluster-demo: stopped")
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)
