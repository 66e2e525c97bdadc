"""`jetstream demo` as a real subprocess: it prints its header and the events it received,
and leaves nothing behind in the directory it was started from (its log is a temp dir)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
EVENT_LINE = re.compile(r"^time_us=\d+ kind=(commit|identity|account) did=did:", re.M)
LOG_DIR_LINE = re.compile(r"^demo: event log in (\S+) \((removed at exit|kept)\)$", re.M)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


def run_demo(cwd: Path, *extra: str, seconds: int = 4) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if not key.startswith("JETSTREAM_")}
    # A real daemon's log named in the environment must not be where the demo writes.
    env["JETSTREAM_DATA_DIR"] = str(cwd / "operator-log")
    env["JETSTREAM_DEMO_SECONDS"] = str(seconds)
    env["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.run(
        [sys.executable, "-m", "jetstream.cli", "demo", "--listen-addr", "127.0.0.1:0",
         "--metrics-listen-addr", "", *extra],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_demo_prints_events_and_leaves_no_data_dir_behind(tmp_path):
    result = run_demo(tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("demo: synthetic relay -> jetstream -> this client (stops after 4 s)\n")
    assert len(EVENT_LINE.findall(out)) >= 10, out
    received = re.search(r"^demo: received (\d+) events$", out, re.M)
    assert received and int(received.group(1)) == len(EVENT_LINE.findall(out))
    log_dir = LOG_DIR_LINE.search(out)
    assert log_dir and log_dir.group(2) == "removed at exit"
    assert not Path(log_dir.group(1)).exists(), "the throwaway log is removed at exit"
    assert list(tmp_path.iterdir()) == [], "no ./data (nor the JETSTREAM_DATA_DIR log) is left behind"
    assert "event=" not in result.stderr, "daemon info logs stay out of the demo's output"


def test_demo_keeps_the_data_dir_named_on_its_command_line(tmp_path):
    named = tmp_path / "kept-log"
    result = run_demo(tmp_path, "--data-dir", str(named), seconds=3)
    assert result.returncode == 0, result.stderr
    assert f"demo: event log in {named} (kept)" in result.stdout
    assert EVENT_LINE.search(result.stdout)
    assert (named / "CURRENT").exists(), "the RocksDB log stays where the user asked"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept-log"]
