"""`jetstream serve` as a real process: READY over $NOTIFY_SOCKET, SIGTERM and a forced second signal.

The daemon runs in a subprocess against a RelaySim in the test's loop serving the corpus.
What clients received must be in the log when it is reopened after the process is gone.
"""
from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
import time

import libipld
import pytest
from picows import WSCloseCode

from jetstream.log.store import EventLog
from jetstream.relaysim.server import FileSource, RelaySim
from tests.waiting import until
from tests.wsclient import connect

pytestmark = pytest.mark.timeout(90)

EXIT_BOUND_S = 10.0
_LISTENING = re.compile(rb"event=subscribe_server_listening host=\S+ port=(\d+)")


class ServeProcess:
    """`python -m jetstream.cli serve` with a notify socket; knows its port once READY."""

    def __init__(self, tmp_path, relay_url: str, first_seq: int) -> None:
        self.data_dir = tmp_path / "data"
        self.notify_path = str(tmp_path / "notify.sock")
        self.argv = [sys.executable, "-m", "jetstream.cli", "serve", "--ws-url", relay_url,
                     "--listen-addr", "127.0.0.1:0", "--metrics-listen-addr", "",
                     "--data-dir", str(self.data_dir), "--override-relay-cursor", str(first_seq - 1),
                     "--max-sub-rate", "100000"]
        self.stderr = b""
        self.notifications: list[bytes] = []

    async def start(self) -> int:
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.notify.setblocking(False)
        env = dict(os.environ, NOTIFY_SOCKET=self.notify_path)
        env.pop("WATCHDOG_USEC", None)
        self.process = await asyncio.create_subprocess_exec(
            *self.argv, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        self._stderr_task = asyncio.ensure_future(self._collect_stderr())
        await asyncio.wait_for(self._notified(b"READY=1"), timeout=30)
        # READY=1 and the listening line travel apart (a datagram, a pipe another task reads).
        await until(lambda: _LISTENING.search(self.stderr), "the subscribe_server_listening line", timeout=10)
        return int(_LISTENING.search(self.stderr).group(1))

    async def _collect_stderr(self) -> None:
        while line := await self.process.stderr.readline():
            self.stderr += line

    async def _notified(self, state: bytes) -> None:
        loop = asyncio.get_running_loop()
        while state not in self.notifications:
            self.notifications.append(await loop.sock_recv(self.notify, 4096))

    async def wait_exit(self, timeout: float) -> int:
        code = await asyncio.wait_for(self.process.wait(), timeout)
        await self._stderr_task
        return code

    def close(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        self.notify.close()


def corpus_first_seq(frames: list[bytes]) -> int:
    return libipld.decode_dag_cbor_multi(frames[0])[1]["seq"]


def logged_payloads(data_dir) -> dict[int, bytes]:
    with EventLog(str(data_dir), create=False) as event_log:
        return {row.time_us: row.payload for row in event_log.read_after(-1, 100_000, False)}


async def served(tmp_path, corpus_dir, corpus_frames):
    relay = RelaySim(FileSource(corpus_dir / "frames.bin.zst", loops=1), rate=0)
    await relay.start("127.0.0.1", 0)
    serve = ServeProcess(tmp_path, relay.url, corpus_first_seq(corpus_frames))
    return relay, serve


async def test_sigterm_closes_clients_with_1001_exits_0_and_keeps_what_they_saw(
        tmp_path, corpus_dir, corpus_frames, expected_v1_lines):
    relay, serve = await served(tmp_path, corpus_dir, corpus_frames)
    try:
        port = await serve.start()
        clients = [await connect(f"ws://127.0.0.1:{port}/subscribe{query}") for query in ("?cursor=0", "?cursor=0&compress=true")]
        for _, listener in clients:
            await listener.wait_for_count(len(expected_v1_lines), timeout=30)
        signalled_at = time.monotonic()
        serve.process.send_signal(signal.SIGTERM)
        code = await serve.wait_exit(EXIT_BOUND_S)
        assert code == 0, serve.stderr.decode(errors="replace")[-2000:]
        assert time.monotonic() - signalled_at < EXIT_BOUND_S
        # The serving process froze its start-up objects out of the cyclic GC once ready.
        assert re.search(rb"event=gc_frozen reason=ready objects=[1-9]", serve.stderr)
        for _, listener in clients:
            assert (listener.close_code, listener.close_reason) == (WSCloseCode.GOING_AWAY, "server shutting down")
        assert list(logged_payloads(serve.data_dir).values()) == clients[0][1].payloads
    finally:
        serve.close()
        await relay.close()


async def test_second_signal_forces_exit_and_the_log_still_opens(tmp_path, corpus_dir, corpus_frames, expected_v1_lines):
    relay, serve = await served(tmp_path, corpus_dir, corpus_frames)
    try:
        port = await serve.start()
        _, listener = await connect(f"ws://127.0.0.1:{port}/subscribe?cursor=0")
        received = await listener.wait_for_count(len(expected_v1_lines), timeout=30)
        # Back to back: the second arrives while the first shutdown is still under way.
        serve.process.send_signal(signal.SIGTERM)
        serve.process.send_signal(signal.SIGINT)
        code = await serve.wait_exit(EXIT_BOUND_S)
        assert code == 1, serve.stderr.decode(errors="replace")[-2000:]
        assert b"event=forced_exit" in serve.stderr
        # Every event a client saw was in the WAL before it was sent.
        assert list(logged_payloads(serve.data_dir).values()) == received
    finally:
        serve.close()
        await relay.close()
