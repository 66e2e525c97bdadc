"""CAR v1 reading on the corpus repository export and on malformed inputs."""
from __future__ import annotations

import libipld
import pytest

from jetstream.ingest.car import CarError, cid_to_string, read_car, verify_block
from tests.ingest.test_ingest_helpers import CID, car_bytes, cid_for, dag_cbor
from tests.ingest.test_ingest_helpers import _uvarint as uvarint


@pytest.fixture(scope="module")
def repo_car(corpus_dir) -> bytes:
    return (corpus_dir / "repo.car").read_bytes()


def test_repo_car_holds_every_record_goat_listed_and_its_commit(repo_car, corpus_dir):
    car = read_car(repo_car, verify=True)
    listed = [line.split("\t") for line in (corpus_dir / "car_expected_records.tsv").read_text().splitlines()]
    assert len(listed) > 10
    by_text = {cid_to_string(cid): cid for cid in car.blocks}
    for _path, cid_text in listed:
        assert cid_text in by_text
    commit_lines = dict(line.split(": ", 1) for line in (corpus_dir / "car_expected_commit.txt").read_text().splitlines())
    commit = libipld.decode_dag_cbor(bytes(car.blocks[car.roots[0]]))
    assert commit["did"] == commit_lines["DID"]
    assert commit["rev"] == commit_lines["Revision"]
    assert cid_to_string(commit["data"]) == commit_lines["Data CID"]


def test_every_repo_car_block_verifies_and_cid_text_matches_libipld(repo_car):
    car = read_car(repo_car)
    assert len(car.blocks) > 20
    for cid, block in car.blocks.items():
        assert verify_block(cid, block)
        assert cid_to_string(cid) == libipld.encode_cid(cid)
    assert all(isinstance(block, memoryview) for block in car.blocks.values())


def test_verify_block_rejects_changed_bytes_and_unknown_hashes():
    block = dag_cbor({"a": 1})
    cid = bytes(cid_for(block))
    assert verify_block(cid, block)
    assert not verify_block(cid, block + b"\x00")
    assert verify_block(bytes(cid_for(block, codec=0x55)), block)
    assert not verify_block(bytes([1, 0x71, 0x13, 0x40]) + bytes(64), block)  # sha2-512: unsupported
    assert not verify_block(bytes([1, 0x70]) + cid[2:], block)  # dag-pb codec: not a record
    assert verify_block(b"\x12\x20" + cid[4:], block)  # CIDv0 of the same digest
    assert cid_to_string(b"\x12\x20" + bytes(32)) == libipld.encode_cid(b"\x12\x20" + bytes(32))


def good_car() -> tuple[bytes, bytes]:
    block = dag_cbor({"v": 1})
    cid = cid_for(block)
    return car_bytes([cid], [(cid, block)]), block


@pytest.mark.parametrize("mangle,reason", [
    (lambda car: b"", "empty"),
    (lambda car: car[:3], "bad_header_length"),
    (lambda car: b"\x00" + car[1:], "bad_header_length"),
    (lambda car: car[:-1], "bad_section_length"),
    (lambda car: car + b"\x00", "bad_section_length"),
    (lambda car: car + b"\x03\x02\x71\x12", "bad_block_cid"),
    (lambda car: car + b"\xff\xff", "bad_varint"),
])
def test_malformed_cars_raise_car_error_with_a_reason(mangle, reason):
    car, _ = good_car()
    with pytest.raises(CarError) as caught:
        read_car(mangle(car))
    assert caught.value.reason == reason


@pytest.mark.parametrize("header,reason", [
    ({"roots": [], "version": 1}, "no_roots"),
    ({"roots": [CID(cid_for(b"x"))], "version": 2}, "bad_header"),
    ({"roots": "x", "version": 1}, "bad_header"),
])
def test_car_headers_must_be_version_1_with_roots(header, reason):
    encoded = dag_cbor(header)
    with pytest.raises(CarError) as caught:
        read_car(bytes([len(encoded)]) + encoded)
    assert caught.value.reason == reason


def test_deeply_nested_car_header_is_a_car_error_not_a_crash():
    header = b"\xa1\x61a" + b"\x81" * 50_000 + b"\x80"
    with pytest.raises(CarError) as caught:
        read_car(uvarint(len(header)) + header)
    assert caught.value.reason == "bad_header"


def test_verifying_read_rejects_a_block_that_does_not_hash_to_its_cid():
    car, block = good_car()
    tampered = car[:-1] + bytes([car[-1] ^ 1])
    assert len(read_car(tampered).blocks) == 1
    with pytest.raises(CarError) as caught:
        read_car(tampered, verify=True)
    assert caught.value.reason == "block_hash_mismatch"
