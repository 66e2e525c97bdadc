"""Fuzzing the segment reader: on any bytes it returns events or raises SegmentError, nothing else.

Seeds are sealed segments (ours of the corpus, v2's golden corpus segment and fixtures). Edits land
in the header, the blocks and the footer; footer edits are re-sealed (the header checksum
recomputed) so they get past the checksum into the footer parsers, and block bodies are fuzzed
after decompression so they reach the column decoder.
"""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jetstream.archive import SegmentError, SegmentReader, verify
from jetstream.archive.bloom import Bloom
from jetstream.archive.format import (
    HEADER_SIZE,
    decode_block,
    decode_collection_index,
    decode_header,
    decompress_frame,
    header_checksum,
)
from tests.archive.archive_helpers import GOLDEN_CORPUS_SEGMENT, V2_FIXTURES, corpus_car_events, write_segment
from tests.fuzz.test_fuzz_strategies import fuzz_settings, mutated

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> list[bytes]:
    ours = write_segment(tmp_path_factory.mktemp("seg"), corpus_car_events(), block_events=5)
    return [open(ours, "rb").read(), GOLDEN_CORPUS_SEGMENT.read_bytes(),
            (V2_FIXTURES / "golden_seal.bin").read_bytes(), (V2_FIXTURES / "legacy_fixed4096_blooms.jss").read_bytes()]


def read_everything(data: bytes, verify_checksum: bool = True) -> None:
    """Exercise every reader path; only SegmentError may escape."""
    try:
        with SegmentReader.from_bytes(data, verify_checksum=verify_checksum) as reader:
            for i in range(len(reader.blocks)):
                try:
                    reader.read_block(i)
                except SegmentError:
                    pass
            reader.blocks_for_did("did:plc:53iucmf5ldftgqyf2ac7hmhd")
            reader.blocks_for_collections(["app.bsky.feed.like", "$account"])
        verify(data)
    except SegmentError:
        pass


def resealed(data: bytes) -> bytes:
    """`data` with its header checksum recomputed, so footer damage is parsed, not just rejected."""
    try:
        h = decode_header(data)
    except SegmentError:
        return data
    if not HEADER_SIZE <= h.footer_offset <= len(data):
        return data
    unsigned = data[:4] + bytes(8) + data[12:HEADER_SIZE]
    checksum = header_checksum(unsigned, data[h.footer_offset:]) or 1
    return data[:4] + checksum.to_bytes(8, "little") + data[12:]


@fuzz_settings(300)
@given(data=st.data())
def test_mutated_segments_raise_only_segment_errors(seeds, data):
    seed = data.draw(st.sampled_from(seeds))
    damaged = data.draw(mutated(seed, max_edits=6))
    read_everything(damaged)
    read_everything(damaged, verify_checksum=False)
    read_everything(resealed(damaged))


@fuzz_settings(300)
@given(data=st.data())
def test_footer_edits_resealed_reach_the_footer_parsers(seeds, data):
    seed = data.draw(st.sampled_from(seeds))
    footer = decode_header(seed).footer_offset
    offset = data.draw(st.integers(footer, len(seed) - 1))
    value = data.draw(st.integers(0, 255))
    damaged = bytearray(seed)
    damaged[offset] = value
    read_everything(resealed(bytes(damaged)))


@fuzz_settings(200)
@given(data=st.data())
def test_mutated_block_bodies_decode_or_raise_segment_errors(seeds, data):
    seed = data.draw(st.sampled_from(seeds))
    with SegmentReader.from_bytes(seed) as reader:
        body = reader.read_block_body(data.draw(st.integers(0, len(reader.blocks) - 1)))
    try:
        decode_block(data.draw(mutated(body, max_edits=4)))
    except SegmentError:
        pass


@fuzz_settings(200)
@given(blob=st.binary(max_size=600))
def test_random_bytes_in_every_decoder_raise_only_segment_errors(blob):
    for decoder in (decode_block, decode_collection_index, Bloom.unmarshal, decompress_frame):
        try:
            decoder(blob)
        except SegmentError:
            pass
    read_everything(b"jss0" + blob)
    read_everything(b"jss0" + b"\x01" * 8 + b"\x01\x00" + blob)


def test_the_seeds_are_not_vacuous(seeds):
    """Every seed reads whole (so mutations start from deep paths), and a re-seal is a no-op on it."""
    for seed in seeds:
        assert verify(seed).events > 0
        assert resealed(seed) == seed
