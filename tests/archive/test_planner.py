"""The planner against v2's rules (internal/manifest/plan.go, xrpcapi/plansnapshot.go), table by table,
and its request parser fuzzed: any body gives a PlanRequest or v2's 400, never anything else.

Segments are real files written by SegmentWriter with chosen block cuts, so each case knows which
block holds which DID, collection and kind; a reference selection computed from the events
themselves (no blooms) must be contained in the plan (no false negatives), and for blocks whose
DIDs differ the blooms must prune."""
from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jetstream.archive import (
    KIND_ACCOUNT,
    KIND_CREATE,
    KIND_DELETE,
    KIND_IDENTITY,
    SegmentEvent,
    segment_name,
)
from jetstream.archive.manifest import Manifest
from jetstream.archive.planner import BadPlanRequest, PlanRequest, parse_plan_request, plan_snapshot
from tests.archive.archive_helpers import write_segment

POST, LIKE, FOLLOW = "app.bsky.feed.post", "app.bsky.feed.like", "app.bsky.graph.follow"


def ev(seq, did, kind=KIND_CREATE, collection=POST):
    if kind in (KIND_IDENTITY, KIND_ACCOUNT):
        collection = ""
    return SegmentEvent(seq, 1000 + seq, 0, kind, did, collection, f"r{seq}" if collection else "",
                        "rev" if collection else "", b"\xa0" if kind != KIND_DELETE else b"")


# Segment 0: 4 blocks of 2 events; segment 1: 4 blocks; segment 2: 2 blocks.
SEGMENTS = [
    [ev(1, "did:plc:a"), ev(2, "did:plc:a", collection=LIKE),  # block 0: a, post+like
     ev(3, "did:plc:b"), ev(4, "did:plc:b"),  # block 1: b, post
     ev(5, "did:plc:c", KIND_IDENTITY), ev(6, "did:plc:c", collection=FOLLOW),  # block 2: c, identity + follow
     ev(7, "did:plc:b", KIND_DELETE), ev(8, "did:plc:b")],  # block 3: b, post
    [ev(11, "did:plc:d"), ev(12, "did:plc:d"),
     ev(13, "did:plc:d"), ev(14, "did:plc:d"),
     ev(15, "did:plc:e", KIND_ACCOUNT), ev(16, "did:plc:d"),
     ev(17, "did:plc:d"), ev(18, "did:plc:d")],
    [ev(21, "did:plc:a", collection=LIKE), ev(22, "did:plc:a", collection=LIKE),
     ev(23, "did:plc:f"), ev(24, "did:plc:f")],
]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    directory = tmp_path_factory.mktemp("plan")
    for i, events in enumerate(SEGMENTS):
        write_segment(directory, events, block_events=2, name=segment_name(i))
    m = Manifest(str(directory))
    assert m.scan().added == [segment_name(i) for i in range(3)]
    return m


def shape(plan):
    return [(s.index, s.mode, list(s.blocks)) for s in plan.segments]


def plan(manifest, max_entries=100_000, **request):
    return plan_snapshot(manifest, PlanRequest(**request), max_entries)


def test_no_filter_plans_every_segment_whole(manifest):
    p = plan(manifest)
    assert shape(p) == [(0, "segment", []), (1, "segment", []), (2, "segment", [])]
    assert (p.sealed_tip_seq, p.planned_through_seq) == (24, 24)
    assert (p.segments_examined, p.segments_matched, p.blocks_matched, p.entries) == (3, 3, 10, 3)


def test_a_did_selects_only_its_blocks(manifest):
    p = plan(manifest, dids=("did:plc:b",))
    assert shape(p) == [(0, "blocks", [(1, 1), (3, 3)])]  # 2 of 4 blocks < 0.75: blocks mode, ranges apart
    assert p.entries == 2 and p.blocks_matched == 2


def test_density_at_the_threshold_is_a_whole_segment(manifest):
    # d is in every block of segment 1 (4/4); a in block 0 of segment 0 and block 0 of 2 (1/2).
    p = plan(manifest, dids=("did:plc:d", "did:plc:a"))
    assert shape(p) == [(0, "blocks", [(0, 0)]), (1, "segment", []), (2, "blocks", [(0, 0)])]
    # b and c: blocks 1, 2 and 3 of segment 0, exactly 0.75: a whole segment (>= threshold).
    exact = plan(manifest, dids=("did:plc:b", "did:plc:c"))
    assert shape(exact) == [(0, "segment", [])] and exact.blocks_matched == 3


def test_kinds_select_by_sentinel_markers(manifest):
    assert shape(plan(manifest, kinds=2)) == [(0, "blocks", [(2, 2)])]  # identity
    assert shape(plan(manifest, kinds=4)) == [(1, "blocks", [(2, 2)])]  # account
    assert shape(plan(manifest, kinds=8)) == []  # sync: no marker anywhere
    commits = plan(manifest, kinds=1)
    assert shape(commits) == [(0, "segment", []), (1, "segment", []), (2, "segment", [])]


def test_collections_exact_and_prefix_keep_marker_blocks(manifest):
    # A collection filter narrows commits only: identity/account markers stay selected (kinds omitted).
    p = plan(manifest, collections=(LIKE,))
    assert shape(p) == [(0, "blocks", [(0, 0), (2, 2)]), (1, "blocks", [(2, 2)]), (2, "blocks", [(0, 0)])]
    graph = plan(manifest, kinds=1, prefixes=("app.bsky.graph.",))
    assert shape(graph) == [(0, "blocks", [(2, 2)])]
    nothing = plan(manifest, kinds=1, collections=("com.example.none",))
    assert shape(nothing) == [] and nothing.planned_through_seq == nothing.sealed_tip_seq == 24


def test_seq_window_and_tip(manifest):
    p = plan(manifest, after_seq=4, before_seq=13)
    assert shape(p) == [(0, "blocks", [(2, 3)]), (1, "blocks", [(0, 1)])]
    assert (p.sealed_tip_seq, p.planned_through_seq) == (13, 13)
    assert shape(plan(manifest, after_seq=24)) == []
    assert plan(manifest, before_seq=1000).sealed_tip_seq == 24


def test_pagination_truncates_at_a_unit_with_at_least_one_per_page(manifest):
    p = plan(manifest, max_entries=1, dids=("did:plc:b",))
    assert shape(p) == [(0, "blocks", [(1, 1)])]
    assert (p.planned_through_seq, p.sealed_tip_seq, p.entries) == (4, 24, 1)
    nxt = plan(manifest, max_entries=1, dids=("did:plc:b",), after_seq=4, before_seq=24)
    # Nothing else matches after this unit: the page is not truncated, so it reaches the tip.
    assert shape(nxt) == [(0, "blocks", [(3, 3)])] and nxt.planned_through_seq == 24
    whole = plan(manifest, max_entries=2)
    assert shape(whole) == [(0, "segment", []), (1, "segment", [])] and whole.planned_through_seq == 18


def test_paging_to_the_end_covers_every_block_a_reference_selection_needs(manifest):
    """No false negatives: page with max_entries=1 and compare to the events themselves."""
    for request in [dict(dids=("did:plc:b", "did:plc:f")), dict(kinds=2 | 4), dict(collections=(POST,)), dict()]:
        after, covered = 0, set()
        for _ in range(50):
            p = plan(manifest, max_entries=1, after_seq=after, before_seq=24, **request)
            for s in p.segments:
                blocks = range(len(SEGMENTS[s.index]) // 2) if s.mode == "segment" else [
                    b for first, last in s.blocks for b in range(first, last + 1)]
                covered |= {e.seq for b in blocks for e in SEGMENTS[s.index][2 * b:2 * b + 2]}
            assert p.planned_through_seq > after or p.planned_through_seq == 24
            after = p.planned_through_seq
            if after >= 24:
                break
        wanted = {e.seq for events in SEGMENTS for e in events if _matches(e, **request)}
        assert wanted <= covered, request


def _matches(e, dids=(), kinds=0, collections=()):
    public = {1: 1, 2: 1, 3: 1, 7: 1, 4: 2, 5: 4, 6: 8}[e.kind]
    if dids and e.did not in dids:
        return False
    if kinds and not kinds & public:
        return False
    return not (collections and public == 1 and e.collection not in collections)


def test_plan_json_is_the_lexicons_shape(manifest):
    doc = json.loads(plan(manifest, dids=("did:plc:b",)).to_json())
    assert set(doc) == {"plannedThroughSeq", "sealedTipSeq", "segments", "stats"}
    segment = doc["segments"][0]
    assert segment["name"] == "seg_0000000000.jss" and len(segment["checksum"]) == 16
    assert segment["blocks"] == [{"first": 1, "last": 1}, {"first": 3, "last": 3}]
    assert set(doc["stats"]) == {"segmentsExamined", "segmentsMatched", "blocksMatched", "entries"}


@pytest.mark.parametrize("body, message", [
    (b'{"kinds":["commit","identity","account","sync","commit"]}', "too many kinds"),
    (b'{"kinds":["Commit"]}', "invalid kind: Commit"),
    (json.dumps({"dids": ["did:plc:x"] * 10_001}).encode(), "too many DIDs"),
    (b'{"dids":["did:PLC:x"]}', "invalid DID: did:PLC:x"),
    (b'{"dids":["did:plc:x:"]}', "invalid DID: did:plc:x:"),
    (json.dumps({"collections": ["a.b.c"] * 101}).encode(), "too many collections"),
    (b'{"collections":[".*"]}', "invalid collection wildcard: .*"),
    (b'{"collections":["*"]}', "invalid collection: *"),
    (b'{"collections":["app.bsky.feed.post.*"],"kinds":["account"]}',
     "collections filter can never apply: kinds excludes commit"),
    (b'{"beforeSeq":-3}', "beforeSeq must be >= 0"),
    (b'{"afterSeq":9,"beforeSeq":2}', "beforeSeq must be greater than afterSeq"),
    (b'{"afterSeq":1.5}', "invalid request body"),
    (b'{"afterSeq":true}', "invalid request body"),
    (b'{"afterSeq":9223372036854775808}', "invalid request body"),
    (b'{"dids":[1]}', "invalid request body"),
    (b'{"$type":3}', "invalid request body"),
    (b'{"afterSeq":NaN}', "invalid request body"),
    (b'null', "invalid request body"),
    (b'\xff', "invalid request body"),
])
def test_request_errors_are_v2s(body, message):
    with pytest.raises(BadPlanRequest) as refused:
        parse_plan_request(body)
    assert str(refused.value) == message


def test_request_parsing_accepts_what_v2_accepts():
    req = parse_plan_request(b' {"kinds":["commit"],"dids":["did:plc:a","did:plc:a"],"collections":["app.bsky.feed.*",'
                             b'"app.bsky.graph.follow"],"afterSeq":0,"beforeSeq":null,"extra":{"x":[1]}} trailing')
    assert req == PlanRequest(1, ("did:plc:a",), ("app.bsky.graph.follow",), ("app.bsky.feed.",), 0, None)
    assert parse_plan_request(b'{"kinds":null,"dids":[],"collections":null}') == PlanRequest()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(1 << 70), max_value=1 << 70) | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20)
plan_keys = st.sampled_from(["kinds", "dids", "collections", "afterSeq", "beforeSeq", "$type", "other"])
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(plan_keys, json_values | st.lists(st.sampled_from(
        ["commit", "sync", "did:plc:abc", "app.bsky.feed.*", "app.bsky.feed.post", "x", ""]), max_size=6),
        max_size=6).map(lambda d: json.dumps(d).encode()),
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies)
def test_fuzzed_bodies_give_a_request_or_v2s_400_and_plan(body):
    try:
        req = parse_plan_request(body)
    except BadPlanRequest as exc:
        assert str(exc)
        return
    assert isinstance(req, PlanRequest)
    assert req.after_seq is None or req.after_seq >= 0
    if req.after_seq is not None and req.before_seq is not None:
        assert req.before_seq > req.after_seq
