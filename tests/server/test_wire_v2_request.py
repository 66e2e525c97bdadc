"""The v2 `subscribeEvents` upgrade request, without sockets: every parameter rule, every refusal.

Each expected body is derived from bluesky-social/jetstream's source (the comment on each row
says where): the status and error name from internal/subscribe/handler.go serve (httpError with
V2), the message text from the fmt.Errorf that builds it (filterv2.go ParseQueryV2, cursor.go
ResolveCursor, handler.go), wrapped as `subscribe: invalid options: ...` (errors.go
ErrInvalidOptions) where v2 wraps it, and json.Marshal'd with `message,omitempty`.
"""
from __future__ import annotations

import json

import pytest

from jetstream import wire_v2
from jetstream.events import KIND_ACCOUNT, KIND_COMMIT, KIND_IDENTITY, KIND_SYNC
from jetstream.server.wire_v2_request import (
    FROM_SEQ,
    FROM_TIME,
    LIVE,
    SUBPROTOCOL,
    CursorPlan,
    Refusal,
    Retention,
    V2Request,
    accept,
    go_json_string,
    go_parse_query,
    go_quote,
    is_valid_did,
    is_valid_nsid,
    negotiate_subprotocol,
)

NOW_US = 1_800_000_000_000_000
OLDEST_US = 1_700_000_000_000_000
RETENTION = Retention(floor_seq=100, newest_seq=500, oldest_time_us=OLDEST_US)
DICTIONARY_ID = 2_026_081_100
DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
PREFIX = "subscribe: invalid options: "  # errors.go ErrInvalidOptions, as %w wraps it


def decide(query: str | bytes, socket_encoding: str = "", offered=(), not_ready=None, retention=RETENTION):
    raw = query.encode("utf-8", "surrogateescape") if isinstance(query, str) else query
    return accept(raw, socket_encoding, list(offered), current_dictionary_id=DICTIONARY_ID,
                  retention=retention, now_us=NOW_US, not_ready=not_ready)


def accepted(query: str | bytes, **kwargs) -> tuple[V2Request, CursorPlan]:
    outcome = decide(query, **kwargs)
    assert not isinstance(outcome, Refusal), outcome
    return outcome


def refused(query: str | bytes, **kwargs) -> Refusal:
    outcome = decide(query, **kwargs)
    assert isinstance(outcome, Refusal), outcome
    return outcome


def envelope(status: int, name: str, message: str) -> tuple[int, dict]:
    return status, {"error": name, "message": message}


# (id, query, expected (status, body)) -- where in v2 each comes from, in the comment.
REFUSALS = [
    # url.ParseQuery errors are fatal on v2 (handler.go: `if qerr != nil` -> InvalidRequest "%s: %s").
    ("semicolon", "a=1;b=2", envelope(400, "InvalidRequest", PREFIX + "invalid semicolon separator in query")),
    ("bad escape", "kinds=%zz", envelope(400, "InvalidRequest", PREFIX + 'invalid URL escape "%zz"')),
    ("short escape", "cursor=%4", envelope(400, "InvalidRequest", PREFIX + 'invalid URL escape "%4"')),
    ("bad escape in key", "%g1=x", envelope(400, "InvalidRequest", PREFIX + 'invalid URL escape "%g1"')),
    # net/url parseQuery: the first escape error is kept, but a `;` pair always overwrites it.
    ("escape then semicolon", "a=%zz&b;c", envelope(400, "InvalidRequest",
                                                     PREFIX + "invalid semicolon separator in query")),
    ("two escapes: first wins", "a=%zz&b=%yy", envelope(400, "InvalidRequest", PREFIX + 'invalid URL escape "%zz"')),
    # handler.go: the v1 compression opt-ins, no ErrInvalidOptions prefix; before zstdDictionary.
    ("compress=true", "compress=true&zstdDictionary=banana",
     envelope(400, "InvalidRequest", "compress=true / Socket-Encoding: zstd is the /subscribe (v1) opt-in; "
              "this endpoint uses zstdDictionary=<id> with the dictionary from getZstdDictionary")),
    # handler.go: strconv.ParseUint(raw, 10, 32) failing or 0.
    ("dictionary not a number", "zstdDictionary=banana",
     envelope(400, "InvalidRequest", "zstdDictionary must be a positive integer zstd dictionary ID")),
    ("dictionary 0", "zstdDictionary=0",
     envelope(400, "InvalidRequest", "zstdDictionary must be a positive integer zstd dictionary ID")),
    ("dictionary signed", "zstdDictionary=%2B5",
     envelope(400, "InvalidRequest", "zstdDictionary must be a positive integer zstd dictionary ID")),
    ("dictionary over uint32", "zstdDictionary=4294967296",
     envelope(400, "InvalidRequest", "zstdDictionary must be a positive integer zstd dictionary ID")),
    ("dictionary unknown", "zstdDictionary=12345",
     envelope(400, "UnknownZstdDictionary", f"unknown zstd dictionary id 12345; current dictionary id is "
              f"{DICTIONARY_ID} (fetch it via getZstdDictionary and reconnect)")),
    # filterv2.go ParseQueryV2: the legacy names are refused by presence, in this order.
    ("wantedDids", f"wantedDids={DID}",
     envelope(400, "InvalidRequest", PREFIX + "wantedDids is the legacy /subscribe parameter; use dids")),
    ("wantedDids empty", "wantedCollections=x&wantedDids=",
     envelope(400, "InvalidRequest", PREFIX + "wantedDids is the legacy /subscribe parameter; use dids")),
    ("wantedCollections", "wantedCollections=app.bsky.feed.post",
     envelope(400, "InvalidRequest",
              PREFIX + "wantedCollections is the legacy /subscribe parameter; use collections")),
    ("requireHello", "requireHello=false",
     envelope(400, "InvalidRequest", PREFIX + "requireHello is not supported on this endpoint; it is server-push "
              "only (subscriber-sourced messages were removed)")),
    # filterv2.go: kinds count, then parseKinds with %q.
    ("five kinds", "kinds=commit" * 1 + "&kinds=commit" * 4,
     envelope(400, "InvalidRequest", PREFIX + "too many kinds values: 5 > 4")),
    ("unknown kind", "kinds=likes",
     envelope(400, "InvalidRequest", PREFIX + 'unknown kind "likes" (valid: commit, identity, account, sync)')),
    ("kind is case-sensitive", "kinds=commit&kinds=Commit",
     envelope(400, "InvalidRequest", PREFIX + 'unknown kind "Commit" (valid: commit, identity, account, sync)')),
    ("empty kind", "kinds=",
     envelope(400, "InvalidRequest", PREFIX + 'unknown kind "" (valid: commit, identity, account, sync)')),
    ("kind quoted as Go does", "kinds=a%09%FF",
     envelope(400, "InvalidRequest", PREFIX + 'unknown kind "a\\t\\xff" (valid: commit, identity, account, sync)')),
    # filterv2.go: raw counts (before any value is checked), dids before collections.
    ("101 collections", "&".join(["collections=bad"] * 101),
     envelope(400, "InvalidRequest", PREFIX + "too many collections values: 101 > 100")),
    # Go 1.26 url.ParseQuery: more than 10000 "&"-separated parameters is an error before any pair.
    ("10001 dids", "&".join([f"dids={DID}"] * 10_001),
     envelope(400, "InvalidRequest", PREFIX + "number of URL query parameters exceeded limit")),
    # filter.go parseWantedDIDs: atmos.ParseDID, "invalid DID: %s" (raw, unquoted).
    ("bad DID", "collections=bad&dids=bad", envelope(400, "InvalidRequest", PREFIX + "invalid DID: bad")),
    ("DID method uppercase", "dids=did:PLC:abc", envelope(400, "InvalidRequest", PREFIX + "invalid DID: did:PLC:abc")),
    ("DID ends with colon", "dids=did:plc:abc:", envelope(400, "InvalidRequest", PREFIX + "invalid DID: did:plc:abc:")),
    ("DID empty identifier", "dids=did:plc:", envelope(400, "InvalidRequest", PREFIX + "invalid DID: did:plc:")),
    ("DID ends with percent", "dids=did:web:a%25", envelope(400, "InvalidRequest", PREFIX + "invalid DID: did:web:a%")),
    # filterv2.go: every wildcard head probed with ParseNSID(head + ".x") before any NSID is parsed.
    ("wildcard head invalid", "collections=app.bsky.feed.post&collections=not_an_nsid.*",
     envelope(400, "InvalidRequest", PREFIX + "invalid collection wildcard: not_an_nsid.*")),
    ("wildcard over one segment", "collections=app.*",
     envelope(400, "InvalidRequest", PREFIX + "invalid collection wildcard: app.*")),
    ("bare wildcard", "collections=.*", envelope(400, "InvalidRequest", PREFIX + "invalid collection wildcard: .*")),
    ("wildcards before NSIDs", "collections=bad&collections=x.*",
     envelope(400, "InvalidRequest", PREFIX + "invalid collection wildcard: x.*")),
    # filter.go parseWantedCollections: "invalid collection: %s".
    ("partial wildcard", "collections=app.bsky.feed.po*",
     envelope(400, "InvalidRequest", PREFIX + "invalid collection: app.bsky.feed.po*")),
    ("star", "collections=*", envelope(400, "InvalidRequest", PREFIX + "invalid collection: *")),
    ("empty collection", "collections=", envelope(400, "InvalidRequest", PREFIX + "invalid collection: ")),
    # filterv2.go: a collections filter with kinds set and no commit.
    ("inert collections", "kinds=identity&kinds=account&collections=app.bsky.feed.like",
     envelope(400, "InvalidRequest", PREFIX + "collections filter can never apply: kinds excludes commit")),
    # filterv2.go parseMaxMessageSizeV2.
    ("max size empty", "maxMessageSizeBytes=",
     envelope(400, "InvalidRequest", PREFIX + "maxMessageSizeBytes must be one unsigned 32-bit integer")),
    ("max size twice", "maxMessageSizeBytes=1&maxMessageSizeBytes=1",
     envelope(400, "InvalidRequest", PREFIX + "maxMessageSizeBytes must be one unsigned 32-bit integer")),
    ("max size banana", "maxMessageSizeBytes=banana",
     envelope(400, "InvalidRequest", PREFIX + 'invalid maxMessageSizeBytes "banana"')),
    ("max size negative", "maxMessageSizeBytes=-1",
     envelope(400, "InvalidRequest", PREFIX + 'invalid maxMessageSizeBytes "-1"')),
    ("max size over uint32", "maxMessageSizeBytes=4294967296",
     envelope(400, "InvalidRequest", PREFIX + 'invalid maxMessageSizeBytes "4294967296"')),
    # cursor.go ResolveCursor: ErrInvalidCursor "%w: %q" / "%w: negative value %d"; after the filter.
    ("cursor not a number", "cursor=abc", envelope(400, "InvalidRequest", 'subscribe: invalid cursor: "abc"')),
    ("cursor first value wins", "cursor=abc&cursor=5",
     envelope(400, "InvalidRequest", 'subscribe: invalid cursor: "abc"')),
    ("cursor over int64", "cursor=9223372036854775808",
     envelope(400, "InvalidRequest", 'subscribe: invalid cursor: "9223372036854775808"')),
    ("cursor negative", "cursor=-1", envelope(400, "InvalidRequest", "subscribe: invalid cursor: negative value -1")),
    ("filter before cursor", "cursor=abc&kinds=x",
     envelope(400, "InvalidRequest", PREFIX + 'unknown kind "x" (valid: commit, identity, account, sync)')),
    # cursor.go with RejectBelowFloor (v2): the requested seq and the floor; handler.go -> CursorTooOld 400.
    ("seq below floor", "cursor=99", envelope(400, "CursorTooOld", "subscribe: cursor too old: cursor 99 below "
                                                                   "lookback floor 100; re-backfill from your last seq")),
    ("seq 0 below floor", "cursor=0", envelope(400, "CursorTooOld", "subscribe: cursor too old: cursor 0 below "
                                                                    "lookback floor 100; re-backfill from your last seq")),
]


@pytest.mark.parametrize("query, expected", [pytest.param(q, e, id=i) for i, q, e in REFUSALS])
def test_refusals_carry_v2s_name_message_and_status(query, expected):
    refusal = refused(query)
    assert (refusal.status, json.loads(refusal.body)) == expected
    assert refusal.headers == (("Content-Type", "application/json"),)
    assert refusal.error == expected[1]["error"]


def test_socket_encoding_zstd_is_refused_like_compress_true():
    # handler.go: strings.Contains(r.Header.Get("Socket-Encoding"), "zstd")
    assert refused("", socket_encoding="gzip, zstd").error == "InvalidRequest"
    accepted("", socket_encoding="gzip")


def test_not_ready_is_a_503_before_anything_else():
    # handler.go: the steady-state gate runs before the query is even parsed.
    refusal = refused("a;b=%zz", not_ready="log upgrade in progress")
    assert refusal.status == 503
    assert refusal.body == b'{"error":"ServiceUnavailable","message":"service not ready: log upgrade in progress"}'


def test_messages_are_json_marshalled_html_safe_and_invalid_utf8_replaced():
    # encoding/json: < > & as \u003c \u003e \u0026, U+2028 escaped, each invalid byte one \ufffd.
    refusal = refused(b"dids=%3Cb%3E%26%E2%80%A8%FF")
    assert refusal.body == (b'{"error":"InvalidRequest","message":"subscribe: invalid options: invalid DID: '
                            b'\\u003cb\\u003e\\u0026\\u2028\\ufffd"}')


def test_escape_error_quotes_invalid_bytes_as_go_does():
    refusal = refused(b"a=%\xff\xfe")
    assert json.loads(refusal.body)["message"] == PREFIX + 'invalid URL escape "%\\xff\\xfe"'


# --- what is accepted ---------------------------------------------------------------------------

def test_no_parameters_is_everything_live():
    request, plan = accepted("")
    assert request == V2Request(None, None, None, 0, False, "", None)
    assert plan == CursorPlan(LIVE)


def test_filters_are_parsed_deduped_and_unknown_parameters_ignored():
    request, _ = accepted(f"kinds=commit&kinds=sync&kinds=commit&dids={DID}&dids={DID}&collections=app.bsky.*"
                          "&collections=app.bsky.feed.post&collections=app.bsky.*&maxMessageSizeBytes=4294967295"
                          "&heartbeatSeconds=5&includeSync=false&foo=bar")
    assert request.kinds == frozenset({KIND_COMMIT, KIND_SYNC})
    assert request.dids == frozenset({DID})
    assert request.collections == ("app.bsky.*", "app.bsky.feed.post")
    assert request.max_message_size_bytes == (1 << 32) - 1


def test_four_kinds_and_every_kind_name():
    request, _ = accepted("kinds=commit&kinds=identity&kinds=account&kinds=sync")
    assert request.kinds == frozenset({KIND_COMMIT, KIND_IDENTITY, KIND_ACCOUNT, KIND_SYNC})


def test_collections_with_kinds_that_include_commit_are_fine():
    request, _ = accepted("kinds=identity&kinds=commit&collections=app.bsky.feed.like")
    assert request.collections == ("app.bsky.feed.like",)


def test_the_caps_themselves_are_accepted():
    request, _ = accepted("&".join([f"dids=did:plc:{i:024d}" for i in range(10_000)]))
    assert len(request.dids) == 10_000
    request, _ = accepted("&".join([f"collections=app.bsky.c{i}" for i in range(100)]))
    assert len(request.collections) == 100


def test_percent_encoded_did_is_valid():
    request, _ = accepted("dids=did:web:localhost%253A1234")
    assert request.dids == frozenset({"did:web:localhost%3A1234"})


@pytest.mark.parametrize("query, zstd", [("zstdDictionary=", False), (f"zstdDictionary={DICTIONARY_ID}", True),
                                         (f"zstdDictionary=00{DICTIONARY_ID}", True),
                                         ("compress=false", False), ("compress=TRUE", False),
                                         ("compress=x&compress=true", False)])
def test_compression_opt_in(query, zstd):
    request, _ = accepted(query)
    assert request.zstd is zstd


@pytest.mark.parametrize("query, plan", [
    ("cursor=", CursorPlan(LIVE)),
    ("cursor=&cursor=abc", CursorPlan(LIVE)),  # url.Values.Get: the first value, ""
    ("cursor=100", CursorPlan(FROM_SEQ, 100)),  # at the floor: inclusive
    ("cursor=%2B100", CursorPlan(FROM_SEQ, 100)),  # ParseInt takes a sign
    ("cursor=500", CursorPlan(FROM_SEQ, 500)),  # the newest event, sent again (inclusive)
    ("cursor=501", CursorPlan(LIVE)),  # >= NextSeq: the tip
    ("cursor=999999999999999", CursorPlan(LIVE)),  # the largest seq
    (f"cursor={OLDEST_US}", CursorPlan(FROM_TIME, OLDEST_US)),  # at the oldest retained time: not clamped
    (f"cursor={NOW_US}", CursorPlan(FROM_TIME, NOW_US)),
    (f"cursor={NOW_US + 1}", CursorPlan(LIVE)),  # a future time: the tip, no #info
])
def test_cursor_plans(query, plan):
    assert accepted(query)[1] == plan


def test_a_time_cursor_below_the_floor_starts_at_the_floor_with_outdated_cursor_first():
    # handler.go: EncodeV2Info("OutdatedCursor", "requested timestamp cursor below retention floor; starting at seq %d")
    for cursor in (OLDEST_US - 1, 10 ** 15):
        _, plan = accepted(f"cursor={cursor}")
        assert plan.mode == FROM_SEQ and plan.value == 100
        assert plan.first_frames == (
            b'{"$type":"message","payload":{"$type":"network.bsky.jetstream.subscribeEvents#info",'
            b'"message":"requested timestamp cursor below retention floor; starting at seq 100",'
            b'"name":"OutdatedCursor"}}',)
        assert plan.first_frames[0] == wire_v2.info_frame("OutdatedCursor", "requested timestamp cursor below "
                                                          "retention floor; starting at seq 100")


def test_cursors_on_an_empty_log():
    empty = Retention(floor_seq=1, newest_seq=0, oldest_time_us=None)
    assert accepted("cursor=0", retention=empty)[1] == CursorPlan(FROM_SEQ, 1)  # replay from the first event
    assert accepted("cursor=1", retention=empty)[1] == CursorPlan(LIVE)
    assert accepted(f"cursor={OLDEST_US}", retention=empty)[1] == CursorPlan(FROM_TIME, OLDEST_US)


def test_a_trimmed_log_refuses_every_old_seq():
    trimmed = Retention(floor_seq=501, newest_seq=500, oldest_time_us=None)
    assert refused("cursor=500", retention=trimmed).error == "CursorTooOld"
    assert accepted("cursor=501", retention=trimmed)[1] == CursorPlan(LIVE)


def test_exactly_10000_parameters_parse():
    params, error = go_parse_query(b"&" * 9_999)
    assert error is None and params == {}
    params, error = go_parse_query(b"&" * 10_000)
    assert error == "number of URL query parameters exceeded limit"


def test_parse_query_keeps_the_good_pairs_beside_an_error():
    params, error = go_parse_query(b"a=1&b=%zz&c=2&=&d")
    assert params == {"a": ["1"], "c": ["2"], "": [""], "d": [""]}
    assert error == 'invalid URL escape "%zz"'


# --- subprotocol ----------------------------------------------------------------------------------

@pytest.mark.parametrize("offered, echoed", [
    # handler_v2_protocol_test.go TestHandlerV2_SubprotocolNegotiation, and negotiateSubprotocol.
    (["xrpc.v1.json"], SUBPROTOCOL),
    ([], None),
    (["xrpc.v9.msgpack"], None),
    (["XRPC.V1.JSON"], None),  # case-sensitive (RFC 7936)
    (["xrpc.v9.msgpack", "xrpc.v1.json"], SUBPROTOCOL),
    (["xrpc.v9.msgpack, xrpc.v1.json"], SUBPROTOCOL),
    ([" xrpc.v1.json "], SUBPROTOCOL),
    (["xrpc.v1.jsonx"], None),
])
def test_subprotocol_is_echoed_only_when_offered(offered, echoed):
    assert negotiate_subprotocol(offered) == echoed
    assert accepted("", offered=offered)[0].subprotocol == echoed


# --- Go's text forms and atmos syntax --------------------------------------------------------------

@pytest.mark.parametrize("text, quoted", [
    ("likes", '"likes"'), ("", '""'), ('a"b\\c', '"a\\"b\\\\c"'), ("\x00\x07\x1b\x7f", '"\\x00\\a\\x1b\\x7f"'),
    ("\t\n\r\v\f\b", '"\\t\\n\\r\\v\\f\\b"'), ("\u00a0", '"\\u00a0"'), ("\u200b", '"\\u200b"'),
    ("é😀", '"é😀"'), ("\U000e0001", '"\\U000e0001"'), ("\udcff\udc80", '"\\xff\\x80"'), ("\ufffd", '"\ufffd"'),
])
def test_go_quote(text, quoted):
    assert go_quote(text) == quoted


def test_go_json_string():
    assert go_json_string('a"\\\b\f\n\r\t\x01<>&\u2028\u2029é') == (
        b'"a\\"\\\\\\b\\f\\n\\r\\t\\u0001\\u003c\\u003e\\u0026\\u2028\\u2029\xc3\xa9"')


@pytest.mark.parametrize("did, valid", [
    (DID, True), ("did:plc:abc", True), ("did:web:example.com", True), ("did:web:localhost%3A1234", True),
    ("did:a:_", True), ("did:plc", False), ("did:plc:", False), ("did::abc", False), ("did:Plc:abc", False),
    ("did:plc:ab c", False), ("did:plc:abc:", False), ("did:plc:abc%", False), ("did:plc:é", False),
    ("DID:plc:abc", False), ("", False), ("did:web:" + "a" * 2040, True), ("did:web:" + "a" * 2041, False),
])
def test_atmos_did_syntax(did, valid):
    assert is_valid_did(did) is valid


@pytest.mark.parametrize("nsid, valid", [
    ("app.bsky.feed.post", True), ("a.b.c", True), ("com.example.fooBar", True), ("a-b.c-d.e", True),
    ("a.b", False), ("1a.b.c", False), ("a.b.1c", False), ("a.b.c-d", False), ("a.-b.c", False),
    ("a.b-.c", False), ("a..c", False), ("a.b.", False), (".a.b", False), ("a.b.c" + "d" * 62, True),
    ("a.b.c" + "d" * 63, False), ("a.b.é", False), ("", False), ("a.b." + "c" * 63, True),
    (".".join(["a" * 63] * 5) + ".b", False),  # 321 bytes: over 317
])
def test_atmos_nsid_syntax(nsid, valid):
    assert is_valid_nsid(nsid) is valid
