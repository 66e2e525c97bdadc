"""`jetstream serve` with no relay to reach (offline `make run`): a real daemon process whose
`--ws-url` points at a closed port keeps re-dialling, says once in plain words that the relay
is unreachable and that it keeps trying, and serves its log to subscribers meanwhile. The
line comes once per outage: again after the relay was reached and lost. Each attempt is a
debug line only (`relay_connect_failed`), as the README says."""
from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import socket
import sys
import time
from pathlib import Path

import pytest
from picows import WSListener, ws_create_server

from jetstream.ingest.relay_client import RelayClient
from jetstream.log.store import EventLog
from tests.corpus_events import event_from_line, time_us_of
from tests.wsclient import connect

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

REPO_ROOT = Path(__file__).resolve().parents[2]
LISTENING = re.compile(rb"event=daemon_started listen=[^:\s]+:(\d+) ")
UNREACHABLE = b"event=relay_unreachable "
CONNECT_FAILED = b"event=relay_connect_failed "
STORED_EVENTS = 20


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_log(data_dir: Path, lines: list[bytes]) -> list[int]:
    """A log holding real v1 lines with recent time_us (inside the default 24 h TTL)."""
    start_us = time.time_ns() // 1000 - 60_000_000
    events = [event_from_line(line, start_us + i) for i, line in enumerate(lines)]
    with EventLog(str(data_dir)) as event_log:
        event_log.append(events, relay_cursor=None)
    return [event.time_us for event in events]


async def read_until(stream, stderr_seen: bytearray, predicate, timeout: float) -> None:
    async def _read() -> None:
        while not predicate(bytes(stderr_seen)):
            line = await stream.readline()
            if not line:
                raise AssertionError(f"daemon exited early:\n{stderr_seen.decode(errors='replace')}")
            stderr_seen.extend(line)

    await asyncio.wait_for(_read(), timeout)


async def test_offline_daemon_reports_the_relay_unreachable_once_and_serves_its_log(tmp_path, expected_v1_lines):
    stored = write_log(tmp_path / "data", expected_v1_lines[:STORED_EVENTS])
    env = {key: value for key, value in os.environ.items() if not key.startswith("JETSTREAM_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "jetstream.cli", "serve",
        "--ws-url", f"ws://127.0.0.1:{closed_port()}/xrpc/com.atproto.sync.subscribeRepos",
        "--listen-addr", "127.0.0.1:0", "--metrics-listen-addr", "", "--data-dir", str(tmp_path / "data"),
        "--relay-backoff-initial", "20ms", "--relay-backoff-max", "100ms", "--log-level", "debug",
        env=env, stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL)
    stderr = bytearray()
    try:
        await read_until(process.stderr, stderr, LISTENING.search, timeout=30)
        port = int(LISTENING.search(stderr).group(1))
        _, client = await connect(f"ws://127.0.0.1:{port}/subscribe?cursor=0")
        replayed = await client.wait_for_count(STORED_EVENTS, timeout=30)
        await read_until(process.stderr, stderr, lambda seen: seen.count(CONNECT_FAILED) >= 5, timeout=30)
    finally:
        process.send_signal(signal.SIGTERM)
        _, rest = await asyncio.wait_for(process.communicate(), 30)
        stderr += rest

    assert [time_us_of(message) for message in replayed] == stored, "subscribers are served from the log"
    assert process.returncode == 0, stderr.decode(errors="replace")
    assert stderr.count(CONNECT_FAILED) >= 5, "it keeps retrying"
    assert all(b"level=DEBUG" in line for line in stderr.splitlines() if CONNECT_FAILED in line), "attempts at debug"
    assert stderr.count(UNREACHABLE) == 1, "one plain-words line, not one per attempt"
    line = next(line for line in stderr.splitlines() if UNREACHABLE in line)
    assert b"cannot reach the relay" in line and b"retrying" in line and b"served from the log" in line


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def count(self, event: str) -> int:
        return sum(message.startswith(f"event={event} ") for message in self.messages)


async def wait_until(condition, timeout: float = 20.0) -> None:
    async def _wait() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(_wait(), timeout)


async def test_the_unreachable_line_comes_once_per_outage_not_once_per_attempt():
    port = closed_port()
    records = _Records()
    relay_log = logging.getLogger("jetstream.ingest.relay_client")
    relay_log.addHandler(records)
    relay_log.setLevel(logging.DEBUG)  # the attempts are debug lines
    client = RelayClient(f"ws://127.0.0.1:{port}/xrpc/com.atproto.sync.subscribeRepos", lambda frame: None,
                         lambda: None, backoff_initial_s=0.005, backoff_max_s=0.02, liveness_ttl_s=0.2)
    task = asyncio.ensure_future(client.run())
    try:
        await wait_until(lambda: records.count("relay_connect_failed") >= 4)
        assert records.count("relay_unreachable") == 1
        relay = await ws_create_server(WSListener, "127.0.0.1", port)  # the relay comes back...
        await wait_until(lambda: records.count("relay_connected") >= 1)
        relay.close()  # ...and goes away: the silent connection ends at the liveness TTL
        failed_before = records.count("relay_connect_failed")
        await wait_until(lambda: records.count("relay_connect_failed") >= failed_before + 4)
        assert records.count("relay_unreachable") == 2, "a new outage is reported once more"
    finally:
        client.stop()
        await asyncio.wait_for(task, 10)
        relay_log.removeHandler(records)

