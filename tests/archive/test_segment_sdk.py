"""The atproto SDK's own segment reader (atproto_jetstream.archive, PyPI `atproto`) reads what we write.

The SDK is what real v2 clients run (`JetstreamClient.snapshot()` downloads segments and blocks and
decodes them with exactly these functions), so a segment it cannot read is a segment no client
can use.
"""
from __future__ import annotations

import libipld
from atproto_jetstream.archive import compute_record_cid, decode_block, read_sealed_header, to_messages
from atproto_jetstream.archive.downloader import iter_block_frames

from jetstream.archive import (
    KIND_ACCOUNT,
    KIND_CREATE,
    KIND_DELETE,
    KIND_IDENTITY,
    KIND_SYNC,
    KIND_UPDATE,
    SegmentEvent,
    SegmentReader,
)
from tests.archive.archive_helpers import DATA, corpus_car_events, write_segment


def sdk_rows(path) -> list:
    data = open(path, "rb").read()
    return [row for frame in iter_block_frames(data) for row in decode_block(frame)]


def as_ours(row) -> SegmentEvent:
    return SegmentEvent(row.seq, row.witnessed_at, row.indexed_at, row.kind, row.did, row.collection, row.rkey,
                        row.rev, row.payload or b"")


def mixed_events() -> list[SegmentEvent]:
    """Every kind the SDK knows, with the payloads v2 stores for each."""
    did = "did:plc:53iucmf5ldftgqyf2ac7hmhd"
    record = libipld.encode_dag_cbor({"$type": "app.bsky.feed.like", "createdAt": "2026-07-04T14:39:00.000Z"})
    body = {"did": did, "seq": 31527015322, "time": "2026-07-04T14:39:00.000Z"}
    return [
        SegmentEvent(10, 1_000, 0, KIND_CREATE, did, "app.bsky.feed.like", "3lqdkdjpy6t2e", "3migo7fijwi2k", record),
        SegmentEvent(11, 1_001, 0, KIND_UPDATE, did, "app.bsky.feed.like", "3lqdkdjpy6t2e", "3migo7fijwi2l", record),
        SegmentEvent(12, 1_002, 0, KIND_DELETE, did, "app.bsky.feed.like", "3lqdkdjpy6t2e", "3migo7fijwi2m", b""),
        SegmentEvent(13, 1_003, 0, KIND_IDENTITY, did, "", "", "",
                     libipld.encode_dag_cbor({**body, "handle": "alice.example.com"})),
        SegmentEvent(14, 1_004, 0, KIND_ACCOUNT, did, "", "", "",
                     libipld.encode_dag_cbor({**body, "active": False, "status": "deleted"})),
        SegmentEvent(15, 1_005, 2_000, KIND_SYNC, did, "", "", "",
                     libipld.encode_dag_cbor({**body, "blocks": b"\x00", "rev": "3migo7fijwi2n"})),
    ]


def test_the_sdk_reads_our_corpus_segment_row_for_row(tmp_path):
    events = corpus_car_events()
    path = write_segment(tmp_path, events, block_events=8)
    header = read_sealed_header(open(path, "rb").read())
    with SegmentReader.open(path) as reader:
        assert (header.version, header.block_count, header.event_count) == (1, 3, 23)
        assert (header.footer_offset, header.block_index_offset) == (reader.header.footer_offset,) * 2
    assert [as_ours(row) for row in sdk_rows(path)] == events


def test_the_sdk_renders_our_records_with_the_cids_goat_listed(tmp_path):
    path = write_segment(tmp_path, corpus_car_events(), block_events=8)
    expected = dict(line.split("\t") for line in (DATA / "car_expected_records.tsv").read_text().splitlines())
    rows = sdk_rows(path)
    assert {f"{row.collection}/{row.rkey}": compute_record_cid(row.payload) for row in rows} == expected
    messages = list(to_messages(rows))
    assert len(messages) == 23
    assert all(m.operation == "create" and m.cid == expected[f"{m.collection}/{m.rkey}"] for m in messages)


def test_the_sdk_reads_every_kind_and_one_block_at_a_time(tmp_path):
    events = mixed_events()
    path = write_segment(tmp_path, events, block_events=4, cuts=(0,))
    rows = sdk_rows(path)
    assert [as_ours(row) for row in rows] == events
    assert rows[2].payload is None and rows[2].operation == "delete"  # v2's "empty for deletes"
    assert [row.time_us for row in rows] == [1_000, 1_001, 1_002, 1_003, 1_004, 2_000]
    # getBlock serves read_block_frame's bytes; the SDK decodes one block from them.
    with SegmentReader.open(path) as reader:
        assert len(reader.blocks) == 3
        per_block = [decode_block(reader.read_block_frame(i)) for i in range(3)]
    assert [len(block) for block in per_block] == [1, 4, 1]
    messages = list(to_messages(rows))  # skips a row it cannot decode: all six must come out
    assert [type(m).__name__ for m in messages] == ["Commit", "Commit", "Commit", "Identity", "Account", "Sync"]
    assert [m.operation for m in messages[:3]] == ["create", "update", "delete"]
    assert messages[3].identity.handle == "alice.example.com" and messages[4].account.status == "deleted"
