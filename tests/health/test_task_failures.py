"""jetstream/tasks.py: no background task of the daemon dies unseen.

A real daemon (real log, real listener, /healthz over HTTP): a task started through its
supervisor that ends with an exception is logged once at error level with its name and the
exception, counted in jetstream_task_failures_total{task}, and turns /healthz into 503
degraded with a `task_failed` problem. The daemon's own tasks, cancelled at shutdown, are
not failures.
"""
from __future__ import annotations

import asyncio
import json
import logging
import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client import REGISTRY

from jetstream.config import parse_serve_args
from jetstream.daemon import Daemon
from jetstream.tasks import TaskSupervisor
from tests.waiting import until

pytestmark = pytest.mark.timeout(60)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def failures_of(task: str) -> float:
    return REGISTRY.get_sample_value("jetstream_task_failures_total", {"task": task}) or 0.0


async def get_healthz(port: int) -> tuple[int, dict]:
    def fetch() -> tuple[int, dict]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    return await asyncio.to_thread(fetch)


async def test_a_failed_background_task_is_logged_counted_and_degrades_healthz(tmp_path, caplog):
    cfg = parse_serve_args(
        ["--ws-url", f"ws://127.0.0.1:{closed_port()}/xrpc/com.atproto.sync.subscribeRepos",
         "--listen-addr", "127.0.0.1:0", "--metrics-listen-addr", "", "--data-dir", str(tmp_path / "data"),
         "--relay-backoff-initial", "50ms", "--relay-backoff-max", "100ms", "--ttl-trim-interval", "0.1s"],
        environ={})
    daemon = Daemon(cfg)
    before = failures_of("probe_task")

    async def fails_after_a_while() -> None:
        await asyncio.sleep(0.05)
        raise RuntimeError("the probe broke")

    with caplog.at_level(logging.INFO):
        await daemon.start()
        try:
            status, report = await get_healthz(daemon.port)
            assert (status, report["status"]) == (200, "ok"), report  # the relay being away is not a task failure
            daemon.tasks.spawn(fails_after_a_while(), "probe_task")
            await until(lambda: failures_of("probe_task") == before + 1, "the failure to be counted", 10)
            status, report = await get_healthz(daemon.port)
            assert status == 503 and report["status"] == "degraded", report
            [problem] = report["problems"]
            assert problem["kind"] == "task_failed"
            assert "probe_task" in problem["detail"] and "the probe broke" in problem["detail"]
        finally:
            await daemon.stop()
    failed_lines = [r for r in caplog.records if r.getMessage().startswith("event=task_failed ")]
    assert len(failed_lines) == 1, [r.getMessage() for r in failed_lines]
    line = failed_lines[0]
    assert line.levelno == logging.ERROR and "task=probe_task" in line.getMessage()
    assert "the probe broke" in line.getMessage() and line.exc_info is not None, "the traceback comes with it"
    # Shutdown cancelled the daemon's own tasks (relay, TTL trim): none of them counts as a failure.
    assert daemon.tasks.failures == 1
    assert failures_of("relay") == failures_of("ttl_trim") == 0


async def test_cancelled_and_finished_tasks_are_not_failures():
    supervisor = TaskSupervisor()
    sleeper = supervisor.spawn(asyncio.sleep(30), "probe_cancelled")
    done = supervisor.spawn(asyncio.sleep(0), "probe_done")
    await done
    sleeper.cancel()
    await asyncio.gather(sleeper, return_exceptions=True)
    await asyncio.sleep(0)  # the done callbacks run
    assert supervisor.failures == 0 and not supervisor.problems.degraded
    assert sleeper.get_name() == "probe_cancelled"
