"""The whole pipeline over real sockets: fake relay -> daemon -> websocket clients.

Relay-sim serves the real corpus frames, the daemon ingests them into a real RocksDB
log, and clients receive exactly what production Jetstream v1 served (time_us aside).
"""
from __future__ import annotations

import asyncio
import json
import re

import pytest

from jetstream.config import parse_serve_args
from jetstream.daemon import Daemon
from jetstream.relaysim.server import RelaySim
from tests.wsclient import connect

TIME_US = re.compile(rb'"time_us":\d+')

pytestmark = pytest.mark.timeout(60)


def without_time_us(line: bytes) -> bytes:
    return TIME_US.sub(b'"time_us":0', line, count=1)


def time_us_of(line: bytes) -> int:
    return json.loads(line)["time_us"]


def corpus_first_seq(frames: list[bytes]) -> int:
    import libipld

    _, body = libipld.decode_dag_cbor_multi(frames[0])
    return body["seq"]


async def start_corpus_relay(corpus_dir):
    from jetstream.relaysim.server import FileSource

    relay = RelaySim(FileSource(corpus_dir / "frames.bin.zst", loops=1), rate=0)
    await relay.start("127.0.0.1", 0)
    return relay


def daemon_config(tmp_path, relay_url: str, first_seq: int):
    return parse_serve_args(
        [
            "--ws-url", relay_url,
            "--listen-addr", "127.0.0.1:0",
            "--metrics-listen-addr", "",
            "--data-dir", str(tmp_path / "data"),
            "--override-relay-cursor", str(first_seq - 1),
            "--max-sub-rate", "100000",
        ],
        environ={},
    )


async def test_corpus_flows_to_live_filtered_and_replaying_clients(tmp_path, corpus_dir, corpus_frames, expected_v1_lines):
    relay = await start_corpus_relay(corpus_dir)
    daemon = Daemon(daemon_config(tmp_path, relay.url, corpus_first_seq(corpus_frames)))
    await daemon.start(connect_relay=False)
    base = f"ws://127.0.0.1:{daemon.port}/subscribe"
    try:
        _, everything = await connect(base)
        _, posts = await connect(base + "?wantedCollections=app.bsky.feed.post")
        await asyncio.sleep(0.1)  # both subscribed before the first frame arrives
        daemon.connect_relay()

        received = await everything.wait_for_count(len(expected_v1_lines), timeout=30)
        assert [without_time_us(m) for m in received] == [without_time_us(l) for l in expected_v1_lines]
        times = [time_us_of(m) for m in received]
        assert times == sorted(set(times)), "time_us must strictly increase"

        expected_posts = [l for l in expected_v1_lines
                          if b'"collection":"app.bsky.feed.post"' in l or b'"kind":"identity"' in l or b'"kind":"account"' in l]
        assert len(expected_posts) == 20  # 18 posts + identity + account (they bypass collection filters)
        filtered = await posts.wait_for_count(len(expected_posts), timeout=10)
        assert [without_time_us(m) for m in filtered] == [without_time_us(l) for l in expected_posts]

        _, replayer = await connect(f"{base}?cursor={times[0]}")
        replayed = await replayer.wait_for_count(len(expected_v1_lines), timeout=10)
        assert replayed == received, "replay from the log must give the very bytes sent live"
        await asyncio.sleep(0.2)
        assert len(replayer.messages) == len(expected_v1_lines) and len(everything.messages) == len(expected_v1_lines)
    finally:
        await daemon.stop()
        await relay.close()


async def test_restart_resumes_relay_cursor_without_duplicates(tmp_path, corpus_dir, corpus_frames, expected_v1_lines):
    relay = await start_corpus_relay(corpus_dir)
    cfg = daemon_config(tmp_path, relay.url, corpus_first_seq(corpus_frames))
    daemon = Daemon(cfg)
    await daemon.start()
    try:
        for _ in range(200):
            if daemon.event_log.relay_cursor() == corpus_first_seq(corpus_frames) + len(corpus_frames) - 1:
                break
            await asyncio.sleep(0.05)
    finally:
        await daemon.stop()
    await relay.close()

    # Second run against a relay that would serve the same frames again: the stored cursor
    # (not the override, which only applies when >= 0 and is dropped here) must skip them all.
    relay = await start_corpus_relay(corpus_dir)
    cfg2 = parse_serve_args(["--ws-url", relay.url, "--listen-addr", "127.0.0.1:0", "--metrics-listen-addr", "",
                             "--data-dir", str(tmp_path / "data")], environ={})
    daemon = Daemon(cfg2)
    await daemon.start()
    try:
        await asyncio.sleep(0.5)
        _, replayer = await connect(f"ws://127.0.0.1:{daemon.port}/subscribe?cursor=0")
        got = await replayer.wait_for_count(len(expected_v1_lines), timeout=10)
        await asyncio.sleep(0.3)
        assert len(replayer.messages) == len(expected_v1_lines)
        assert [without_time_us(m) for m in got] == [without_time_us(l) for l in expected_v1_lines]
    finally:
        await daemon.stop()
        await relay.close()
