"""Synthetic relay frames: deterministic, well-formed, and consumable by the ingest."""
from __future__ import annotations

import hashlib
import re

import libipld
import pytest

from jetstream.relaysim.synthetic import SyntheticSource

FRAMES = 4000
TID = re.compile(r"[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}")
TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
CID_PREFIX = b"\x01\x71\x12\x20"  # CIDv1, dag-cbor, sha2-256, 32 bytes


@pytest.fixture(scope="module")
def synthetic_frames() -> list[bytes]:
    source = SyntheticSource(seed=42, dids=200)
    return [source.frame(seq) for seq in range(1, FRAMES + 1)]


@pytest.fixture(scope="module")
def decoded(synthetic_frames) -> list[tuple[dict, dict]]:
    return [libipld.decode_dag_cbor_multi(frame) for frame in synthetic_frames]


def test_same_seed_gives_the_same_bytes_in_any_access_order(synthetic_frames):
    again = SyntheticSource(seed=42, dids=200)
    seqs = [3999, 17, 2500, 1, 4000, 17]
    assert [again.frame(seq) for seq in seqs] == [synthetic_frames[seq - 1] for seq in seqs]


def test_another_seed_gives_other_frames(synthetic_frames):
    other = SyntheticSource(seed=43, dids=200)
    assert sum(other.frame(seq) == synthetic_frames[seq - 1] for seq in range(1, 101)) == 0


def test_frames_carry_their_seq_and_well_formed_envelopes(decoded):
    assert [body["seq"] for _, body in decoded] == list(range(1, FRAMES + 1))
    for header, body in decoded:
        assert header["op"] == 1
        assert TIME.fullmatch(body["time"])
        assert body["repo" if header["t"] == "#commit" else "did"].startswith("did:plc:")
        if header["t"] == "#commit":
            assert TID.fullmatch(body["rev"])
            assert body["tooBig"] is False and body["blobs"] == []


def test_mix_has_every_kind_of_frame_and_op(decoded):
    frame_types = [header["t"] for header, _ in decoded]
    ops = [op for header, body in decoded if header["t"] == "#commit" for op in body["ops"]]
    collections = {op["path"].split("/")[0] for op in ops}
    assert frame_types.count("#identity") >= 1 and frame_types.count("#account") >= 1
    assert frame_types.count("#commit") > 0.99 * FRAMES
    assert collections == {"app.bsky.feed.post", "app.bsky.feed.like", "app.bsky.graph.follow"}
    deletes = sum(op["action"] == "delete" for op in ops)
    assert 0.005 * FRAMES < deletes < 0.1 * FRAMES
    assert any(len(body.get("ops", ())) > 1 for _, body in decoded), "some multi-op commits"


def test_post_texts_are_not_just_ascii(decoded):
    texts = [record["text"] for record in _records(decoded) if record["$type"] == "app.bsky.feed.post"]
    assert any(not text.isascii() for text in texts)
    assert any(any(ord(ch) > 0xFFFF for ch in text) for text in texts), "astral-plane emoji"


def test_every_record_block_hashes_to_its_op_cid_and_the_car_root_is_the_commit(decoded):
    checked = 0
    for header, body in decoded:
        if header["t"] != "#commit":
            continue
        car_header, blocks = libipld.decode_car(body["blocks"])
        raw_blocks = _raw_car_blocks(body["blocks"])
        assert car_header["roots"] == [body["commit"]]
        commit = blocks[body["commit"]]
        assert set(commit) == {"did", "version", "data", "rev", "prev", "sig"}
        assert (commit["did"], commit["version"], commit["rev"], commit["prev"]) == (body["repo"], 3, body["rev"], None)
        assert commit["data"] in blocks
        for cid, raw in raw_blocks.items():
            assert cid == CID_PREFIX + hashlib.sha256(raw).digest()
        for op in body["ops"]:
            if op["action"] == "delete":
                assert op["cid"] is None
                continue
            assert op["cid"].startswith(CID_PREFIX)
            assert blocks[op["cid"]]["$type"] == op["path"].split("/")[0]
            checked += 1
    assert checked > 0.9 * FRAMES


def test_deletes_remove_records_created_earlier_in_the_same_repo(decoded):
    created: set[tuple[str, str]] = set()
    deletes = 0
    for header, body in decoded:
        for op in body.get("ops", ()) if header["t"] == "#commit" else ():
            key = (body["repo"], op["path"])
            if op["action"] == "create":
                created.add(key)
            else:
                assert key in created, key
                deletes += 1
    assert deletes > 0


def test_ingest_decodes_synthetic_frames_into_events_with_no_drops(synthetic_frames, decoded):
    decode = pytest.importorskip("jetstream.ingest.decode")
    expected_events = sum(len(body["ops"]) if header["t"] == "#commit" else 1 for header, body in decoded)
    events = 0
    for frame in synthetic_frames:
        result = decode.decode_frame(frame, verify_all_blocks=True)
        assert result.drops == [], result.drops
        events += len(result.events)
    assert events == expected_events


def _records(decoded) -> list[dict]:
    records = []
    for header, body in decoded:
        if header["t"] == "#commit":
            blocks = libipld.decode_car(body["blocks"])[1]
            records += [blocks[op["cid"]] for op in body["ops"] if op["cid"] is not None]
    return records


def _raw_car_blocks(car: bytes) -> dict[bytes, bytes]:
    """Independent CAR v1 walk (varint sections), so hashes are checked on the raw bytes."""
    def uvarint(pos: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            byte = car[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value, pos
            shift += 7

    header_len, pos = uvarint(0)
    pos += header_len
    blocks = {}
    while pos < len(car):
        section_len, pos = uvarint(pos)
        blocks[car[pos:pos + 36]] = car[pos + 36:pos + section_len]
        pos += section_len
    return blocks
