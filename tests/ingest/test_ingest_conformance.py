"""Conformance: the corpus frames decode to exactly the JSON production v1 served
(expected_v1.jsonl, time_us aside), and golden_v1.jsonl records round-trip through a
canonical DAG-CBOR re-encoding back to v1's bytes."""
from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from jetstream._core import record_json as cy
from jetstream._py import record_json as py
from jetstream.events import KIND_NAMES, render_json
from jetstream.ingest.decode import decode_frame
from tests.ingest.test_ingest_helpers import cid_for, cid_from_string, commit_frame, dag_cbor, frame, from_record_json


def decode_all(frames, **options):
    events, drops, types = [], [], Counter()
    for raw in frames:
        decoded = decode_frame(raw, **options)
        events += decoded.events
        drops += decoded.drops
        types[decoded.frame_type] += 1
    return events, drops, types


def time_us_of(line: bytes) -> int:
    return json.loads(line)["time_us"]


@pytest.mark.parametrize("verify_mst", [False, True], ids=["block_hash", "verify_mst"])
@pytest.mark.parametrize("verify_all_blocks", [False, True])
def test_corpus_frames_yield_exactly_the_v1_lines_byte_for_byte(corpus_frames, expected_v1_lines, verify_all_blocks,
                                                                verify_mst):
    events, drops, _ = decode_all(corpus_frames, verify_all_blocks=verify_all_blocks, verify_mst=verify_mst)
    assert drops == []
    assert len(events) == len(expected_v1_lines) == 152
    for index, (pending, line) in enumerate(zip(events, expected_v1_lines)):
        assert render_json(pending, time_us_of(line)) == line, f"line {index}"


def test_corpus_event_counts_match_the_manifest(corpus_frames, corpus_dir):
    manifest = json.loads((corpus_dir / "manifest.json").read_text())
    events, _, frame_types = decode_all(corpus_frames)
    rendered = [json.loads(render_json(p, 1)) for p in events]
    operations = Counter(e["commit"]["operation"] for e in rendered if e["kind"] == "commit")
    kinds = Counter(e["kind"] for e in rendered)
    assert frame_types["#commit"] == manifest["commit_frames"]
    assert sum(frame_types.values()) == manifest["frames"]
    assert len(events) == manifest["v1_events"]
    assert operations["create"] == manifest["creates"]
    assert operations["update"] == manifest["updates"]
    assert operations["delete"] == manifest["deletes"]
    assert kinds["identity"] == manifest["identity"]
    assert kinds["account"] == manifest["account"]


def test_pending_events_carry_did_kind_and_collection_for_filters(corpus_frames):
    events, _, _ = decode_all(corpus_frames)
    for pending in events:
        line = json.loads(render_json(pending, 7))
        assert pending.did == line["did"]
        assert KIND_NAMES[pending.kind] == line["kind"]
        assert pending.collection == line.get("commit", {}).get("collection", "")
        assert pending.json_head == b'{"did":' + py.go_json_string(pending.did) + b',"time_us":'


def test_frames_with_seq_report_the_relay_seq_in_order(corpus_frames, corpus_dir):
    manifest = json.loads((corpus_dir / "manifest.json").read_text())
    seqs = [decode_frame(raw).seq for raw in corpus_frames]
    assert seqs == list(range(manifest["seq_first"], manifest["seq_last"] + 1))


# ---------------------------------------------------------------------------
# golden_v1.jsonl
# ---------------------------------------------------------------------------

RECORD_IN_LINE = re.compile(rb',"record":(.*),"cid":"(b[a-z2-7]+)"}}$')


def golden_lines(corpus_dir) -> list[bytes]:
    lines = (corpus_dir / "golden_v1.jsonl").read_bytes().splitlines()
    assert len(lines) == 10
    return lines


def golden_records(corpus_dir):
    for line in golden_lines(corpus_dir):
        match = RECORD_IN_LINE.search(line)
        if match is not None:
            yield line, match.group(1), match.group(2).decode()


def test_golden_records_reencode_to_their_cid_and_emit_their_original_bytes(corpus_dir):
    records = list(golden_records(corpus_dir))
    assert len(records) == 7
    for _, record_json, cid_text in records:
        block = dag_cbor(from_record_json(json.loads(record_json)))
        # Same CID as production: the re-encoding is the exact block the PDS signed.
        assert cid_for(block) == cid_from_string(cid_text)
        assert py.record_to_json(block) == record_json
        assert cy.record_to_json(block) == record_json


def golden_frame(event: dict) -> bytes:
    """A relay frame carrying what production v1 turned into `event`."""
    time = "2026-05-25T14:23:29.950Z"
    if event["kind"] == "identity":
        return frame("#identity", event["identity"])
    if event["kind"] == "account":
        return frame("#account", event["account"])
    commit = event["commit"]
    path = f'{commit["collection"]}/{commit["rkey"]}'
    if commit["operation"] == "delete":
        return commit_frame(event["did"], commit["rev"], time, [{"action": "delete", "path": path, "cid": None}], [])
    block = dag_cbor(from_record_json(commit["record"]))
    op = {"action": commit["operation"], "path": path, "cid": cid_for(block)}
    return commit_frame(event["did"], commit["rev"], time, [op], [block])


def test_golden_lines_are_rebuilt_whole_from_equivalent_relay_frames(corpus_dir):
    kinds = Counter()
    for line in golden_lines(corpus_dir):
        event = json.loads(line)
        decoded = decode_frame(golden_frame(event))
        assert decoded.drops == []
        assert [render_json(p, event["time_us"]) for p in decoded.events] == [line]
        kinds[event["kind"]] += 1
    assert kinds == {"commit": 8, "identity": 1, "account": 1}
