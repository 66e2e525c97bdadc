"""EventFilter: v1 wantedCollections / wantedDids rules (docs/protocol.md §3.2, §3.3), both twins."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jetstream._py import filter as py_filter

try:
    from jetstream._core import filter as cy_filter
except ImportError:  # pragma: no cover - only when the extension is not built
    cy_filter = None

IMPLS = [pytest.param(py_filter.EventFilter, id="py"), pytest.param(getattr(cy_filter, "EventFilter", None), id="cython")]


@pytest.fixture(scope="module", params=IMPLS)
def EventFilter(request):
    if request.param is None:
        pytest.skip("Cython core not built")
    return request.param


def model_wants(wanted_collections, wanted_dids, did, collection):
    """The v1 rule written out longhand, independent of both twins."""
    if wanted_dids and did not in set(wanted_dids):
        return False
    if not wanted_collections or collection == "":
        return True
    for wanted in wanted_collections:
        if wanted.endswith(".*"):
            if collection.startswith(wanted[:-1]):
                return True
        elif collection == wanted:
            return True
    return False


COLLECTIONS = [
    "app.bsky.feed.post", "app.bsky.feed.like", "app.bsky.graph.follow", "app.bsky.graph.block",
    "com.example.thing", "app.bskyx.y", "app", "a.b", "", ".", "App.bsky.feed.post",
]
WANTED = COLLECTIONS[:-2] + ["app.bsky.*", "app.bsky.feed.*", "app.*", ".*", "a.*", "app.bsky.graph.fo*", "*", "app.bsky.feed.post.*"]
DIDS = ["did:plc:aaaa", "did:plc:bbbb", "did:web:example.com", "did:plc:cccc", ""]

collection_strategy = st.sampled_from(COLLECTIONS) | st.text(alphabet="ab.*", max_size=5)
wanted_strategy = st.none() | st.lists(st.sampled_from(WANTED) | st.text(alphabet="ab.*", max_size=4), max_size=6)
dids_strategy = st.none() | st.lists(st.sampled_from(DIDS), max_size=4)


def test_no_filter_wants_all_and_matches_everything(EventFilter):
    for event_filter in (EventFilter(), EventFilter(None, None), EventFilter([], [])):
        assert event_filter.wants_all
        assert event_filter.matches("did:plc:aaaa", "app.bsky.feed.post")
        assert event_filter.matches("did:plc:aaaa", "")


def test_any_dimension_set_means_not_wants_all(EventFilter):
    assert not EventFilter(["app.bsky.feed.post"]).wants_all
    assert not EventFilter(None, ["did:plc:aaaa"]).wants_all


def test_exact_collection_is_case_sensitive_and_not_a_prefix(EventFilter):
    event_filter = EventFilter(["app.bsky.feed.post"])
    assert event_filter.matches("did:plc:aaaa", "app.bsky.feed.post")
    assert not event_filter.matches("did:plc:aaaa", "App.bsky.feed.post")
    assert not event_filter.matches("did:plc:aaaa", "app.bsky.feed.postgate")


def test_dot_star_entry_is_a_startswith_prefix_keeping_the_dot(EventFilter):
    event_filter = EventFilter(["app.bsky.*"])
    assert event_filter.matches("did:plc:aaaa", "app.bsky.feed.like")
    assert event_filter.matches("did:plc:aaaa", "app.bsky.")
    assert not event_filter.matches("did:plc:aaaa", "app.bskyx.feed")
    assert not event_filter.matches("did:plc:aaaa", "app.bsky")


def test_bare_dot_star_matches_any_collection_containing_a_leading_dot_only(EventFilter):
    event_filter = EventFilter([".*"])
    assert event_filter.matches("did:plc:aaaa", ".x")
    assert not event_filter.matches("did:plc:aaaa", "app.bsky.feed.post")


def test_identity_and_account_events_bypass_collection_filter(EventFilter):
    assert EventFilter(["app.bsky.feed.post"]).matches("did:plc:aaaa", "")
    assert EventFilter(["app.bsky.*"]).matches("did:plc:aaaa", "")


def test_wanted_dids_apply_to_identity_and_account_events_too(EventFilter):
    event_filter = EventFilter(["app.bsky.feed.post"], ["did:plc:aaaa"])
    assert event_filter.matches("did:plc:aaaa", "")
    assert not event_filter.matches("did:plc:bbbb", "")
    assert not event_filter.matches("did:plc:bbbb", "app.bsky.feed.post")


def test_filter_accepts_generators_once(EventFilter):
    event_filter = EventFilter((c for c in ["app.bsky.*"]), (d for d in ["did:plc:aaaa"]))
    assert event_filter.matches("did:plc:aaaa", "app.bsky.feed.like")
    assert not event_filter.matches("did:plc:bbbb", "app.bsky.feed.like")


@settings(max_examples=300, deadline=None)
@given(wanted_strategy, dids_strategy, st.lists(st.tuples(st.sampled_from(DIDS), collection_strategy), max_size=40))
def test_filter_matches_the_longhand_model(EventFilter, wanted, dids, events):
    event_filter = EventFilter(wanted, dids)
    # each event twice: the second call exercises the Cython prefix memo after warm-up
    for did, collection in events + events:
        assert event_filter.matches(did, collection) == model_wants(wanted, dids, did, collection), (did, collection)


@settings(max_examples=200, deadline=None)
@given(wanted_strategy, dids_strategy, st.lists(st.tuples(st.sampled_from(DIDS), collection_strategy), max_size=40))
def test_cython_and_py_filters_agree(wanted, dids, events):
    if cy_filter is None:
        pytest.skip("Cython core not built")
    fast, reference = cy_filter.EventFilter(wanted, dids), py_filter.EventFilter(wanted, dids)
    assert fast.wants_all == reference.wants_all
    for did, collection in events:
        assert fast.matches(did, collection) == reference.matches(did, collection)


def test_prefix_memo_is_bounded_and_relearns_after_clearing():
    if cy_filter is None:
        pytest.skip("Cython core not built")
    event_filter = cy_filter.EventFilter(["app.*", "com.example.exact"])
    distinct = cy_filter.MEMO_CAPACITY + 100
    for i in range(distinct):
        collection = f"app.x{i}" if i % 2 else f"org.x{i}"
        assert event_filter.matches("did:plc:aaaa", collection) == (i % 2 == 1)
        assert event_filter.memo_size <= cy_filter.MEMO_CAPACITY
    # after the memo wrapped, verdicts learnt again are still right
    assert event_filter.matches("did:plc:aaaa", "app.x1")
    assert not event_filter.matches("did:plc:aaaa", "org.x0")
    assert event_filter.matches("did:plc:aaaa", "com.example.exact")


def test_ten_thousand_wanted_dids_match_exactly_those():
    if cy_filter is None:
        pytest.skip("Cython core not built")
    wanted = [f"did:plc:{i:024d}" for i in range(10_000)]
    event_filter = cy_filter.EventFilter(None, wanted)
    assert all(event_filter.matches(did, "app.bsky.feed.post") for did in wanted)
    assert not any(event_filter.matches(f"did:plc:{i:024d}", "") for i in range(10_000, 20_000))


def test_interned_ids_reserve_zero_for_the_empty_collection_only():
    if cy_filter is None:
        pytest.skip("Cython core not built")
    assert cy_filter.collection_id("") == 0
    assert cy_filter.did_id("") != 0
    assert cy_filter.collection_id("app.bsky.feed.post") != 0
    assert cy_filter.collection_id("\ud800lone-surrogate") != 0  # never raises on odd strings
