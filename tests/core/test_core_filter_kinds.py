"""EventFilter's kinds axis and v2's three-axis rule (`matches_event`), both twins in lockstep.

v2's rule (internal/subscribe/filterv2.go FilterV2.Wants):
  deliver = (kinds unset OR kind in kinds) AND (dids unset OR did in dids)
            AND (kind != commit OR collections unset OR collection "" OR matches(collection))
An unset kinds axis admits kinds this build cannot name; an explicit selection does not.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jetstream._py import filter as py_filter
from jetstream.events import KIND_ACCOUNT, KIND_COMMIT, KIND_IDENTITY, KIND_SYNC
from tests.core.test_core_filter import DIDS, collection_strategy, dids_strategy, model_wants, wanted_strategy

try:
    from jetstream._core import filter as cy_filter
except ImportError:  # pragma: no cover - only when the extension is not built
    cy_filter = None

IMPLS = [pytest.param(py_filter.EventFilter, id="py"), pytest.param(getattr(cy_filter, "EventFilter", None), id="cython")]
FUTURE_KIND = 9  # a kind code this build has no name for
KINDS = (KIND_COMMIT, KIND_IDENTITY, KIND_ACCOUNT, KIND_SYNC)


@pytest.fixture(scope="module", params=IMPLS)
def EventFilter(request):
    if request.param is None:
        pytest.skip("Cython core not built")
    return request.param


def model_v2(kinds, collections, dids, kind, did, collection):
    """filterv2.go Wants, longhand and independent of both twins."""
    if kinds is not None and kind not in set(kinds):
        return False
    if dids and did not in set(dids):
        return False
    if kind != KIND_COMMIT:
        return True
    return model_wants(collections, None, did, collection)


def test_unset_kinds_admit_every_kind_even_unknown_ones(EventFilter):
    event_filter = EventFilter()
    assert event_filter.kind_mask == py_filter.ALL_KINDS
    assert all(event_filter.wants_kind(kind) for kind in KINDS + (FUTURE_KIND, 31, 40, -1))
    assert event_filter.wants_all


def test_explicit_kinds_admit_only_themselves(EventFilter):
    event_filter = EventFilter(None, None, [KIND_COMMIT, KIND_SYNC])
    assert event_filter.kind_mask == 0b1001
    assert [event_filter.wants_kind(kind) for kind in KINDS] == [True, False, False, True]
    assert not event_filter.wants_kind(FUTURE_KIND)
    assert not event_filter.wants_kind(40) and not event_filter.wants_kind(-1)
    assert not event_filter.wants_all
    # all four named kinds is still an explicit selection: a future kind is not in it
    assert not EventFilter(None, None, KINDS).wants_kind(FUTURE_KIND)


def test_kinds_out_of_range_are_refused(EventFilter):
    with pytest.raises(ValueError):
        EventFilter(None, None, [32])


def test_collections_constrain_commits_only(EventFilter):
    event_filter = EventFilter(["app.bsky.feed.post"])
    assert event_filter.matches_event(KIND_COMMIT, "did:plc:aaaa", "app.bsky.feed.post")
    assert not event_filter.matches_event(KIND_COMMIT, "did:plc:aaaa", "app.bsky.feed.like")
    assert event_filter.matches_event(KIND_COMMIT, "did:plc:aaaa", "")  # unclassifiable commit: kept
    for kind in (KIND_IDENTITY, KIND_ACCOUNT, KIND_SYNC, FUTURE_KIND):
        assert event_filter.matches_event(kind, "did:plc:aaaa", "app.bsky.feed.like")  # even with a collection


def test_dids_constrain_every_kind(EventFilter):
    event_filter = EventFilter(None, ["did:plc:aaaa"])
    for kind in KINDS:
        assert event_filter.matches_event(kind, "did:plc:aaaa", "")
        assert not event_filter.matches_event(kind, "did:plc:bbbb", "")


def test_kinds_commit_with_collections_is_a_commits_only_stream(EventFilter):
    event_filter = EventFilter(["app.bsky.*"], None, [KIND_COMMIT])
    assert event_filter.matches_event(KIND_COMMIT, "did:plc:aaaa", "app.bsky.feed.like")
    assert not event_filter.matches_event(KIND_IDENTITY, "did:plc:aaaa", "")
    assert not event_filter.matches_event(KIND_COMMIT, "did:plc:aaaa", "com.example.x")


def test_v1_matches_ignores_the_kinds_axis(EventFilter):
    # v1 readers call matches(did, collection); a kinds selection must not change that answer
    assert EventFilter(["app.bsky.feed.post"], None, [KIND_SYNC]).matches("did:plc:aaaa", "app.bsky.feed.post")


kinds_strategy = st.none() | st.lists(st.sampled_from(KINDS + (FUTURE_KIND,)), max_size=4)
event_strategy = st.tuples(st.sampled_from(KINDS + (FUTURE_KIND,)), st.sampled_from(DIDS), collection_strategy)


@settings(max_examples=300, deadline=None)
@given(kinds_strategy, wanted_strategy, dids_strategy, st.lists(event_strategy, max_size=40))
def test_matches_event_is_the_longhand_v2_rule(EventFilter, kinds, wanted, dids, events):
    event_filter = EventFilter(wanted, dids, kinds)
    for kind, did, collection in events + events:  # twice: the Cython prefix memo after warm-up
        assert event_filter.matches_event(kind, did, collection) == model_v2(kinds, wanted, dids, kind, did,
                                                                             collection), (kind, did, collection)


@settings(max_examples=200, deadline=None)
@given(kinds_strategy, wanted_strategy, dids_strategy, st.lists(event_strategy, max_size=40))
def test_cython_and_py_agree_on_kinds(kinds, wanted, dids, events):
    if cy_filter is None:
        pytest.skip("Cython core not built")
    fast, reference = cy_filter.EventFilter(wanted, dids, kinds), py_filter.EventFilter(wanted, dids, kinds)
    assert (fast.wants_all, fast.kind_mask) == (reference.wants_all, reference.kind_mask)
    for kind, did, collection in events:
        assert fast.wants_kind(kind) == reference.wants_kind(kind)
        assert fast.matches_event(kind, did, collection) == reference.matches_event(kind, did, collection)
        assert fast.matches(did, collection) == reference.matches(did, collection)
