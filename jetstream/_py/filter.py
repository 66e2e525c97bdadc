"""Pure-Python twin of jetstream/_core/filter.pyx: the subscriber's event filter.

Owns: the v1 wantedCollections / wantedDids matching rules (docs/protocol.md §3.2, §3.3):
entries ending in ".*" are prefixes (the trailing "*" is dropped and the rest matched
with startswith, in any order since the result is a plain OR); other entries are exact,
case-sensitive names; identity and account events carry collection "" and bypass the
collection filter, but every kind obeys wantedDids; None or empty means "no filter" for
that dimension. And the kinds dimension Jetstream v2 adds (`kinds`, internal/subscribe/
filterv2.go): a bitmask over event kind codes (jetstream.events); None means every kind,
including kinds this build cannot name, while an explicit set admits only its members.
`matches` is v1's two-dimension rule and ignores kinds (v1 readers skip sync events on their
own); `matches_event` applies all three: kind, then DID, then collection for commits only.
It must never validate or normalise entries (the server validates first, and v1 does not
normalise) and never keep per-event state: it is the reference the Cython twin and the
property tests are checked against, so it stays obviously correct rather than fast.
"""
from __future__ import annotations

from typing import Iterable

from jetstream.events import KIND_COMMIT

PREFIX_SUFFIX = ".*"
# The unset kinds axis: every bit, so an event kind this build cannot name still passes
# (v2's "match-all keeps its meaning"); an explicit selection sets only its kinds' bits.
ALL_KINDS = 0xFFFFFFFF
MAX_KIND = 31


def kind_mask_of(kinds: Iterable[int] | None) -> int:
    """The kinds axis as a bitmask: None -> ALL_KINDS; else bit k for each kind code k (0..31)."""
    if kinds is None:
        return ALL_KINDS
    mask = 0
    for kind in kinds:
        if not 0 <= kind <= MAX_KIND:
            raise ValueError(f"kind code out of range: {kind}")
        mask |= 1 << kind
    return mask


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

    __slots__ = ("_exact_collections", "_collection_prefixes", "_filters_collections", "_wanted_dids", "kind_mask")

    def __init__(
        self,
        wanted_collections: Iterable[str] | None = None,
        wanted_dids: Iterable[str] | None = None,
        kinds: Iterable[int] | None = None,
    ) -> None:
        collections = list(wanted_collections) if wanted_collections is not None else []
        dids = frozenset(wanted_dids) if wanted_dids is not None else frozenset()
        self._exact_collections, self._collection_prefixes = split_wanted_collections(collections)
        self._filters_collections = bool(collections)
        self._wanted_dids = dids or None
        self.kind_mask = kind_mask_of(kinds)

    @property
    def wants_all(self) -> bool:
        """True when no dimension filters anything: readers may skip matching entirely."""
        return not self._filters_collections and self._wanted_dids is None and self.kind_mask == ALL_KINDS

    def wants_kind(self, kind: int) -> bool:
        if not 0 <= kind <= MAX_KIND:
            return self.kind_mask == ALL_KINDS
        return bool(self.kind_mask >> kind & 1)

    def matches_event(self, kind: int, did: str, collection: str) -> bool:
        """v2's rule: kind AND did AND (not a commit, or no collections filter, or it matches)."""
        if not self.wants_kind(kind):
            return False
        # The collections axis constrains commits only: any other kind passes it like "" does.
        return self.matches(did, collection if kind == KIND_COMMIT else "")

    def matches(self, did: str, collection: str) -> bool:
        if self._wanted_dids is not None and did not in self._wanted_dids:
            return False
        # collection "" marks identity/account events: they bypass the collection filter (v1 d420dfe).
        if not self._filters_collections or collection == "":
            return True
        if collection in self._exact_collections:
            return True
        return collection.startswith(self._collection_prefixes)
