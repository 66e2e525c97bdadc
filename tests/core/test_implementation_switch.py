"""jetstream.implementation: one switch that picks the Cython twins when built, else the _py ones.

The choice is for the whole process (never mixed), JETSTREAM_PURE_PYTHON=1 forces the
pure-Python side, and ingest's CAR reader and commit loop come from the same choice.
"""
from __future__ import annotations

import os
import subprocess
import sys

import jetstream.implementation as implementation
from jetstream.errors import PositionConflict

REPORT_CHOICE = """
import jetstream.implementation as impl
from jetstream.ingest import car, decode
print(impl.IMPLEMENTATION, impl.USING_CYTHON, impl.LiveRing.__module__, impl.EventFilter.__module__,
      impl.Position.__module__, impl.encode_frames.__module__, car.read_car.__module__,
      decode.commit_events.__module__, decode.MstReader.__module__)
"""

BLOCK_ONE_EXTENSION = """
import sys
class BlockRing:
    def find_spec(self, name, path=None, target=None):
        if name == "jetstream._core.ring":
            raise ImportError("blocked for the test: " + name)
sys.meta_path.insert(0, BlockRing())
""" + REPORT_CHOICE

PYTHON_SIDE = ["python", "False", "jetstream._py.ring", "jetstream._py.filter", "jetstream._py.position",
               "jetstream._py.frames", "jetstream._py.car", "jetstream._py.commit", "jetstream._py.mst"]


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != implementation.PURE_PYTHON_ENV}
    environ.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=environ)


def test_the_cython_side_is_chosen_when_every_extension_is_built():
    try:
        from jetstream._core import filter, frames, position, ring
    except ImportError:
        assert implementation.USING_CYTHON is False
        return
    if implementation.pure_python_requested():
        assert implementation.IMPLEMENTATION == "python"
        return
    assert implementation.IMPLEMENTATION == "cython" and implementation.USING_CYTHON is True
    assert implementation.LiveRing is ring.LiveRing
    assert implementation.EventFilter is filter.EventFilter
    assert implementation.Position is position.Position
    assert implementation.encode_frames is frames.encode_frames
    assert implementation.PositionConflict is PositionConflict


def test_without_the_switch_a_built_tree_loads_every_cython_twin():
    result = _run(REPORT_CHOICE)
    words = result.stdout.split()
    if words[0] == "python":  # an unbuilt checkout: the fallback is logged
        assert "event=implementation_fallback" in result.stderr
        return
    assert words == ["cython", "True", "jetstream._core.ring", "jetstream._core.filter",
                     "jetstream._core.position", "jetstream._core.frames", "jetstream._core.car",
                     "jetstream._core.commit", "jetstream._core.mst"]


def test_pure_python_switch_loads_every_python_twin():
    result = _run(REPORT_CHOICE, JETSTREAM_PURE_PYTHON="1")
    assert result.stdout.split() == PYTHON_SIDE


def test_one_missing_extension_falls_back_to_all_python_twins_never_a_mix():
    result = _run(BLOCK_ONE_EXTENSION)
    assert result.stdout.split() == PYTHON_SIDE
    assert "event=implementation_fallback" in result.stderr


def test_the_switch_reads_the_usual_truthy_spellings():
    for value in ("1", "true", "YES", " on "):
        assert implementation.pure_python_requested({implementation.PURE_PYTHON_ENV: value})
    for value in ("", "0", "false", "no"):
        assert not implementation.pure_python_requested({implementation.PURE_PYTHON_ENV: value})


def test_no_module_outside_the_switch_and_the_twins_imports_a_side_directly():
    root = os.path.join(os.path.dirname(implementation.__file__))
    offenders = []
    for folder, _dirs, files in os.walk(root):
        if os.path.basename(folder) in ("_core", "_py"):
            continue
        for name in files:
            path = os.path.join(folder, name)
            if not name.endswith(".py") or path == implementation.__file__:
                continue
            with open(path, encoding="utf-8") as source:
                text = source.read()
            if "from jetstream._core" in text or "import jetstream._core" in text:
                offenders.append(path)
    assert offenders == []
