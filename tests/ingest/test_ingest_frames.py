"""Frame-level decoding: frame types, error frames, unusable frames, identity/account
envelopes (docs/protocol.md §4.3, §4.4), delete envelopes, and Go RFC3339 time acceptance."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jetstream.events import KIND_ACCOUNT, KIND_IDENTITY, render_json
from jetstream.ingest.decode import decode_frame, is_rfc3339
from jetstream.ingest.frames import FrameError, split_frame
from tests.ingest.test_ingest_helpers import commit_frame, dag_cbor, frame


def test_identity_with_handle_matches_the_v1_readme_line():
    decoded = decode_frame(frame("#identity", {
        "did": "did:plc:ufbl4k27gp6kzas5glhz7fim", "handle": "yohenrique.bsky.social",
        "seq": 1409752997, "time": "2024-09-05T06:11:04.870Z"}))
    assert decoded.frame_type == "#identity" and decoded.seq == 1409752997
    [event] = decoded.events
    assert event.kind == KIND_IDENTITY and event.collection == ""
    assert render_json(event, 1725516665234703) == (
        b'{"did":"did:plc:ufbl4k27gp6kzas5glhz7fim","time_us":1725516665234703,"kind":"identity",'
        b'"identity":{"did":"did:plc:ufbl4k27gp6kzas5glhz7fim","handle":"yohenrique.bsky.social",'
        b'"seq":1409752997,"time":"2024-09-05T06:11:04.870Z"}}')


def test_identity_with_null_handle_omits_it():
    decoded = decode_frame(frame("#identity", {"did": "did:plc:a", "handle": None, "seq": 5, "time": "2024-09-05T06:11:04Z"}))
    assert render_json(decoded.events[0], 1) == (
        b'{"did":"did:plc:a","time_us":1,"kind":"identity","identity":{"did":"did:plc:a","seq":5,'
        b'"time":"2024-09-05T06:11:04Z"}}')


def test_inactive_account_with_status_matches_the_v1_struct_order():
    decoded = decode_frame(frame("#account", {
        "did": "did:plc:xxxxxxxxxxxxxxxxxxxxxxxx", "active": False, "status": "deactivated",
        "seq": 1409753014, "time": "2024-09-05T06:11:05.000Z"}))
    [event] = decoded.events
    assert event.kind == KIND_ACCOUNT
    assert render_json(event, 1725516665333809) == (
        b'{"did":"did:plc:xxxxxxxxxxxxxxxxxxxxxxxx","time_us":1725516665333809,"kind":"account",'
        b'"account":{"active":false,"did":"did:plc:xxxxxxxxxxxxxxxxxxxxxxxx","seq":1409753014,'
        b'"status":"deactivated","time":"2024-09-05T06:11:05.000Z"}}')


def test_account_and_identity_with_bad_time_are_dropped():
    for frame_type, body in (("#account", {"did": "did:plc:a", "active": True, "seq": 1, "time": "now"}),
                             ("#identity", {"did": "did:plc:a", "seq": 1, "time": "2024-02-30T00:00:00Z"})):
        decoded = decode_frame(frame(frame_type, body))
        assert decoded.events == []
        assert [r for r, _ in decoded.drops] == ["bad_time"]


def test_delete_matches_the_v1_readme_line():
    decoded = decode_frame(commit_frame(
        "did:plc:rfov6bpyztcnedeyyzgfq42k", "3l3f6nzl3cv2s", "2024-09-05T06:11:04.870Z",
        [{"action": "delete", "path": "app.bsky.graph.follow/3l3dn7tku762u", "cid": None}], []))
    assert [render_json(p, 1725516666833633) for p in decoded.events] == [
        b'{"did":"did:plc:rfov6bpyztcnedeyyzgfq42k","time_us":1725516666833633,"kind":"commit",'
        b'"commit":{"rev":"3l3f6nzl3cv2s","operation":"delete","collection":"app.bsky.graph.follow",'
        b'"rkey":"3l3dn7tku762u"}}']


def test_commit_strings_are_go_escaped_and_empty_rev_is_omitted():
    decoded = decode_frame(commit_frame("did:plc:a<b", "", "2024-09-05T06:11:04+02:00",
                                        [{"action": "delete", "path": "app.x/k~1", "cid": None}], []))
    assert render_json(decoded.events[0], 3) == (
        b'{"did":"did:plc:a\\u003cb","time_us":3,"kind":"commit","commit":{"operation":"delete",'
        b'"collection":"app.x","rkey":"k~1"}}')


@pytest.mark.parametrize("frame_type", ["#info", "#labels", "#handle", "#somethingnew"])  # #sync: tests/ingest/test_ingest_sync.py
def test_frame_types_v1_ignored_yield_no_events_but_report_their_type(frame_type):
    decoded = decode_frame(frame(frame_type, {"seq": 42, "did": "did:plc:a", "name": "OutdatedCursor"}))
    assert (decoded.frame_type, decoded.seq, decoded.events, decoded.drops) == (frame_type, 42, [], [])


def test_error_frame_reports_its_message_as_a_drop():
    raw = dag_cbor({"op": -1}) + dag_cbor({"error": "FutureCursor", "message": "cursor in the future"})
    decoded = decode_frame(raw)
    assert decoded.frame_type == "error" and decoded.events == [] and decoded.seq is None
    [(reason, detail)] = decoded.drops
    assert reason == "error_frame" and "FutureCursor" in detail and "cursor in the future" in detail


@pytest.mark.parametrize("raw,reason", [
    (b"", "wrong_part_count"),
    (b"\xff\x00", "undecodable"),
    (dag_cbor({"op": 1, "t": "#info"}) + b"\xa1\x61a" + b"\x81" * 100_000 + b"\x80", "undecodable"),
    (dag_cbor({"op": 1, "t": "#commit"}), "wrong_part_count"),
    (dag_cbor({"op": 1, "t": "#info"}) + dag_cbor({}) + dag_cbor({}), "wrong_part_count"),
    (dag_cbor([1]) + dag_cbor({}), "not_a_map"),
    (dag_cbor({"op": 2, "t": "#commit"}) + dag_cbor({}), "unknown_op"),
    (dag_cbor({"op": 1}) + dag_cbor({}), "missing_type"),
    (frame("#identity", {"did": 5, "seq": 1, "time": "2024-09-05T06:11:04Z"}), "bad_body"),
    (frame("#account", {"did": "did:plc:a", "active": "yes", "seq": 1, "time": "2024-09-05T06:11:04Z"}), "bad_body"),
    (frame("#commit", {"repo": "did:plc:a", "rev": "r", "time": "2024-09-05T06:11:04Z", "ops": "x", "blocks": b""}), "bad_body"),
])
def test_unusable_frames_raise_frame_error_with_a_reason(raw, reason):
    with pytest.raises(FrameError) as caught:
        decode_frame(raw)
    assert caught.value.reason == reason


def test_split_frame_returns_header_and_body():
    assert split_frame(frame("#info", {"name": "x"})) == ({"op": 1, "t": "#info"}, {"name": "x"})


@pytest.mark.parametrize("value,accepted", [
    ("2026-07-04T14:38:07.517Z", True),
    ("2026-07-04T14:38:07Z", True),
    ("2026-07-04T14:38:07.123456789+05:30", True),
    ("2026-07-04T14:38:07,5Z", True),
    ("2024-02-29T00:00:00Z", True),
    ("2023-02-29T00:00:00Z", False),
    ("2026-07-04T14:38:07", False),
    ("2026-07-04 14:38:07Z", False),
    ("2026-07-04t14:38:07Z", False),
    ("2026-07-04T14:38:07z", False),
    ("2026-07-04T24:00:00Z", False),
    ("2026-07-04T14:60:00Z", False),
    ("2026-07-04T14:38:60Z", False),
    ("2026-07-04T14:38:07+24:00", True),
    ("2026-07-04T14:38:07-25:00", False),
    ("2026-07-04T14:38:07+01:61", False),
    ("2026-07-04T14:38:07.Z", False),
    ("26-07-04T14:38:07Z", False),
    ("2026-7-04T14:38:07Z", False),
    ("2026-07-04T14:38:07Z ", False),
    ("２026-07-04T14:38:07Z", False),
])
def test_rfc3339_acceptance_follows_go_time_parse(value, accepted):
    assert is_rfc3339(value) is accepted


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_mutated_corpus_frames_only_ever_raise_frame_error(corpus_frames, data):
    """Invariant 4: bad input is survived. Any byte damage yields a DecodedFrame or FrameError."""
    raw = bytearray(data.draw(st.sampled_from(corpus_frames)))
    for _ in range(data.draw(st.integers(1, 4))):
        where = data.draw(st.integers(0, len(raw) - 1))
        raw[where] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    try:
        decoded = decode_frame(bytes(raw))
    except FrameError:
        return
    assert all(isinstance(reason, str) for reason, _ in decoded.drops)
