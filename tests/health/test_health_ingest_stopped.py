"""`/healthz` is never "ok" while ingest is stopped (issue 22, section 3): real `jetstream serve`
processes fed by a real relay-sim process, read over loopback.

- disk full (a 16 MiB tmpfs): `ingest_paused` for the whole pause (single process and the
  --workers main process, seen through a worker), the relay lag grows with the wall clock, and
  both recover once space returns;
- a relay that stops sending (relay-sim stopped with SIGSTOP): `relay_stalled` after
  --relay-stall-threshold, lag growing, cleared when events flow again;
- a relay unreachable from the start and later lost: `relay_unreachable` after the threshold, one
  warning per outage, the attempts only at debug, cleared on connect;
- `--ws-url` at a Jetstream `/subscribe` (another jetstream serve): `relay_not_a_firehose`, one
  error line, text frames counted, not logged one by one.
"""
from __future__ import annotations

import asyncio
import os
import signal

import pytest

from tests.health.ingest_health_helpers import Serve, kinds, relay_url, start_relay
from tests.small_disk import fill, mounted_tmpfs
from tests.workers.workers_helpers import free_port, metric_value, metrics_text

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

THRESHOLD = "2s"


@pytest.fixture
def small_disk(tmp_path):
    with mounted_tmpfs(tmp_path / "disk") as mount_point:
        yield mount_point


def cursor_of(report: dict) -> int:
    return report["relay"]["cursor"] or 0


@pytest.mark.parametrize("workers", [1, 2])
async def test_disk_full_degrades_healthz_for_the_whole_pause_and_recovers(tmp_path, small_disk, workers):
    relay, relay_port = await start_relay(tmp_path, rate=300)  # slow enough not to refill 14 MiB at once
    daemon = Serve(tmp_path)
    await daemon.start_serving(relay_url(relay_port), "--workers", str(workers), "--relay-stall-threshold", THRESHOLD,
                               data_dir=small_disk / "data")
    try:
        await daemon.wait_health("ingest under way", lambda status, report: status == 200 and cursor_of(report) > 200)
        filler = fill(small_disk)

        problem = await daemon.wait_problem("ingest_paused")
        assert "refuses writes" in problem["detail"] and "--data-dir" in problem["action"]
        _, report = await daemon.healthz()
        lag_before = report["relay"]["lag_seconds"]
        await asyncio.sleep(3)  # longer than the stall threshold: still one problem, the pause
        status, report = await daemon.healthz()
        assert status == 503 and report["status"] == "degraded" and kinds(report) == ["ingest_paused"]
        assert report["relay"]["lag_seconds"] >= lag_before + 2, "the lag grows with the wall clock while paused"

        os.remove(filler)  # space returns
        report = await daemon.wait_ok("ingest to resume and /healthz to recover")
        report = await daemon.wait_health("the lag to come down", lambda status, report: (
            status == 200 and not report["problems"] and report["relay"]["lag_seconds"] < 5))
        recovered_cursor = cursor_of(report)
        await daemon.wait_health("ingest to go on", lambda status, report: cursor_of(report) > recovered_cursor + 200)
    finally:
        assert await daemon.stop() == 0, daemon.text()[-3000:]
        await relay.stop()
    assert len(daemon.lines("event=health_degraded problem=ingest_paused ")) == 1, "one line per outage"
    assert len(daemon.lines("event=health_recovered problem=ingest_paused ")) == 1
    assert not daemon.lines("problem=relay_stalled")


async def test_a_silent_relay_degrades_healthz_after_the_stall_threshold_and_recovers_when_events_flow(tmp_path):
    relay, relay_port = await start_relay(tmp_path)
    # A long liveness TTL: the connection stays up, the relay just says nothing.
    daemon = await Serve(tmp_path).start_serving(relay_url(relay_port), "--relay-stall-threshold", THRESHOLD,
                                                 "--liveness-ttl", "120s")
    try:
        await daemon.wait_health("ingest under way", lambda status, report: status == 200 and cursor_of(report) > 50)
        relay.signal(signal.SIGSTOP)
        problem = await daemon.wait_problem("relay_stalled")
        assert "no relay event stored" in problem["detail"] and "--relay-stall-threshold" in problem["action"]
        _, first = await daemon.healthz()
        await asyncio.sleep(1.5)
        status, second = await daemon.healthz()
        assert status == 503 and kinds(second) == ["relay_stalled"] and second["relay"]["connected"] is True
        assert second["relay"]["lag_seconds"] >= first["relay"]["lag_seconds"] + 1, "lag grows while nothing arrives"
        assert second["relay"]["lag_seconds"] > 2

        relay.signal(signal.SIGCONT)
        await daemon.wait_ok("events to flow again")
        await daemon.wait_health("the backlog stored and the lag down", lambda status, report: (
            status == 200 and not report["problems"] and report["relay"]["lag_seconds"] < 2))
    finally:
        relay.signal(signal.SIGCONT)
        assert await daemon.stop() == 0, daemon.text()[-3000:]
        await relay.stop()
    assert len(daemon.lines("event=health_degraded problem=relay_stalled ")) == 1
    assert len(daemon.lines("event=health_recovered problem=relay_stalled ")) == 1


async def test_an_unreachable_relay_degrades_healthz_once_past_the_threshold_with_one_warning_per_outage(tmp_path):
    relay_port = free_port()  # nothing listens there yet: the daemon starts offline
    daemon = await Serve(tmp_path).start_serving(relay_url(relay_port), "--relay-stall-threshold", THRESHOLD)
    relay = None
    try:
        problem = await daemon.wait_problem("relay_unreachable")
        assert "no connection to the relay" in problem["detail"] and "--ws-url" in problem["action"]
        _, report = await daemon.healthz()
        assert kinds(report) == ["relay_unreachable"], "the stall it causes is not a second problem"
        attempts = metric_value(await metrics_text(daemon.metrics_port), 'jetstream_relay_connects_total{outcome="error"}')
        assert attempts >= 3

        relay, _ = await start_relay(tmp_path, relay_port)
        await daemon.wait_ok("the relay reached and events stored")
        await relay.stop()  # a second outage
        await daemon.wait_problem("relay_unreachable")
        relay, _ = await start_relay(tmp_path, relay_port, name="relay2")
        await daemon.wait_ok("the relay reached again")
    finally:
        assert await daemon.stop() == 0, daemon.text()[-3000:]
        if relay is not None:
            await relay.stop()
    assert len(daemon.lines("event=relay_unreachable ")) == 2, "one warning per outage"
    assert not daemon.lines("event=relay_connect_failed"), "attempts are logged at debug only"
    assert len(daemon.lines("event=health_degraded problem=relay_unreachable ")) == 2
    assert len(daemon.lines("event=health_recovered problem=relay_unreachable ")) == 2
    assert not daemon.lines("problem=relay_stalled")


async def test_a_jetstream_subscribe_url_as_ws_url_is_named_not_a_firehose_once_and_degrades_healthz(tmp_path):
    relay, relay_port = await start_relay(tmp_path)
    upstream = await Serve(tmp_path, "upstream").start_serving(relay_url(relay_port))
    daemon = None
    try:
        await upstream.wait_health("the upstream jetstream streams", lambda status, report: cursor_of(report) > 50)
        daemon = await Serve(tmp_path).start_serving(f"ws://127.0.0.1:{upstream.port}/subscribe",
                                                     "--relay-stall-threshold", THRESHOLD)
        problem = await daemon.wait_problem("relay_not_a_firehose")
        assert "Jetstream /subscribe" in problem["detail"]
        assert "com.atproto.sync.subscribeRepos" in problem["action"]
        await asyncio.sleep(4)  # re-dials meanwhile (backoff max 500ms): still one line, one problem
        status, report = await daemon.healthz()
        assert status == 503 and kinds(report) == ["relay_not_a_firehose"]
        assert report["relay"]["cursor"] is None, "nothing ingested"
        dropped = metric_value(await metrics_text(daemon.metrics_port), 'jetstream_ingest_drops_total{reason="text_frame"}')
        assert dropped >= 3
    finally:
        if daemon is not None:
            assert await daemon.stop() == 0, daemon.text()[-3000:]
        await upstream.stop()
        await relay.stop()
    assert len(daemon.lines("event=health_degraded problem=relay_not_a_firehose ")) == 1
    assert len(daemon.lines("event=relay_text_frame_ignored")) == 1, "counted, logged once"
    assert len([line for line in daemon.text().splitlines() if "level=ERROR" in line]) == 1, "one error line"
