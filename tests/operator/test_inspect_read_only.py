"""`jetstream inspect` works on a data dir it cannot write (a read-only filesystem copy),
and writes nothing to a data dir it could write.

Tests run as root, which ignores permission bits, so the read-only case is a real
read-only bind mount in a private mount namespace of the inspect process.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jetstream.log.store import EventLog
from tests.corpus_events import event_from_line

pytestmark = pytest.mark.timeout(60)


def tree_digest(path: Path) -> dict[str, tuple[str, int]]:
    """Every file under `path`: content hash and mtime (ns), so a rewrite with equal bytes shows too."""
    return {str(f.relative_to(path)): (hashlib.sha256(f.read_bytes()).hexdigest(), f.stat().st_mtime_ns)
            for f in sorted(path.rglob("*")) if f.is_file()}


@pytest.fixture
def data_dir(tmp_path, expected_v1_lines) -> Path:
    path = tmp_path / "copy" / "data"
    log = EventLog(str(path))
    events = [event_from_line(line, 1_800_000_000_000_000 + i) for i, line in enumerate(expected_v1_lines[:40])]
    log.append(events, relay_cursor=4242)
    log.close()
    return path


def inspect(data_dir: Path, *prefix: str) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-m", "jetstream.cli", "inspect", "--json", "--exact", str(data_dir)],
                          capture_output=True, text=True, timeout=60)


def test_inspect_writes_nothing_to_the_data_dir(data_dir):
    before = tree_digest(data_dir)
    result = inspect(data_dir)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["events_exact"] == 40
    assert tree_digest(data_dir) == before


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare -m (util-linux) for a read-only bind mount")
def test_inspect_reads_a_read_only_copy(data_dir):
    copy = data_dir.parent
    script = f'mount --bind "{copy}" "{copy}" && mount -o remount,ro,bind "{copy}" && exec "$@"'
    probe = subprocess.run(["unshare", "-m", "sh", "-c", script, "sh", "touch", str(copy / "x")],
                           capture_output=True, text=True, timeout=30)
    if "Read-only file system" not in probe.stderr:
        pytest.skip("cannot make a read-only bind mount here (not root, or no mount namespace)")
    result = inspect(data_dir, "unshare", "-m", "sh", "-c", script, "sh")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    summary = json.loads(result.stdout)
    assert summary["events_exact"] == 40 and summary["relay_cursor"] == 4242
    assert summary["oldest_time_us"] == 1_800_000_000_000_000
