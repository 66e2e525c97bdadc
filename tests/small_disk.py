"""A small disk to fill up, for the disk-full tests (tests/faults, tests/health): a tmpfs of a
few MiB mounted for one test, and a filler file that leaves it almost full.

Mounting needs root's `mount`; without it the test is skipped with the reason. Never used
outside a test's own tmp_path.
"""
from __future__ import annotations

import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

SIZE = "16m"
LEFT_FREE = 1_500_000  # what a filled disk keeps free: less than the daemon's log writes go on to need


@contextmanager
def mounted_tmpfs(mount_point: Path, size: str = SIZE):
    """A tmpfs of `size` at `mount_point` (created) for the block; lazily unmounted after it."""
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def fill(mount_point: Path, left_free: int = LEFT_FREE) -> Path:
    """Write a filler file until `left_free` bytes are free; remove the file to free the space."""
    filler = mount_point / "filler"
    with open(filler, "wb") as out:
        out.write(b"\0" * (shutil.disk_usage(mount_point).free - left_free))
    return filler
