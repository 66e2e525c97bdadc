"""Fuzzing the v2 `subscribeEvents` request parser: any query, any headers, never an exception.

The outcome is a (V2Request, CursorPlan) whose every part obeys v2's rules, or a Refusal whose
body is one XRPC envelope with a name v2 uses and the status that name goes with.
"""
from __future__ import annotations

import json
import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jetstream.server.wire_v2_request import (
    FROM_SEQ,
    FROM_TIME,
    LIVE,
    MAX_COLLECTIONS,
    MAX_DIDS,
    CursorPlan,
    Refusal,
    Retention,
    V2Request,
    accept,
    is_valid_did,
    is_valid_nsid,
)
from tests.fuzz.test_fuzz_strategies import fuzz_settings

pytestmark = pytest.mark.timeout(120)
NOW_US = 1_800_000_000_000_000
DICTIONARY_ID = 42
STATUS_OF = {"InvalidRequest": 400, "CursorTooOld": 400, "UnknownZstdDictionary": 400, "ServiceUnavailable": 503}

NAMES = st.sampled_from(("kinds", "dids", "collections", "cursor", "maxMessageSizeBytes", "zstdDictionary",
                         "compress", "wantedDids", "wantedCollections", "requireHello", "other", "Kinds"))
VALUES = (st.sampled_from(("commit", "identity", "account", "sync", "likes", "", "app.bsky.feed.post", "app.bsky.*",
                           "a.*", ".*", "x.y.z*", "did:plc:ewvi7nxzyoun6zhxrhs64oiz", "did:web:a%3Ab", "did:plc:",
                           "true", "42", "0", "-1", "+7", "4294967296", "1000000000000000", "1e3", " 1"))
          | st.integers(-2 ** 70, 2 ** 70).map(str) | st.text(max_size=20))
# floor_seq..newest_seq held (extra events), or nothing held (extra 0: no oldest time either).
RETENTIONS = st.builds(lambda floor, extra, oldest: Retention(floor, floor - 1 + extra, oldest if extra else None),
                       st.integers(1, 10 ** 6), st.integers(0, 10 ** 6), st.integers(10 ** 15, NOW_US))


def check(raw_query: bytes, socket_encoding: str, offered: list[str], retention: Retention):
    outcome = accept(raw_query, socket_encoding, offered, current_dictionary_id=DICTIONARY_ID,
                     retention=retention, now_us=NOW_US)
    if isinstance(outcome, Refusal):
        body = json.loads(outcome.body)
        assert set(body) <= {"error", "message"} and body["message"]
        assert outcome.status == STATUS_OF[body["error"]] == STATUS_OF[outcome.error]
        return outcome
    request, plan = outcome
    assert isinstance(request, V2Request) and isinstance(plan, CursorPlan)
    assert request.kinds is None or 0 < len(request.kinds) <= 4
    assert request.dids is None or (0 < len(request.dids) <= MAX_DIDS and all(map(is_valid_did, request.dids)))
    if request.collections is not None:
        assert 0 < len(request.collections) <= MAX_COLLECTIONS
        assert all(is_valid_nsid(c[:-2] + ".x") if c.endswith(".*") else is_valid_nsid(c) for c in request.collections)
    assert 0 <= request.max_message_size_bytes < 1 << 32
    assert request.subprotocol in (None, "xrpc.v1.json")
    if plan.mode == LIVE:
        assert plan.value == 0 and not plan.first_frames
    elif plan.mode == FROM_SEQ:
        assert retention.floor_seq <= plan.value <= max(retention.newest_seq, 1)
        assert len(plan.first_frames) <= 1
    else:
        assert plan.mode == FROM_TIME and 10 ** 15 <= plan.value <= NOW_US and not plan.first_frames
    return outcome


@fuzz_settings(1000)
@given(st.binary(max_size=300), RETENTIONS)
def test_random_query_bytes_never_raise(raw_query, retention):
    check(raw_query, "", [], retention)


@fuzz_settings(1000)
@given(st.lists(st.tuples(NAMES, VALUES), max_size=12), st.booleans(), RETENTIONS,
       st.sampled_from(("", "zstd", "gzip")), st.lists(st.sampled_from(("xrpc.v1.json", "XRPC.V1.JSON", "a, xrpc.v1.json",
                                                                          "")), max_size=2))
def test_structured_queries_accept_or_refuse(pairs, percent_encode, retention, socket_encoding, offered):
    quote = urllib.parse.quote if percent_encode else (lambda text: text)
    raw = "&".join(f"{quote(k)}={quote(v)}" for k, v in pairs).encode("utf-8", "surrogateescape")
    check(raw, socket_encoding, offered, retention)


@fuzz_settings(300)
@given(st.text(alphabet="%&=;+0123456789abcdefgzXY", max_size=60), RETENTIONS)
def test_escape_and_separator_soup_never_raises(text, retention):
    check(text.encode(), "", [], retention)
