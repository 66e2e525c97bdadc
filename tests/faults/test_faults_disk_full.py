"""Disk full: ingest pauses (log line + metric), subscribers keep being served, ingest resumes
from the durable relay cursor when space returns, and the log holds every op exactly once.

The data dir is a 16 MiB tmpfs (needs root's `mount`; skipped with the reason otherwise),
filled with a filler file until ~1.5 MiB is left. Relay-sim streams synthetic frames; the
expected log is derived independently by decoding the relay's frames 1..cursor.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import re

import pytest
from prometheus_client import REGISTRY

from jetstream.config import parse_serve_args
from jetstream.daemon import Daemon
from jetstream.relaysim.server import RelaySim
from jetstream.relaysim.synthetic import SyntheticSource
from tests.small_disk import fill, mounted_tmpfs
from tests.synthetic_expected import expected_lines
from tests.waiting import until
from tests.wsclient import connect

pytestmark = pytest.mark.timeout(120)

SEED, DIDS = 5, 300
TIME_US = re.compile(rb'"time_us":\d+')


@pytest.fixture
def small_disk(tmp_path):
    with mounted_tmpfs(tmp_path / "disk") as mount_point:
        yield mount_point



def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def time_us_of(payload: bytes) -> int:
    return json.loads(payload)["time_us"]


async def test_disk_full_pauses_ingest_keeps_serving_and_resumes_from_the_durable_cursor(small_disk, caplog):
    caplog.set_level(logging.INFO)
    relay = RelaySim(SyntheticSource(seed=SEED, dids=DIDS), rate=1500)
    await relay.start("127.0.0.1", 0)
    data_dir = small_disk / "data"
    daemon = Daemon(parse_serve_args([
        "--ws-url", relay.url, "--listen-addr", "127.0.0.1:0", "--metrics-listen-addr", "",
        "--data-dir", str(data_dir), "--override-relay-cursor", "0", "--max-sub-rate", "1000000",
        "--relay-backoff-initial", "100ms", "--relay-backoff-max", "500ms"], environ={}))
    await daemon.start(connect_relay=False)
    failures_before = metric("jetstream_log_write_failures_total")
    try:
        url = f"ws://127.0.0.1:{daemon.port}/subscribe"
        _, live = await connect(url)
        await until(lambda: daemon.server.connected_count == 1, "the live client")
        filler = fill(small_disk)
        daemon.connect_relay()

        await until(lambda: metric("jetstream_ingest_paused") == 1, "ingest to pause on the full disk")
        assert any("event=ingest_paused reason=log_write_failed" in r.getMessage() for r in caplog.records)
        assert metric("jetstream_log_write_failures_total") > failures_before
        paused_cursor = daemon.event_log.relay_cursor()
        assert paused_cursor and paused_cursor > 100, "something was ingested before the disk filled"
        await asyncio.sleep(1.5)  # the relay keeps sending; nothing is written while paused
        assert daemon.event_log.relay_cursor() == paused_cursor
        assert metric("jetstream_ingest_paused") == 1

        # Served from what exists: a replay from the start gets every logged event.
        logged = [row.time_us for row in daemon.event_log.read_after(0, 10_000_000, compressed=False)]
        _, replayer = await connect(url + "?cursor=1")
        replayed = await replayer.wait_for_count(len(logged), timeout=30)
        assert [time_us_of(m) for m in replayed] == logged
        assert live.close_code is None and replayer.close_code is None

        os.remove(filler)  # space returns
        await until(lambda: metric("jetstream_ingest_paused") == 0, "ingest to resume")
        assert any("event=ingest_resumed" in r.getMessage() for r in caplog.records)
        await until(lambda: daemon.event_log.relay_cursor() > paused_cursor + 500, "ingest to make progress again")
        await relay.close()  # stop the stream so the log stops moving
        await asyncio.sleep(0.3)
        rows = daemon.event_log.read_after(0, 10_000_000, compressed=False)
        final_cursor = daemon.event_log.relay_cursor()
        # The live client saw every event, across the pause, in order, no gap, no duplicate.
        received = await live.wait_for_count(len(rows), timeout=30)
        assert [time_us_of(m) for m in received] == [row.time_us for row in rows]
        assert live.close_code is None
    finally:
        await daemon.stop()
        await relay.close()
    got = [TIME_US.sub(b'"time_us":0', row.payload, count=1) for row in rows]
    expected = expected_lines(SEED, DIDS, final_cursor)
    print(f"disk_full: paused at cursor {paused_cursor}, final cursor {final_cursor}, events {len(got)}")
    assert len(got) == len(expected)
    assert got == expected, "every op of every frame up to the cursor, exactly once, in relay order"
