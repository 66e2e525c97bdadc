"""`jetstream tail` fails fast, without a traceback, on errors no reconnect can fix."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.timeout(60)


def run_tail(*argv: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    # Port 9 (discard) on loopback: nothing listens, so a tail that tried to connect would retry.
    result = subprocess.run([sys.executable, "-m", "jetstream.cli", "tail", "ws://127.0.0.1:9", *argv],
                            capture_output=True, text=True, timeout=30)
    return result, time.monotonic() - started


def test_bad_cursor_is_a_usage_error_without_traceback():
    result, _ = run_tail("--cursor", "abc")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "invalid cursor 'abc'" in result.stderr and "-5m" in result.stderr


def test_missing_dictionary_file_fails_at_once_naming_the_path(tmp_path):
    missing = tmp_path / "nope.zdict"
    result, elapsed = run_tail("--compress", "--zstd-dictionary", str(missing))
    assert result.returncode == 2, result.stderr
    assert str(missing) in result.stderr and "No such file" in result.stderr
    assert "Traceback" not in result.stderr
    assert elapsed < 20  # no retry loop (a retrying tail would run until the subprocess timeout)
