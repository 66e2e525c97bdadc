"""Test-side builders for ingest tests: a canonical DAG-CBOR encoder written from the
spec (independent of the code under test), CAR v1 and relay-frame builders, and a
re-encoder for real corpus frames so drop paths can be exercised by mutating them.

Also pins the builders themselves: a real corpus frame re-encodes to its exact bytes.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import struct
from typing import Any, Callable

import libipld


class CID(bytes):
    """A binary CID (no multibase prefix) to be encoded as tag 42."""


class Raw(bytes):
    """Pre-encoded CBOR spliced in verbatim (for crafting invalid inputs)."""


def _head(major: int, argument: int) -> bytes:
    if argument < 24:
        return bytes([major << 5 | argument])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if argument < 1 << (8 * size):
            return bytes([major << 5 | info]) + argument.to_bytes(size, "big")
    raise ValueError("argument too large")


def dag_cbor(value: Any) -> bytes:
    """Canonical DAG-CBOR (RFC 8949 core deterministic + IPLD: length-first key order)."""
    if isinstance(value, Raw):
        return bytes(value)
    if value is None:
        return b"\xf6"
    if value is True:
        return b"\xf5"
    if value is False:
        return b"\xf4"
    if isinstance(value, int):
        return _head(0, value) if value >= 0 else _head(1, -1 - value)
    if isinstance(value, float):
        return b"\xfb" + struct.pack(">d", value)
    if isinstance(value, CID):
        payload = b"\x00" + bytes(value)
        return b"\xd8\x2a" + _head(2, len(payload)) + payload
    if isinstance(value, (bytes, bytearray)):
        return _head(2, len(value)) + bytes(value)
    if isinstance(value, str):
        raw = value.encode("utf-8", "surrogateescape")
        return _head(3, len(raw)) + raw
    if isinstance(value, (list, tuple)):
        return _head(4, len(value)) + b"".join(dag_cbor(item) for item in value)
    if isinstance(value, dict):
        items = [(key.encode("utf-8", "surrogateescape") if isinstance(key, str) else key, item)
                 for key, item in value.items()]
        items.sort(key=lambda pair: (len(pair[0]), pair[0]))
        return _head(5, len(items)) + b"".join(_head(3, len(k)) + k + dag_cbor(v) for k, v in items)
    raise TypeError(type(value))


def cid_for(block: bytes, codec: int = 0x71) -> CID:
    return CID(bytes([1, codec, 0x12, 0x20]) + hashlib.sha256(block).digest())


def cid_from_string(text: str) -> CID:
    assert text.startswith("b")
    body = text[1:].upper()
    return CID(base64.b32decode(body + "=" * (-len(body) % 8)))


def from_record_json(value: Any) -> Any:
    """atproto JSON data model -> encoder values ($link -> CID, $bytes -> bytes)."""
    if isinstance(value, dict):
        if set(value) == {"$link"}:
            return cid_from_string(value["$link"])
        if set(value) == {"$bytes"}:
            text = value["$bytes"]
            return base64.b64decode(text + "=" * (-len(text) % 4))
        return {key: from_record_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [from_record_json(item) for item in value]
    return value


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def car_bytes(roots: list[bytes], blocks: list[tuple[bytes, bytes]]) -> bytes:
    header = dag_cbor({"roots": [CID(root) for root in roots], "version": 1})
    out = [_uvarint(len(header)), header]
    for cid, block in blocks:
        out += [_uvarint(len(cid) + len(block)), bytes(cid), bytes(block)]
    return b"".join(out)


def commit_block(did: str, rev: str) -> bytes:
    return dag_cbor({"did": did, "version": 3, "data": cid_for(b"mst"), "rev": rev,
                     "prev": None, "sig": b"\x00" * 64})


def commit_frame(repo: str, rev: str, time: str, ops: list[dict],
                 records: list[bytes], **extra: Any) -> bytes:
    """A #commit frame whose CAR holds a signed-commit block and the given record blocks."""
    commit = commit_block(repo, rev)
    commit_cid = cid_for(commit)
    car = car_bytes([commit_cid], [(commit_cid, commit)] + [(cid_for(r), r) for r in records])
    body = {"seq": 1, "repo": repo, "rev": rev, "since": None, "time": time, "ops": ops,
            "blocks": car, "commit": commit_cid, "rebase": False, "tooBig": False,
            "blobs": [], "prevData": None}
    body.update(extra)
    return dag_cbor({"op": 1, "t": "#commit"}) + dag_cbor(body)


def frame(frame_type: str, body: dict) -> bytes:
    return dag_cbor({"op": 1, "t": frame_type}) + dag_cbor(body)


# Fields of a #commit body that are CIDs (libipld decodes tag 42 to plain bytes).
def _mark_commit_cids(body: dict) -> dict:
    body = dict(body)
    for field in ("commit", "prevData"):
        if isinstance(body.get(field), bytes):
            body[field] = CID(body[field])
    body["blobs"] = [CID(blob) for blob in body.get("blobs", [])]
    body["ops"] = [dict(op, **({"cid": CID(op["cid"])} if isinstance(op.get("cid"), bytes) else {}))
                   for op in body["ops"]]
    for op in body["ops"]:
        if isinstance(op.get("prev"), bytes):
            op["prev"] = CID(op["prev"])
    return body


def decode_commit_frame(raw: bytes) -> tuple[dict, dict]:
    header, body = libipld.decode_dag_cbor_multi(raw)
    return header, _mark_commit_cids(body)


def reencode(header: dict, body: dict) -> bytes:
    return dag_cbor(header) + dag_cbor(body)


def mutate_commit(raw: bytes, change: Callable[[dict], None]) -> bytes:
    header, body = decode_commit_frame(raw)
    change(body)
    return reencode(header, body)


def split_car(car: bytes) -> tuple[list[bytes], list[tuple[bytes, bytes]]]:
    """Independent CAR splitter (test side) so mutated CARs can be rebuilt."""
    def uvarint(pos: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            byte = car[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value, pos
    header_len, pos = uvarint(0)
    roots = libipld.decode_dag_cbor(car[pos:pos + header_len])["roots"]
    pos += header_len
    blocks = []
    while pos < len(car):
        length, pos = uvarint(pos)
        blocks.append((car[pos:pos + 36], car[pos + 36:pos + length]))  # corpus CIDs are 36 bytes
        pos += length
    return roots, blocks


# ---------------------------------------------------------------------------
# MST (atproto repo v3: sha-256 key depth in 2-bit chunks, fanout 4), written from the spec
# ---------------------------------------------------------------------------

def mst_node(entries: list[tuple[bytes, bytes, bytes | None]], left: bytes | None = None) -> bytes:
    """An MST node block: entries are (full key, value CID, right subtree CID or None), in order."""
    encoded, previous = [], b""
    for key, value, tree in entries:
        shared = 0
        while shared < min(len(previous), len(key)) and previous[shared] == key[shared]:
            shared += 1
        encoded.append({"p": shared, "k": key[shared:], "v": CID(value), "t": None if tree is None else CID(tree)})
        previous = key
    return dag_cbor({"l": None if left is None else CID(left), "e": encoded})


def mst_layer(key: bytes) -> int:
    """Leading zero bit pairs of sha256(key): the MST layer the key lives on."""
    zeros = 0
    for byte in hashlib.sha256(key).digest():
        for shift in (6, 4, 2, 0):
            if (byte >> shift) & 3:
                return zeros
            zeros += 1
    return zeros


def build_mst(records: dict[bytes, bytes]) -> tuple[CID, list[tuple[CID, bytes]]]:
    """The canonical MST of key -> value CID: (root CID, every node block)."""
    items = sorted(records.items())
    layers = {key: mst_layer(key) for key in records}
    blocks: list[tuple[CID, bytes]] = []

    def node(span: list[tuple[bytes, bytes]], layer: int) -> CID | None:
        if not span:
            return None
        here = [i for i, (key, _) in enumerate(span) if layers[key] == layer]
        left = node(span[:here[0]] if here else span, layer - 1)
        entries = []
        for n, i in enumerate(here):
            end = here[n + 1] if n + 1 < len(here) else len(span)
            entries.append((span[i][0], span[i][1], node(span[i + 1:end], layer - 1)))
        block = mst_node(entries, left)
        blocks.append((cid_for(block), block))
        return cid_for(block)

    if not items:
        empty = mst_node([])
        return cid_for(empty), [(cid_for(empty), empty)]
    return node(items, max(layers.values())), blocks


# ---------------------------------------------------------------------------
# tests of the builders themselves
# ---------------------------------------------------------------------------

def test_reencoding_a_corpus_commit_frame_reproduces_its_bytes(corpus_frames):
    commits = [raw for raw in corpus_frames if libipld.decode_dag_cbor_multi(raw)[0]["t"] == "#commit"]
    assert len(commits) == 148
    for raw in commits[:40]:
        assert reencode(*decode_commit_frame(raw)) == raw


def test_split_car_then_car_bytes_round_trips_a_corpus_car(corpus_frames):
    _, body = libipld.decode_dag_cbor_multi(corpus_frames[0])
    roots, blocks = split_car(body["blocks"])
    assert car_bytes(roots, blocks) == body["blocks"]
    assert all(cid_for(block) == cid or cid[1] != 0x71 for cid, block in blocks)


def test_encoder_sorts_keys_length_first_like_dag_cbor():
    encoded = dag_cbor({"bb": 1, "a": 2, "c": 3})
    assert encoded == b"\xa3\x61a\x02\x61c\x03\x62bb\x01"
    assert json.loads(json.dumps(libipld.decode_dag_cbor(encoded))) == {"a": 2, "c": 3, "bb": 1}


def test_mst_builder_rebuilds_the_data_cid_goat_reported_for_repo_car(corpus_dir):
    records = {}
    for line in (corpus_dir / "car_expected_records.tsv").read_text().splitlines():
        path, cid_text = line.split("\t")
        records[path.encode()] = cid_from_string(cid_text)
    expected = re.search(r"Data CID: (b[a-z2-7]+)", (corpus_dir / "car_expected_commit.txt").read_text()).group(1)
    root, _ = build_mst(records)
    assert root == cid_from_string(expected)
