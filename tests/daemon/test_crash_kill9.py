"""kill -9 never loses or duplicates (docs/architecture.md §2, invariants 2 and 3).

A relay-sim process streams synthetic frames as fast as the daemon reads; the daemon runs
as its own `jetstream serve` process and is killed with SIGKILL at 20 random moments
after it has connected, restarting each time from its RocksDB log. Afterwards the log must
hold, in relay order, exactly the events of every relay frame up to the stored cursor (each
op once, byte-identical apart from time_us), with time_us strictly increasing across all
the restarts and seq 1..N with no gap or repeat. The expected events are derived independently by decoding the relay's frames.
"""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from jetstream.log.store import EventLog
from jetstream.relaysim.server import SUBSCRIBE_REPOS_PATH
from tests.ports import free_port, port_open
from tests.synthetic_expected import expected_lines

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

KILLS = 20
SEED, DIDS = 11, 300
TIME_US = re.compile(rb'"time_us":(\d+)')
REPO_ROOT = Path(__file__).resolve().parents[2]


def jetstream(*args: str, log_path: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log_path, "ab") as log_file:
        return subprocess.Popen([sys.executable, "-m", "jetstream.cli", *args], cwd=REPO_ROOT, env=env,
                                stdout=log_file, stderr=subprocess.STDOUT)


def wait_for(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def relay_connected(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
            return json.loads(response.read())["relay"]["connected"] is True
    except (OSError, ValueError, KeyError):
        return False


def stored_cursor(data_dir: Path) -> int | None:
    if not data_dir.exists():
        return None
    with EventLog(str(data_dir), create=False) as event_log:
        return event_log.relay_cursor()



def test_kill9_at_random_moments_loses_and_duplicates_nothing(tmp_path):
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    relay_port, daemon_port = free_port(), free_port()
    data_dir = tmp_path / "data"
    logs = tmp_path / "logs.txt"
    relay = jetstream("relay-sim", "--synthetic", "true", "--rate", "0", "--seed", str(SEED), "--dids", str(DIDS),
                      "--listen-addr", f"127.0.0.1:{relay_port}", "--log-level", "warning",
                      "--clock", "false",  # the source's own seqs 1, 2, …: expected_lines rebuilds them
                      log_path=logs)
    cursors = []
    try:
        wait_for(lambda: port_open(relay_port), "relay-sim to listen")
        for _ in range(KILLS):
            cursor = stored_cursor(data_dir)
            cursors.append(cursor)
            # The very first run starts at the relay's first frame; later runs use the stored cursor.
            override = ["--override-relay-cursor", "0"] if cursor is None else []
            daemon = jetstream(
                "serve", "--ws-url", f"ws://127.0.0.1:{relay_port}{SUBSCRIBE_REPOS_PATH}",
                "--listen-addr", f"127.0.0.1:{daemon_port}", "--metrics-listen-addr", "",
                "--data-dir", str(data_dir), "--log-level", "warning", *override, log_path=logs)
            try:
                wait_for(lambda: relay_connected(daemon_port), "the daemon to connect to the relay")
                time.sleep(rng.uniform(0.05, 0.5))
            finally:
                daemon.send_signal(signal.SIGKILL)
                daemon.wait(10)
    finally:
        relay.terminate()
        relay.wait(10)

    final_cursor = stored_cursor(data_dir)
    with EventLog(str(data_dir), create=False) as event_log:
        rows = event_log.read_after(0, 10_000_000, compressed=False)
        newest_seq = event_log.newest_seq()
    print(f"kill9: seed={seed} kills={KILLS} final_cursor={final_cursor} events={len(rows)} cursors={cursors}")

    assert final_cursor is not None and final_cursor > 1000, "the daemon made real progress"
    assert sum(1 for a, b in zip(cursors[1:], cursors[2:]) if b is not None and a is not None and b > a) >= KILLS // 2, \
        "most lives wrote something before being killed"
    times = [row.time_us for row in rows]
    assert times == sorted(set(times)), "time_us strictly increases across restarts"
    assert [row.seq for row in rows] == list(range(1, len(rows) + 1)), "seq 1..N: no gap, no repeat across kill -9"
    assert newest_seq == len(rows)
    assert all(int(TIME_US.search(row.payload).group(1)) == row.time_us for row in rows)
    got = [TIME_US.sub(b'"time_us":0', row.payload, count=1) for row in rows]
    expected = expected_lines(SEED, DIDS, final_cursor)
    assert len(got) == len(expected)
    assert got == expected, "every op of every frame up to the cursor, exactly once, in relay order"
