"""The client's sans-I/O rules: URLs, query strings, options_update, resume and backoff,
typed event parsing on the real corpus lines, and zstd frames with and without dictionary."""
from __future__ import annotations

import json
import random
from urllib.parse import parse_qs, urlsplit

import pytest
import zstandard

from jetstream.client import (
    AccountEvent,
    Backoff,
    CommitEvent,
    DictionaryMismatch,
    EventDecodeError,
    IdentityEvent,
    ResumeState,
    SubscribeOptions,
    UnknownEvent,
    ZstdFrameDecoder,
    normalize_url,
    parse_event,
)
from jetstream.client.protocol import dictionary_url, is_fatal_close, subscribe_url
from jetstream.compression import EventCompressor


@pytest.mark.parametrize("given, expected", [
    ("localhost:6008", "ws://localhost:6008/subscribe"),
    ("127.0.0.1:6008", "ws://127.0.0.1:6008/subscribe"),
    ("[::1]:6008", "ws://[::1]:6008/subscribe"),
    ("jetstream2.us-east.bsky.network", "wss://jetstream2.us-east.bsky.network/subscribe"),
    ("https://example.com/", "wss://example.com/subscribe"),
    ("ws://h:1/js/subscribe?cursor=5", "ws://h:1/js/subscribe"),
])
def test_normalize_url_gives_a_subscribe_url(given, expected):
    assert normalize_url(given) == expected


def test_normalize_url_rejects_other_schemes():
    with pytest.raises(ValueError):
        normalize_url("ftp://example.com")


def test_dictionary_url_sits_beside_subscribe_and_keeps_a_proxy_prefix():
    assert dictionary_url("wss://example.com/subscribe") == "https://example.com/zstd-dictionary"
    assert dictionary_url("ws://h:1/js/subscribe") == "http://h:1/js/zstd-dictionary"


def test_query_repeats_filters_and_uses_v1_parameter_names():
    options = SubscribeOptions(["app.bsky.feed.post", "app.bsky.graph.*"], ["did:plc:a", "did:plc:b"],
                               compress=True, max_message_size=1000, require_hello=True)
    query = parse_qs(urlsplit(subscribe_url("ws://h/subscribe", options, 42)).query)
    assert query == {"wantedCollections": ["app.bsky.feed.post", "app.bsky.graph.*"],
                     "wantedDids": ["did:plc:a", "did:plc:b"], "cursor": ["42"], "compress": ["true"],
                     "maxMessageSizeBytes": ["1000"], "requireHello": ["true"]}


def test_default_options_add_no_query_at_all():
    assert subscribe_url("ws://h/subscribe", SubscribeOptions(), None) == "ws://h/subscribe"


def test_options_update_message_matches_v1_shape_and_clears_with_empty_lists():
    message = json.loads(SubscribeOptions(["a.b.c"], None, max_message_size=5).options_update())
    assert message == {"type": "options_update",
                       "payload": {"wantedCollections": ["a.b.c"], "wantedDids": [], "maxMessageSizeBytes": 5}}


def test_resume_drops_everything_at_or_below_the_last_delivered_time_us():
    resume = ResumeState(initial_cursor=None, rewind_us=1_000)
    assert [resume.accept(t) for t in (10, 20, 20, 15, 21)] == [True, True, False, False, True]
    assert resume.duplicates_dropped == 2 and resume.last_time_us == 21


def test_resume_cursor_rewinds_from_the_last_event_then_falls_back_to_initial_or_first_connect():
    assert ResumeState(initial_cursor=500).cursor_for_next_connection() == 500
    assert ResumeState(initial_cursor=None).cursor_for_next_connection() is None
    live = ResumeState(initial_cursor=None, rewind_us=1_000, first_connected_us=10_000)
    assert live.cursor_for_next_connection() == 9_000
    seen = ResumeState(initial_cursor=5, rewind_us=1_000)
    seen.accept(1_700_000_000_000_000)
    assert seen.cursor_for_next_connection() == 1_700_000_000_000_000 - 1_000


def test_backoff_grows_to_its_cap_and_resets():
    backoff = Backoff(initial_s=1.0, maximum_s=8.0, jitter=0.0, _random=random.Random(1))
    assert [backoff.next_delay() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    backoff.reset()
    assert backoff.next_delay() == 1.0


def test_backoff_jitter_stays_within_its_fraction():
    backoff = Backoff(initial_s=1.0, maximum_s=1.0, jitter=0.2, _random=random.Random(7))
    assert all(0.8 <= backoff.next_delay() <= 1.2 for _ in range(100))


def test_only_v1_option_rejections_are_fatal_closes():
    assert is_fatal_close(1000, "failed to parse subscriber options: invalid subscriber options")
    assert not is_fatal_close(1001, "server shutting down")
    assert not is_fatal_close(None, "")


def test_every_corpus_line_parses_to_its_typed_event(expected_v1_lines):
    events = [parse_event(line) for line in expected_v1_lines]
    for event, line in zip(events, expected_v1_lines):
        data = json.loads(line)
        assert (event.kind, event.did, event.time_us, event.raw) == (data["kind"], data["did"], data["time_us"], line)
    commits = [e for e in events if isinstance(e, CommitEvent)]
    deletes = [e for e in commits if e.operation == "delete"]
    assert deletes and all(e.record is None and e.cid is None for e in deletes)
    assert commits[0].uri == f"at://{commits[0].did}/{commits[0].collection}/{commits[0].rkey}"
    assert any(isinstance(e, IdentityEvent) for e in events) and any(isinstance(e, AccountEvent) for e in events)


def test_account_and_identity_optional_fields_are_none_when_absent():
    account = parse_event(b'{"did":"did:plc:x","time_us":1,"kind":"account","account":{"active":false,'
                          b'"did":"did:plc:x","seq":7,"status":"deactivated","time":"t"}}')
    identity = parse_event(b'{"did":"did:plc:x","time_us":2,"kind":"identity","identity":{"did":"did:plc:x",'
                           b'"seq":8,"time":"t"}}')
    assert (account.active, account.status, account.seq) == (False, "deactivated", 7)
    assert identity.handle is None and identity.seq == 8


def test_unknown_kinds_are_kept_not_dropped():
    event = parse_event(b'{"did":"did:plc:x","time_us":3,"kind":"sync","sync":{"rev":"r"}}')
    assert isinstance(event, UnknownEvent) and event.kind == "sync" and event.data["sync"] == {"rev": "r"}


@pytest.mark.parametrize("raw", [b"not json", b"[1]", b'{"did":"d"}', b'{"did":1,"time_us":1}',
                                 b'{"did":"d","time_us":1,"kind":"commit","commit":{}}'])
def test_non_events_raise_event_decode_error(raw):
    with pytest.raises(EventDecodeError):
        parse_event(raw)


def test_decoder_with_the_legacy_dictionary_reads_frames_of_the_servers_compressor(corpus_dir, expected_v1_lines):
    dictionary = (corpus_dir / "legacy_subscribe.zdict").read_bytes()
    compressor = EventCompressor(dictionary)
    decoder = ZstdFrameDecoder(dictionary)
    assert decoder.dictionary_id == compressor.dictionary_id != 0
    assert [decoder.decode(compressor.compress(l)) for l in expected_v1_lines] == expected_v1_lines


def test_decoder_without_dictionary_names_the_id_a_frame_needs(corpus_dir, expected_v1_lines):
    dictionary = (corpus_dir / "legacy_subscribe.zdict").read_bytes()
    frame = EventCompressor(dictionary).compress(expected_v1_lines[0])
    with pytest.raises(DictionaryMismatch) as caught:
        ZstdFrameDecoder(None).decode(frame)
    assert caught.value.needed_id == EventCompressor(dictionary).dictionary_id and caught.value.held_id == 0
    assert "dictionary=" in str(caught.value)


def test_decoder_without_dictionary_reads_dictionary_less_frames(expected_v1_lines):
    frame = zstandard.ZstdCompressor(write_content_size=True).compress(expected_v1_lines[1])
    assert ZstdFrameDecoder(None).decode(frame) == expected_v1_lines[1]
