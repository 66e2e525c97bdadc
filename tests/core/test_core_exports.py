"""jetstream.core: one import point that picks the Cython twins when built, else the _py ones."""
from __future__ import annotations

import subprocess
import sys

import jetstream.core as core
from jetstream._py.position import PositionConflict


def test_core_exports_cython_classes_when_the_extensions_are_built():
    try:
        from jetstream._core import filter, position, ring  # noqa: F401
    except ImportError:
        assert core.USING_CYTHON is False
        return
    assert core.USING_CYTHON is True
    assert core.LiveRing is ring.LiveRing
    assert core.EventFilter is filter.EventFilter
    assert core.Position is position.Position
    assert core.PositionConflict is PositionConflict


BLOCK_CORE_EXTENSIONS = """
import sys
class BlockCore:
    def find_spec(self, name, path=None, target=None):
        if name in ("jetstream._core.ring", "jetstream._core.filter", "jetstream._core.position"):
            raise ImportError("blocked for the test: " + name)
sys.meta_path.insert(0, BlockCore())
import jetstream.core as core
print(core.USING_CYTHON, core.LiveRing.__module__, core.EventFilter.__module__, core.Position.__module__)
"""


def test_core_falls_back_to_all_py_twins_when_the_extensions_are_missing():
    result = subprocess.run([sys.executable, "-c", BLOCK_CORE_EXTENSIONS], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "jetstream._py.ring", "jetstream._py.filter", "jetstream._py.position"]
    assert "event=core_fallback" in result.stderr
