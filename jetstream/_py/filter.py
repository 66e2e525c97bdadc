"""Pure-Python twin of jetstream/_core/filter.pyx: the subscriber's event filter.

Owns: the v1 wantedCollections / wantedDids matching rules (docs/protocol.md §3.2, §3.3):
entries ending in ".*" are prefixes (the trailing "*" is dropped and the rest matched
with startswith, in any order since the result is a plain OR); other entries are exact,
case-sensitive names; identity and account events carry collection "" and bypass the
collection filter, but every kind obeys wantedDids; None or empty means "no filter" for
that dimension.
It must never validate or normalise entries (the server validates first, and v1 does not
normalise) and never keep per-event state: it is the reference the Cython twin and the
property tests are checked against, so it stays obviously correct rather than fast.
"""
from __future__ import annotations

from typing import Iterable

PREFIX_SUFFIX = ".*"


def split_wanted_collections(wanted_collections: Iterable[str]) -> tuple[frozenset[str], tuple[str, ...]]:
    """(exact names, prefixes) from wantedCollections values; "app.bsky.*" -> prefix "app.bsky."."""
    exact: set[str] = set()
    prefixes: list[str] = []
    for entry in wanted_collections:
        if entry.endswith(PREFIX_SUFFIX):
            prefixes.append(entry[:-1])
        else:
            exact.add(entry)
    return frozenset(exact), tuple(prefixes)


class EventFilter:
    """Decides whether one subscriber wants an event, from its did and collection."""

    __slots__ = ("_exact_collections", "_collection_prefixes", "_filters_collections", "_wanted_dids")

    def __init__(
        self,
        wanted_collections: Iterable[str] | None = None,
        wanted_dids: Iterable[str] | None = None,
    ) -> None:
        collections = list(wanted_collections) if wanted_collections is not None else []
        dids = frozenset(wanted_dids) if wanted_dids is not None else frozenset()
        self._exact_collections, self._collection_prefixes = split_wanted_collections(collections)
        self._filters_collections = bool(collections)
        self._wanted_dids = dids or None

    @property
    def wants_all(self) -> bool:
        """True when neither dimension filters anything: readers may skip matching entirely."""
        return not self._filters_collections and self._wanted_dids is None

    def matches(self, did: str, collection: str) -> bool:
        if self._wanted_dids is not None and did not in self._wanted_dids:
            return False
        # collection "" marks identity/account events: they bypass the collection filter (v1 d420dfe).
        if not self._filters_collections or collection == "":
            return True
        if collection in self._exact_collections:
            return True
        return collection.startswith(self._collection_prefixes)
