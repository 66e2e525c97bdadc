"""A segment never ends at an exact multiple of 8 MiB, where the atproto SDK's reader fails (issue 24).

atproto_jetstream's fetch_segment reads getSegment in `bytes=a-(a+8MiB-1)` slices and stops at the
first slice shorter than 8 MiB; on a segment of exactly k * 8 MiB every slice is full, so its next
request starts at EOF, gets HTTP's 416 (v2 answers the same) and raises. Our writer pads such a
segment's DID bloom by one 64-byte filter block (writer.py, CLIENT_SLICE_BYTES). Here: events whose
segment would be exactly 8 MiB, sealed without the padding (the constant switched off) the real SDK
fails on it through a real `jetstream serve`; sealed as the writer does, it is 8 MiB + 64 bytes,
verifies, and the SDK reads every event.
"""
from __future__ import annotations

import os
import random

import libipld
import pytest
from atproto_jetstream import JetstreamClient

from jetstream.archive import KIND_CREATE, SegmentEvent, SegmentReader, bloom, verify, writer
from tests.archive.archive_helpers import write_segment
from tests.archive.serve_helpers import BASE_US, Serve

pytestmark = pytest.mark.timeout(240)

SLICE = writer.CLIENT_SLICE_BYTES
DID = "did:plc:" + "q" * 24


def noise_events(extra: int) -> list[SegmentEvent]:
    """64 creates of ~128 KiB incompressible records (the segment's size follows `extra` byte for byte)."""
    rng = random.Random(24)
    events = []
    for i in range(64):
        size = 128 * 1024 + (extra if i == 63 else 0)
        record = libipld.encode_dag_cbor({"$type": "com.example.noise", "noise": rng.randbytes(size)})
        events.append(SegmentEvent(i + 1, BASE_US + i * 1000, 0, KIND_CREATE, DID, "com.example.noise",
                                   f"3k{i:011d}", "3kaaaaaaaaaaa", record))
    return events


def padded(path) -> bool:
    """The writer's padding: a segment DID bloom one block larger than its DID count asks for."""
    with SegmentReader.open(str(path)) as reader:
        wanted, _ = bloom.optimal_params(reader.header.unique_did_count, bloom.DID_FP_RATE)
        return reader.segment_bloom.num_blocks == wanted + 1


def seal_at_exact_slice_multiple(directory) -> tuple[str, list[SegmentEvent]]:
    """Events whose segment, unpadded, is exactly 8 MiB; the segment as the writer seals them."""
    extra = 0
    for _ in range(20):
        events = noise_events(extra)
        path = write_segment(directory, events, block_events=16)
        size = os.path.getsize(path) - (64 if padded(path) else 0)
        if size == SLICE:
            return path, events
        extra += SLICE - size
        os.unlink(path)
    raise AssertionError("did not converge on an 8 MiB segment")


def sdk_seqs(server: Serve) -> list[int]:
    client = JetstreamClient(base_uri=f"ws://127.0.0.1:{server.port}/xrpc", api_key="any")
    return [message.seq for message in client.snapshot()]


def test_sdk_reads_a_segment_that_would_end_at_a_slice_boundary(tmp_path, monkeypatch):
    fixed_dir = tmp_path / "fixed" / "archive"
    os.makedirs(fixed_dir)
    path, events = seal_at_exact_slice_multiple(fixed_dir)
    assert padded(path) and os.path.getsize(path) == SLICE + 64
    assert verify(path).events == len(events)

    trap_dir = tmp_path / "trap" / "archive"
    os.makedirs(trap_dir)
    monkeypatch.setattr(writer, "CLIENT_SLICE_BYTES", 1 << 62)  # the writer as v2's: no padding
    trap = write_segment(trap_dir, events, block_events=16)
    monkeypatch.undo()
    assert os.path.getsize(trap) == SLICE and not padded(trap)

    trap_server = Serve(tmp_path / "trap")
    fixed_server = Serve(tmp_path / "fixed")
    try:
        trap_server.wait_ready()
        fixed_server.wait_ready()
        with pytest.raises(Exception) as failure:  # noqa: PT011 - the SDK raises its HTTP client's error
            sdk_seqs(trap_server)
        assert "416" in repr(failure.value) or "Range" in repr(failure.value), repr(failure.value)
        assert trap_server.get("/xrpc/network.bsky.jetstream.getSegment?name=seg_0000000000.jss",
                               {"Range": f"bytes={SLICE}-{2 * SLICE - 1}"})[0] == 416
        assert sdk_seqs(fixed_server) == [e.seq for e in events]
    finally:
        trap_server.stop()
        fixed_server.stop()
