"""encode_frames (both twins): a batch of payloads as consecutive unmasked server frames.

Frames are parsed back with a small RFC 6455 §5.2 reader written here, and the
Cython twin must produce the very bytes of the pure-Python one.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jetstream._py import frames as py_frames

try:
    from jetstream._core import frames as cy_frames
except ImportError:  # not built
    cy_frames = None

TWINS = [py_frames] + ([cy_frames] if cy_frames is not None else [])


def parse_frames(data: bytes) -> list[tuple[int, bool, bytes]]:
    """(opcode, fin, payload) of each frame; fails on masks or trailing garbage."""
    frames, pos = [], 0
    while pos < len(data):
        first, second = data[pos], data[pos + 1]
        assert second & 0x80 == 0, "server frames must not be masked"
        assert first & 0x70 == 0, "no RSV bits"
        size, pos = second & 0x7F, pos + 2
        if size == 126:
            size, pos = int.from_bytes(data[pos:pos + 2], "big"), pos + 2
        elif size == 127:
            size, pos = int.from_bytes(data[pos:pos + 8], "big"), pos + 8
        frames.append((first & 0x0F, bool(first & 0x80), data[pos:pos + size]))
        assert len(frames[-1][2]) == size, "truncated frame"
        pos += size
    return frames


@pytest.mark.parametrize("twin", TWINS, ids=lambda module: module.__name__)
@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_each_length_encoding_boundary_round_trips(twin, size):
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    for binary, opcode in ((False, 0x1), (True, 0x2)):
        assert parse_frames(twin.encode_frames([payload], binary)) == [(opcode, True, payload)]


@pytest.mark.parametrize("twin", TWINS, ids=lambda module: module.__name__)
def test_a_batch_is_one_message_per_payload_in_order(twin, expected_v1_lines):
    frames = parse_frames(twin.encode_frames(expected_v1_lines, False))
    assert [payload for _, _, payload in frames] == expected_v1_lines
    assert {(opcode, fin) for opcode, fin, _ in frames} == {(0x1, True)}
    assert twin.encode_frames([], True) == b""


@pytest.mark.skipif(cy_frames is None, reason="Cython extensions not built")
@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300) | st.integers(120, 70000).map(lambda n: b"q" * n), max_size=12), st.booleans())
def test_cython_twin_writes_the_same_bytes_as_the_python_twin(payloads, binary):
    assert cy_frames.encode_frames(payloads, binary) == py_frames.encode_frames(payloads, binary)
    for size in (0, 125, 126, 65535, 65536):
        assert cy_frames.frame_header(size, binary) == py_frames.frame_header(size, binary)


@pytest.mark.skipif(cy_frames is None, reason="Cython extensions not built")
def test_cython_twin_refuses_payloads_that_are_not_bytes():
    with pytest.raises(TypeError):
        cy_frames.encode_frames([b"ok", "text"], False)
