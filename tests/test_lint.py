"""Lint as a test: ruff (configured in pyproject.toml) over the Python code, cython-lint over the
Cython sources. A violation fails `make test` with the linter's own report."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
PYTHON_TREES = ["jetstream", "tests", "bench", "fuzz", "soak", "systemd", "setup.py"]
CYTHON_MAX_LINE_LENGTH = "120"  # the same as ruff's line-length in pyproject.toml


def _run(tool: str, *args: str) -> subprocess.CompletedProcess:
    bin_dir = Path(sys.executable).parent
    executable = bin_dir / tool
    if not executable.exists():
        pytest.fail(f"{tool} is not installed in {bin_dir}: pip install -e '.[test]'")
    # cython-lint runs pycodestyle by name: the venv's bin must be on PATH.
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.run([str(executable), *args], cwd=REPO_ROOT, capture_output=True, text=True, env=env,
                          timeout=300)


def test_ruff_finds_nothing():
    result = _run("ruff", "check", "--no-cache", "--output-format", "concise", *PYTHON_TREES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cython_lint_finds_nothing():
    sources = sorted(str(path.relative_to(REPO_ROOT)) for pattern in ("*.pyx", "*.pxd")
                     for path in (REPO_ROOT / "jetstream" / "_core").glob(pattern))
    assert sources
    result = _run("cython-lint", "--max-line-length", CYTHON_MAX_LINE_LENGTH, *sources)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_would_catch_an_unused_import(tmp_path):
    """The configuration is live: a planted violation is reported (so a green run means something)."""
    planted = tmp_path / "planted.py"
    planted.write_text("import os\n")
    result = _run("ruff", "check", "--no-cache", "--config", str(REPO_ROOT / "pyproject.toml"), str(planted))
    assert result.returncode != 0 and "F401" in result.stdout
