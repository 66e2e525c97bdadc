"""Relay flapping: the relay drops the TCP connection every few dozen frames for ~30 s.

The daemon re-dials from its cursor hundreds of times. Pinned: open fds, asyncio tasks and
RSS stay bounded (a leaked relay connection would cost an fd and a 16 MiB-capable read
buffer each time), the log holds every op of every relay frame up to the cursor exactly
once and in relay order (derived independently by decoding the relay's frames), and a live
subscriber sees exactly the log, in order.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import time

import pytest

from jetstream.config import parse_serve_args
from jetstream.daemon import Daemon
from jetstream.relaysim.faults import Faults
from jetstream.relaysim.server import RelaySim
from jetstream.relaysim.synthetic import SyntheticSource
from tests.synthetic_expected import expected_lines
from tests.wsclient import connect

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

SEED, DIDS = 23, 300
FLAP_SECONDS = 30.0
DISCONNECT_EVERY = 40  # frames
TIME_US = re.compile(rb'"time_us":\d+')
# Tasks the relay client runs beside the resident ones while it connects, reads and re-dials
# (measured: 3 at most over 750 reconnects), with room for the loop's transient ones; a task left
# behind per reconnect would add hundreds.
RECONNECT_TASKS = 6


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")



async def test_relay_flapping_for_30s_leaks_nothing_and_duplicates_nothing(tmp_path):
    relay = RelaySim(SyntheticSource(seed=SEED, dids=DIDS), rate=1000, faults=Faults(disconnect=DISCONNECT_EVERY))
    await relay.start("127.0.0.1", 0)
    daemon = Daemon(parse_serve_args([
        "--ws-url", relay.url, "--listen-addr", "127.0.0.1:0", "--metrics-listen-addr", "",
        "--data-dir", str(tmp_path / "data"), "--override-relay-cursor", "0", "--max-sub-rate", "1000000",
        "--ring-capacity", "5000", "--relay-backoff-initial", "20ms", "--relay-backoff-max", "100ms"], environ={}))
    await daemon.start(connect_relay=False)
    samples = []
    try:
        _, live = await connect(f"ws://127.0.0.1:{daemon.port}/subscribe")
        # The daemon's own long-lived tasks (ingest, trim, the archive's manifest, sealer and scrub, ...)
        # before the relay is dialled: the bound below is on what reconnecting adds to them.
        resident_tasks = len(asyncio.all_tasks())
        daemon.connect_relay()
        started = time.monotonic()
        while time.monotonic() - started < FLAP_SECONDS:
            await asyncio.sleep(1.0)
            samples.append((time.monotonic() - started, open_fds(), len(asyncio.all_tasks()), rss_bytes(),
                            relay.connections_total))
        await relay.close()
        await asyncio.sleep(0.5)
        rows = daemon.event_log.read_after(0, 10_000_000, compressed=False)
        final_cursor = daemon.event_log.relay_cursor()
        received = await live.wait_for_count(len(rows), timeout=30)
        assert [json.loads(m)["time_us"] for m in received] == [row.time_us for row in rows]
        assert live.close_code is None
    finally:
        await daemon.stop()
        await relay.close()

    warm = [s for s in samples if s[0] >= 5.0]
    reconnects = samples[-1][4]
    print(f"flapping: {reconnects} relay connections in {FLAP_SECONDS:.0f}s, cursor {final_cursor}, "
          f"events {len(rows)}; fds {warm[0][1]}->{max(s[1] for s in warm)}, tasks {resident_tasks} resident, "
          f"max {max(s[2] for s in warm)}, "
          f"rss {warm[0][3] >> 20}->{warm[-1][3] >> 20} MiB")
    assert reconnects >= 100, "the relay really flapped"
    assert final_cursor > reconnects * DISCONNECT_EVERY // 2, "ingest kept making progress between flaps"
    assert max(s[1] for s in warm) <= warm[0][1] + 5, "open fds stay flat across reconnects"
    assert max(s[2] for s in warm) <= resident_tasks + RECONNECT_TASKS, "no task piles up per reconnect"
    assert warm[-1][3] - warm[0][3] < 96 << 20, "RSS stays bounded (memtable and ring growth included)"
    got = [TIME_US.sub(b'"time_us":0', row.payload, count=1) for row in rows]
    expected = expected_lines(SEED, DIDS, final_cursor)
    assert len(got) == len(expected)
    assert got == expected, "every op of every frame up to the cursor, exactly once, in relay order"
