"""--verify-mst through a real relay socket -> Daemon -> RocksDB: a commit whose MST leaf
disagrees with an op's cid, and one whose MST lacks the node under an op's path, lose only
that op (counted as mst_cid_mismatch / mst_missing_node) while their neighbours and all
150 corpus frames come out byte-identical to v1."""
from __future__ import annotations

import json

import pytest

from jetstream.config import parse_serve_args
from jetstream.daemon import Daemon
from jetstream.events import render_json
from jetstream.ingest.decode import decode_frame
from jetstream.relaysim.seqpatch import patch_seq
from tests.ingest.test_ingest_helpers import CID, car_bytes, cid_for, dag_cbor, frame, mst_node
from tests.ingest.test_pipeline_faults import (
    FAULT_DID,
    FIRST_SEQ,
    NOW,
    create,
    good_seq,
    log_lines,
    record,
    renumber_seq,
    without_time_us,
)
from tests.ingest.test_relay_client_reconnect import ScriptedRelay, counter, serve_config, wait_until

pytestmark = pytest.mark.timeout(60)
PREFIX = "app.bsky.feed.post/"


def mst_commit(seq: int, fault: str) -> bytes:
    """Creates {seq}a, {seq}b, {seq}c with their records; the MST breaks {seq}b as `fault` says."""
    records = [record(f"{fault} {seq} {side}") for side in "abc"]
    ops = [create(f"{seq}{side}", block) for side, block in zip("abc", records)]
    keys = [(PREFIX + f"{seq}{side}").encode() for side in "abc"]
    cids = [cid_for(block) for block in records]
    extra = []
    if fault == "mst_cid_mismatch":  # b's leaf names another (present) record
        root = mst_node([(keys[0], cids[0], None), (keys[1], cids[0], None), (keys[2], cids[2], None)])
    elif fault == "mst_missing_node":  # b would sit in a's right subtree, which the CAR lacks
        absent = mst_node([(keys[1], cids[1], None)])
        root = mst_node([(keys[0], cids[0], cid_for(absent)), (keys[2], cids[2], None)])
    else:  # a whole, correct proof
        absent = mst_node([(keys[1], cids[1], None)])
        root = mst_node([(keys[0], cids[0], cid_for(absent)), (keys[2], cids[2], None)])
        extra = [(cid_for(absent), absent)]
    signed = dag_cbor({"did": FAULT_DID, "version": 3, "data": CID(cid_for(root)), "rev": f"rev{seq}",
                       "prev": None, "sig": b"\x00" * 64})
    blocks = [(cid_for(signed), signed), (cid_for(root), root), *extra] + [(cid_for(b), b) for b in records]
    body = {"seq": seq, "repo": FAULT_DID, "rev": f"rev{seq}", "since": None, "time": NOW, "ops": ops,
            "blocks": car_bytes([cid_for(signed)], blocks), "commit": cid_for(signed), "rebase": False,
            "tooBig": False, "blobs": [], "prevData": None}
    return frame("#commit", body)


FAULTS = ("mst_cid_mismatch", "mst_missing_node", "whole")


def test_each_mst_fault_frame_drops_only_its_middle_op_and_only_with_verify_mst():
    for fault in FAULTS:
        raw = mst_commit(77, fault)
        plain = decode_frame(raw)
        assert plain.drops == [] and len(plain.events) == 3
        checked = decode_frame(raw, verify_mst=True)
        rkeys = [json.loads(render_json(event, 1))["commit"]["rkey"] for event in checked.events]
        if fault == "whole":
            assert checked.drops == [] and rkeys == ["77a", "77b", "77c"]
        else:
            assert checked.drops == [(fault, f"did={FAULT_DID} path='{PREFIX}77b'")]
            assert rkeys == ["77a", "77c"]


def test_verify_mst_flag_and_env_var_default_off():
    assert parse_serve_args([], environ={}).verify_mst is False
    assert parse_serve_args(["--verify-mst"], environ={}).verify_mst is True
    assert parse_serve_args([], environ={"JETSTREAM_VERIFY_MST": "true"}).verify_mst is True


async def test_mst_faults_lose_one_op_each_and_every_other_event_comes_out(tmp_path, corpus_frames, expected_v1_lines):
    script, fault_seqs = [], {}
    for i, good in enumerate(corpus_frames):
        script.append(patch_seq(good, good_seq(i)))
        if i < len(FAULTS):
            fault_seqs[FAULTS[i]] = good_seq(i) + 1
            script.append(mst_commit(good_seq(i) + 1, FAULTS[i]))
    relay = await ScriptedRelay([script]).start()
    drops = [("jetstream_ingest_drops_total", {"reason": reason}) for reason in FAULTS[:2]]
    before = [counter(name, **labels) for name, labels in drops]
    daemon = Daemon(serve_config(tmp_path, relay.url, "--verify-mst", "--override-relay-cursor", str(FIRST_SEQ - 1)))
    await daemon.start()
    try:
        await wait_until(lambda: daemon.event_log.relay_cursor() == good_seq(len(corpus_frames) - 1))
        lines = log_lines(daemon.event_log)
    finally:
        await daemon.stop()
        await relay.close()

    assert [counter(name, **labels) - b for (name, labels), b in zip(drops, before)] == [1.0, 1.0]
    corpus_lines = [line for line in lines if FAULT_DID.encode() not in line]
    assert [without_time_us(line) for line in corpus_lines] == [
        renumber_seq(without_time_us(line), corpus_frames) for line in expected_v1_lines]
    fault_rkeys = [json.loads(line)["commit"]["rkey"] for line in lines if FAULT_DID.encode() in line]
    m, n, w = (fault_seqs[fault] for fault in FAULTS)
    assert fault_rkeys == [f"{m}a", f"{m}c", f"{n}a", f"{n}c", f"{w}a", f"{w}b", f"{w}c"]
