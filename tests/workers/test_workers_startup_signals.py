"""Flags and signals that used to run away (issue 22, section 4), on real `jetstream serve` processes:

- `--workers` above 4 x the cores is refused at the config check: exit 2, one line saying why,
  nothing opened;
- SIGTERM during start-up (workers being spawned) stops the daemon and every worker it spawned;
- a worker whose main process is killed (-9) exits with one `worker_main_gone` line, no traceback,
  whether it was serving or still starting;
- SIGHUP is logged (`signal_received signal=1`) by the main process and every worker, and all
  carry on serving and ingesting.
"""
from __future__ import annotations

import signal

import pytest

from jetstream.config import max_workers
from tests.health.ingest_health_helpers import Serve, pid_alive, relay_url, start_relay
from tests.waiting import until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def no_traceback(text: str) -> None:
    assert "Traceback" not in text and "ChannelClosed" not in text, text[-4000:]


async def test_workers_above_four_per_core_are_refused_before_anything_opens(tmp_path):
    daemon = Serve(tmp_path)
    await daemon.start_serving("ws://127.0.0.1:1/xrpc/com.atproto.sync.subscribeRepos", "--workers", "1000")
    assert await daemon.wait() == 2
    [line] = daemon.lines("event=startup_failed")
    assert "flag=--workers" in line and f"between 1 and {max_workers()}" in line and "cores" in line
    assert "each worker is a whole process" in line
    assert not daemon.data_dir.exists(), "refused before the data dir is created"
    assert not daemon.lines("worker_spawned")


@pytest.mark.parametrize("moment", ["first_worker_spawned", "last_worker_spawned"])
async def test_sigterm_during_start_up_stops_the_daemon_and_every_worker_it_spawned(tmp_path, moment):
    workers = min(max_workers(), 8)
    daemon = await Serve(tmp_path).start_serving(
        "ws://127.0.0.1:1/xrpc/com.atproto.sync.subscribeRepos", "--workers", str(workers))
    wanted = 1 if moment == "first_worker_spawned" else workers
    await until(lambda: len(daemon.worker_pids()) >= wanted or not daemon.running, f"{wanted} workers spawned")
    ready_before_signal = bool(daemon.lines("event=daemon_started"))
    daemon.signal(signal.SIGTERM)
    returncode = await daemon.wait()
    pids = daemon.worker_pids()
    await until(lambda: not any(pid_alive(pid) for pid in pids), "every spawned worker to exit", timeout=15)
    text = daemon.text()
    assert returncode == 0, text[-3000:]
    assert daemon.lines("event=signal_received signal=15 action=stop")
    if not ready_before_signal:
        assert daemon.lines("event=startup_interrupted"), text[-3000:]
        assert not daemon.lines("event=daemon_started"), "it stopped instead of finishing the start-up"
    no_traceback(text)


@pytest.mark.parametrize("moment", ["serving", "starting"])
async def test_a_worker_whose_main_process_is_killed_exits_with_one_line(tmp_path, moment):
    relay, relay_port = await start_relay(tmp_path)
    workers = 2
    daemon = await Serve(tmp_path).start_serving(relay_url(relay_port), "--workers", str(workers))
    try:
        if moment == "serving":
            await daemon.wait_ok("the workers serving")
        else:
            await until(lambda: len(daemon.worker_pids()) >= workers, "the workers spawned")
        pids = daemon.worker_pids()
        daemon.signal(signal.SIGKILL)  # the main process only: the workers are left on their own
        await daemon.process.wait()
        await until(lambda: not any(pid_alive(pid) for pid in pids), "every worker to exit", timeout=30)
        await until(lambda: len(daemon.lines("event=worker_main_gone")) == len(pids),
                    "each worker's line", timeout=5)
    finally:
        await daemon.kill()
        await relay.stop()
    text = daemon.text()
    no_traceback(text)
    for pid in pids:
        [line] = [line for line in text.splitlines() if f"pid={pid} " in line and "worker_main_gone" in line]
        assert "action=exit" in line
        after = text[text.index(line) + len(line):]
        assert "worker_stopped" not in after, "nothing more than the one line"


@pytest.mark.parametrize("workers", [1, 2])
async def test_sighup_is_logged_and_every_process_carries_on(tmp_path, workers):
    relay, relay_port = await start_relay(tmp_path)
    daemon = await Serve(tmp_path).start_serving(relay_url(relay_port), "--workers", str(workers))
    try:
        report = await daemon.wait_ok("the daemon serving")
        await until(lambda: len(daemon.lines("event=daemon_started")) == 1, "started")
        daemon.signal_group(signal.SIGHUP)  # a terminal hangup reaches the whole process group
        await until(lambda: len(daemon.lines("event=signal_received signal=1 ")) == workers + (workers > 1),
                    "every process to log the SIGHUP", timeout=10)
        daemon.signal(signal.SIGHUP)  # `systemctl reload`-like: the main process alone
        await until(lambda: len(daemon.lines("event=signal_received signal=1 ")) == workers + (workers > 1) + 1,
                    "the main process to log it again", timeout=10)
        cursor = report["relay"]["cursor"] or 0
        await daemon.wait_health("ingest and serving to go on", lambda status, report: (
            status == 200 and report["status"] == "ok" and (report["relay"]["cursor"] or 0) > cursor + 100))
        assert daemon.running
        assert not daemon.lines("event=worker_exited"), "no worker died of it"
        assert await daemon.stop() == 0
    finally:
        await daemon.kill()
        await relay.stop()
    for line in daemon.lines("event=signal_received signal=1 "):
        assert "action=reopen_logs_and_continue" in line
    assert not daemon.lines("worker_restarting")
    no_traceback(daemon.text())
