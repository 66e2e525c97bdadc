"""Each stored event's v2 record (column family events_v2): written with the v1 rows, read back,
trimmed, repaired, carried by cluster messages and worker ROWS, and rendered into the v2 frame.

Real parts: the corpus frames through our decode and sequencer, a real RocksDB log on disk.
"""
from __future__ import annotations

import hashlib
import json

import libipld
import pytest
from rocksdict import Options, Rdict

from jetstream import wire_v2
from jetstream.cluster.wire import decode_batch, encode_batch
from jetstream.compression import EventCompressor
from jetstream.dictionary import active_v2_dictionary
from jetstream.events import KIND_ACCOUNT, KIND_COMMIT, KIND_IDENTITY, Event
from jetstream.implementation import cid_to_string
from jetstream.ingest.decode import decode_frame
from jetstream.ingest.sequencer import Sequencer
from jetstream.log.store import CF_EVENTS_V2, EventLog
from jetstream.workers.channel import decode_rows, encode_rows
from tests.ingest.test_ingest_helpers import commit_frame

V2_DICTIONARY = active_v2_dictionary()


def _clock(start: int = 1_700_000_000_000_000):
    now = [start]

    def tick() -> int:
        now[0] += 7
        return now[0]
    return tick


def corpus_events(frames, compressor=None) -> list[Event]:
    pending = [event for raw in frames for event in _decoded(raw)]
    return Sequencer(0, _clock()).sequence(pending, compressor or EventCompressor(None, V2_DICTIONARY))


def _decoded(raw: bytes):
    try:
        return decode_frame(raw).events
    except Exception:  # noqa: BLE001 - frames our decoder refuses yield nothing, as in the pipeline
        return []


@pytest.fixture(scope="module")
def events(corpus_frames):
    return corpus_events(corpus_frames)


def test_every_corpus_event_has_a_v2_frame_carrying_the_v1_events_fields(events):
    kinds = set()
    for event in events:
        assert event.v2, f"no v2 frame for {event.json[:120]!r}"
        frame = json.loads(event.v2)
        v1 = json.loads(event.json)
        payload = frame["payload"]
        assert frame["$type"] == "message"
        assert payload["seq"] == event.seq and payload["did"] == v1["did"]
        assert payload["$type"] == "network.bsky.jetstream.subscribeEvents#" + v1["kind"]
        assert payload["time"] == wire_v2.wire_time(event.time_us).decode()
        kinds.add(event.kind)
        if event.kind == KIND_COMMIT:
            commit = v1["commit"]
            for field in ("operation", "collection", "rkey", "rev"):
                assert payload[field] == commit[field]
            if commit["operation"] != "delete":
                assert payload["cid"] == commit["cid"]
                # the same record, whatever each wire's JSON form ($link/$bytes differ from v1's)
                assert payload["record"].keys() == commit["record"].keys()
            else:
                assert "cid" not in payload and "record" not in payload
        else:
            assert payload[v1["kind"]] == v1[v1["kind"]]
        assert event.v2_zstd == b""  # not made at ingest: the ring makes it on the first compressed v2 read
    assert {KIND_COMMIT, KIND_IDENTITY, KIND_ACCOUNT} <= kinds


def test_the_stored_record_keeps_the_archive_payload_and_the_record_cid(events):
    for event in events:
        record = wire_v2.unpack_record(event.v2_record)
        v1 = json.loads(event.json)
        if event.kind == KIND_COMMIT and v1["commit"]["operation"] != "delete":
            assert record.cid == b"\x01\x71\x12\x20" + hashlib.sha256(record.payload).digest()
            assert cid_to_string(record.cid) == v1["commit"]["cid"]
            assert isinstance(libipld.decode_dag_cbor(record.payload), dict)
        elif event.kind == KIND_COMMIT:
            assert record.cid == b"" and record.payload == b""
        else:
            body = libipld.decode_dag_cbor(record.payload)
            assert record.cid == b"" and body["did"] == v1["did"] and body["seq"] == v1[v1["kind"]]["seq"]
        assert wire_v2.frame_of_record(event.v2_record, event.seq, event.time_us) == event.v2


def refused_record_frame() -> tuple[bytes, bytes, bytes]:
    """(frame, record block, its CID): `n` encoded with a non-minimal head, which v1's emitter
    accepts and v2's (atmos) refuses."""
    block = bytes.fromhex("a2616e1805") + b"\x65$type\x61x"
    cid = b"\x01\x71\x12\x20" + hashlib.sha256(block).digest()
    raw = commit_frame("did:plc:abc", "3l2", "2024-01-01T00:00:00Z",
                       [{"action": "create", "path": "app.x/1", "cid": libipld.decode_dag_cbor(
                           b"\xd8\x2a\x58\x25\x00" + cid)}], [block], seq=10 ** 12)
    return raw, block, cid


def test_a_record_v2_refuses_has_no_v2_frame_and_v1_is_unaffected():
    raw, block, cid = refused_record_frame()
    (pending,) = decode_frame(raw).events
    (event,) = Sequencer(0, _clock()).sequence([pending], EventCompressor(None, V2_DICTIONARY))
    assert json.loads(event.json)["commit"]["record"] == {"$type": "x", "n": 5}
    assert event.v2 == b"" and event.v2_zstd == b""
    record = wire_v2.unpack_record(event.v2_record)
    assert record.parts is None and record.payload == block and record.cid == cid


def test_the_log_stores_the_record_with_the_v1_rows_and_trims_it_with_them(tmp_path, events):
    with EventLog(str(tmp_path / "log")) as event_log:
        event_log.append(events, 42)
        rows = event_log.read_after(0, len(events) + 1, False, v2=True)
        assert [row.payload for row in rows] == [event.v2_record for event in events]
        assert [(row.time_us, row.seq, row.kind, row.did, row.collection) for row in rows] == \
            [(e.time_us, e.seq, e.kind, e.did, e.collection) for e in events]
        assert event_log.v2_oldest() == (events[0].time_us, 1)
        cutoff = events[10].time_us
        event_log.trim_older_than(cutoff)
        assert event_log.v2_oldest() == (cutoff, 11)
        assert event_log.read_after(0, 5, False, v2=True)[0].time_us == cutoff


def test_a_log_from_before_v2_records_gets_them_from_its_next_event_on(tmp_path, events):
    path = str(tmp_path / "log")
    with EventLog(path) as event_log:
        event_log.append(events[:5], 1)
    # A log of the previous version: no events_v2 column family.
    db = Rdict(path, Options(raw_mode=True), column_families={
        name: Options(raw_mode=True) for name in Rdict.list_cf(path, Options(raw_mode=True)) if name != "default"})
    db.drop_column_family(CF_EVENTS_V2)
    db.close()
    del db
    with EventLog(path) as event_log:
        assert event_log.v2_oldest() is None  # the five old events have no v2 record
        assert event_log.oldest_seq() == 1
        event_log.append(events[5:8], 2)
        assert event_log.v2_oldest() == (events[5].time_us, 6)
        assert [row.seq for row in event_log.read_after(0, 10, False, v2=True)] == [6, 7, 8]


def test_cluster_messages_carry_the_record_and_every_node_renders_the_same_frame(events):
    decoded = decode_batch(encode_batch(events[:50], 7))
    assert [event.v2_record for event in decoded.events] == [event.v2_record for event in events[:50]]
    from jetstream.cluster.applier import StreamApplier

    applier = StreamApplier.__new__(StreamApplier)
    applier._compress_v2 = EventCompressor(None, V2_DICTIONARY).compress_v2
    rendered = applier._with_v2_frames(decoded.events)
    assert [(e.v2, e.v2_zstd) for e in rendered] == [(e.v2, e.v2_zstd) for e in events[:50]]


def test_a_message_of_the_previous_layout_decodes_with_events_that_have_no_v2_record(events):
    import struct

    from jetstream.cluster import wire

    parts = [struct.pack(">4sqI", wire.MAGIC_NO_V2, 3, 1)]
    event = events[0]
    parts.append(struct.pack(">QQBHHII", event.time_us, event.seq, event.kind, len(event.did),
                             len(event.collection), len(event.json), len(event.zstd)))
    parts += [event.did.encode(), event.collection.encode(), event.json, event.zstd]
    (decoded,) = decode_batch(b"".join(parts)).events
    assert decoded[:7] == event[:7] and decoded.v2_record == b""
    assert wire_v2.frame_of_record(decoded.v2_record, decoded.seq, decoded.time_us) == b""


def test_worker_rows_carry_the_v2_frame_and_its_zstd_form(events):
    body = encode_rows(5, events[:20])[5:]  # after the length and kind
    newest_before, decoded = decode_rows(body)
    assert newest_before == 5
    assert [(e.v2, e.v2_zstd) for e in decoded] == [(e.v2, e.v2_zstd) for e in events[:20]]
    assert [e[:7] for e in decoded] == [e[:7] for e in events[:20]]


def test_the_pipeline_counts_events_stored_without_a_v2_frame(tmp_path, corpus_frames):
    from prometheus_client import REGISTRY

    from jetstream.implementation import LiveRing
    from jetstream.ingest.pipeline import IngestPipeline

    def frameless() -> float:
        return REGISTRY.get_sample_value("jetstream_v2_frameless_events_total") or 0.0

    with EventLog(str(tmp_path / "log")) as event_log:
        pipeline = IngestPipeline(event_log, LiveRing(1000), Sequencer(0), EventCompressor(None, V2_DICTIONARY),
                                  lambda: None, socket_url="test")
        before = frameless()
        assert pipeline.process(corpus_frames[:20]) > 0
        assert frameless() == before  # every corpus record renders on v2
        assert pipeline.process([refused_record_frame()[0]]) == 1
        assert frameless() == before + 1
        (row,) = event_log.read_after(event_log.hwm() - 1, 1, False, v2=True)
        assert wire_v2.unpack_record(row.payload).parts is None
