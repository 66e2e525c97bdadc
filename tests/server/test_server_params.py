"""Subscriber options rules, pinned to docs/protocol.md §3 (texts as v1 sent them)."""
from __future__ import annotations

import pytest

from jetstream.server.params import (
    BadRequest,
    CloseConnection,
    OptionsUpdate,
    interpret_client_message,
    is_valid_did,
    is_valid_nsid,
    parse_query,
    parse_subscribe_query,
    truncate_close_reason,
)

NOW_US = 1_730_000_000_000_000


def syntax_vectors(corpus_dir, name: str) -> list[str]:
    text = (corpus_dir / "syntax" / f"{name}.txt").read_text(encoding="utf-8")
    # Lines are kept verbatim (some invalid vectors end or start with a space).
    return [line for line in text.split("\n") if line and not line.startswith("#")]


def options(query: str, socket_encoding: str = ""):
    return parse_subscribe_query(query.encode(), socket_encoding, NOW_US)


def refusal(query: str) -> str:
    with pytest.raises(BadRequest) as caught:
        options(query)
    return caught.value.text


# --- syntax vectors ------------------------------------------------------------------------

def test_valid_nsid_vectors_are_accepted(corpus_dir):
    vectors = syntax_vectors(corpus_dir, "nsid_syntax_valid")
    assert len(vectors) >= 20
    assert [v for v in vectors if not is_valid_nsid(v)] == []


def test_invalid_nsid_vectors_are_rejected(corpus_dir):
    vectors = syntax_vectors(corpus_dir, "nsid_syntax_invalid")
    assert len(vectors) >= 20
    assert [v for v in vectors if is_valid_nsid(v)] == []


def test_valid_did_vectors_are_accepted(corpus_dir):
    vectors = syntax_vectors(corpus_dir, "did_syntax_valid")
    assert len(vectors) >= 20
    assert [v for v in vectors if not is_valid_did(v)] == []


def test_invalid_did_vectors_are_rejected(corpus_dir):
    vectors = syntax_vectors(corpus_dir, "did_syntax_invalid")
    assert len(vectors) >= 15
    assert [v for v in vectors if is_valid_did(v)] == []


def test_nsid_and_did_reject_a_trailing_newline():
    assert not is_valid_nsid("app.bsky.feed.post\n")
    assert not is_valid_did("did:plc:q6gjnaw2blty4crticxkmujt\n")


def test_plc_fast_path_refuses_32_char_plc_dids_with_non_alphanumerics():
    # The regex alone would accept this; indigo's did:plc fast path does not fall back to it.
    assert is_valid_did("did:plc:q6gjnaw2blty4crticxkmuj_") is False
    assert is_valid_did("did:plc:q6gjnaw2blty4crticxkmujt") is True


def test_nsid_length_cap_is_317_bytes():
    segment = "a" * 63
    name = ".".join([segment] * 5) + ".b"  # 5*63 + 4 dots + ".b" = 321
    assert len(name) > 317 and not is_valid_nsid(name)


# --- query string --------------------------------------------------------------------------

def test_query_parsing_follows_go_url_values():
    assert parse_query(b"a=1&a=2&b=%zz&c=x+y%2B&;d=1&&e") == {"a": ["1", "2"], "c": ["x y+"], "e": [""]}


def test_repeated_wanted_collections_are_all_used_and_commas_are_not_split():
    assert refusal("wantedCollections=app.bsky.feed.post,app.bsky.feed.like") == (
        "invalid subscriber options: invalid collection: app.bsky.feed.post,app.bsky.feed.like"
    )
    parsed = options("wantedCollections=app.bsky.feed.post&wantedCollections=app.bsky.graph.*")
    assert set(parsed.filters.wanted_collections) == {"app.bsky.feed.post", "app.bsky.graph.*"}


def test_absent_filters_mean_everything():
    parsed = options("")
    assert parsed.filters.wanted_collections is None and parsed.filters.wanted_dids == frozenset()
    assert parsed.cursor is None and parsed.compress is False and parsed.require_hello is False
    assert parsed.max_message_size_bytes == 0


@pytest.mark.parametrize("query, text", [
    ("cursor=abc", "invalid cursor: abc"),
    ("cursor=1.5", "invalid cursor: 1.5"),
    ("cursor=%201", "invalid cursor:  1"),
    ("cursor=9223372036854775808", "invalid cursor: 9223372036854775808"),
    ("cursor=1_000", "invalid cursor: 1_000"),
    ("wantedCollections=app.bsky.feed.po*", "invalid subscriber options: invalid collection: app.bsky.feed.po*"),
    ("wantedCollections=", "invalid subscriber options: invalid collection: "),
    ("wantedDids=bad", "invalid subscriber options"),
    ("wantedDids=", "invalid subscriber options"),
])
def test_bad_requests_get_v1_texts(query, text):
    assert refusal(query) == text


def test_cursor_is_checked_before_collections_and_collections_before_dids():
    assert refusal("wantedDids=bad&wantedCollections=x*&cursor=z") == "invalid cursor: z"
    assert refusal("wantedDids=bad&wantedCollections=x*") == "invalid subscriber options: invalid collection: x*"


def test_first_invalid_collection_left_to_right_is_reported():
    assert refusal("wantedCollections=a.b.c&wantedCollections=bad1&wantedCollections=bad2") == (
        "invalid subscriber options: invalid collection: bad1"
    )


def test_collection_cap_counts_distinct_nsids_plus_every_prefix():
    hundred = "&".join(f"wantedCollections=app.test.c{i}" for i in range(100))
    assert options(hundred + "&wantedCollections=app.test.c0").filters.wanted_collections is not None
    assert refusal(hundred + "&wantedCollections=app.test.c100") == (
        "invalid subscriber options: too many wanted collections"
    )
    duplicate_prefixes = "&".join("wantedCollections=app.*" for _ in range(101))
    assert refusal(duplicate_prefixes) == "invalid subscriber options: too many wanted collections"


def test_did_cap_counts_distinct_dids_and_is_checked_before_the_collection_cap():
    dids = "&".join(f"wantedDids=did:web:h{i}.example" for i in range(10_000))
    assert len(options(dids + "&wantedDids=did:web:h0.example").filters.wanted_dids) == 10_000
    too_many = dids + "&wantedDids=did:web:extra.example"
    assert refusal(too_many) == "invalid subscriber options: too many wanted DIDs"
    collections = "&".join("wantedCollections=app.*" for _ in range(101))
    assert refusal(too_many + "&" + collections) == "invalid subscriber options: too many wanted DIDs"


def test_unvalidated_prefixes_are_accepted():
    parsed = options("wantedCollections=.*&wantedCollections=foo.*")
    assert set(parsed.filters.wanted_collections) == {".*", "foo.*"}


def test_cursor_later_than_now_means_live_tail():
    assert options(f"cursor={NOW_US + 1}").cursor is None
    assert options(f"cursor={NOW_US}").cursor == NOW_US
    assert options("cursor=-5").cursor == -5
    assert options("cursor=%2B7").cursor == 7  # a raw "+" would decode to a space
    assert refusal("cursor=+7") == "invalid cursor:  7"
    assert options("cursor=").cursor is None


@pytest.mark.parametrize("raw, size", [
    ("", 0), ("abc", 0), ("-5", 0), ("1000", 1000), ("4294967295", 4294967295),
    ("4294967296", 0), ("5000000000", 705032704), ("99999999999999999999", 0),
])
def test_max_message_size_coercions(raw, size):
    assert options(f"maxMessageSizeBytes={raw}").max_message_size_bytes == size


def test_compression_from_query_or_socket_encoding_substring():
    assert options("compress=true").compress
    assert not options("compress=True").compress
    assert options("", socket_encoding="gzip, zstd").compress
    assert options("", socket_encoding="xzstdx").compress
    assert not options("", socket_encoding="gzip").compress


def test_require_hello_only_for_exact_true():
    assert options("requireHello=true").require_hello
    assert not options("requireHello=1").require_hello
    assert not options("requireHello=True").require_hello


# --- client messages -----------------------------------------------------------------------

def update(payload: str) -> bytes:
    return b'{"type":"options_update","payload":' + payload.encode() + b"}"


def test_options_update_with_case_insensitive_fields():
    outcome = interpret_client_message(
        b'{"Type":"options_update","PAYLOAD":{"WANTEDCOLLECTIONS":["app.bsky.feed.post"],'
        b'"wantedDids":["did:plc:q6gjnaw2blty4crticxkmujt"],"maxMessageSizeBytes":1000}}'
    )
    assert isinstance(outcome, OptionsUpdate)
    assert outcome.filters.wanted_collections == ("app.bsky.feed.post",)
    assert outcome.filters.wanted_dids == frozenset({"did:plc:q6gjnaw2blty4crticxkmujt"})
    assert outcome.max_message_size_bytes == 1000


@pytest.mark.parametrize("payload", ["null", "{}", '{"wantedCollections":null,"wantedDids":[]}'])
def test_null_or_empty_payload_clears_filters(payload):
    outcome = interpret_client_message(update(payload))
    assert isinstance(outcome, OptionsUpdate)
    assert outcome.filters.wanted_collections is None and outcome.filters.wanted_dids == frozenset()


@pytest.mark.parametrize("message", [b'{"type":"hello"}', b"{}", b"null", b'{"type":null,"payload":1}'])
def test_other_message_types_are_ignored(message):
    assert interpret_client_message(message) is None


@pytest.mark.parametrize("message, reason", [
    (b"", "failed to unmarshal subscriber sourced message: unexpected end of JSON input"),
    (b"{", "failed to unmarshal subscriber sourced message: unexpected end of JSON input"),
    (b"hello", "failed to unmarshal subscriber sourced message: invalid character 'h' looking for beginning of value"),
    (b'{"type" 1}', "failed to unmarshal subscriber sourced message: invalid character '1' after object key"),
    (b'{"type":"x",}', "failed to unmarshal subscriber sourced message: invalid character '}' looking for beginning of object key string"),
    (b'{"type":"x"} x', "failed to unmarshal subscriber sourced message: invalid character 'x' after top-level value"),
    (b'[1,]', "failed to unmarshal subscriber sourced message: invalid character ']' looking for beginning of value"),
    (b'{"a":tru}', "failed to unmarshal subscriber sourced message: invalid character '}' in literal true (expecting 'e')"),
    (b'{"a":"\\x"}', "failed to unmarshal subscriber sourced message: invalid character 'x' in string escape code"),
    (b'{"a":01}', "failed to unmarshal subscriber sourced message: invalid character '1' after object key:value pair"),
    (b'{"type":"options_update"}', "failed to unmarshal subscriber options update: unexpected end of JSON input"),
    (update('{"wantedCollections":["app.bsky.feed.po*"]}'),
     "failed to parse subscriber options: invalid subscriber options: invalid collection: app.bsky.feed.po*"),
    (update('{"wantedDids":["nope"]}'), "failed to parse subscriber options: invalid subscriber options"),
])
def test_bad_client_messages_close_with_v1_reasons(message, reason):
    assert interpret_client_message(message) == CloseConnection(reason)


def test_long_go_type_errors_are_truncated_to_123_bytes_not_dropped():
    full = ("failed to unmarshal subscriber options update: json: cannot unmarshal string into Go struct field "
            "SubscriberOptionsUpdatePayload.wantedDids of type []string")
    outcome = interpret_client_message(update('{"wantedDids":"did:plc:x"}'))
    assert outcome == CloseConnection(full.encode()[:123].decode())


def test_float_max_message_size_is_a_go_type_error():
    outcome = interpret_client_message(update('{"maxMessageSizeBytes":1.5}'))
    assert isinstance(outcome, CloseConnection)
    assert outcome.reason.startswith("failed to unmarshal subscriber options update: json: cannot unmarshal number 1.5 ")


def test_truncation_never_splits_a_utf8_character():
    reason = "x" * 122 + "é"  # é is 2 bytes: byte 123 would be half of it
    assert truncate_close_reason(reason) == "x" * 122
    assert truncate_close_reason("short") == "short"
