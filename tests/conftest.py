"""Shared fixtures: the recorded relay data in tests/data/ (see its README.md), and its frames.

The data is part of the checkout: no test skips for want of it and nothing outside the
repository is read.
"""
from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CORPUS_DIR = REPO_ROOT / "tests" / "data"


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    return CORPUS_DIR


@pytest.fixture(scope="session")
def corpus_frames(corpus_dir: Path) -> list[bytes]:
    from jetstream.framefile import read_frames

    return read_frames(corpus_dir / "frames.bin.zst")


@pytest.fixture(scope="session")
def expected_v1_lines(corpus_dir: Path) -> list[bytes]:
    return (corpus_dir / "expected_v1.jsonl").read_bytes().splitlines()


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """Run `async def` tests on a fresh uvloop event loop (the daemon's loop) without plugins."""
    import inspect

    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    import uvloop

    names = pyfuncitem._fixtureinfo.argnames
    kwargs = {name: pyfuncitem.funcargs[name] for name in names}
    uvloop.run(pyfuncitem.obj(**kwargs))
    return True
