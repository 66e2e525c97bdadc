"""`jetstream serve --verify-signatures` over real sockets: relay-sim -> daemon -> websocket client, with the
DID documents served by a fake PLC directory over HTTP; and stale revs remembered across a daemon restart."""
from __future__ import annotations

import asyncio
import re

import libipld
import pytest

from jetstream import metrics
from jetstream.config import parse_serve_args
from jetstream.daemon import Daemon
from jetstream.relaysim.server import FileSource, RelaySim
from tests.ingest.did_fixtures import FakeDidDirectory, load_corpus_did_docs
from tests.wsclient import connect

pytestmark = pytest.mark.timeout(90)

TIME_US = re.compile(rb'"time_us":\d+')


def without_time_us(line: bytes) -> bytes:
    return TIME_US.sub(b'"time_us":0', line, count=1)


def first_seq(frames: list[bytes]) -> int:
    return libipld.decode_dag_cbor_multi(frames[0])[1]["seq"]


def config(tmp_path, relay_url: str, plc_url: str, override_cursor: int, verify_processes: int):
    return parse_serve_args(
        ["--ws-url", relay_url, "--listen-addr", "127.0.0.1:0", "--metrics-listen-addr", "",
         "--data-dir", str(tmp_path / "data"), "--override-relay-cursor", str(override_cursor),
         "--max-sub-rate", "100000", "--verify-signatures", "--plc-url", plc_url,
         "--verify-processes", str(verify_processes)],
        environ={},
    )


async def corpus_relay(corpus_dir) -> RelaySim:
    relay = RelaySim(FileSource(corpus_dir / "frames.bin.zst", loops=1), rate=0)
    await relay.start("127.0.0.1", 0)
    return relay


async def wait_for_cursor(daemon: Daemon, seq: int, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while daemon.event_log.relay_cursor() != seq:
        assert loop.time() < deadline, f"relay cursor {daemon.event_log.relay_cursor()} never reached {seq}"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("verify_processes", [0, 1], ids=["in_loop", "pool"])
async def test_daemon_serves_the_verified_corpus_byte_identical_and_remembers_revs(tmp_path, corpus_dir, corpus_frames,
                                                                                  expected_v1_lines, verify_processes):
    directory = await FakeDidDirectory(load_corpus_did_docs(corpus_dir)).start()
    last_seq = first_seq(corpus_frames) + len(corpus_frames) - 1
    relay = await corpus_relay(corpus_dir)
    daemon = Daemon(config(tmp_path, relay.url, directory.url, first_seq(corpus_frames) - 1, verify_processes))
    verified_before = metrics.VERIFY_COMMITS.labels("verified")._value.get()
    try:
        await daemon.start(connect_relay=False)
        _, client = await connect(f"ws://127.0.0.1:{daemon.port}/subscribe")
        await asyncio.sleep(0.1)
        daemon.connect_relay()
        received = await client.wait_for_count(len(expected_v1_lines), timeout=40)
        assert [without_time_us(m) for m in received] == [without_time_us(l) for l in expected_v1_lines]
        assert metrics.VERIFY_COMMITS.labels("verified")._value.get() - verified_before == 148
        pool = daemon.pipeline.gate.pool
        assert (pool is None) if verify_processes == 0 else (pool.usable and len(pool.pids()) == verify_processes)
        assert max(directory.requests.values()) == 1 and len(directory.requests) == 148
        await wait_for_cursor(daemon, last_seq)
    finally:
        await daemon.stop()
        await relay.close()

    # Restart and read the same frames again (an operator's --override-relay-cursor, or a relay
    # replaying): every commit is now a stale rev, remembered through the log's did_revs rows.
    stale_before = metrics.INGEST_DROPS.labels("stale_rev")._value.get()
    relay = await corpus_relay(corpus_dir)
    daemon = Daemon(config(tmp_path, relay.url, directory.url, first_seq(corpus_frames) - 1, verify_processes))
    try:
        await daemon.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while metrics.INGEST_DROPS.labels("stale_rev")._value.get() - stale_before < 148:
            assert loop.time() < deadline, "the re-sent commits were not all dropped as stale"
            await asyncio.sleep(0.05)
        await wait_for_cursor(daemon, last_seq)
        await asyncio.sleep(0.3)  # nothing more arrives
        assert metrics.INGEST_DROPS.labels("stale_rev")._value.get() - stale_before == 148
        rows = daemon.event_log.read_after(0, 10_000, compressed=False)
        assert len(rows) == len(expected_v1_lines) + 2  # only the #identity and #account events again
        assert max(directory.requests.values()) == 1, "stale commits are dropped before any look-up"
    finally:
        await daemon.stop()
        await relay.close()
        await directory.close()
