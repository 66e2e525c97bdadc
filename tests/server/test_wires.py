"""The wire object chosen at the upgrade: V1Wire keeps v1's answers, V2Wire speaks v2's, one interface.

No sockets: negotiate_* turn a request into a wire or a refusal; the wire says where the stream
starts, which events pass, what a client frame means and how every stop is told.
"""
from __future__ import annotations

import json

import pytest

from jetstream import wire_v2
from jetstream.events import KIND_ACCOUNT, KIND_COMMIT, KIND_IDENTITY, KIND_SYNC
from jetstream.log.damage import corruption_close_reason, gap_close_reason
from jetstream.server import params, subscriber
from jetstream.server.wire_v2_request import FROM_SEQ, FROM_TIME, LIVE, CursorPlan, Refusal, Retention
from jetstream.server.wires import (
    Closing,
    V1Wire,
    V2Wire,
    negotiate_v1,
    negotiate_v2,
    upgrade_headers,
)

NOW_US = 1_800_000_000_000_000
RETENTION = Retention(floor_seq=100, newest_seq=500, oldest_time_us=1_700_000_000_000_000)
DICTIONARY_ID = 7
DID_A, DID_B = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb"
DAMAGE = {"column_family": "events", "from_time_us": 10, "to_time_us": 20}
GAP = {"from_time_us": 1_700_000_000_000_000, "to_time_us": 1_700_000_000_000_500}


def v2(query: str = "", offered=(), **kwargs) -> V2Wire:
    wire = negotiate_v2(query.encode(), "", list(offered), current_dictionary_id=DICTIONARY_ID,
                        retention=RETENTION, now_us=NOW_US, **kwargs)
    assert isinstance(wire, V2Wire), wire
    return wire


def v1(query: str = "") -> V1Wire:
    wire = negotiate_v1(query.encode(), "", NOW_US)
    assert isinstance(wire, V1Wire), wire
    return wire


# --- v1 is what it was ----------------------------------------------------------------------------

@pytest.mark.parametrize("query", ["cursor=abc", "wantedCollections=bad", "heartbeatSeconds=0",
                                   "wantedDids=nope"])
def test_v1_refusals_are_v1s_plain_text_400(query):
    refusal = negotiate_v1(query.encode(), "", NOW_US)
    assert isinstance(refusal, Refusal)
    with pytest.raises(params.BadRequest) as raised:
        params.parse_subscribe_query(query.encode(), "", NOW_US)
    assert refusal == Refusal(400, (("Content-Type", "text/plain; charset=UTF-8"),), raised.value.text.encode())


def test_v1_options_and_plan():
    wire = v1("cursor=1700000000000000&compress=true&requireHello=true&maxMessageSizeBytes=10&includeSync=true")
    assert wire.plan == CursorPlan(FROM_TIME, 1_700_000_000_000_000)
    assert (wire.compressed, wire.require_hello, wire.max_message_size_bytes, wire.include_sync) == (True, True, 10, True)
    assert (wire.frame_form, wire.subprotocol, wire.size_limit_uncompressed) == ("v1", None, False)
    assert v1().plan == CursorPlan(LIVE)
    assert v1(f"cursor={NOW_US + 1}").plan == CursorPlan(LIVE)  # later than now: live, as v1's parser says
    assert upgrade_headers(wire) == []


def test_v1_filter_is_v1s_two_dimensions():
    wire = v1(f"wantedCollections=app.bsky.feed.post&wantedDids={DID_A}")
    assert wire.event_filter.matches(DID_A, "app.bsky.feed.post")
    assert wire.event_filter.matches(DID_A, "")  # identity/account bypass the collection filter
    assert not wire.event_filter.matches(DID_B, "app.bsky.feed.post")
    assert v1().event_filter.wants_all


def test_v1_client_messages_are_options_updates_or_v1_closes():
    wire = v1()
    update = wire.on_client_data(True, b'{"type":"options_update","payload":{"wantedDids":["%s"]}}' % DID_A.encode())
    assert isinstance(update, params.OptionsUpdate) and update.filters.wanted_dids == frozenset({DID_A})
    assert wire.on_client_data(True, b'{"type":"other"}') is None
    assert wire.on_client_data(False, b"\x00\x01") is None  # binary: ignored, as v1 did
    closing = wire.on_client_data(True, b"{")
    assert closing == Closing((), 1000, params.interpret_client_message(b"{").reason)


def test_v1_closings_are_the_readers_close_codes_and_reasons():
    wire = v1()
    assert wire.lagging("lag_events", 1234, 56.4, 30.0, resume_cursor=99) == Closing(
        (), 1008, subscriber.lag_close_reason("lag_events", 1234, 56.4, 30.0))
    assert wire.log_damaged(DAMAGE) == Closing((), 1011, corruption_close_reason(DAMAGE))
    assert wire.log_gap(GAP) == Closing((), 1011, gap_close_reason(GAP))
    assert wire.read_failed() == Closing((), 1000, subscriber.REASON_REPLAY_FAILED)
    assert wire.internal_error("KeyError") == Closing((), 1011, "internal error: KeyError")
    assert wire.shutting_down("server shutting down") == Closing((), 1001, "server shutting down")


# --- v2 -----------------------------------------------------------------------------------------

def test_v2_refusal_passes_through():
    refusal = negotiate_v2(b"kinds=x", "", [], current_dictionary_id=DICTIONARY_ID, retention=RETENTION,
                           now_us=NOW_US)
    assert isinstance(refusal, Refusal) and refusal.status == 400 and refusal.error == "InvalidRequest"
    refusal = negotiate_v2(b"", "", [], current_dictionary_id=DICTIONARY_ID, retention=RETENTION, now_us=NOW_US,
                           not_ready="starting")
    assert refusal.status == 503


def test_v2_wire_shape():
    wire = v2(f"zstdDictionary={DICTIONARY_ID}&maxMessageSizeBytes=2048&cursor=150", offered=["xrpc.v1.json"])
    assert (wire.frame_form, wire.compressed, wire.max_message_size_bytes) == ("v2", True, 2048)
    assert (wire.require_hello, wire.heartbeat_seconds, wire.size_limit_uncompressed) == (False, 0, True)
    assert wire.plan == CursorPlan(FROM_SEQ, 150)
    assert upgrade_headers(wire) == [("Sec-WebSocket-Protocol", "xrpc.v1.json")]
    assert upgrade_headers(v2()) == []


def test_v2_filter_semantics_through_the_wire():
    everything = v2().event_filter
    assert everything.wants_all and everything.matches_event(KIND_SYNC, DID_A, "")
    commits = v2("kinds=commit&collections=app.bsky.feed.*").event_filter
    assert commits.matches_event(KIND_COMMIT, DID_A, "app.bsky.feed.like")
    assert not commits.matches_event(KIND_COMMIT, DID_A, "app.bsky.graph.follow")
    assert not commits.matches_event(KIND_IDENTITY, DID_A, "")
    collections = v2("collections=app.bsky.feed.post").event_filter  # kinds unset: other kinds unaffected
    assert collections.matches_event(KIND_ACCOUNT, DID_A, "")
    assert collections.matches_event(KIND_SYNC, DID_B, "")
    assert not collections.matches_event(KIND_COMMIT, DID_A, "app.bsky.feed.like")
    by_did = v2(f"dids={DID_A}&kinds=identity&kinds=sync").event_filter
    assert by_did.matches_event(KIND_SYNC, DID_A, "") and not by_did.matches_event(KIND_SYNC, DID_B, "")
    assert not by_did.matches_event(KIND_COMMIT, DID_A, "app.bsky.feed.post")


def test_v2_outdated_cursor_rides_in_the_plan():
    wire = v2("cursor=1000000000000000")
    assert wire.plan.mode == FROM_SEQ and wire.plan.value == RETENTION.floor_seq
    assert json.loads(wire.plan.first_frames[0])["payload"]["name"] == "OutdatedCursor"


def test_v2_is_server_push_only():
    wire = v2()
    for is_text, payload in ((True, b'{"type":"options_update","payload":{}}'), (False, b"\x00")):
        assert wire.on_client_data(is_text, payload) == Closing((), 1008, "unexpected data message")


def _error(closing: Closing) -> dict:
    (frame,) = closing.frames
    return json.loads(frame)


def test_v2_consumer_too_slow_is_an_error_frame_then_1008():
    closing = v2().lagging("lag_events", 1234, 56.4, 30.0, resume_cursor=4242)
    assert closing.code == 1008
    assert _error(closing) == {"$type": "error", "error": "ConsumerTooSlow",
                               "message": "1234 events / 56s behind for 30s (lag_events); reconnect with cursor=4242"}
    assert closing.frames[0] == wire_v2.error_frame("ConsumerTooSlow", _error(closing)["message"])
    assert closing.reason == _error(closing)["message"]


def test_v2_read_failures_are_internal_error_frames_then_1011():
    wire = v2()
    for closing, message in ((wire.log_damaged(DAMAGE), corruption_close_reason(DAMAGE)),
                             (wire.log_gap(GAP), gap_close_reason(GAP)),
                             (wire.read_failed(), "stream read failed; reconnect"),
                             (wire.internal_error("KeyError"), "stream read failed; reconnect")):
        assert closing.code == 1011
        assert _error(closing) == {"$type": "error", "error": "InternalError", "message": message}
    # the gap's resume cursor is a time_us, which v2's cursor takes as a time
    assert "cursor=1700000000000501" in wire.log_gap(GAP).reason


def test_v2_shutdown_is_1001_without_a_frame():
    assert v2().shutting_down("whatever the server says") == Closing((), 1001, "server shutting down")


def test_close_reasons_fit_a_close_frame():
    long_damage = dict(DAMAGE, from_time_us=10 ** 30, to_time_us=10 ** 30)
    for wire in (v1(), v2()):
        for closing in (wire.log_damaged(long_damage), wire.lagging("lag_seconds", 10 ** 20, 1e20, 1e9, 10 ** 20)):
            assert len(closing.reason.encode()) <= params.MAX_CLOSE_REASON_BYTES


def test_both_wires_share_one_interface():
    names = ("name", "frame_form", "subprotocol", "accepts_client_messages", "size_limit_uncompressed",
             "compressed", "max_message_size_bytes", "require_hello", "heartbeat_seconds", "include_sync",
             "plan", "event_filter", "on_client_data", "lagging", "log_damaged", "log_gap", "read_failed",
             "internal_error", "shutting_down")
    for wire in (v1(), v2()):
        assert all(hasattr(wire, name) for name in names), [n for n in names if not hasattr(wire, n)]
