# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The subscriber's event filter on interned ids: the fast twin of jetstream/_py/filter.py.

Owns: v1 wantedCollections / wantedDids matching and v2's kinds bitmask (rules in the _py
twin's docstring) on 64-bit ids, and the id functions the ring uses to intern each event's did and collection
once, at append time, so that no subscriber ever hashes a string per event:
  - wanted DIDs and exact collections are open-addressing sets of u64 ids;
  - prefix filters keep a per-filter memo collection-id -> verdict (exact OR prefix), so
    after warm-up a prefix filter costs one table probe per event, not a startswith loop.
It must never validate entries (the server does) and never allocate on the matching path
except when learning a collection it has not seen.

Collision stance: ids are xxh3-64 of the UTF-8 bytes and a hash hit is NOT confirmed by
comparing strings (the strings are not at hand on the hot path, and fetching them would
cost more than the whole probe). Two different strings share an id with probability
2^-64 per pair: with 10,000 wanted DIDs against ~10^8 DIDs in the network that is ~5e-8
for the chance that any stranger ever aliases a wanted DID. The only effect of a collision
is one subscriber receiving an event it did not ask for; order, completeness and other
subscribers are untouched. We accept that rather than pay for confirmation.
"""
from cpython.mem cimport PyMem_Calloc, PyMem_Free
from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memset

from xxhash import xxh3_64_intdigest

from jetstream._py.filter import ALL_KINDS, MAX_KIND, kind_mask_of, split_wanted_collections
from jetstream.events import KIND_COMMIT

# Memo entries before the memo is cleared and relearnt: bounds memory against a relay that
# invents endless collection names; real traffic has a few thousand distinct NSIDs.
MEMO_CAPACITY = 1 << 14
cdef Py_ssize_t _MEMO_CAPACITY = MEMO_CAPACITY
cdef Py_ssize_t _INITIAL_SLOTS = 16


cdef inline uint64_t _string_hash(str text) except? 0:
    # surrogatepass: a str from anywhere must hash, never raise, on the ingest path.
    return xxh3_64_intdigest(text.encode("utf-8", "surrogatepass"))


cpdef uint64_t did_id(str did) except? 0:
    """Interned id of a DID: never 0 (0 marks an empty table slot)."""
    cdef uint64_t h = _string_hash(did)
    return h if h != 0 else 1


cpdef uint64_t collection_id(str collection) except? 0:
    """Interned id of a collection; 0 exactly for "" (identity/account events)."""
    if not collection:
        return 0
    cdef uint64_t h = _string_hash(collection)
    return h if h != 0 else 1


# ---- IdTable: u64 open addressing, linear probing, load <= 1/2 ------------------------

cdef int _table_init(IdTable* table, Py_ssize_t min_entries, bint with_verdicts) except -1:
    cdef Py_ssize_t slots = _INITIAL_SLOTS
    while slots < 2 * min_entries:
        slots *= 2
    table.keys = <uint64_t*>PyMem_Calloc(slots, sizeof(uint64_t))
    table.verdicts = <uint8_t*>PyMem_Calloc(slots, sizeof(uint8_t)) if with_verdicts else NULL
    if table.keys == NULL or (with_verdicts and table.verdicts == NULL):
        raise MemoryError()
    table.mask = slots - 1
    table.used = 0
    return 0


cdef void _table_free(IdTable* table) noexcept:
    PyMem_Free(table.keys)
    PyMem_Free(table.verdicts)
    table.keys = NULL
    table.verdicts = NULL


cdef inline Py_ssize_t _table_find(const IdTable* table, uint64_t key) noexcept nogil:
    """Slot holding key, or the empty slot where it would go. Ids are hashes: low bits suffice."""
    cdef Py_ssize_t slot = <Py_ssize_t>(key & <uint64_t>table.mask)
    while table.keys[slot] != 0 and table.keys[slot] != key:
        slot = (slot + 1) & table.mask
    return slot


cdef inline bint _table_contains(const IdTable* table, uint64_t key) noexcept nogil:
    return table.keys[_table_find(table, key)] == key


cdef int _table_grow(IdTable* table) except -1:
    cdef IdTable bigger
    cdef Py_ssize_t slot, target
    _table_init(&bigger, table.mask + 1, table.verdicts != NULL)
    for slot in range(table.mask + 1):
        if table.keys[slot] != 0:
            target = _table_find(&bigger, table.keys[slot])
            bigger.keys[target] = table.keys[slot]
            if bigger.verdicts != NULL:
                bigger.verdicts[target] = table.verdicts[slot]
            bigger.used += 1
    _table_free(table)
    table[0] = bigger
    return 0


cdef int _table_put(IdTable* table, uint64_t key, uint8_t verdict) except -1:
    if 2 * (table.used + 1) > table.mask + 1:
        _table_grow(table)
    cdef Py_ssize_t slot = _table_find(table, key)
    if table.keys[slot] == 0:
        table.keys[slot] = key
        table.used += 1
    if table.verdicts != NULL:
        table.verdicts[slot] = verdict
    return 0


cdef void _table_clear(IdTable* table) noexcept:
    memset(table.keys, 0, (table.mask + 1) * sizeof(uint64_t))
    table.used = 0


# ---- the filter ------------------------------------------------------------------------

cdef class EventFilter:
    """Decides whether one subscriber wants an event; same API as the _py twin."""

    def __cinit__(self, wanted_collections=None, wanted_dids=None, kinds=None):
        collections = list(wanted_collections) if wanted_collections is not None else []
        dids = frozenset(wanted_dids) if wanted_dids is not None else frozenset()
        exact, prefixes = split_wanted_collections(collections)
        self._filters_collections = len(collections) > 0
        self._filters_dids = len(dids) > 0
        self._collection_prefixes = prefixes
        self._has_prefixes = len(prefixes) > 0
        self.kind_mask = kind_mask_of(kinds)
        self.wants_all = not self._filters_collections and not self._filters_dids and self.kind_mask == ALL_KINDS
        _table_init(&self._wanted_dids, len(dids), False)
        _table_init(&self._exact_collections, len(exact), False)
        _table_init(&self._collection_memo, 0, True)
        for did in dids:
            _table_put(&self._wanted_dids, did_id(did), 1)
        for collection in exact:
            if collection:  # "" always passes the collection filter; it needs no entry
                _table_put(&self._exact_collections, collection_id(collection), 1)

    def __dealloc__(self):
        _table_free(&self._wanted_dids)
        _table_free(&self._exact_collections)
        _table_free(&self._collection_memo)

    cpdef bint wants_kind(self, int kind):
        if kind < 0 or kind > MAX_KIND:
            return self.kind_mask == ALL_KINDS
        return (self.kind_mask >> kind) & 1

    def matches_event(self, int kind, str did, str collection):
        """v2's rule: kind AND did AND (not a commit, or no collections filter, or it matches)."""
        if not self.wants_kind(kind):
            return False
        # The collections axis constrains commits only: any other kind passes it like "" does.
        return self.matches(did, collection if kind == KIND_COMMIT else "")

    def matches(self, str did, str collection):
        cdef uint64_t collection_key = collection_id(collection)
        cdef int verdict = self.match_ids(did_id(did), collection_key)
        if verdict == MATCH_UNKNOWN:
            return self.learn_collection(collection_key, collection)
        return verdict == MATCH_YES

    cdef int match_ids(self, uint64_t did_key, uint64_t collection_key) noexcept nogil:
        """The verdict from interned ids alone; MATCH_UNKNOWN only on a prefix-memo miss."""
        if self._filters_dids and not _table_contains(&self._wanted_dids, did_key):
            return MATCH_NO
        # collection id 0 is "": identity/account events bypass the collection filter (v1 d420dfe).
        if not self._filters_collections or collection_key == 0:
            return MATCH_YES
        if not self._has_prefixes:
            return MATCH_YES if _table_contains(&self._exact_collections, collection_key) else MATCH_NO
        cdef Py_ssize_t slot = _table_find(&self._collection_memo, collection_key)
        if self._collection_memo.keys[slot] == collection_key:
            return self._collection_memo.verdicts[slot]
        return MATCH_UNKNOWN

    cdef bint learn_collection(self, uint64_t collection_key, str collection) except -1:
        """Decide a collection the memo has not seen (exact OR prefix), remember, return it.

        Only reached after match_ids passed the DID check, so the verdict is the answer.
        """
        cdef bint verdict = (
            _table_contains(&self._exact_collections, collection_key)
            or collection.startswith(self._collection_prefixes)
        )
        if self._collection_memo.used >= _MEMO_CAPACITY:
            _table_clear(&self._collection_memo)
        _table_put(&self._collection_memo, collection_key, verdict)
        return verdict

    @property
    def memo_size(self):
        """Collections with a memoised verdict (for tests and metrics)."""
        return self._collection_memo.used
