"""`--ingest-collections`: which commit collections ingest stores.

Owns: parsing the flag (comma-separated NSIDs and "prefix.*" entries, as in
wantedCollections) and the keep/drop decision per event. Identity, account and sync events
(collection "") are always kept: they describe repos, not records. Commits of other
collections are dropped by the pipeline and counted as `not_ingested`.
It must never look at anything but the collection name.
"""
from __future__ import annotations

# Decisions remembered per collection name; cleared when full so invented names cannot grow it.
_MEMO_MAX = 4096


class IngestCollections:
    """A set of exact NSIDs and prefixes; `keeps(collection)` says whether ingest stores it."""

    def __init__(self, entries: tuple[str, ...]) -> None:
        if not entries:
            raise ValueError("--ingest-collections needs at least one NSID or prefix")
        self.entries = entries
        self._exact = frozenset(entry for entry in entries if not entry.endswith(".*"))
        self._prefixes = tuple(entry[:-1] for entry in entries if entry.endswith(".*"))  # keep the dot
        self._memo: dict[str, bool] = {}

    def keeps(self, collection: str) -> bool:
        if not collection:
            return True
        kept = self._memo.get(collection)
        if kept is None:
            kept = collection in self._exact or collection.startswith(self._prefixes)
            if len(self._memo) >= _MEMO_MAX:
                self._memo.clear()
            self._memo[collection] = kept
        return kept


def parse_ingest_collections(text: str) -> tuple[str, ...]:
    """The flag's value -> its entries ("" = store every collection, v1's behaviour).

    Each entry is a full NSID or "prefix.*"; anything else is a ValueError naming it.
    """
    from jetstream.server.params import is_valid_nsid  # the same NSID rule as wantedCollections

    entries = tuple(part.strip() for part in text.split(",") if part.strip())
    for entry in entries:
        name = entry[:-2] if entry.endswith(".*") else entry
        if not name or (not entry.endswith(".*") and not is_valid_nsid(name)) or " " in name:
            raise ValueError(f"invalid --ingest-collections entry {entry!r}: expected an NSID or a prefix ending in .*")
    return entries
