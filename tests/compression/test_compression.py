"""EventCompressor: v1-compatible zstd frames (docs/protocol.md §7), checked from the frame bytes.

The legacy dictionary is read in place from the corpus (never copied).
"""
from __future__ import annotations

import os

import pytest
import zstandard

from jetstream.compression import EventCompressor, decompress

LEGACY_DICTIONARY_ID = 1612007021
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
MAX_WINDOW = 128 * 1024


@pytest.fixture(scope="module")
def legacy_dictionary(corpus_dir) -> bytes:
    return (corpus_dir / "legacy_subscribe.zdict").read_bytes()


def parse_frame_header(frame: bytes) -> dict:
    """Decode the zstd frame header by hand (RFC 8878 §3.1.1.1), independent of any library."""
    assert frame[:4] == ZSTD_MAGIC
    descriptor = frame[4]
    content_size_flag = descriptor >> 6
    single_segment = bool(descriptor & 0x20)
    has_checksum = bool(descriptor & 0x04)
    dict_id_size = (0, 1, 2, 4)[descriptor & 0x03]
    position = 5
    window_size = None
    if not single_segment:
        window_descriptor = frame[position]
        exponent, mantissa = window_descriptor >> 3, window_descriptor & 0x07
        window_base = 1 << (10 + exponent)
        window_size = window_base + (window_base // 8) * mantissa
        position += 1
    dict_id = int.from_bytes(frame[position:position + dict_id_size], "little")
    position += dict_id_size
    content_size_bytes = (1 if single_segment else 0, 2, 4, 8)[content_size_flag]
    content_size = int.from_bytes(frame[position:position + content_size_bytes], "little") if content_size_bytes else None
    if content_size_bytes == 2:
        content_size += 256
    if single_segment:
        window_size = content_size
    return {"dict_id": dict_id, "content_size": content_size, "has_checksum": has_checksum, "window_size": window_size}


def test_frame_without_dictionary_has_content_size_checksum_and_small_window(expected_v1_lines):
    compressor = EventCompressor()
    assert compressor.dictionary_id == 0 and compressor.dictionary_bytes == b""
    for line in expected_v1_lines:
        frame = compressor.compress(line)
        header = parse_frame_header(frame)
        assert header == {"dict_id": 0, "content_size": len(line), "has_checksum": True,
                          "window_size": header["window_size"]}
        assert header["window_size"] <= MAX_WINDOW
        assert zstandard.ZstdDecompressor().decompress(frame) == line


def test_frames_with_legacy_dictionary_name_it_and_decode_with_a_plain_dictionary_decoder(
        expected_v1_lines, legacy_dictionary):
    compressor = EventCompressor(legacy_dictionary)
    assert compressor.dictionary_id == LEGACY_DICTIONARY_ID
    assert compressor.dictionary_bytes == legacy_dictionary
    # What docs/protocol.md §7.3 tells a Python client to do: load the dictionary, one-shot decompress.
    client = zstandard.ZstdDecompressor(dict_data=zstandard.ZstdCompressionDict(legacy_dictionary),
                                        max_window_size=MAX_WINDOW)
    for line in expected_v1_lines:
        frame = compressor.compress(line)
        header = parse_frame_header(frame)
        assert header["dict_id"] == LEGACY_DICTIONARY_ID
        assert header["content_size"] == len(line) and header["has_checksum"]
        assert header["window_size"] <= MAX_WINDOW
        assert zstandard.get_frame_parameters(frame).dict_id == LEGACY_DICTIONARY_ID
        assert client.decompress(frame) == line
        assert decompress(frame, legacy_dictionary) == line


def test_dictionary_frames_are_smaller_than_plain_ones(expected_v1_lines, legacy_dictionary):
    plain, with_dictionary = EventCompressor(), EventCompressor(legacy_dictionary)
    plain_total = sum(len(plain.compress(line)) for line in expected_v1_lines)
    dictionary_total = sum(len(with_dictionary.compress(line)) for line in expected_v1_lines)
    assert dictionary_total < plain_total


def test_dictionary_frames_do_not_decode_without_the_dictionary(expected_v1_lines, legacy_dictionary):
    frame = EventCompressor(legacy_dictionary).compress(expected_v1_lines[0])
    with pytest.raises(zstandard.ZstdError):
        decompress(frame)


def test_each_frame_decodes_alone_in_any_order(expected_v1_lines, legacy_dictionary):
    compressor = EventCompressor(legacy_dictionary)
    frames = [compressor.compress(line) for line in expected_v1_lines]
    for index in reversed(range(len(frames))):
        assert decompress(frames[index], legacy_dictionary) == expected_v1_lines[index]


def test_event_larger_than_the_window_keeps_window_at_128_kib_and_decodes():
    big = b'{"text":"' + os.urandom(150_000).hex().encode() + b'"}'
    frame = EventCompressor().compress(big)
    header = parse_frame_header(frame)
    assert header["window_size"] == MAX_WINDOW
    assert header["content_size"] == len(big) and header["has_checksum"]
    assert decompress(frame) == big


def test_corrupted_frame_fails_its_checksum():
    line = b'{"did":"did:plc:x","time_us":1,"kind":"identity","identity":{}}' * 3
    frame = bytearray(EventCompressor().compress(line))
    frame[-1] ^= 0xFF  # last byte belongs to the XXH64 checksum
    with pytest.raises(zstandard.ZstdError):
        decompress(bytes(frame))


def test_from_path_loads_the_dictionary(corpus_dir, legacy_dictionary):
    compressor = EventCompressor.from_path(corpus_dir / "legacy_subscribe.zdict")
    assert compressor.dictionary_id == LEGACY_DICTIONARY_ID
    assert compressor.dictionary_bytes == legacy_dictionary


def test_dictionary_without_an_id_is_refused():
    with pytest.raises(ValueError, match="no dictionary id"):
        EventCompressor(b"just some raw content " * 100)
