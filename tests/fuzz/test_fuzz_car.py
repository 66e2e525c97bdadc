"""Fuzzing the CAR reader: read_car returns a CarFile or raises CarError, nothing else;
a CarFile's blocks are slices of the input; a verifying read only ever returns blocks
that hash to their CIDs.

Inputs: the CARs of real commits (corpus, relay-sim synthetic) and the corpus repo export,
with byte-level edits, and random bytes behind a valid header.
"""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jetstream.ingest.car import CarError, read_car, verify_block
from jetstream.relaysim.cbor import Link, encode
from tests.fuzz.test_fuzz_strategies import car_of, fuzz_settings, mutated, synthetic_frames

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def car_seeds(corpus_frames, corpus_dir):
    cars = [car for car in map(car_of, list(corpus_frames[:60]) + synthetic_frames(30)) if car]
    repo_car = (corpus_dir / "repo.car").read_bytes()
    return cars + [repo_car[:4096]]  # the export's header and first blocks: a different writer


def read_safely(data: bytes, verify: bool):
    try:
        car = read_car(data, verify=verify)
    except CarError as err:
        assert err.reason
        return None
    assert car.roots and all(isinstance(root, bytes) for root in car.roots)
    for cid, block in car.blocks.items():
        assert isinstance(block, memoryview) and block.obj is not None
        if verify:
            assert verify_block(cid, block)
    return car


@fuzz_settings(1500)
@given(st.data(), st.booleans())
def test_edited_cars_parse_or_raise_car_error(car_seeds, data, verify):
    read_safely(data.draw(mutated(data.draw(st.sampled_from(car_seeds)))), verify)


@fuzz_settings(800)
@given(st.binary(max_size=200), st.booleans())
def test_random_sections_after_a_valid_header_parse_or_raise_car_error(sections, verify):
    header = encode({"roots": [Link(b"\x01\x71\x12\x20" + bytes(32))], "version": 1})
    read_safely(bytes([len(header)]) + header + sections, verify)
