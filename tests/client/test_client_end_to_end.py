"""jetstream.client.Jetstream against the real daemon: filters, cursor, hello, options
updates, compression, and reconnect across a daemon restart without gaps or duplicates."""
from __future__ import annotations

import asyncio
import json

import pytest

from jetstream.client import (
    AccountEvent,
    Backoff,
    CommitEvent,
    IdentityEvent,
    Jetstream,
    JetstreamError,
)
from jetstream.client.protocol import dictionary_url
from jetstream.client.zstd import fetch_dictionary
from jetstream.daemon import Daemon
from jetstream.dictionary import active_dictionary, dictionary_id
from tests.client.test_client_kit import (
    corpus_seqs,
    daemon_config,
    ingested_daemon,
    logged_payloads,
    start_corpus_relay,
    time_us_of,
    wait_until,
    without_time_us,
)

pytestmark = pytest.mark.timeout(90)
LEGACY_DICTIONARY_ID = 1612007021


async def take(client: Jetstream, count: int, timeout: float = 20.0) -> list:
    async def _take():
        events = []
        async for event in client:
            events.append(event)
            if len(events) == count:
                break
        return events

    return await asyncio.wait_for(_take(), timeout)


async def test_replay_from_zero_yields_every_logged_event_typed_with_its_exact_bytes(
        tmp_path, corpus_dir, corpus_frames, expected_v1_lines):
    relay, daemon = await ingested_daemon(tmp_path, corpus_dir, corpus_frames)
    try:
        client = Jetstream(f"ws://127.0.0.1:{daemon.port}", cursor=0)
        events = await take(client, len(expected_v1_lines))
        await client.close()
    finally:
        await daemon.stop()
        await relay.close()
    assert [e.raw for e in events] == logged_payloads_after_stop(tmp_path)
    assert [without_time_us(e.raw) for e in events] == [without_time_us(l) for l in expected_v1_lines]
    for event, line in zip(events, expected_v1_lines):
        expected = json.loads(line)
        assert event.kind == expected["kind"] and event.did == expected["did"]
        if isinstance(event, CommitEvent):
            commit = expected["commit"]
            assert (event.operation, event.collection, event.rkey, event.rev) == (
                commit["operation"], commit["collection"], commit["rkey"], commit["rev"])
            assert event.record == commit.get("record") and event.cid == commit.get("cid")
    kinds = {type(e) for e in events}
    assert kinds == {CommitEvent, IdentityEvent, AccountEvent}
    assert {e.operation for e in events if isinstance(e, CommitEvent)} >= {"create", "delete"}


def logged_payloads_after_stop(tmp_path) -> list[bytes]:
    from jetstream.log.store import EventLog

    with EventLog(str(tmp_path / "data"), create=False) as event_log:
        return [row.payload for row in event_log.read_after(0, 100_000, False)]


async def test_collection_and_did_filters_are_applied_by_the_server(
        tmp_path, corpus_dir, corpus_frames, expected_v1_lines):
    relay, daemon = await ingested_daemon(tmp_path, corpus_dir, corpus_frames)
    parsed = [json.loads(l) for l in expected_v1_lines]
    busiest_did = max({p["did"] for p in parsed}, key=lambda d: sum(p["did"] == d for p in parsed))
    want_did = [l for l, p in zip(expected_v1_lines, parsed) if p["did"] == busiest_did]
    want_posts = [l for l, p in zip(expected_v1_lines, parsed)
                  if p["kind"] != "commit" or p["commit"]["collection"] == "app.bsky.feed.post"]
    assert len(want_did) >= 2 and len(want_posts) == 20
    url = f"ws://127.0.0.1:{daemon.port}"
    try:
        posts = Jetstream(url, collections=["app.bsky.feed.post"], cursor=0)
        got_posts = await take(posts, len(want_posts))
        by_did = Jetstream(url, dids=[busiest_did], cursor=0)
        got_did = await take(by_did, len(want_did))
        await posts.close()
        await by_did.close()
    finally:
        await daemon.stop()
        await relay.close()
    assert [without_time_us(e.raw) for e in got_posts] == [without_time_us(l) for l in want_posts]
    assert [without_time_us(e.raw) for e in got_did] == [without_time_us(l) for l in want_did]


async def test_cursor_is_inclusive_and_starts_at_that_event(tmp_path, corpus_dir, corpus_frames, expected_v1_lines):
    relay, daemon = await ingested_daemon(tmp_path, corpus_dir, corpus_frames)
    stored = logged_payloads(daemon)
    start = 100
    try:
        client = Jetstream(f"ws://127.0.0.1:{daemon.port}", cursor=time_us_of(stored[start]))
        events = await take(client, len(stored) - start)
        await client.close()
    finally:
        await daemon.stop()
        await relay.close()
    assert [e.raw for e in events] == stored[start:]


async def test_require_hello_sends_the_filters_as_hello_and_then_streams(tmp_path, corpus_dir, corpus_frames,
                                                                         expected_v1_lines):
    relay, daemon = await ingested_daemon(tmp_path, corpus_dir, corpus_frames)
    stored = logged_payloads(daemon)
    likes = [p for p in stored if b'"kind":"commit"' not in p or b'"collection":"app.bsky.feed.like"' in p]
    try:
        client = Jetstream(f"ws://127.0.0.1:{daemon.port}", collections=["app.bsky.feed.like"], cursor=0,
                           require_hello=True)
        events = await take(client, len(likes))
        await client.close()
    finally:
        await daemon.stop()
        await relay.close()
    assert [e.raw for e in events] == likes


async def test_update_options_replaces_the_filter_of_a_live_connection(tmp_path, corpus_dir, corpus_frames,
                                                                       expected_v1_lines):
    first_seq, _ = corpus_seqs(corpus_frames)
    relay = await start_corpus_relay(corpus_dir)
    daemon = Daemon(daemon_config(tmp_path / "data", relay.url, first_seq=first_seq))
    await daemon.start(connect_relay=False)
    parsed = [json.loads(l) for l in expected_v1_lines]
    want = [l for l, p in zip(expected_v1_lines, parsed)
            if p["kind"] != "commit" or p["commit"]["collection"] == "app.bsky.feed.like"]
    try:
        client = Jetstream(f"ws://127.0.0.1:{daemon.port}", collections=["app.bsky.feed.post"])
        await client.connect()
        client.update_options(collections=["app.bsky.feed.like"])
        await asyncio.sleep(0.3)  # the server applies the update before the first event exists
        daemon.connect_relay()
        events = await take(client, len(want))
        await asyncio.sleep(0.2)
        assert client.buffered == 0, "no event beyond the filtered set"
        await client.close()
    finally:
        await daemon.stop()
        await relay.close()
    assert [without_time_us(e.raw) for e in events] == [without_time_us(l) for l in want]


async def test_reconnect_across_daemon_restart_has_no_gap_and_no_duplicate(tmp_path, corpus_dir, corpus_frames):
    # The first daemon paces this client at 20 events/s, so it is stopped mid-stream; the
    # second one (same data dir, same port) serves the rest after the client's resume.
    relay, daemon = await ingested_daemon(tmp_path, corpus_dir, corpus_frames, max_sub_rate=20)
    port = daemon.port
    stored = logged_payloads(daemon)
    client = Jetstream(f"ws://127.0.0.1:{port}", cursor=0, rewind_us=3_600_000_000,
                       backoff=Backoff(initial_s=0.05, maximum_s=0.5), buffer_high_water=8)
    received: list = []

    async def consume():
        async for event in client:
            received.append(event)
            if len(received) == len(stored):
                return

    consumer = asyncio.ensure_future(consume())
    second = None
    try:
        await wait_until(lambda: len(received) >= 10)
        await daemon.stop()
        await relay.close()
        assert len(received) < len(stored), "the first daemon must not have sent everything"
        second = Daemon(daemon_config(tmp_path / "data", "ws://127.0.0.1:1/unused", port=port))
        await second.start(connect_relay=False)
        await asyncio.wait_for(consumer, 30)
        await asyncio.sleep(0.3)
        assert client.buffered == 0
    finally:
        consumer.cancel()
        await client.close()
        if second is not None:
            await second.stop()
    assert [e.raw for e in received] == stored
    assert client.connections >= 2
    assert client.duplicates_dropped > 0, "the one-hour rewind re-sends events the client must drop"


async def test_compressed_stream_with_the_legacy_dictionary_by_path_gives_the_json_bytes(
        tmp_path, corpus_dir, corpus_frames):
    dictionary = corpus_dir / "legacy_subscribe.zdict"
    relay, daemon = await ingested_daemon(tmp_path, corpus_dir, corpus_frames,
                                          extra=("--zstd-dictionary-path", str(dictionary)))
    stored = logged_payloads(daemon)
    try:
        client = Jetstream(f"ws://127.0.0.1:{daemon.port}", cursor=0, compress=True, dictionary=str(dictionary))
        events = await take(client, len(stored))
        decoder_id = client._decoder.dictionary_id
        await client.close()
    finally:
        await daemon.stop()
        await relay.close()
    assert decoder_id == LEGACY_DICTIONARY_ID
    assert [e.raw for e in events] == stored


async def test_compressed_stream_fetches_the_servers_shipped_dictionary_when_none_is_given(
        tmp_path, corpus_dir, corpus_frames):
    relay, daemon = await ingested_daemon(tmp_path, corpus_dir, corpus_frames)
    stored = logged_payloads(daemon)
    try:
        client = Jetstream(f"ws://127.0.0.1:{daemon.port}", cursor=0, compress=True)
        events = await take(client, len(stored))
        decoder_id = client._decoder.dictionary_id
        await client.close()
    finally:
        await daemon.stop()
        await relay.close()
    assert decoder_id == dictionary_id(active_dictionary("")) != 0
    assert [e.raw for e in events] == stored


async def test_compressed_stream_fetches_an_operator_dictionary_when_none_is_given(
        tmp_path, corpus_dir, corpus_frames):
    dictionary = corpus_dir / "legacy_subscribe.zdict"
    relay, daemon = await ingested_daemon(tmp_path, corpus_dir, corpus_frames,
                                          extra=("--zstd-dictionary-path", str(dictionary)))
    stored = logged_payloads(daemon)
    try:
        client = Jetstream(f"ws://127.0.0.1:{daemon.port}", cursor=0, compress=True)
        events = await take(client, len(stored))
        decoder_id = client._decoder.dictionary_id
        await client.close()
    finally:
        await daemon.stop()
        await relay.close()
    assert decoder_id == LEGACY_DICTIONARY_ID
    assert [e.raw for e in events] == stored


async def test_a_wrong_dictionary_is_an_error_naming_the_one_needed(tmp_path, corpus_dir, corpus_frames):
    relay, daemon = await ingested_daemon(tmp_path, corpus_dir, corpus_frames)
    try:
        client = Jetstream(f"ws://127.0.0.1:{daemon.port}", cursor=0, compress=True,
                           dictionary=corpus_dir / "legacy_subscribe.zdict")
        with pytest.raises(JetstreamError) as caught:
            await take(client, 1)
        await client.close()
    finally:
        await daemon.stop()
        await relay.close()
    message = str(caught.value)
    assert f"needs dictionary id {dictionary_id(active_dictionary(''))}" in message
    assert f"holds dictionary id {LEGACY_DICTIONARY_ID}" in message


async def test_dictionary_fetch_from_an_endpoint_without_one_gives_none(corpus_dir, caplog):
    relay = await start_corpus_relay(corpus_dir)  # answers 404 for every path but subscribeRepos
    try:
        with caplog.at_level("INFO", logger="jetstream.client.zstd"):
            assert await fetch_dictionary(dictionary_url(relay.url)) is None
        assert "event=zstd_dictionary_unavailable" in caplog.text and "status=404" in caplog.text
    finally:
        await relay.close()


async def test_invalid_filters_raise_instead_of_reconnecting(tmp_path, corpus_dir, corpus_frames):
    relay, daemon = await ingested_daemon(tmp_path, corpus_dir, corpus_frames)
    try:
        client = Jetstream(f"ws://127.0.0.1:{daemon.port}", collections=["app.bsky.feed.po*"])
        with pytest.raises(JetstreamError, match="invalid collection"):
            await take(client, 1, timeout=10)
        live = Jetstream(f"ws://127.0.0.1:{daemon.port}", cursor=0)
        await take(live, 1)
        live.update_options(dids=["not-a-did"])
        with pytest.raises(JetstreamError, match="failed to parse subscriber options"):
            await take(live, 10_000, timeout=10)
        assert live.connections == 1
    finally:
        await daemon.stop()
        await relay.close()
