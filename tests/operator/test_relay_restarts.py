"""Restarts on either side behave like a real relay: relay-sim (seqs and times from the
clock) and the daemon in this process, over real websockets and a real RocksDB log.

- relay-sim restarted: the daemon's cursor is in the new relay's past (OutdatedCursor),
  so events keep coming without --override-relay-cursor, and relay lag reads seconds.
- daemon restarted behind a running relay: the backlog arrives, then pacing continues at
  --rate (no silence long enough to expire --liveness-ttl).
- a different relay host in --ws-url: start live, one relay_changed line with the old cursor.
- a relay answering FutureCursor: the cursor is dropped and ingest continues live.
"""
from __future__ import annotations

import asyncio
import logging

import pytest

from jetstream import metrics
from jetstream.config import parse_serve_args
from jetstream.daemon import Daemon
from jetstream.relaysim.server import RelaySim, SyntheticSource
from jetstream.workers.supervisor import WorkersDaemon
from tests.waiting import until

pytestmark = pytest.mark.timeout(120)

RATE = 40.0


async def start_relay(port: int = 0, host: str = "127.0.0.1") -> RelaySim:
    relay = RelaySim(SyntheticSource(seed=3, dids=40), rate=RATE, clock=True)
    await relay.start(host, port)
    return relay


def daemon_for(tmp_path, url: str, *extra: str, workers: int = 1) -> Daemon:
    cfg = parse_serve_args(["--ws-url", url, "--listen-addr", "127.0.0.1:0", "--metrics-listen-addr", "",
                            "--data-dir", str(tmp_path / "data"), "--relay-backoff-initial", "100ms",
                            "--relay-backoff-max", "500ms", "--workers", str(workers), *extra], environ={})
    return WorkersDaemon(cfg) if workers > 1 else Daemon(cfg)


def messages(caplog, event: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if f"event={event} " in r.getMessage() + " "]


def cursor_of(daemon: Daemon) -> int:
    return daemon.event_log.relay_cursor() or 0


async def test_relay_sim_restart_continues_without_override_and_lag_is_real(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    relay = await start_relay()
    port = relay.port
    daemon = daemon_for(tmp_path, relay.url)
    await daemon.start()
    try:
        await until(lambda: cursor_of(daemon) >= relay.timeline.source.first_seq + 20, what="first relay's frames")
        lag = metrics.RELAY_LAG_SECONDS._value.get()
        assert 0 <= lag < 30, f"relay lag {lag} s: frame times must come from the clock"
        first_cursor = cursor_of(daemon)
        events_before = daemon.event_log.newest_time_us()
        await relay.close()
        await asyncio.sleep(0.5)
        relay = await start_relay(port)  # the same address, seqs from the clock again
        assert relay.timeline.source.first_seq > first_cursor
        await until(lambda: cursor_of(daemon) > relay.timeline.source.first_seq + 20, what="second relay's frames")
        assert daemon.event_log.newest_time_us() > events_before
        assert messages(caplog, "relay_outdated_cursor"), "the old cursor is older than the new relay holds"
    finally:
        await daemon.stop()
        await relay.close()


async def test_daemon_restart_gets_backlog_then_steady_pacing(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    relay = await start_relay()
    try:
        daemon = daemon_for(tmp_path, relay.url)
        await daemon.start()
        await until(lambda: cursor_of(daemon) >= relay.timeline.source.first_seq + 10, what="first frames")
        await daemon.stop()
        await asyncio.sleep(2.0)  # ~80 frames of backlog build up
        backlog = relay.head_seq
        daemon = daemon_for(tmp_path, relay.url, "--liveness-ttl", "1.5s")
        await daemon.start()
        try:
            await until(lambda: cursor_of(daemon) >= backlog, timeout=20, what="the backlog")
            # Then frames keep coming at the rate: sample the cursor for 4 s.
            samples = []
            for _ in range(16):
                await asyncio.sleep(0.25)
                samples.append(cursor_of(daemon))
            assert samples[-1] - samples[0] >= RATE * 3.75 * 0.5, samples  # at least half the rate, loaded machine
            assert all(later > earlier for earlier, later in zip(samples, samples[1:])), samples
            assert not messages(caplog, "relay_liveness_expired")
        finally:
            await daemon.stop()
    finally:
        await relay.close()


@pytest.mark.parametrize("workers", [1, 2])  # the ingesting main process of --workers follows the same rule
async def test_a_different_relay_host_starts_live_and_logs_the_old_cursor(tmp_path, caplog, workers):
    caplog.set_level(logging.INFO)
    first = await start_relay()
    daemon = daemon_for(tmp_path, first.url, workers=workers)
    await daemon.start()
    try:
        await until(lambda: cursor_of(daemon) >= first.timeline.source.first_seq + 5, what="first relay's frames")
    finally:
        await daemon.stop()
    old_cursor = cursor_of(daemon)
    await first.close()
    # Another host (127.0.0.2 is loopback too): its seqs are not the first relay's.
    second = await start_relay(host="127.0.0.2")
    daemon = daemon_for(tmp_path, second.url, workers=workers)
    await daemon.start()
    try:
        await until(lambda: second.connections_total >= 1, what="a dial to the new relay")
        dialled = [connection.cursor for connection in second.connections]
        assert dialled == [None], "the old relay's cursor must not be sent to the new relay"
        changed = messages(caplog, "relay_changed")
        assert len(changed) == 1, changed
        assert "old_relay=127.0.0.1 new_relay=127.0.0.2 " in changed[0] and f"old_cursor={old_cursor} " in changed[0]
        assert daemon.event_log.relay() == "127.0.0.2"
        from jetstream.inspect import inspect_data_dir

        assert inspect_data_dir(tmp_path / "data").relay == "127.0.0.2"  # read beside the running daemon
        await until(lambda: cursor_of(daemon) > 0, what="frames from the new relay")
    finally:
        await daemon.stop()
        await second.close()


async def test_future_cursor_answer_drops_the_cursor_and_goes_live(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    relay = await start_relay()
    far_ahead = relay.timeline.source.first_seq + 10_000_000
    daemon = daemon_for(tmp_path, relay.url, "--override-relay-cursor", str(far_ahead))
    await daemon.start()
    try:
        await until(lambda: 0 < cursor_of(daemon) < far_ahead, what="live frames after FutureCursor")
        dropped = messages(caplog, "relay_cursor_dropped")
        assert dropped and f"old_cursor={far_ahead} " in dropped[0] and "reason=future_cursor" in dropped[0]
    finally:
        await daemon.stop()
        await relay.close()
