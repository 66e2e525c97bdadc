"""Type stub of the Cython commit-op loop (commit.pyx); the reference is jetstream/_py/commit.py."""
from collections.abc import Mapping

from jetstream._core.mst import MstReader
from jetstream.events import PendingEvent

def is_rfc3339(value: str) -> bool: ...
def is_mst_key(path: str) -> bool: ...
def commit_events(repo: str, rev: str, ops: list[dict], blocks: Mapping[bytes, memoryview],
                  events: list[PendingEvent], drops: list[tuple[str, str]], mst: MstReader | None = None) -> None: ...
