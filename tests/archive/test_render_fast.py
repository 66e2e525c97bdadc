"""The archive's fast row path (jetstream/_core/segment.pyx) gives its reference twin's bytes (jetstream/_py/segment.py).

The reference renders a commit row as ingest's one-op commit (the path tests/archive/test_render.py
checks against the log byte for byte); the Cython twin writes the v1 JSON, the v2 frame and the
PendingEvent straight from the row's fields, and decodes a block's columns in one C pass. Here both
twins must give the same value (or raise the same exception, message included) for every row and
block of real archives (corpus and synthetic traffic, through the real ingest, log and sealer), and
for generated rows: every commit kind and some that are not, identifiers that need escapes, hold
'/', are not ASCII, empty or too long for an MST key, records v1 or v2 refuse, bytes that are no
record, seqs and times at and past the int64 edge; and generated or damaged block bodies.
"""
from __future__ import annotations

import libipld
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jetstream import implementation
from jetstream._py import segment as py_segment
from jetstream.archive import render
from jetstream.archive.format import (
    COMMIT_KINDS,
    KIND_CREATE,
    KIND_CREATE_RESYNC,
    KIND_DELETE,
    KIND_UPDATE,
    SegmentEvent,
    decode_block_py,
    encode_block_columns,
)
from jetstream.archive.reader import SegmentReader
from jetstream.log.store import EventLog
from tests.archive.test_render import _archived, _ingest_frames, _seal_everything
from tests.archive.test_sealer import ingest
from tests.fuzz.test_fuzz_strategies import mutated
from tests.ingest.record_json_twins import LINK, SHARED_INVALID_CASES, m
from tests.ingest.test_ingest_helpers import Raw

try:
    from jetstream._core import segment as cy_segment
except ImportError:  # pragma: no cover - only when the extensions are not built
    cy_segment = None

needs_cython = pytest.mark.skipif(cy_segment is None, reason="Cython extensions not built (make build)")
ROW_RENDERERS = ("commit_v1_json", "commit_v2_frame", "commit_pending")
MAX_INT64 = (1 << 63) - 1


def outcome(function, *args):
    """What a call gives: ("ok", value) or ("raises", exception type, message)."""
    try:
        return "ok", function(*args)
    except Exception as exc:  # noqa: BLE001 - type and message are what both twins must agree on
        return "raises", type(exc), str(exc)


def assert_twins_agree(event) -> tuple:
    """Both twins' outcomes of every row renderer for `event` are equal; the reference's outcomes."""
    results = tuple(outcome(getattr(py_segment, name), event) for name in ROW_RENDERERS)
    for name, expected in zip(ROW_RENDERERS, results):
        assert outcome(getattr(cy_segment, name), event) == expected, (name, event)
    return results


def segment_bodies(directory) -> list[bytes]:
    """Every block body of every segment the sealer wrote into `directory`."""
    bodies = []
    for path in sorted(directory.glob("*.jss")):
        with SegmentReader.open(str(path)) as reader:
            bodies += [reader.read_block_body(index) for index in range(len(reader.blocks))]
    return bodies


def test_the_python_twin_decodes_with_the_format_reference_and_the_chosen_core_is_used():
    assert py_segment.decode_block is decode_block_py
    chosen = cy_segment if implementation.USING_CYTHON else py_segment
    for name in ("decode_block",) + ROW_RENDERERS:
        assert getattr(implementation, name) is getattr(chosen, name)


@needs_cython
@pytest.mark.parametrize("source", ["corpus", "synthetic"])
def test_every_archived_row_and_block_is_the_same_from_both_twins(tmp_path, corpus_frames, source):
    with EventLog(str(tmp_path / "log")) as event_log:
        if source == "corpus":
            _ingest_frames(event_log, corpus_frames)
        else:
            ingest(event_log, frames=600, seed=11)
        _seal_everything(event_log, tmp_path / "archive")
    bodies = segment_bodies(tmp_path / "archive")
    for body in bodies:
        assert cy_segment.decode_block(body) == decode_block_py(body)
    rows = _archived(tmp_path / "archive")
    commits = [row for row in rows if row.kind in COMMIT_KINDS]
    assert len(commits) > 100 and {KIND_CREATE, KIND_DELETE} <= {row.kind for row in commits}
    for row in commits:
        v1, v2, pending = assert_twins_agree(row)
        assert v1[1] is not None and pending[1] is not None, "every archived commit was an event"
        if row.kind != KIND_DELETE:
            assert v2[1], "every archived create/update has a v2 frame here"


@needs_cython
def test_rows_off_the_fast_path_reach_the_reference_and_give_its_bytes():
    base = SegmentEvent(9, 1_750_000_000_000_001, 0, KIND_CREATE, "did:plc:abc", "app.bsky.feed.post", "3kabc",
                        "3krev", m(text="hi"))
    variants = [
        base._replace(did='did:plc:"quoted"'), base._replace(did="did:plc:é"), base._replace(rev="a<b"),
        base._replace(did="did:plc:\udc80"),  # a lone surrogate: the reference's escaping decides
        base._replace(kind=KIND_DELETE, collection="app/bsky"), base._replace(kind=KIND_DELETE, rkey="a&b"),
        base._replace(kind=KIND_DELETE, collection="", rkey=""), base._replace(kind=KIND_DELETE, payload=None),
        base._replace(collection="app.bsky.feed.post/x"), base._replace(rkey=""), base._replace(rkey="é"),
        base._replace(rkey="k" * (256 - len("app.bsky.feed.post/"))),  # exactly the MST key limit
        base._replace(rkey="k" * (257 - len("app.bsky.feed.post/"))),  # one past it
        base._replace(seq=MAX_INT64 + 1), base._replace(witnessed_at=-1), base._replace(witnessed_at=MAX_INT64),
        base._replace(payload=memoryview(m(text="hi"))), base._replace(payload=bytearray(m(text="hi"))),
        base._replace(kind=KIND_UPDATE, rev=""), base._replace(kind=KIND_CREATE_RESYNC),
        base._replace(kind=4), base._replace(kind=99), base._replace(kind=True),
        tuple(base), tuple(base)[:8], list(base),
    ]
    for event in variants:
        assert_twins_agree(event)
    assert outcome(py_segment.commit_v1_json, base._replace(did="did:plc:é"))[1].startswith(b'{"did":"did:plc:\xc3\xa9"')


@needs_cython
def test_records_of_every_length_across_the_hash_block_edges_get_the_references_cid():
    # The fast path hashes in C where the CPU can (SHA extensions): lengths 0..300 cross every
    # padding case (a tail under 56 bytes, 56..63, exact 64-byte blocks).
    base = SegmentEvent(9, 1_750_000_000_000_001, 0, KIND_CREATE, "did:plc:abc", "app.bsky.feed.post", "3kabc",
                        "3krev", b"")
    lengths = set()
    for size in range(0, 300):
        record = m(t="x" * size)
        lengths.add(len(record) % 64)
        v1, v2, pending = assert_twins_agree(base._replace(payload=record))
        assert v1[1] and v2[1] and pending[1].v2_record.endswith(record)
    assert lengths == set(range(64))


# -- generated rows ---------------------------------------------------------------------------------

KEY_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_:.~-"
IDENTIFIERS = st.one_of(
    st.sampled_from(["did:plc:abc", "did:web:example.com", "app.bsky.feed.post", "3kabc", "3krev", ""]),
    st.text(alphabet=KEY_ALPHABET, min_size=1, max_size=12),
    st.text(alphabet=KEY_ALPHABET + "/", max_size=12),
    st.text(alphabet=KEY_ALPHABET + '"\\<>&\n\x00\x7f é\u2028', max_size=8),
    st.text(max_size=6),
    st.integers(230, 260).map(lambda n: "k" * n),
)
RECORDS = st.one_of(
    st.builds(lambda text: m(**{"$type": "app.bsky.feed.post", "text": text, "createdAt": "2024-01-01T00:00:00Z"}),
              st.text(max_size=20)),
    st.sampled_from([
        m(**{"$type": "app.bsky.feed.like", "subject": {"cid": "bafy", "uri": "at://x"}}),
        m(**{"$type": "blob", "ref": LINK, "mimeType": "image/png", "size": 5}),  # a blob: both take it
        m(**{"$type": "blob", "ref": "not a link", "mimeType": "image/png", "size": 5}),  # v1 refuses
        m(**{"$type": 7}),  # v1 refuses a $type that is not a string
        m(f=Raw(b"\xfb\x3f\xf8\x00\x00\x00\x00\x00\x00")),  # 1.5: v1 refuses, v2 takes it
        m(b=Raw(b"\x18\x05")),  # a non-minimal head: v1 takes it, v2 refuses
        m(a=1) + b"\x00",  # trailing bytes: v1 refuses, v2 ignores them
        b"", b"\xff", b"\xa0",
    ] + [block for block, _ in SHARED_INVALID_CASES]),
    st.binary(max_size=24),
)
KINDS = st.one_of(st.sampled_from(sorted(COMMIT_KINDS)), st.integers(0, 9))
SEQS = st.one_of(st.integers(0, MAX_INT64), st.sampled_from([0, MAX_INT64, MAX_INT64 + 1, (1 << 64) - 1]))
TIMES = st.one_of(st.integers(0, 4_102_444_800_000_000), st.sampled_from([-5, 0, MAX_INT64, MAX_INT64 + 1]))
ROWS = st.builds(SegmentEvent, SEQS, TIMES, st.just(0), KINDS, IDENTIFIERS, IDENTIFIERS, IDENTIFIERS, IDENTIFIERS,
                 RECORDS)


@needs_cython
@settings(max_examples=600, deadline=None)
@given(ROWS)
def test_generated_rows_render_the_same_from_both_twins(event):
    assert_twins_agree(event)


@settings(max_examples=150, deadline=None)
@given(st.lists(ROWS.filter(lambda event: event.kind in COMMIT_KINDS or 4 <= event.kind <= 6), max_size=6))
def test_rendering_a_block_in_one_call_is_rendering_each_row(events):
    events = [event for event in events if outcome(render.v2_frame, event)[0] == "ok"]
    assert render.render_block_v1(events) == [render.v1_json(event) for event in events]
    assert render.render_block_v2(events) == [render.v2_frame(event) for event in events]


# -- generated and damaged blocks -----------------------------------------------------------------------

def encoded_block(events) -> bytes:
    text = [[value.encode("utf-8", "surrogatepass") for value in (e.did, e.collection, e.rkey, e.rev)]
            for e in events]
    return encode_block_columns([e.seq for e in events], [e.witnessed_at for e in events],
                                [e.indexed_at for e in events], [e.kind for e in events],
                                [t[0] for t in text], [t[1] for t in text], [t[2] for t in text],
                                [t[3] for t in text], [bytes(e.payload) for e in events])


def with_kind_byte(one_row_body: bytes, kind: int) -> bytes:
    at = 4 + 24  # a one-row block: u32 count, then seq, witnessed_at, indexed_at, then the kind
    return one_row_body[:at] + bytes([kind]) + one_row_body[at + 1:]


BLOCK_ROWS = st.builds(SegmentEvent, st.integers(0, (1 << 64) - 1), st.integers(-(1 << 63), MAX_INT64),
                       st.integers(-(1 << 63), MAX_INT64), st.sampled_from([1, 2, 3, 4, 5, 6, 7]),
                       st.text(max_size=8), st.text(max_size=8), st.text(max_size=8), st.text(max_size=8),
                       st.binary(max_size=16))


@needs_cython
@settings(max_examples=300, deadline=None)
@given(st.lists(BLOCK_ROWS, max_size=12), st.data())
def test_generated_and_damaged_blocks_decode_the_same_from_both_twins(events, data):
    body = encoded_block(events)
    assert cy_segment.decode_block(body) == decode_block_py(body) == events
    damaged = data.draw(mutated(body, max_edits=3))
    assert outcome(cy_segment.decode_block, damaged) == outcome(decode_block_py, damaged)
    assert outcome(cy_segment.decode_block, bytearray(body)) == outcome(decode_block_py, bytearray(body))


@needs_cython
@pytest.mark.parametrize("body", [
    b"", b"\x01\x00", b"\x01\x00\x00\x00", (1 << 18 | 1).to_bytes(4, "little") + bytes(40),
    with_kind_byte(encoded_block([SegmentEvent(1, 2, 3, 1, "d", "c", "r", "v", b"p")]), 9),
    with_kind_byte(encoded_block([SegmentEvent(1, 2, 3, 1, "d", "c", "r", "v", b"p")]), 0),
    encoded_block([SegmentEvent(1, 2, 3, 1, "d", "c", "r", "v", b"p")]) + b"x",
    encoded_block([SegmentEvent(1, 2, 3, 1, "é", "c", "r", "v", b"p")]).replace("é".encode(), b"\xc3\x28"),
    encoded_block([SegmentEvent(1, 2, 3, 1, "é", "c", "r", "v", b"p"),
                   SegmentEvent(2, 2, 3, 1, "é", "c", "r", "v", b"p")]).replace(b"\x02\x00\x02\x00", b"\x01\x00\x03\x00"),
])
def test_bodies_the_decoder_refuses_raise_the_references_error(body):
    expected = outcome(decode_block_py, body)
    assert expected[0] == "raises"
    assert outcome(cy_segment.decode_block, body) == expected


def test_a_row_no_relay_could_have_made_is_no_event_in_both_twins():
    event = SegmentEvent(4, 10, 0, KIND_CREATE, "did:plc:a", "app.bsky.feed.post", "3k", "rev", b"\xff")
    for module in filter(None, (py_segment, cy_segment)):
        assert module.commit_pending(event) is None
        assert module.commit_v1_json(event) is None
        assert module.commit_v2_frame(event) == b""
    assert libipld.decode_dag_cbor(m(a=1)) == {"a": 1}  # the record builder makes real records


# -- the writer's parse of a stored v2 record (commit_record_fields) ------------------------------

def stored_commit_records(event_log) -> list[bytes]:
    from jetstream.events import KIND_COMMIT as LOG_COMMIT

    return [row.payload for row in event_log.read_after(0, 1_000_000, compressed=False, v2=True)
            if row.kind == LOG_COMMIT]


def record_of(did="did:plc:a", rev="3kaaa", operation="create", collection="app.bsky.feed.post", rkey="3kbbb",
              record_json=b'{"text":"hi"}', cid=b"\x01" * 36, payload=b"\xa1atbhi") -> bytes:
    from jetstream import wire_v2

    if operation == "delete":
        return wire_v2.pack_record(wire_v2.commit_parts(did, rev, operation, collection, rkey))
    return wire_v2.pack_record(wire_v2.commit_parts(did, rev, operation, collection, rkey, "bafyx", record_json),
                               cid, payload)


EDGE_RECORDS = [
    record_of(),
    record_of(operation="update"),
    record_of(operation="delete"),
    record_of(rev='3k"rev', rkey="r\\k"),  # escapes: the reference's JSON parse
    record_of(rkey="clé"),  # not ASCII
    record_of(record_json=b'{"x":",\\"operation\\":\\"delete\\",\\"rev\\":\\"no\\",\\"rkey\\":\\"no\\""}'),
    record_of(rkey=""),
    b"",
    b"\x01\x00\x00",  # shorter than its header
    bytes(10),  # no frame, no payload
    bytes(10) + b"payload-without-frame",
    b"\x01\x00\x00\x00\x05\x00\x00\x00\x00\x00" + b',"seq":',  # a head that is only the seq field
    b"\x01\x00\x00\x10\x00\x00\x00\x00\x00\x00" + b"short",  # lengths past the end
    record_of().replace(b'"operation":"create"', b'"operation":"remove"'),
    record_of().replace(b',"seq":', b',"sek":'),
    bytearray(record_of()),  # not exactly bytes: the reference
]


@needs_cython
def test_the_writers_record_parse_is_the_same_from_both_twins(tmp_path, corpus_frames):
    with EventLog(str(tmp_path / "log")) as event_log:
        _ingest_frames(event_log, corpus_frames)
        ingest(event_log, frames=400, seed=12)
        records = stored_commit_records(event_log)
    assert len(records) > 500
    fast = [cy_segment.commit_record_fields(record) for record in records]
    assert fast == [py_segment.commit_record_fields(record) for record in records]
    assert all(fields[0] is not None and fields[1] for fields in fast), "real commits parse from the head"
    for record in EDGE_RECORDS:
        assert outcome(cy_segment.commit_record_fields, record) == \
            outcome(py_segment.commit_record_fields, record), record


@needs_cython
@settings(max_examples=500, deadline=None)
@given(st.data())
def test_damaged_stored_records_parse_the_same_from_both_twins(data):
    record = bytes(data.draw(mutated(data.draw(st.sampled_from(EDGE_RECORDS[:7])))))
    assert outcome(cy_segment.commit_record_fields, record) == outcome(py_segment.commit_record_fields, record)
