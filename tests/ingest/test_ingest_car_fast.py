"""The Cython CAR reader (jetstream._core.car) and its reference twin (jetstream._py.car)
agree on every input: same roots, same blocks, same CarError reason; on real commits, on
CAR shapes only the general paths handle, and on byte-edited and random CARs."""
from __future__ import annotations

import hashlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jetstream._core import car as fast
from jetstream._py import car as ref
from jetstream.ingest.frames import split_frame
from jetstream.relaysim.cbor import Link, encode
from jetstream.relaysim.synthetic import SyntheticSource

pytestmark = pytest.mark.timeout(120)


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out + bytes([value]))


def _cidv1(block: bytes, codec: int = 0x71) -> bytes:
    return bytes([1, codec, 0x12, 0x20]) + hashlib.sha256(block).digest()


def _car(header: dict, sections: list[bytes]) -> bytes:
    header_bytes = encode(header)
    return _uvarint(len(header_bytes)) + header_bytes + b"".join(_uvarint(len(s)) + s for s in sections)


def _outcome(module, data: bytes, verify: bool):
    try:
        car = module.read_car(data, verify=verify)
    except ref.CarError as err:
        return ("error", err.reason)
    blocks = {cid: bytes(block) for cid, block in car.blocks.items()}
    assert len(car.blocks) == len(blocks)
    for cid in blocks:
        assert cid in car.blocks and bytes(car.blocks[cid]) == bytes(car.blocks.get(cid)) == blocks[cid]
        assert isinstance(car.blocks[cid], memoryview)
    return ("car", list(car.roots), blocks)


def _assert_twins(data: bytes) -> None:
    for verify in (False, True):
        assert _outcome(fast, data, verify) == _outcome(ref, data, verify)


@pytest.fixture(scope="module")
def real_cars(corpus_frames):
    source = SyntheticSource(seed=3, dids=20)
    frames = list(corpus_frames) + [source.frame(seq) for seq in range(1, 80)]
    return [body["blocks"] for body in (split_frame(frame)[1] for frame in frames) if type(body.get("blocks")) is bytes]


def test_real_commit_cars_read_the_same(real_cars):
    assert len(real_cars) > 150
    for data in real_cars:
        _assert_twins(data)
        assert _outcome(fast, data, True)[0] == "car"


def test_shapes_only_the_general_paths_handle_read_the_same():
    block = encode({"version": 3, "did": "did:plc:x"})
    raw_block = b"raw bytes"
    cid = _cidv1(block)
    cidv0 = bytes([0x12, 0x20]) + hashlib.sha256(raw_block).digest()
    big_block = b"\x00" * 300  # a two-byte section length
    cases = [
        _car({"roots": [Link(cid)], "version": 1}, [cid + block]),
        _car({"roots": [Link(cid), Link(cid)], "version": 1}, [cid + block]),  # two roots: libipld path
        _car({"version": 1, "roots": [Link(cid)]}, [cid + block]),  # same map, encoded canonically anyway
        _car({"roots": [Link(cid)], "version": 1}, [cidv0 + raw_block]),  # CIDv0 block
        _car({"roots": [Link(cid)], "version": 1}, [_cidv1(raw_block, 0x55) + raw_block]),
        _car({"roots": [Link(cid)], "version": 1}, [_cidv1(big_block) + big_block]),
        _car({"roots": [Link(cid)], "version": 1}, [cid + block, cid + b"tampered"]),  # duplicate CID: last wins
        _car({"roots": [Link(cid)], "version": 2}, [cid + block]),
        _car({"roots": [], "version": 1}, []),
        _car({"roots": [Link(cid)], "version": 1}, [cid[:20]]),
        _car({"roots": [Link(cid)], "version": 1}, [cid + block])[:-3],
        b"", b"\x00", b"\xff" * 12, b"\x80" * 11,
        b"\x3a" + b"\xff" * 9 + b"\x01",  # header length runs past the input
    ]
    header = _car({"roots": [Link(cid)], "version": 1}, [])
    cases += [header + b"\xff" * 9 + b"\x01", header + b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x7f",
              header + b"\x80\x01" + b"\x00" * 128, header + b"\x00"]
    for data in cases:
        _assert_twins(data)


@st.composite
def edited(draw, seeds):
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(("flip", "cut", "insert", "delete")))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=12))
        elif data:
            del data[at:at + draw(st.integers(1, 40))]
    return bytes(data)


def test_edited_and_random_cars_read_the_same(real_cars):
    seeds = real_cars[:40]

    @settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.one_of(edited(seeds), st.binary(max_size=200)))
    def check(data):
        _assert_twins(data)

    check()
