"""The relay client against an endpoint that first streams Jetstream JSON (text frames, real v1
lines), then, on a later connection, real relay frames: `relay_not_a_firehose` degrades health
after a few text frames, with one line, the client backs off instead of reading on, and the
problem clears as soon as relay frames arrive. (The daemon-level case, a real jetstream serve as
the endpoint, is tests/health/test_health_ingest_stopped.py.)"""
from __future__ import annotations

import asyncio
import logging

from picows import WSListener, WSMsgType, ws_create_server

from jetstream.health import Problems
from jetstream.ingest.relay_client import TEXT_FRAMES_TO_DECIDE, RelayClient
from tests.waiting import until


class _Endpoint(WSListener):
    """Connection 1: Jetstream lines as text frames. Later connections: relay frames."""

    connections = 0

    def __init__(self, lines: list[bytes], frames: list[bytes]) -> None:
        self.lines, self.frames = lines, frames

    def on_ws_connected(self, transport) -> None:
        _Endpoint.connections += 1
        if _Endpoint.connections == 1:
            for line in self.lines:
                transport.send(WSMsgType.TEXT, line)
        else:
            for frame in self.frames:
                transport.send(WSMsgType.BINARY, frame)


async def test_text_frames_mean_not_a_firehose_once_and_relay_frames_clear_it(expected_v1_lines, corpus_frames, caplog):
    caplog.set_level(logging.INFO)
    _Endpoint.connections = 0
    server = await ws_create_server(lambda request: _Endpoint(expected_v1_lines[:50], corpus_frames[:20]),
                                    "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    problems, received = Problems(), []
    client = RelayClient(f"ws://127.0.0.1:{port}/subscribe", received.append, lambda: None,
                         backoff_initial_s=0.3, backoff_max_s=0.3, problems=problems)
    task = asyncio.ensure_future(client.run())
    try:
        await until(lambda: problems.is_active("relay_not_a_firehose"), "the verdict")
        [problem] = problems.describe()
        assert "Jetstream /subscribe" in problem["detail"] and "subscribeRepos" in problem["action"]
        assert received == [], "text frames never reach the pipeline"
        await until(lambda: len(received) == 20, "relay frames on the next connection")
        await until(lambda: not problems.is_active("relay_not_a_firehose"), "the problem to clear")
    finally:
        client.stop()
        await asyncio.wait_for(task, 10)
        server.close()
    messages = [record.getMessage() for record in caplog.records]
    assert sum("event=relay_text_frame_ignored" in m for m in messages) == 1, "50 text frames, one line"
    assert sum("problem=relay_not_a_firehose" in m and "health_degraded" in m for m in messages) == 1
    assert any("event=relay_disconnected" in m and "reason=not_a_firehose" in m for m in messages), \
        f"it stops reading after {TEXT_FRAMES_TO_DECIDE} text frames"
