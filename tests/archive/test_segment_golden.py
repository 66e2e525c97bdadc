"""v2's own segments against ours: the corpus golden and v2's segment/testdata fixtures.

Our reader must decode exactly what v2 wrote; our writer, given the same events and block cuts,
must produce the same header fields, decompressed block bodies and footer. Only compressed bytes
(and the offsets and checksum that follow from their lengths) may differ between zstd builds.
"""
from __future__ import annotations

import pytest

from jetstream.archive import (
    KIND_CREATE,
    KIND_DELETE,
    KIND_IDENTITY,
    InvalidFooter,
    SegmentEvent,
    SegmentReader,
    verify,
)
from jetstream.archive.bloom import Bloom, optimal_params
from jetstream.archive.format import decode_block, decompress_frame, encode_block
from tests.archive.archive_helpers import (
    CORPUS_BLOCK_EVENTS,
    GOLDEN_CORPUS_SEGMENT,
    V2_FIXTURES,
    corpus_car_events,
    read_all,
    write_segment,
)

OFFSET_FIELDS = {"footer_offset", "did_bloom_offset", "block_did_bloom_offset", "collection_index_offset",
                 "block_index_offset", "checksum"}


def test_the_golden_corpus_segment_opens_with_its_checksum_verified():
    with SegmentReader.open(str(GOLDEN_CORPUS_SEGMENT)) as reader:
        h = reader.header
        assert (h.version, h.block_count, h.event_count, h.unique_did_count) == (1, 3, 23, 1)
        assert (h.min_seq, h.max_seq) == (1, 23)
        assert (h.min_witnessed_at, h.max_witnessed_at) == (1_750_000_000_000_001, 1_750_000_000_000_023)
        assert [b.event_count for b in reader.blocks] == [8, 8, 7]
    report = verify(GOLDEN_CORPUS_SEGMENT)
    assert (report.blocks, report.events) == (3, 23)


def test_the_golden_corpus_segment_holds_exactly_the_repo_car_records():
    expected = corpus_car_events()
    assert len(expected) == 23
    assert read_all(GOLDEN_CORPUS_SEGMENT) == expected


def test_the_golden_corpus_footer_indexes_its_collections_and_did():
    with SegmentReader.open(str(GOLDEN_CORPUS_SEGMENT)) as reader:
        counts = reader.collection_counts()
        assert sum(counts.values()) == 23
        assert counts["app.bsky.feed.like"] == 10
        did = corpus_car_events()[0].did
        assert reader.blocks_for_did(did) == [0, 1, 2]
        assert reader.blocks_for_did("did:plc:notinthesegmentatall") == []
        assert reader.blocks_for_collections(["app.bsky.graph.follow"]) == [2]


def assert_same_segment_but_compression(ours: str, theirs: str) -> None:
    """Header fields, block bodies, block index (less offsets/sizes) and footer regions equal."""
    mine, golden = SegmentReader.open(ours), SegmentReader.open(theirs)
    with mine, golden:
        for field in golden.header._fields:
            if field not in OFFSET_FIELDS:
                assert getattr(mine.header, field) == getattr(golden.header, field), field
        assert len(mine.blocks) == len(golden.blocks)
        for i, (a, b) in enumerate(zip(mine.blocks, golden.blocks)):
            assert a[2:] == b[2:], f"block index entry {i} (less offset and compressed size)"
            assert mine.read_block_body(i) == golden.read_block_body(i), f"block {i} body"
        my_bytes, golden_bytes = open(ours, "rb").read(), open(theirs, "rb").read()
        m, g = mine.header, golden.header
        # Segment bloom and per-block bloom region: byte for byte.
        assert my_bytes[m.did_bloom_offset:m.collection_index_offset] == \
            golden_bytes[g.did_bloom_offset:g.collection_index_offset]
        # Collection index: its 16-byte header byte for byte, its zstd body by content.
        assert my_bytes[m.collection_index_offset:m.collection_index_offset + 16] == \
            golden_bytes[g.collection_index_offset:g.collection_index_offset + 16]
        assert decompress_frame(my_bytes[m.collection_index_offset + 16:]) == \
            decompress_frame(golden_bytes[g.collection_index_offset + 16:])
        assert mine.collections == golden.collections


def test_our_writer_reproduces_the_golden_corpus_segment(tmp_path):
    ours = write_segment(tmp_path, corpus_car_events(), block_events=CORPUS_BLOCK_EVENTS)
    assert_same_segment_but_compression(ours, str(GOLDEN_CORPUS_SEGMENT))
    verify(ours)


def v2_seal_golden_events() -> list[SegmentEvent]:
    """v2 segment/seal_test.go TestSealGolden's input (one block of two)."""
    return [
        SegmentEvent(1, 100, 0, KIND_CREATE, "did:plc:a", "app.bsky.feed.post", "k1", "v1", b"p1"),
        SegmentEvent(2, 200, 250, KIND_CREATE, "did:plc:b", "app.bsky.feed.like", "k2", "v2", b"p2"),
    ]


def test_v2_golden_seal_reads_and_our_writer_reproduces_it(tmp_path):
    golden = V2_FIXTURES / "golden_seal.bin"
    assert read_all(golden) == v2_seal_golden_events()
    verify(golden)
    ours = write_segment(tmp_path, v2_seal_golden_events(), block_events=2)
    assert_same_segment_but_compression(ours, str(golden))


def v2_golden_block_events() -> list[SegmentEvent]:
    """v2 segment/block_golden_test.go goldenEvents()."""
    return [
        SegmentEvent(1, 1_700_000_000_000_000, 0, KIND_CREATE, "did:plc:abcdefghijklmnopqrstuvwx",
                     "app.bsky.feed.post", "3l3qo2vuowo2b", "3l3qo2vutsw2b",
                     bytes([0xA1, 0x65, 0x68, 0x65, 0x6C, 0x6C, 0x6F, 0x05])),
        SegmentEvent(2, 1_700_000_001_000_000, 1_700_000_000_500_000, KIND_IDENTITY, "did:web:example.com",
                     "", "", "", b""),
        SegmentEvent(3, 1_700_000_002_000_000, 0, KIND_DELETE, "did:plc:zzzzzzzzzzzzzzzzzzzzzzzz",
                     "app.bsky.feed.like", "3l3qo2vuowo2c", "3l3qo2vutsw2c", b""),
    ]


def test_v2_golden_block_decodes_and_our_encoder_gives_the_same_body():
    frame = (V2_FIXTURES / "golden_block.bin").read_bytes()
    body = decompress_frame(frame)
    assert decode_block(body) == v2_golden_block_events()
    assert encode_block(v2_golden_block_events()) == body


def test_a_legacy_segment_with_fixed_4096_did_blooms_reads_and_verifies():
    legacy = V2_FIXTURES / "legacy_fixed4096_blooms.jss"
    report = verify(legacy)
    assert (report.blocks, report.events) == (2, 12)
    with SegmentReader.open(str(legacy)) as reader:
        bloom = reader.block_bloom(0)
        # v2 sized these for 4,096 DIDs each at 0.1%: gloom chose 131 blocks and k=9.
        assert (bloom.num_blocks, bloom.k) == optimal_params(4096, 0.001) == (131, 9)
        for event in reader.read_block(1):
            assert 1 in reader.blocks_for_did(event.did)


@pytest.mark.parametrize("items, expected", [(1, (1, 15)), (2, (1, 15)), (3, (1, 15)), (4096, (131, 9))])
def test_bloom_sizing_matches_what_v2_sealed(items, expected):
    assert optimal_params(items, 0.001) == expected


def test_a_bloom_round_trips_and_refuses_a_bad_crc():
    bloom = Bloom.for_items(100)
    for i in range(100):
        bloom.add(f"did:plc:{i:024d}")
    data = bloom.marshal()
    again = Bloom.unmarshal(data)
    assert again.marshal() == data
    assert all(again.might_contain(f"did:plc:{i:024d}") for i in range(100))
    assert sum(again.might_contain(f"did:web:absent{i}.example") for i in range(10_000)) < 100  # ~0.1% target
    with pytest.raises(InvalidFooter, match="CRC"):
        Bloom.unmarshal(data[:30] + bytes([data[30] ^ 1]) + data[31:])
