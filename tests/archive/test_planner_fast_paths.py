"""The planner's fast paths (issue 24's bench: one DID over 1,000 segments, p99 < 50 ms) give v2's answers.

The answer is formatted directly instead of through json.dumps: it must be the same bytes json.dumps
writes for the lexicon's document. Plans from resident footers (probes per bloom shape, a lone block's
bits tested in place) must equal plans made with every footer read from disk (a 0-byte cache), and
the footers a plan used must move to the recent end of the cache's LRU order.
"""
from __future__ import annotations

import json

import pytest

from jetstream.archive import segment_name
from jetstream.archive.manifest import Manifest
from jetstream.archive.planner import PlanRequest, checksum_hex, plan_snapshot
from tests.archive.archive_helpers import write_segment
from tests.archive.test_planner import SEGMENTS


def reference_json(plan) -> bytes:
    rows = []
    for s in plan.segments:
        row = {"checksum": checksum_hex(s.checksum), "index": s.index, "maxSeq": s.max_seq, "minSeq": s.min_seq,
               "mode": s.mode, "name": segment_name(s.index)}
        if s.mode == "blocks":
            row = {"blocks": [{"first": first, "last": last} for first, last in s.blocks], **row}
        rows.append(row)
    doc = {"plannedThroughSeq": plan.planned_through_seq, "sealedTipSeq": plan.sealed_tip_seq, "segments": rows,
           "stats": {"blocksMatched": plan.blocks_matched, "entries": plan.entries,
                     "segmentsExamined": plan.segments_examined, "segmentsMatched": plan.segments_matched}}
    return json.dumps(doc, separators=(",", ":")).encode()


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    path = tmp_path_factory.mktemp("plan-fast")
    for i, events in enumerate(SEGMENTS):
        write_segment(path, events, block_events=2, name=segment_name(i))
    return str(path)


REQUESTS = [
    PlanRequest(),
    PlanRequest(dids=("did:plc:b",)),
    PlanRequest(dids=("did:plc:d", "did:plc:a")),
    PlanRequest(dids=("did:plc:b", "did:plc:c")),
    PlanRequest(dids=("did:plc:nobody",)),
    PlanRequest(dids=("did:plc:a",), after_seq=1, before_seq=21),
    PlanRequest(kinds=2),
    PlanRequest(collections=("app.bsky.feed.like",), dids=("did:plc:a",)),
    PlanRequest(prefixes=("app.bsky.graph.",)),
]


@pytest.mark.parametrize("request_", REQUESTS)
@pytest.mark.parametrize("max_entries", [100_000, 1])
def test_resident_and_cold_footers_plan_alike_and_the_json_is_json_dumps(directory, request_, max_entries):
    warm, cold = Manifest(directory), Manifest(directory, footer_cache_bytes=0)
    warm.scan()
    cold.scan()
    assert warm.cached_bytes > 0 and cold.cached_bytes == 0
    plan = plan_snapshot(warm, request_, max_entries)
    assert plan == plan_snapshot(cold, request_, max_entries)
    assert plan.to_json() == reference_json(plan)


def test_a_plan_marks_the_footers_it_used_as_recent(directory):
    manifest = Manifest(directory)
    manifest.scan()
    order = list(manifest._cache)  # noqa: SLF001 - the LRU order is what is under test
    assert order == [0, 1, 2]
    plan_snapshot(manifest, PlanRequest(dids=("did:plc:d",)))  # only segment 1's bloom holds d
    assert list(manifest._cache)[-1] == 1  # noqa: SLF001
