"""Every drop path, built by mutating a real three-op corpus commit: the bad op (or the
whole commit, where v1 dropped it whole) is reported in `drops`, and the neighbouring
good ops still come out byte-identical to production v1."""
from __future__ import annotations

import json

import libipld
import pytest

from jetstream.events import render_json
from jetstream.ingest.decode import decode_frame
from tests.ingest.test_ingest_helpers import (
    CID,
    car_bytes,
    cid_for,
    dag_cbor,
    decode_commit_frame,
    mutate_commit,
    reencode,
    split_car,
)


@pytest.fixture(scope="module")
def three_op_commit(corpus_frames, expected_v1_lines):
    """(frame, the three expected v1 lines in op order) for the corpus commit with 3 creates."""
    for raw in corpus_frames:
        header, body = libipld.decode_dag_cbor_multi(raw)
        if header["t"] == "#commit" and len(body["ops"]) == 3:
            rkeys = [op["path"].split("/")[1] for op in body["ops"]]
            lines = [next(line for line in expected_v1_lines if f'"rkey":"{rkey}"'.encode() in line)
                     for rkey in rkeys]
            return raw, lines
    raise AssertionError("corpus has no three-op commit")


def rendered(decoded, lines):
    """The decoded events rendered with the time_us of the expected lines they should equal."""
    return [render_json(p, json.loads(line)["time_us"]) for p, line in zip(decoded.events, lines)]


def assert_only_middle_op_dropped(decoded, lines, reason):
    assert [r for r, _ in decoded.drops] == [reason]
    assert len(decoded.events) == 2
    assert rendered(decoded, [lines[0], lines[2]]) == [lines[0], lines[2]]


def replace_car(body, change):
    roots, blocks = split_car(body["blocks"])
    change(roots, blocks)
    body["blocks"] = car_bytes(roots, blocks)


def test_unmutated_three_op_commit_yields_all_three_lines(three_op_commit):
    raw, lines = three_op_commit
    decoded = decode_frame(reencode(*decode_commit_frame(raw)))
    assert decoded.drops == []
    assert rendered(decoded, lines) == lines


def test_too_big_commit_yields_nothing_and_a_too_big_drop(three_op_commit):
    raw, _ = three_op_commit
    decoded = decode_frame(mutate_commit(raw, lambda body: body.update(tooBig=True)))
    assert decoded.frame_type == "#commit"
    assert decoded.events == []
    assert [r for r, _ in decoded.drops] == ["too_big"]


@pytest.mark.parametrize("mangle", [
    pytest.param(lambda car: car[: len(car) // 2], id="truncated"),
    pytest.param(lambda car: b"", id="empty"),
    pytest.param(lambda car: car + b"\x05\x01\x71", id="garbage-tail"),
    pytest.param(lambda car: b"\x02\xa0\x00" + car, id="bad-header"),
])
def test_malformed_car_drops_the_whole_commit_deletes_included(three_op_commit, mangle):
    raw, _ = three_op_commit
    decoded = decode_frame(mutate_commit(raw, lambda body: body.update(blocks=mangle(body["blocks"]))))
    assert decoded.events == []
    assert [r for r, _ in decoded.drops] == ["bad_car"]


def test_car_without_its_signed_commit_block_drops_the_whole_commit(three_op_commit):
    raw, _ = three_op_commit

    def drop_root_block(body):
        replace_car(body, lambda roots, blocks: blocks.__setitem__(
            slice(None), [(c, b) for c, b in blocks if c != roots[0]]))
    decoded = decode_frame(mutate_commit(raw, drop_root_block))
    assert decoded.events == []
    assert decoded.drops[0][0] == "bad_car" and "missing_commit_block" in decoded.drops[0][1]


def middle_cid(body) -> bytes:
    return bytes(body["ops"][1]["cid"])


def test_block_not_hashing_to_its_cid_drops_only_that_op(three_op_commit):
    raw, lines = three_op_commit

    def corrupt_middle_block(body):
        target = middle_cid(body)
        replace_car(body, lambda roots, blocks: blocks.__setitem__(slice(None), [
            (c, b[:-1] + bytes([b[-1] ^ 1]) if c == target else b) for c, b in blocks]))
    assert_only_middle_op_dropped(decode_frame(mutate_commit(raw, corrupt_middle_block)), lines, "cid_mismatch")


def test_block_hash_mismatch_drops_the_whole_commit_when_verifying_every_block(three_op_commit):
    raw, _ = three_op_commit

    def corrupt_middle_block(body):
        target = middle_cid(body)
        replace_car(body, lambda roots, blocks: blocks.__setitem__(slice(None), [
            (c, b[:-1] + bytes([b[-1] ^ 1]) if c == target else b) for c, b in blocks]))
    decoded = decode_frame(mutate_commit(raw, corrupt_middle_block), verify_all_blocks=True)
    assert decoded.events == []
    assert [r for r, _ in decoded.drops] == ["bad_car"]


def test_record_block_missing_from_the_car_drops_only_that_op(three_op_commit):
    raw, lines = three_op_commit

    def remove_middle_block(body):
        target = middle_cid(body)
        replace_car(body, lambda roots, blocks: blocks.__setitem__(
            slice(None), [(c, b) for c, b in blocks if c != target]))
    assert_only_middle_op_dropped(decode_frame(mutate_commit(raw, remove_middle_block)), lines, "missing_block")


def test_create_without_cid_drops_only_that_op(three_op_commit):
    raw, lines = three_op_commit
    decoded = decode_frame(mutate_commit(raw, lambda body: body["ops"][1].update(cid=None)))
    assert_only_middle_op_dropped(decoded, lines, "missing_cid")


@pytest.mark.parametrize("path", ["app.bsky.feed.post", "app.bsky.feed.post/a/b", "/rkey", "app.x/bad key",
                                  "app.x/" + "k" * 256])
def test_invalid_record_path_drops_only_that_op(three_op_commit, path):
    raw, lines = three_op_commit
    decoded = decode_frame(mutate_commit(raw, lambda body: body["ops"][1].update(path=path)))
    assert_only_middle_op_dropped(decoded, lines, "bad_path")


def test_invalid_record_drops_only_that_op_with_the_record_reason(three_op_commit):
    raw, lines = three_op_commit
    bad_record = dag_cbor({"$type": "app.bsky.feed.post", "score": 1.5})

    def swap_in_bad_record(body):
        cid = cid_for(bad_record)
        body["ops"][1]["cid"] = cid
        replace_car(body, lambda roots, blocks: blocks.append((bytes(cid), bad_record)))
    decoded = decode_frame(mutate_commit(raw, swap_in_bad_record))
    assert_only_middle_op_dropped(decoded, lines, "bad_record")
    assert "reason=non_integral_float" in decoded.drops[0][1]


def test_unknown_op_action_drops_only_that_op(three_op_commit):
    raw, lines = three_op_commit
    decoded = decode_frame(mutate_commit(raw, lambda body: body["ops"][1].update(action="resurrect")))
    assert_only_middle_op_dropped(decoded, lines, "unknown_action")


def test_delete_path_without_slash_drops_only_that_op(three_op_commit):
    raw, lines = three_op_commit
    decoded = decode_frame(mutate_commit(
        raw, lambda body: body["ops"][1].update(action="delete", path="noslash", cid=None)))
    assert_only_middle_op_dropped(decoded, lines, "bad_path")


@pytest.mark.parametrize("time", ["2026-07-04 14:38:07Z", "2026-07-04T14:38:07", "2026-13-04T14:38:07Z", "", "yesterday"])
def test_unparseable_commit_time_drops_the_whole_commit(three_op_commit, time):
    raw, _ = three_op_commit
    decoded = decode_frame(mutate_commit(raw, lambda body: body.update(time=time)))
    assert decoded.events == []
    assert [r for r, _ in decoded.drops] == ["bad_time"]


def test_every_corpus_commit_survives_a_corrupted_unrelated_block_by_default(corpus_frames, expected_v1_lines):
    """Only blocks whose bytes reach the output are hash-checked by default (decode.py docstring)."""
    events = []
    for raw in corpus_frames:
        header, body = decode_commit_frame(raw) if libipld.decode_dag_cbor_multi(raw)[0]["t"] == "#commit" else (None, None)
        if header is None:
            events += decode_frame(raw).events
            continue
        record_cids = {bytes(op["cid"]) for op in body["ops"] if isinstance(op.get("cid"), CID)}
        roots, blocks = split_car(body["blocks"])
        blocks = [(c, b if c in record_cids or c == roots[0] else b + b"\x00") for c, b in blocks]
        body["blocks"] = car_bytes(roots, blocks)
        events += decode_frame(reencode(header, body)).events
    assert len(events) == len(expected_v1_lines)
    assert [render_json(p, json.loads(line)["time_us"]) for p, line in zip(events, expected_v1_lines)] == expected_v1_lines
