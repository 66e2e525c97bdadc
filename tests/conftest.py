"""Shared fixtures: where the read-only corpus lives, and its frames.

The corpus sits in ../shared/corpus beside the checkout (CI puts it there too).
Tests read it in place; nothing from it is ever copied into the project.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("JETSTREAM_SHARED_DIR", REPO_ROOT.parent / "shared"))
CORPUS_DIR = SHARED_DIR / "corpus"


def _require_corpus() -> Path:
    if not (CORPUS_DIR / "frames.bin.zst").exists():
        if os.environ.get("CI"):
            pytest.fail(f"corpus missing at {CORPUS_DIR}; CI must provide ../shared")
        pytest.skip(f"corpus not found at {CORPUS_DIR} (set JETSTREAM_SHARED_DIR)")
    return CORPUS_DIR


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    return _require_corpus()


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
