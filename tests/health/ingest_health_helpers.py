"""Real processes for the ingest-health tests: relay-sim and `jetstream serve`, each in its own
session (so a test can signal a daemon's whole process group without reaching pytest), with
its log in a file the test reads, and /healthz read over loopback."""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path

from jetstream.relaysim.server import SUBSCRIBE_REPOS_PATH
from tests.waiting import until
from tests.workers.workers_helpers import free_port, http_get

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER_SPAWNED = re.compile(r"event=worker_spawned worker=\d+ pid=(\d+)")


class Proc:
    """One `jetstream ...` command as a process of its own session, logging into `log_path`."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, *args: str) -> "Proc":
        env = {name: value for name, value in os.environ.items() if not name.startswith("JETSTREAM_")}
        env.update(PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO_ROOT))
        with open(self.log_path, "ab") as log_file:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "jetstream.cli", *args, cwd=REPO_ROOT, env=env, start_new_session=True,
                stdout=log_file, stderr=asyncio.subprocess.STDOUT)
        return self

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def signal_group(self, signum: int) -> None:
        os.killpg(self.process.pid, signum)

    async def wait(self, timeout: float = 30) -> int:
        return await asyncio.wait_for(self.process.wait(), timeout)

    async def stop(self, timeout: float = 30) -> int:
        if self.running:
            self.process.terminate()
        return await asyncio.wait_for(self.process.wait(), timeout)

    async def kill(self) -> None:
        if self.running:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await self.process.wait()

    def text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def lines(self, needle: str) -> list[str]:
        return [line for line in self.text().splitlines() if needle in line]


async def start_relay(tmp_path: Path, port: int | None = None, rate: float = 500, name: str = "relay") -> tuple[Proc, int]:
    """relay-sim with synthetic frames whose `time` is now (its default clock)."""
    port = port or free_port()
    relay = await Proc(tmp_path / f"{name}.log").start(
        "relay-sim", "--synthetic", "true", "--seed", "5", "--dids", "200", "--rate", str(rate),
        "--listen-addr", f"127.0.0.1:{port}", "--log-level", "warning")
    return relay, port


def relay_url(port: int) -> str:
    return f"ws://127.0.0.1:{port}{SUBSCRIBE_REPOS_PATH}"


class Serve(Proc):
    """`jetstream serve` on a free port with its metrics on another."""

    def __init__(self, tmp_path: Path, name: str = "daemon") -> None:
        super().__init__(tmp_path / f"{name}.log")
        self.port, self.metrics_port = free_port(), free_port()
        self.data_dir = tmp_path / f"{name}-data"

    async def start_serving(self, ws_url: str, *extra: str, data_dir: Path | None = None) -> "Serve":
        self.data_dir = data_dir or self.data_dir
        await self.start("serve", "--ws-url", ws_url, "--listen-addr", f"127.0.0.1:{self.port}",
                         "--metrics-listen-addr", f"127.0.0.1:{self.metrics_port}", "--data-dir", str(self.data_dir),
                         "--max-sub-rate", "1000000", "--relay-backoff-initial", "100ms",
                         "--relay-backoff-max", "500ms", *extra)
        return self

    async def healthz(self) -> tuple[int, dict] | None:
        """(HTTP status, report) of /healthz, or None while nothing answers."""
        try:
            status, body = await http_get(self.port, "/healthz")
            return status, json.loads(body)
        except (OSError, ValueError, IndexError, asyncio.TimeoutError):
            return None

    async def wait_health(self, what: str, predicate, timeout: float = 60) -> dict:
        """Poll /healthz until predicate(status, report); the report then."""
        seen: list = []

        async def holds() -> bool:
            answer = await self.healthz()
            seen[:] = [answer]
            return answer is not None and predicate(*answer)

        try:
            await until(holds, what, timeout=timeout, interval=0.1)
        except AssertionError:
            raise AssertionError(f"{what}: last /healthz {seen}\n--- log tail ---\n{self.text()[-3000:]}") from None
        return seen[0][1]

    async def wait_problem(self, kind: str, timeout: float = 60) -> dict:
        """/healthz answers 503 degraded with `kind` among its problems; that problem."""
        report = await self.wait_health(
            f"/healthz degraded with {kind}",
            lambda status, report: status == 503 and report.get("status") == "degraded"
            and kind in kinds(report), timeout)
        return next(problem for problem in report["problems"] if problem["kind"] == kind)

    async def wait_ok(self, what: str, timeout: float = 60) -> dict:
        return await self.wait_health(
            what, lambda status, report: status == 200 and report.get("status") == "ok" and not report["problems"],
            timeout)

    def worker_pids(self) -> list[int]:
        return [int(pid) for pid in WORKER_SPAWNED.findall(self.text())]


def kinds(report: dict) -> list[str]:
    return [problem["kind"] for problem in report.get("problems", [])]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) is gone for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
