"""Jetstream v1's cutover failures, reproduced as named scenarios against the real daemon.

- v1 issues 27 and 31 (https://github.com/bluesky-social/jetstream-legacy/issues/27, /31):
  a client replaying with a rate limit below the ingest rate was dropped (1006) right at
  cutover, because replay had filled its outbox and live sends then overflowed it.
- v1's empty-pass quirk (docs/protocol.md §9, item 1): a cursor between the newest logged
  event and now replayed the whole log.
- Slow clients were dropped without a close frame; here only the lag policy closes them,
  with 1008 and a reason, and what they received up to then has no gap.
Scaled down from the issue's 60 s of history to a few seconds (same mechanics).
"""
from __future__ import annotations

import asyncio
import time

import pytest

from tests.cutover.cutover_helpers import (
    LogView,
    connect_client,
    daemon_for,
    start_relay,
    stop_ingest,
    violations_of,
    wait_all_delivered,
)

pytestmark = pytest.mark.timeout(60)

EVERYTHING = ((), ())


def now_us() -> int:
    return time.time_ns() // 1000


async def wait_until(predicate, timeout: float) -> None:
    async def _wait():
        while not predicate():
            await asyncio.sleep(0.02)
    await asyncio.wait_for(_wait(), timeout)


async def test_v1_jl27_replay_with_rate_limit_below_ingest_is_neither_dropped_nor_gapped(tmp_path, corpus_dir):
    # Ingest ~1,500 events/s; the client may receive 1,000/s: it can never catch up while the
    # relay runs, so it sits at the replay/live boundary's wrong side the whole time. The lag
    # policy is strict (1 s, 0.5 s grace) to show that lag caused by the server's own pacing
    # never counts against a client.
    relay = await start_relay(corpus_dir, rate=1500)
    daemon = daemon_for(tmp_path, relay, "--ring-capacity", "1000", "--max-sub-rate", "1000",
                        "--max-lag-seconds", "1", "--max-lag-grace", "0.5s")
    await daemon.start()
    try:
        await asyncio.sleep(3.0)  # history to replay
        cursor = now_us() - 3_000_000
        client = await connect_client(f"ws://127.0.0.1:{daemon.port}/subscribe?cursor={cursor}")
        await asyncio.sleep(4.0)  # replay, "cutover time" and beyond at ingest > limit
        assert client.close_code is None and not client.disconnected.is_set()
        reader = next(iter(daemon.server.subscribers))
        assert reader.log_steps > 0  # it was reading the log while the ingest outran it
        await stop_ingest(daemon, relay)
        await wait_all_delivered(daemon, timeout=30)  # then catches up at its own pace
        closed_early = client.close_code
        disconnects = dict(daemon.server.disconnects)
        log = LogView.read(daemon.event_log)
    finally:
        await daemon.stop()
        await relay.close()
    assert closed_early is None and disconnects == {}
    assert violations_of(client.payloads, log, cursor, EVERYTHING) == []
    assert len(client.payloads) > 6000


async def test_a_client_that_stops_reading_is_closed_by_lag_policy_with_a_reason_and_no_gap(tmp_path, corpus_dir):
    relay = await start_relay(corpus_dir, rate=2000)
    daemon = daemon_for(tmp_path, relay, "--ring-capacity", "1000", "--max-sub-rate", "100000",
                        "--max-lag-events", "1500", "--max-lag-grace", "0.5s")
    await daemon.start()
    url = f"ws://127.0.0.1:{daemon.port}/subscribe"
    try:
        await asyncio.sleep(0.5)
        cursor = now_us()
        stalled = await connect_client(f"{url}?cursor={cursor}", receive_buffer=4096)
        healthy = await connect_client(f"{url}?cursor={cursor}")
        await asyncio.sleep(0.2)
        stalled.transport.underlying_transport.pause_reading()
        await wait_until(lambda: daemon.server.disconnects["lag_events"] == 1, timeout=20)
        stalled.transport.underlying_transport.resume_reading()  # now it reads the backlog, then the close
        await asyncio.wait_for(stalled.disconnected.wait(), timeout=15)
        await stop_ingest(daemon, relay)
        await wait_all_delivered(daemon, timeout=20)
        disconnects = dict(daemon.server.disconnects)
        healthy_close = healthy.close_code
        log = LogView.read(daemon.event_log)
    finally:
        await daemon.stop()
        await relay.close()
    assert stalled.close_code == 1008
    assert stalled.close_reason.startswith("consuming too slowly")
    assert "lag_events" in stalled.close_reason
    assert disconnects == {"lag_events": 1}
    assert healthy_close is None
    assert stalled.payloads, "it read some events before stalling"
    assert violations_of(stalled.payloads, log, cursor, EVERYTHING, whole_session=False) == []
    assert violations_of(healthy.payloads, log, cursor, EVERYTHING) == []


async def test_cursor_rules_between_newest_and_now_is_live_zero_is_everything_and_inclusive(tmp_path, corpus_dir,
                                                                                           expected_v1_lines):
    from jetstream.relaysim.filesource import FileSource
    from jetstream.relaysim.server import RelaySim

    relay = RelaySim(FileSource(corpus_dir / "frames.bin.zst", loops=1), rate=0)
    await relay.start("127.0.0.1", 0)
    daemon = daemon_for(tmp_path, relay)
    await daemon.start()
    url = f"ws://127.0.0.1:{daemon.port}/subscribe"
    try:
        await wait_until(lambda: len(LogView.read(daemon.event_log).rows) == len(expected_v1_lines), timeout=20)
        log = LogView.read(daemon.event_log)
        newest = log.rows[-1][0]
        between = await connect_client(f"{url}?cursor={newest + 1}")
        everything = await connect_client(f"{url}?cursor=0")
        tenth = await connect_client(f"{url}?cursor={log.rows[9][0]}")
        await wait_until(lambda: len(everything.payloads) == len(log.rows), timeout=10)
        await wait_until(lambda: len(tenth.payloads) == len(log.rows) - 9, timeout=10)
        await asyncio.sleep(0.3)
    finally:
        await daemon.stop()
        await relay.close()
    assert between.payloads == []  # v1 replayed the whole log here
    assert everything.payloads == [row[3] for row in log.rows]
    assert tenth.payloads == [row[3] for row in log.rows[9:]]  # inclusive of the cursor's event
