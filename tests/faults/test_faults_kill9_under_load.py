"""kill -9 under combined load: ingest + replay + live subscribers, 20 rounds.

A relay-sim process streams synthetic frames at 1,500/s; `jetstream serve` runs as its own
process and is killed with SIGKILL 20 times at random moments, restarting each time from
its RocksDB log (with --workers 2 too: the main process is killed, its workers see it go,
close their clients and exit, and the next life's workers serve the same port). Meanwhile four clients in this process stream from it and, each time the
daemon dies, reconnect with `cursor = last time_us + 1`: two live (one of them filtered),
and two that start by replaying the whole log (one of them filtered). Afterwards:
- the log holds exactly the events of relay frames 1..cursor, once each, in relay order
  (derived independently by decoding the relay's frames);
- every client received exactly the log's events (matching its filter) from its first event
  on: nothing missing across 20 crashes, nothing twice, nothing the log lost.
"""
from __future__ import annotations

import asyncio
import os
import random
import re
import sys
from pathlib import Path

import pytest
from picows import WSListener, WSMsgType, ws_connect

from jetstream.log.store import EventLog
from jetstream.relaysim.server import SUBSCRIBE_REPOS_PATH
from tests.ports import free_port
from tests.synthetic_expected import expected_lines
from tests.waiting import until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]  # --workers 2: ~2 min on a loaded 2-core machine

ROUNDS = 20
SEED, DIDS = 17, 300
RELAY_RATE = 1500
TIME_US = re.compile(rb'"time_us":(\d+)')
COLLECTION = re.compile(rb'"collection":"([^"]+)"')
REPO_ROOT = Path(__file__).resolve().parents[2]


async def spawn(*args: str, log_path: Path) -> asyncio.subprocess.Process:
    with open(log_path, "ab") as log_file:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "jetstream.cli", *args, cwd=REPO_ROOT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=log_file, stderr=asyncio.subprocess.STDOUT)


async def relay_connected(port: int) -> bool:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 2)
        return b'"connected":true' in answer
    except (OSError, asyncio.TimeoutError):
        return False
    finally:
        writer.close()


class _Listener(WSListener):
    def __init__(self, client: "ReconnectingClient") -> None:
        self.client = client

    def on_ws_frame(self, transport, frame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            self.client.received.append(int(TIME_US.search(frame.get_payload_as_bytes()).group(1)))
        elif frame.msg_type == WSMsgType.CLOSE:
            transport.disconnect()


class ReconnectingClient:
    """Streams from the daemon; after each disconnect, resumes at its last time_us + 1."""

    def __init__(self, port: int, query: str, first_cursor: int | None, wanted_collection: str | None = None):
        self.port, self.query, self.first_cursor = port, query, first_cursor
        self.wanted_collection = wanted_collection
        self.received: list[int] = []
        self.connections = 0
        self._task = asyncio.ensure_future(self._run())

    def _url(self) -> str:
        cursor = self.received[-1] + 1 if self.received else self.first_cursor
        params = [self.query] if self.query else []
        if cursor is not None:
            params.append(f"cursor={cursor}")
        return f"ws://127.0.0.1:{self.port}/subscribe" + ("?" + "&".join(params) if params else "")

    async def _run(self) -> None:
        while True:
            try:
                transport, _ = await ws_connect(lambda: _Listener(self), self._url())
            except Exception:  # noqa: BLE001 - daemon down or starting: any failure to connect is retried
                await asyncio.sleep(0.05)
                continue
            self.connections += 1
            self._transport = transport
            await transport.wait_disconnected()

    async def stop(self) -> None:
        # Bounded: a stop after a failed assertion must not hang the run on a connect in flight.
        self._task.cancel()
        if getattr(self, "_transport", None) is not None:
            self._transport.disconnect()
        await asyncio.wait([self._task], timeout=5)


def matches(payload: bytes, wanted_collection: str | None) -> bool:
    if wanted_collection is None or b'"kind":"commit"' not in payload[:120]:
        return True  # identity/account events bypass collection filters (v1)
    found = COLLECTION.search(payload)
    return found is not None and found.group(1).decode() == wanted_collection


@pytest.mark.parametrize("workers", [1, 2])
async def test_kill9_under_ingest_replay_and_live_load_loses_and_duplicates_nothing(tmp_path, workers):
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    relay_port, daemon_port = free_port(), free_port()
    data_dir, logs = tmp_path / "data", tmp_path / "logs.txt"
    relay = await spawn("relay-sim", "--synthetic", "true", "--rate", str(RELAY_RATE), "--seed", str(SEED),
                        "--dids", str(DIDS), "--listen-addr", f"127.0.0.1:{relay_port}", "--log-level", "warning",
                        "--clock", "false",  # the source's own seqs: expected_lines rebuilds them
                        log_path=logs)
    serve_args = ["serve", "--ws-url", f"ws://127.0.0.1:{relay_port}{SUBSCRIBE_REPOS_PATH}",
                  "--listen-addr", f"127.0.0.1:{daemon_port}", "--metrics-listen-addr", "",
                  "--data-dir", str(data_dir), "--log-level", "warning", "--max-sub-rate", "1000000",
                  "--workers", str(workers)]  # 2: the main process is killed; its workers follow it out
    clients: list[ReconnectingClient] = []
    daemon = None
    try:
        for round_number in range(ROUNDS + 1):
            first = ["--override-relay-cursor", "0"] if round_number == 0 else []
            daemon = await spawn(*serve_args, *first, log_path=logs)
            await until(lambda: relay_connected(daemon_port), "the daemon to connect to the relay")
            if round_number == 0:
                await asyncio.sleep(0.3)  # something in the log for the replayers
                clients = [
                    ReconnectingClient(daemon_port, "", None),
                    ReconnectingClient(daemon_port, "wantedCollections=app.bsky.feed.like", None, "app.bsky.feed.like"),
                    ReconnectingClient(daemon_port, "", 1),
                    ReconnectingClient(daemon_port, "wantedCollections=app.bsky.feed.post", 1, "app.bsky.feed.post"),
                ]
            if round_number == ROUNDS:
                break  # the last life is not killed: it lets everyone catch up
            await asyncio.sleep(rng.uniform(0.3, 1.2))
            daemon.kill()
            await daemon.wait()
        relay.terminate()
        await relay.wait()
        await asyncio.sleep(1.0)  # clients drain what the last life has
        daemon.terminate()
        assert await asyncio.wait_for(daemon.wait(), 20) == 0
    finally:
        for client in clients:
            await client.stop()
        for process in (daemon, relay):
            if process is not None and process.returncode is None:
                process.kill()
                await process.wait()

    with EventLog(str(data_dir), create=False) as event_log:
        final_cursor = event_log.relay_cursor()
        rows = event_log.read_after(0, 10_000_000, compressed=False)
    print(f"kill9_load: workers={workers} seed={seed} rounds={ROUNDS} final_cursor={final_cursor} events={len(rows)} "
          f"client_events={[len(c.received) for c in clients]} connections={[c.connections for c in clients]}")
    assert final_cursor > ROUNDS * 100, "the daemon made real progress"
    got = [TIME_US.sub(b'"time_us":0', row.payload, count=1) for row in rows]
    assert got == expected_lines(SEED, DIDS, final_cursor), "every op of every frame up to the cursor, exactly once, in order"
    assert [row.seq for row in rows] == list(range(1, len(rows) + 1)), "seq 1..N: no gap, no repeat across kill -9"
    for client in clients:
        assert client.connections >= ROUNDS // 2, "the client really lived through the crashes"
        assert client.received, "the client received events"
        wanted = [row.time_us for row in rows
                  if row.time_us >= client.received[0] and matches(row.payload, client.wanted_collection)]
        assert client.received == wanted, f"client {client.query!r} cursor {client.first_cursor}: gap or duplicate"
    assert clients[2].received[0] == rows[0].time_us, "the replaying client started at the first event"
