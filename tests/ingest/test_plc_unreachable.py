"""`jetstream serve --verify-signatures` with its DID directory unreachable: a real daemon process, a
real relay-sim, and a directory on loopback that first refuses connections (nothing listens) or
accepts them and never answers, then answers again.

While it lasts: one `event=plc_unreachable` warning with counts (not one line per DID), /healthz
503 with a `plc_unreachable` problem, `jetstream_plc_unreachable` 1, and (when the directory hangs)
the hold visible in `jetstream_verify_oldest_held_seconds` and in /healthz's relay lag, which is
measured from the relay's own event time. When it answers again: one `event=plc_reachable` line
with the number of failed look-ups, /healthz back to 200 ok.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from jetstream.relaysim.server import SUBSCRIBE_REPOS_PATH
from tests.ports import free_port, port_open
from tests.waiting import until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

REPO_ROOT = Path(__file__).resolve().parents[2]
RESOLVE_TIMEOUT_S = 1.5


class Directory:
    """A DID directory on a fixed loopback port: absent (refused), hanging, or answering 404."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.mode = "hang"
        self._server: asyncio.AbstractServer | None = None
        self._handlers: set[asyncio.Task] = set()
        self.requests = 0

    async def listen(self, mode: str) -> None:
        self.mode = mode
        if self._server is None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._handlers.add(asyncio.current_task())
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                self.requests += 1
                if self.mode == "hang":
                    await asyncio.sleep(3600)  # accepted, read, never answered
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self._handlers.discard(asyncio.current_task())
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for handler in list(self._handlers):
            handler.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return 0, b""


async def healthz(port: int) -> tuple[int, dict]:
    code, body = await asyncio.to_thread(get, port, "/healthz")
    return code, (json.loads(body) if body else {})


async def metric(port: int, name: str) -> float | None:
    _, body = await asyncio.to_thread(get, port, "/metrics")
    match = re.search(rb"^" + name.encode() + rb" (\S+)$", body, re.MULTILINE)
    return float(match.group(1)) if match else None


async def spawn(args: list[str], log_path: Path):
    env = {key: value for key, value in os.environ.items() if not key.startswith("JETSTREAM_")}
    env["PYTHONUNBUFFERED"] = "1"
    with open(log_path, "ab") as log_file:
        return await asyncio.create_subprocess_exec(sys.executable, "-m", "jetstream.cli", *args, cwd=REPO_ROOT,
                                                    env=env, stdout=log_file, stderr=log_file, start_new_session=True)


async def stop(process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 20)
        except asyncio.TimeoutError:
            process.kill()
            await process.wait()


@pytest.mark.parametrize("outage", ["refuses", "never_answers"])
async def test_an_unreachable_plc_is_one_warning_a_degraded_healthz_and_a_visible_hold(tmp_path, outage):
    directory = Directory(free_port())
    if outage == "never_answers":
        await directory.listen("hang")
    relay_port, port, metrics_port = free_port(), free_port(), free_port()
    relay = await spawn(["relay-sim", "--listen-addr", f"127.0.0.1:{relay_port}", "--synthetic", "true",
                         "--rate", "100", "--dids", "30", "--log-level", "warning"], tmp_path / "relay.log")
    log_path = tmp_path / "daemon.log"
    daemon = None
    try:
        await until(lambda: port_open(relay_port), "relay-sim to listen", 30)
        daemon = await spawn(
            ["serve", "--ws-url", f"ws://127.0.0.1:{relay_port}{SUBSCRIBE_REPOS_PATH}",
             "--listen-addr", f"127.0.0.1:{port}", "--metrics-listen-addr", f"127.0.0.1:{metrics_port}",
             "--data-dir", str(tmp_path / "data"), "--verify-signatures", "--plc-url", f"http://127.0.0.1:{directory.port}",
             "--verify-processes", "0", "--did-resolve-timeout", f"{RESOLVE_TIMEOUT_S}s", "--unresolved-did-wait", "3s",
             "--did-negative-ttl", "1s"], log_path)

        def log_text() -> str:
            return log_path.read_text()

        await until(lambda: "event=plc_unreachable " in log_text(), "the outage line", 30)
        code, report = await healthz(port)
        assert code == 503 and report["status"] == "degraded", report
        [problem] = [p for p in report["problems"] if p["kind"] == "plc_unreachable"]
        assert f"http://127.0.0.1:{directory.port}" in problem["detail"] and "look-ups failed" in problem["detail"]
        assert await metric(metrics_port, "jetstream_plc_unreachable") == 1.0

        if outage == "never_answers":
            # Commits of authors not cached wait for the directory: the hold shows in the gauge and
            # in the relay lag of /healthz (the held frames' own relay time), while it lasts.
            held_ages, lags = [], []

            async def hold_seen() -> bool:
                held_ages.append(await metric(metrics_port, "jetstream_verify_oldest_held_seconds") or 0.0)
                lags.append((await healthz(port))[1]["relay"]["lag_seconds"] or 0.0)
                return max(held_ages) >= 0.5 * RESOLVE_TIMEOUT_S and max(lags) >= 0.5 * RESOLVE_TIMEOUT_S

            await until(hold_seen, "the hold to show in the gauge and the relay lag", 30, interval=0.1)

        time.sleep(2.0)  # more look-ups fail meanwhile; still one line
        text = log_text()
        assert text.count("event=plc_unreachable ") == 1
        per_did = text.count("event=did_unresolved ")
        assert per_did <= 2, f"{per_did} per-DID warnings: only the look-ups before the outage was known may warn"

        await directory.listen("answer")  # it answers again (404 for every DID: an answer, not an outage)
        await until(lambda: "event=plc_reachable " in log_text(), "the end-of-outage line", 30)
        line = next(line for line in log_text().splitlines() if "event=plc_reachable " in line)
        failed = int(re.search(r"failed_lookups=(\d+)", line).group(1))
        assert failed >= 3, line

        async def ok() -> bool:
            code, report = await healthz(port)
            return code == 200 and report["status"] == "ok"

        await until(ok, "/healthz to be ok again", 30)
        assert await metric(metrics_port, "jetstream_plc_unreachable") == 0.0
        assert log_text().count("event=plc_unreachable ") == 1
        assert "event=health_recovered problem=plc_unreachable" in log_text()
    finally:
        if daemon is not None:
            await stop(daemon)
        await stop(relay)
        await directory.close()
    assert daemon.returncode == 0, log_path.read_text()[-3000:]
    assert "Traceback" not in log_path.read_text()
