"""A corrupted or foreign data dir: `jetstream serve` says why, exits non-zero, touches nothing.

Each case runs the real CLI as a subprocess and checks the exit status, the one clear log
line, and that every file of the data dir is byte-for-byte what it was (no re-creation).
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rocksdict import Options, Rdict

from jetstream.log.store import EventLog

pytestmark = pytest.mark.timeout(60)

REPO_ROOT = Path(__file__).resolve().parents[2]


def snapshot(path: Path) -> dict[str, str]:
    """Every file under path (or path itself) -> sha256 of its bytes."""
    if path.is_file():
        return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}
    return {str(file.relative_to(path)): hashlib.sha256(file.read_bytes()).hexdigest()
            for file in sorted(path.rglob("*")) if file.is_file()}


def foreign_files(path: Path) -> None:
    path.mkdir()
    (path / "photos.tar").write_bytes(b"not a database" * 100)


def plain_file(path: Path) -> None:
    path.write_bytes(b"a file, not a directory")


def foreign_rocksdb(path: Path) -> None:
    db = Rdict(str(path), Options(raw_mode=True))
    db.put(b"someone", b"else's data")
    db.close()


def our_log(path: Path) -> None:
    with EventLog(str(path)) as event_log:
        event_log.append([], relay_cursor=42)


def corrupt_current(path: Path) -> None:
    our_log(path)
    (path / "CURRENT").write_bytes(b"MANIFEST-999999\n")  # points at a manifest that does not exist


def corrupt_manifest(path: Path) -> None:
    our_log(path)
    for manifest in path.glob("MANIFEST-*"):
        manifest.write_bytes(b"\x00\xff" * 64)


@pytest.mark.parametrize("make, says", [
    (foreign_files, "without a RocksDB database"),
    (plain_file, "not a directory"),
    (foreign_rocksdb, "not a jetstream event log"),
    (corrupt_current, "holds an unreadable RocksDB database"),
    # A garbled MANIFEST lists no column families, so it reads as someone else's database:
    # still refused, still untouched.
    (corrupt_manifest, "is a RocksDB database but not a jetstream event log"),
])
def test_bad_data_dir_exits_2_with_one_clear_line_and_is_left_untouched(tmp_path, make, says):
    data_dir = tmp_path / "data"
    make(data_dir)
    before = snapshot(data_dir)
    result = subprocess.run(
        [sys.executable, "-m", "jetstream.cli", "serve", "--data-dir", str(data_dir),
         "--listen-addr", "127.0.0.1:0", "--metrics-listen-addr", "", "--ws-url", "ws://127.0.0.1:9/x"],
        cwd=REPO_ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"), capture_output=True, text=True, timeout=30)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    failures = [line for line in output.splitlines() if "event=startup_failed flag=--data-dir env=JETSTREAM_DATA_DIR" in line]
    assert len(failures) == 1 and says in failures[0], output
    assert "Traceback" not in output
    assert snapshot(data_dir) == before, "the data dir must not be re-created or repaired"
