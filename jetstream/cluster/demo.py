"""`make cluster-demo`: 3 NATS servers, 3 cluster nodes and relay-sim on one machine.

Owns: starting those seven processes (state under a temporary directory, removed when
the demo stops unless `--keep` is given; the directory is printed either way), printing
each node's /subscribe URL and who leads, a status line per node every few seconds,
and stopping everything on Ctrl-C (or after $JETSTREAM_DEMO_SECONDS). Kill the leader
(its pid is printed) to watch another node take over.
It must never run in production: the NATS servers here are throwaway, on loopback. It must
never hand the operator's JETSTREAM_* settings to its nodes (they run what is printed here).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from jetstream.cluster.natsserver import NatsCluster, free_port, stop_processes
from jetstream.config import ENV_NOT_FLAGS
from jetstream.relaysim.server import SUBSCRIBE_REPOS_PATH

NODE_NAMES = ("node1", "node2", "node3")
RELAY_RATE = 50  # frames per second
STATUS_EVERY_S = 5.0


def child_environment() -> dict[str, str]:
    """os.environ less the flags' variables: an exported JETSTREAM_WORKERS or _LISTEN_ADDR is
    for the operator's daemon, not for these nodes (implementation switches still apply)."""
    return {name: value for name, value in os.environ.items()
            if not name.startswith(("JETSTREAM_", "RELAYSIM_")) or name in ENV_NOT_FLAGS}


def spawn(args: list[str], log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as log_file:
        return subprocess.Popen([sys.executable, "-m", "jetstream.cli", *args], stdout=log_file,
                                stderr=subprocess.STDOUT, start_new_session=True, env=child_environment())


def cluster_report(port: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return json.loads(response.read()).get("cluster") or {}
    except (OSError, ValueError):
        return {}


def status_line(name: str, port: int) -> str:
    report = cluster_report(port)
    return (f"  {name}: {report.get('role', '?'):8} applied seq={report.get('applied_stream_seq')} "
            f"time_us={report.get('applied_time_us')} lag={report.get('replication_lag_messages')} "
            f"leader={report.get('leader')}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jetstream.cluster.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true",
                        help="keep the state dir (NATS data, node logs and event logs) after the demo stops")
    keep = parser.parse_args(argv).keep
    base = Path(tempfile.mkdtemp(prefix="jetstream-cluster-demo-"))
    processes: list[subprocess.Popen] = []
    nats = NatsCluster(base / "nats", size=3)
    stop_requested = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop_requested.append(True))
    try:
        print(f"cluster-demo: state and logs in {base} ({'kept' if keep else 'removed at exit; --keep keeps them'})",
              flush=True)
        nats.start()
        print(f"cluster-demo: NATS servers {nats.url_list}", flush=True)
        relay_port = free_port()
        processes.append(spawn(["relay-sim", "--synthetic", "true", "--rate", str(RELAY_RATE),
                                "--listen-addr", f"127.0.0.1:{relay_port}", "--log-level", "warning"],
                               base / "relay.log"))
        ports = {}
        for name in NODE_NAMES:
            ports[name] = free_port()
            extra = ["--override-relay-cursor", "0"]  # used by whichever node leads first (empty stream)
            node = spawn(["serve", "--cluster", nats.url_list, "--node-name", name,
                          "--ws-url", f"ws://127.0.0.1:{relay_port}{SUBSCRIBE_REPOS_PATH}",
                          "--listen-addr", f"127.0.0.1:{ports[name]}", "--metrics-listen-addr", "",
                          "--data-dir", str(base / name), "--lease-ttl", "3s", *extra], base / f"{name}.log")
            processes.append(node)
            print(f"cluster-demo: {name} (pid {node.pid}) serving ws://127.0.0.1:{ports[name]}/subscribe", flush=True)
        seconds = float(os.environ.get("JETSTREAM_DEMO_SECONDS", "0"))
        deadline = time.monotonic() + seconds if seconds > 0 else float("inf")
        while not stop_requested and time.monotonic() < deadline:
            time.sleep(min(STATUS_EVERY_S, max(0.1, deadline - time.monotonic())))
            print("cluster-demo: status", flush=True)
            for name in NODE_NAMES:
                print(status_line(name, ports[name]), flush=True)
    finally:
        stop_processes(processes, timeout=20)
        nats.stop()
        if keep:
            print(f"cluster-demo: state and logs kept in {base}", flush=True)
        else:
            shutil.rmtree(base, ignore_errors=True)
        print("cluster-demo: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
