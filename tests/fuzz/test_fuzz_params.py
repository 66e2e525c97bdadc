"""Fuzzing the client-input parsers: the `/subscribe` query string and client text
messages (`options_update`). Neither may raise anything but its own error value: a query
gives SubscriberOptions or BadRequest; a message gives an OptionsUpdate, a close with a
reason that fits a close frame, or None.

Regressions found here (fixed in jetstream/server/gojson.py): nesting a few hundred levels
deep raised RecursionError out of interpret_client_message, and every nested value kept its
own copy of its bytes, so a 1 MB message 300 levels deep took 300 MB.
"""
from __future__ import annotations

import json
import tracemalloc
import urllib.parse

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jetstream.server.params import (
    MAX_CLOSE_REASON_BYTES,
    BadRequest,
    CloseConnection,
    OptionsUpdate,
    SubscriberOptions,
    interpret_client_message,
    is_valid_did,
    is_valid_nsid,
    parse_query,
    parse_subscribe_query,
)
from tests.fuzz.test_fuzz_strategies import fuzz_settings

pytestmark = pytest.mark.timeout(120)
NOW_US = 1_700_000_000_000_000

NSIDS = st.sampled_from(("app.bsky.feed.post", "app.bsky.*", "a.b.c", "app.bsky.feed.po*", ".*", "x", ""))
DIDS = st.sampled_from(("did:plc:ewvi7nxzyoun6zhxrhs64oiz", "did:web:example.com", "did:plc:", "bad", ""))
PARAM_NAMES = st.sampled_from(("wantedCollections", "wantedDids", "cursor", "compress", "requireHello",
                               "maxMessageSizeBytes", "other"))
PARAM_VALUES = NSIDS | DIDS | st.integers(-2**70, 2**70).map(str) | st.text(max_size=30) | st.sampled_from(
    ("true", "false", "+5", "-0", "1e3", " 1"))


def parse_query_safely(raw_query: bytes):
    try:
        options = parse_subscribe_query(raw_query, "", NOW_US)
    except BadRequest as err:
        assert err.text.startswith(("invalid cursor: ", "invalid subscriber options"))
        return None
    assert isinstance(options, SubscriberOptions)
    wanted = options.filters.wanted_collections or ()
    assert all(value.endswith(".*") or is_valid_nsid(value) for value in wanted)
    assert all(is_valid_did(did) for did in options.filters.wanted_dids)
    assert 0 <= options.max_message_size_bytes < 1 << 32
    assert options.cursor is None or options.cursor <= NOW_US
    return options


@fuzz_settings(1000)
@given(st.binary(max_size=300))
def test_random_query_bytes_give_options_or_a_bad_request(raw_query):
    parse_query_safely(raw_query)


@fuzz_settings(1000)
@given(st.lists(st.tuples(PARAM_NAMES, PARAM_VALUES), max_size=12), st.booleans())
def test_structured_queries_give_options_or_a_bad_request(pairs, percent_encode):
    quote = urllib.parse.quote if percent_encode else (lambda text: text)
    parse_query_safely("&".join(f"{quote(k)}={quote(v)}" for k, v in pairs).encode("utf-8", "surrogateescape"))


@fuzz_settings(500)
@given(st.lists(st.tuples(st.binary(min_size=1, max_size=12), st.binary(max_size=20)), min_size=1, max_size=6))
def test_percent_encoded_values_come_back_exactly(pairs):
    raw = "&".join(f"{urllib.parse.quote_from_bytes(k)}={urllib.parse.quote_from_bytes(v)}" for k, v in pairs)
    parsed = parse_query(raw.encode("ascii"))
    for key, value in pairs:
        texts = parsed[key.decode("utf-8", "surrogateescape")]
        assert value.decode("utf-8", "surrogateescape") in texts


def interpret_safely(message: bytes):
    outcome = interpret_client_message(message)
    assert outcome is None or isinstance(outcome, (OptionsUpdate, CloseConnection))
    if isinstance(outcome, CloseConnection):
        assert outcome.reason and len(outcome.reason.encode("utf-8")) <= MAX_CLOSE_REASON_BYTES
    return outcome


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=20)
    | NSIDS | DIDS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6) | PARAM_NAMES, inner, max_size=5),
    max_leaves=20,
)
PAYLOADS = st.fixed_dictionaries({}, optional={"wantedCollections": st.lists(NSIDS, max_size=5) | JSON_VALUES,
                                               "wantedDids": st.lists(DIDS, max_size=5) | JSON_VALUES,
                                               "maxMessageSizeBytes": JSON_VALUES})


@fuzz_settings(1000)
@given(st.sampled_from(("options_update", "Options_Update", "other")) | JSON_VALUES, PAYLOADS | JSON_VALUES)
def test_structured_client_messages_update_close_or_are_ignored(message_type, payload):
    interpret_safely(json.dumps({"type": message_type, "payload": payload}).encode())


@fuzz_settings(1000)
@given(st.binary(max_size=200))
def test_random_client_message_bytes_update_close_or_are_ignored(message):
    outcome = interpret_safely(message)
    try:
        json.loads(message.decode("utf-8"), parse_constant=lambda name: 1 / 0)
    except (UnicodeDecodeError, ZeroDivisionError):
        return  # Go accepts invalid UTF-8 inside strings and rejects NaN: no opinion here
    except ValueError:
        assert isinstance(outcome, CloseConnection), "invalid JSON must close the connection"


# --- regressions ----------------------------------------------------------------------------

@pytest.mark.parametrize("opener, closer", [(b"[", b"]"), (b'{"a":', b"}")])
def test_nesting_up_to_go_max_depth_is_parsed_and_beyond_it_closes_like_go(opener, closer):
    def nested(depth: int) -> bytes:  # the payload value nested `depth` levels deep
        return b'{"type":"options_update","payload":{"x":' + opener * (depth - 2) + b"1" + closer * (depth - 2) + b"}}"

    empty_update = interpret_safely(b'{"type":"options_update","payload":{}}')
    assert interpret_safely(nested(10_000)) == empty_update  # Go ignores the unknown field "x"
    refused = interpret_safely(nested(10_001))
    assert isinstance(refused, CloseConnection)
    assert f"invalid character '{opener[:1].decode()}' exceeded max depth" in refused.reason
    assert isinstance(interpret_safely(opener * 200_000), CloseConnection)


def test_deeply_nested_large_message_is_parsed_in_memory_near_its_size():
    message = b'{"type":"x","p":' + b"[" * 300 + b'"' + b"a" * 1_000_000 + b'"' + b"]" * 300 + b"}"
    tracemalloc.start()
    try:
        assert interpret_safely(message) is None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * len(message), f"peak {peak} bytes for a {len(message)}-byte message"
