"""`jetstream tail` as a real subprocess against a real daemon, plus its pure helpers."""
from __future__ import annotations

import asyncio
import json
import signal
import sys

import pytest

from jetstream.client import Jetstream, parse_event
from jetstream.tail import TailStats, human_line, iso_time, parse_cursor
from tests.client.test_client_kit import ingested_daemon, logged_payloads

pytestmark = pytest.mark.timeout(90)
NOW_US = 1_779_719_009_132_431


async def start_tail(*args: str):
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "jetstream.cli", "tail", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


async def read_lines(stream, count: int, timeout: float = 30.0) -> list[bytes]:
    async def _read():
        return [(await stream.readline()).rstrip(b"\n") for _ in range(count)]

    return await asyncio.wait_for(_read(), timeout)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_tail_prints_each_received_message_verbatim_and_exits_0_on_signal(
        tmp_path, corpus_dir, corpus_frames, signum):
    relay, daemon = await ingested_daemon(tmp_path, corpus_dir, corpus_frames)
    stored = logged_payloads(daemon)
    try:
        process = await start_tail(f"ws://127.0.0.1:{daemon.port}", "--cursor", "0")
        lines = await read_lines(process.stdout, len(stored))
        process.send_signal(signum)
        returncode = await asyncio.wait_for(process.wait(), 20)
        rest = await process.stdout.read()
        stderr = await process.stderr.read()
    finally:
        await daemon.stop()
        await relay.close()
    assert lines == stored
    assert rest == b"", "nothing but the events"
    assert returncode == 0, stderr.decode()
    assert b"Traceback" not in stderr


async def test_tail_collection_filter_with_human_format_and_limit_exits_by_itself(
        tmp_path, corpus_dir, corpus_frames):
    relay, daemon = await ingested_daemon(tmp_path, corpus_dir, corpus_frames)
    stored = [p for p in logged_payloads(daemon)
              if b'"kind":"commit"' not in p or b'"collection":"app.bsky.feed.post"' in p]
    try:
        process = await start_tail(f"127.0.0.1:{daemon.port}", "--cursor", "0", "--collection",
                                   "app.bsky.feed.post", "--format", "human", "--limit", str(len(stored)),
                                   "--stats")
        stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    finally:
        await daemon.stop()
        await relay.close()
    assert process.returncode == 0, stderr.decode()
    assert stdout.decode().splitlines() == [human_line(parse_event(p)) for p in stored]
    stats_lines = [l for l in stderr.decode().splitlines() if l.startswith("event=tail_stats")]
    assert stats_lines and f"events={len(stored)} " in stats_lines[-1], "plain stats lines when piped"


async def test_tail_compressed_with_the_legacy_dictionary_prints_the_json(tmp_path, corpus_dir, corpus_frames):
    dictionary = str(corpus_dir / "legacy_subscribe.zdict")
    relay, daemon = await ingested_daemon(tmp_path, corpus_dir, corpus_frames,
                                          extra=("--zstd-dictionary-path", dictionary))
    stored = logged_payloads(daemon)
    try:
        process = await start_tail(f"ws://127.0.0.1:{daemon.port}", "--cursor", "0", "--compress",
                                   "--zstd-dictionary", dictionary, "--limit", str(len(stored)))
        stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    finally:
        await daemon.stop()
        await relay.close()
    assert process.returncode == 0, stderr.decode()
    assert stdout.splitlines() == stored


async def test_tail_reports_a_refused_subscription_and_exits_1(tmp_path, corpus_dir, corpus_frames):
    relay, daemon = await ingested_daemon(tmp_path, corpus_dir, corpus_frames)
    try:
        process = await start_tail(f"ws://127.0.0.1:{daemon.port}", "--did", "not-a-did")
        stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    finally:
        await daemon.stop()
        await relay.close()
    assert process.returncode == 1 and stdout == b""
    assert "invalid subscriber options" in stderr.decode()


def test_cursor_accepts_time_us_and_durations_ago():
    assert parse_cursor("1700000000000000", NOW_US) == 1700000000000000
    assert parse_cursor("0", NOW_US) == 0
    assert parse_cursor("-5m", NOW_US) == NOW_US - 300_000_000
    assert parse_cursor("30s", NOW_US) == NOW_US - 30_000_000
    assert parse_cursor("-1h30m", NOW_US) == NOW_US - 5_400_000_000


def test_cursor_rejects_other_text():
    with pytest.raises(Exception, match="invalid cursor"):
        parse_cursor("yesterday", NOW_US)


def test_human_line_names_operation_collection_and_text(expected_v1_lines):
    events = [parse_event(l) for l in expected_v1_lines]
    post = next(e for e in events if e.kind == "commit" and e.collection == "app.bsky.feed.post"
                and e.operation == "create" and e.record.get("text"))
    line = human_line(post)
    assert line.startswith(iso_time(post.time_us)) and " create " in line
    assert f"app.bsky.feed.post {post.did}/{post.rkey}" in line
    assert repr(" ".join(post.record["text"].split())[:80]) in line
    assert all("\n" not in human_line(e) for e in events)
    account = next(e for e in events if e.kind == "account")
    assert f"active={str(account.active).lower()}" in human_line(account)


def test_iso_time_is_utc_with_microseconds():
    assert iso_time(1_725_516_665_234_703) == "2024-09-05T06:11:05.234703Z"


def test_stats_line_reports_count_rate_and_lag():
    stats = TailStats(now_s=100.0)
    for time_us in (98_000_000, 99_000_000, 99_500_000, 99_600_000):
        stats.record(time_us)
    line = stats.take_line(102.0, Jetstream("ws://127.0.0.1:1"))
    assert line.startswith("events=4 rate_per_s=2.0 lag_s=2.40 ")
    assert stats.take_line(104.0, Jetstream("ws://127.0.0.1:1")).startswith("events=4 rate_per_s=0.0 ")


async def test_tail_heartbeat_counts_heartbeats_in_stats_and_prints_only_events(tmp_path, corpus_dir, corpus_frames):
    relay, daemon = await ingested_daemon(tmp_path, corpus_dir, corpus_frames)
    stored = [p for p in logged_payloads(daemon) if json.loads(p)["kind"] != "commit"]  # identity, account
    newest = json.loads(logged_payloads(daemon)[-1])["time_us"]
    try:
        process = await start_tail(f"ws://127.0.0.1:{daemon.port}", "--cursor", "0", "--heartbeat", "1",
                                   "--collection", "app.none.at.all", "--stats")
        lines = await read_lines(process.stdout, len(stored))

        async def _stats_with_heartbeat() -> bytes:
            while True:  # piped stderr: an event=tail_stats line every 5 s
                line = await process.stderr.readline()
                if b"heartbeats=" in line or not line:
                    return line
        stats_line = await asyncio.wait_for(_stats_with_heartbeat(), 30)
        process.send_signal(signal.SIGTERM)
        returncode = await asyncio.wait_for(process.wait(), 20)
        rest = await process.stdout.read()
    finally:
        await daemon.stop()
        await relay.close()
    assert lines == stored and rest == b""  # heartbeats are never printed
    assert returncode == 0
    assert stats_line.startswith(b"event=tail_stats events=2 ")
    assert b" heartbeat_time_us=%d" % newest in stats_line  # the reader passed every stored event


def test_tail_heartbeat_refuses_values_outside_1_to_3600():
    from jetstream.tail import _heartbeat_seconds

    assert _heartbeat_seconds("30") == 30
    for bad in ("0", "3601", "x", "1.5"):
        with pytest.raises(Exception, match="invalid heartbeat"):
            _heartbeat_seconds(bad)
