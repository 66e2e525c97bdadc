"""verify() and the reader against damaged segments: flipped bits anywhere, truncation, unsealed files.

The header and footer are covered by the header's xxh3; each block by its zstd content checksum
and its block index entry. A bit flip must never change a decoded event without verify()
noticing.
"""
from __future__ import annotations

import os

import pytest

from jetstream.archive import (
    ActiveSegment,
    ChecksumMismatch,
    CorruptSegment,
    SegmentError,
    SegmentOptions,
    SegmentReader,
    SegmentWriter,
    verify,
)
from tests.archive.archive_helpers import corpus_car_events, write_segment


@pytest.fixture(scope="module")
def sealed(tmp_path_factory) -> bytes:
    path = write_segment(tmp_path_factory.mktemp("seg"), corpus_car_events(), block_events=8)
    return open(path, "rb").read()


def events_of(data: bytes):
    with SegmentReader.from_bytes(data) as reader:
        return list(reader.iter_events())


def flipped(data: bytes, offset: int, bit: int = 0x01) -> bytes:
    out = bytearray(data)
    out[offset] ^= bit
    return bytes(out)


def test_a_sealed_segment_verifies(sealed):
    report = verify(sealed)
    assert (report.blocks, report.events) == (3, 23)


@pytest.mark.parametrize("offset", [0, 4, 11, 12, 20, 30, 60, 97, 98, 200, 255])
def test_a_flipped_header_byte_is_caught(sealed, offset):
    with pytest.raises(SegmentError):
        verify(flipped(sealed, offset))


def test_a_flipped_checksum_byte_is_a_checksum_mismatch(sealed):
    with pytest.raises(ChecksumMismatch):
        SegmentReader.from_bytes(flipped(sealed, 5))


def test_every_flipped_footer_byte_is_caught(sealed):
    with SegmentReader.from_bytes(sealed) as reader:
        footer = reader.header.footer_offset
    for offset in range(footer, len(sealed)):
        with pytest.raises(SegmentError):
            verify(flipped(sealed, offset, 0x40))


def test_flipped_block_bytes_are_caught_or_change_nothing(sealed):
    """Every bit flip in the block region is caught, or decodes to exactly the same events.

    A few bits of a zstd frame are ignored by the decoder (the frame header's unused bit, slack
    in entropy table headers); flipping one leaves content and checksum intact, so no event
    changes. The format has no checksum over raw block bytes that could see those.
    """
    original = events_of(sealed)
    with SegmentReader.from_bytes(sealed) as reader:
        start, end = 256, reader.header.footer_offset
    caught = harmless = 0
    for offset in range(start, end):
        for bit in (0x01, 0x10, 0x80):
            damaged = flipped(sealed, offset, bit)
            try:
                verify(damaged)
            except SegmentError:
                caught += 1
                continue
            assert events_of(damaged) == original, f"flip at {offset} bit {bit:#x} changed events unnoticed"
            harmless += 1
    assert caught > 0.98 * (caught + harmless)


def test_a_flipped_length_prefix_is_caught(sealed):
    for offset in range(256, 264):
        with pytest.raises(SegmentError):
            verify(flipped(sealed, offset))


def test_every_truncation_is_caught(sealed):
    for size in range(len(sealed)):
        with pytest.raises(SegmentError):
            verify(sealed[:size])


def test_bytes_appended_after_the_footer_are_caught(sealed):
    with pytest.raises(SegmentError):
        verify(sealed + b"\x00")


def test_an_unsealed_file_is_reported_as_active(tmp_path):
    writer = SegmentWriter(str(tmp_path / "a.jss.tmp"), 1, SegmentOptions(block_events=4))
    for event in corpus_car_events()[:10]:
        writer.add(event)
    with pytest.raises(ActiveSegment):
        SegmentReader.open(str(tmp_path / "a.jss.tmp"))
    writer.abort()
    assert os.listdir(tmp_path) == []


def test_a_missing_file_and_a_directory_are_segment_errors(tmp_path):
    with pytest.raises(SegmentError):
        verify(tmp_path / "absent.jss")
    with pytest.raises(SegmentError):
        verify(tmp_path)


def test_a_file_of_zeros_is_corrupt(tmp_path):
    with pytest.raises(CorruptSegment):
        verify(bytes(4096))
