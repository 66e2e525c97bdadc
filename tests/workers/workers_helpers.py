"""Real processes for the --workers tests: relay-sim and `jetstream serve --workers N`, and clients.

Clients pick their worker by their loopback source address (127.0.0.x): the daemon keeps one
client IP on one worker, and sockets.worker_of_address says which.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

from picows import WSListener, WSMsgType, ws_connect

from jetstream.relaysim.server import SUBSCRIBE_REPOS_PATH
from jetstream.workers.sockets import worker_of_address
from tests.ports import free_port
from tests.waiting import until

REPO_ROOT = Path(__file__).resolve().parents[2]
TIME_US = re.compile(rb'"time_us":(\d+)')


def address_for_worker(worker: int, workers: int, skip: tuple[str, ...] = ()) -> str:
    """A loopback source address the daemon steers to `worker`."""
    for last in range(2, 255):
        address = f"127.0.0.{last}"
        if address not in skip and worker_of_address(address, workers) == worker:
            return address
    raise AssertionError(f"no loopback address for worker {worker}")


async def spawn(*args: str, log_path: Path) -> asyncio.subprocess.Process:
    with open(log_path, "ab") as log_file:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "jetstream.cli", *args, cwd=REPO_ROOT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=log_file, stderr=asyncio.subprocess.STDOUT)


async def http_get(port: int, path: str, local_ip: str = "127.0.0.1") -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(local_ip, 0))
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def healthz(port: int, local_ip: str = "127.0.0.1") -> dict | None:
    try:
        status, body = await http_get(port, "/healthz", local_ip)
        return json.loads(body)
    except (OSError, ValueError, IndexError, asyncio.TimeoutError):
        return None


async def metrics_text(port: int) -> str:
    _, body = await http_get(port, "/metrics")
    return body.decode()


async def metrics_when(port: int, holds, what: str, timeout: float = 30.0) -> str:
    """The first /metrics scrape for which `holds(text)` is true: the workers push their counters
    to the main process every second, so a count taken right after an action is not summed yet."""
    scraped: list[str] = []

    async def scrape_holds() -> bool:
        scraped.append(await metrics_text(port))
        return bool(holds(scraped[-1]))

    await until(scrape_holds, what, timeout=timeout, interval=0.2)
    return scraped[-1]


def metric_value(text: str, name_and_labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name_and_labels + " "):
            return float(line.split()[-1])
    return None


class WorkersRun:
    """relay-sim (synthetic frames) + `jetstream serve --workers N`, each its own process."""

    def __init__(self, tmp_path: Path, workers: int, *, rate: float = 1000, seed: int = 5, dids: int = 200,
                 frames_file: Path | None = None) -> None:
        self.tmp_path = tmp_path
        self.frames_file = frames_file  # recorded frames instead of synthetic ones (cheaper to send)
        self.workers = workers
        self.rate, self.seed, self.dids = rate, seed, dids
        self.data_dir = tmp_path / "data"
        self.logs = tmp_path / "logs.txt"
        self.relay_port, self.port, self.metrics_port = free_port(), free_port(), free_port()
        self.relay: asyncio.subprocess.Process | None = None
        self.daemon: asyncio.subprocess.Process | None = None

    async def start_relay(self) -> None:
        source = (["--frames-file", str(self.frames_file), "--loops", "0"] if self.frames_file else
                  ["--synthetic", "true", "--seed", str(self.seed), "--dids", str(self.dids)])
        self.relay = await spawn("relay-sim", *source, "--rate", str(self.rate),
                                 "--listen-addr", f"127.0.0.1:{self.relay_port}", "--log-level", "warning",
                                 "--clock", "false", log_path=self.logs)

    @property
    def first_cursor(self) -> int:
        """The relay cursor just before relay-sim's first frame."""
        if self.frames_file is None:
            return 0
        from jetstream.relaysim.filesource import FileSource

        return FileSource(self.frames_file, loops=0).first_seq - 1

    async def start_daemon(self, *extra: str, first_start: bool = True) -> None:
        first = ["--override-relay-cursor", str(self.first_cursor)] if first_start else []
        self.daemon = await spawn(
            "serve", "--workers", str(self.workers), "--ws-url", f"ws://127.0.0.1:{self.relay_port}{SUBSCRIBE_REPOS_PATH}",
            "--listen-addr", f"127.0.0.1:{self.port}", "--metrics-listen-addr", f"127.0.0.1:{self.metrics_port}",
            "--data-dir", str(self.data_dir), "--max-sub-rate", "1000000", *first, *extra, log_path=self.logs)

        async def connected() -> bool:
            report = await healthz(self.port)
            return bool(report and report["status"] == "ok" and report["relay"]["connected"])

        await until(connected, "the daemon to serve and reach the relay")

    async def start(self, *extra: str) -> None:
        await self.start_relay()
        await self.start_daemon(*extra)

    async def stop_relay(self) -> None:
        if self.relay is not None and self.relay.returncode is None:
            self.relay.terminate()
            await self.relay.wait()

    async def stop_daemon(self, timeout: float = 30) -> int:
        self.daemon.terminate()
        return await asyncio.wait_for(self.daemon.wait(), timeout)

    async def kill_all(self) -> None:
        for process in (self.daemon, self.relay):
            if process is not None and process.returncode is None:
                process.kill()
                await process.wait()

    def log_text(self) -> str:
        return self.logs.read_text(errors="replace")


class _Listener(WSListener):
    def __init__(self, client: "ReconnectingClient") -> None:
        self.client = client

    def on_ws_frame(self, transport, frame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            payload = frame.get_payload_as_bytes()
            self.client.received.append(int(TIME_US.search(payload).group(1)))
            self.client.payloads.append(payload)
        elif frame.msg_type == WSMsgType.CLOSE:
            self.client.closes.append((frame.get_close_code(), frame.get_close_reason()))
            transport.disconnect()


class ReconnectingClient:
    """Streams from `local_ip`; after each disconnect, resumes at its last time_us + 1."""

    def __init__(self, port: int, local_ip: str, first_cursor: int | None = None, reconnect: bool = True) -> None:
        self.port, self.local_ip, self.first_cursor = port, local_ip, first_cursor
        self.reconnect = reconnect
        self.received: list[int] = []
        self.payloads: list[bytes] = []
        self.closes: list[tuple] = []
        self.connections = 0
        self.disconnected = asyncio.Event()
        self._task = asyncio.ensure_future(self._run())

    def _url(self) -> str:
        cursor = self.received[-1] + 1 if self.received else self.first_cursor
        query = f"?cursor={cursor}" if cursor is not None else ""
        return f"ws://127.0.0.1:{self.port}/subscribe{query}"

    async def _run(self) -> None:
        while True:
            try:
                transport, _ = await ws_connect(lambda: _Listener(self), self._url(),
                                                local_addr=(self.local_ip, 0))
            except Exception:  # noqa: BLE001 - refused, reset or an upgrade error: the daemon or a worker (re)starting
                await asyncio.sleep(0.05)
                continue
            self.connections += 1
            await transport.wait_disconnected()
            if not self.reconnect:
                self.disconnected.set()
                return

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
