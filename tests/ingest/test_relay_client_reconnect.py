"""The relay connection never gives up: re-dial with capped, jittered backoff, resume from
the stored cursor (or --override-relay-cursor), re-dial after --liveness-ttl of silence and
after an error frame, over real sockets against a scripted relay.

ScriptedRelay (also used by test_pipeline_faults.py) serves connection i the frames of
script i (the last script repeats), starting after the last frame whose seq <= the dialled
cursor, and then stays open and silent (or closes, if asked).
"""
from __future__ import annotations

import asyncio
import logging
import random
from urllib.parse import parse_qs, urlsplit

import pytest
from picows import WSListener, WSMsgType, ws_create_server
from prometheus_client import REGISTRY

from jetstream.config import parse_serve_args
from jetstream.daemon import Daemon
from jetstream.ingest.relay_client import RelayClient, backoff_delay, url_with_cursor
from jetstream.relaysim.seqpatch import find_seq_slot, patch_seq
from tests.ports import free_port

pytestmark = pytest.mark.timeout(60)

PATH = "/xrpc/com.atproto.sync.subscribeRepos"


def seq_of(frame: bytes) -> int | None:
    try:
        return find_seq_slot(frame).seq
    except (ValueError, IndexError):
        return None


def start_index(script: list[bytes], cursor: int | None) -> int:
    """Index after the last frame whose seq <= cursor (0 without a cursor)."""
    if cursor is None:
        return 0
    start = 0
    for index, frame in enumerate(script):
        seq = seq_of(frame)
        if seq is not None and seq <= cursor:
            start = index + 1
    return start


class _ScriptedConnection(WSListener):
    def __init__(self, relay: "ScriptedRelay", frames: list[bytes]) -> None:
        self.relay = relay
        self.frames = frames

    def on_ws_connected(self, transport) -> None:
        for frame in self.frames:
            transport.send(WSMsgType.BINARY, frame)
        if self.relay.close_after_script:
            transport.send_close()
            transport.disconnect()

    def on_ws_frame(self, transport, frame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            transport.disconnect()


class ScriptedRelay:
    def __init__(self, scripts: list[list[bytes]], *, close_after_script: bool = False,
                 honour_cursor: bool = True) -> None:
        self.scripts = scripts
        self.close_after_script = close_after_script
        self.honour_cursor = honour_cursor
        self.dialled_cursors: list[int | None] = []  # one per connection, in order
        self._server = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{PATH}"

    def _listener(self, request):
        query = parse_qs(urlsplit(request.path.decode()).query)
        cursor = int(query["cursor"][0]) if "cursor" in query else None
        script = self.scripts[min(len(self.dialled_cursors), len(self.scripts) - 1)]
        self.dialled_cursors.append(cursor)
        start = start_index(script, cursor) if self.honour_cursor else 0
        return _ScriptedConnection(self, script[start:])

    async def start(self) -> "ScriptedRelay":
        self._server = await ws_create_server(self._listener, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def wait_for_connections(self, count: int, timeout: float = 20) -> None:
        await wait_until(lambda: len(self.dialled_cursors) >= count, timeout)

    async def close(self) -> None:
        self._server.close()


async def wait_until(condition, timeout: float = 20, step: float = 0.02) -> None:
    for _ in range(int(timeout / step)):
        if condition():
            return
        await asyncio.sleep(step)
    raise AssertionError("condition not met in time")


def counter(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def renumbered(frames: list[bytes], first_seq: int) -> list[bytes]:
    return [patch_seq(frame, first_seq + index) for index, frame in enumerate(frames)]


class Collector:
    """A RelayClient's on_frame/cursor pair: the cursor is the last seq received."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.cursor: int | None = None

    def on_frame(self, frame: bytes) -> None:
        self.frames.append(frame)
        seq = seq_of(frame)
        if seq is not None:
            self.cursor = seq


async def run_client(client: RelayClient):
    return asyncio.ensure_future(client.run())


async def stop_client(client: RelayClient, task) -> None:
    client.stop()
    await asyncio.wait_for(task, 10)


# -- pure rules ---------------------------------------------------------------------------------

def test_backoff_doubles_per_attempt_with_jitter_between_half_and_full_step_and_is_capped():
    rng = random.Random(7)
    for attempt in range(1, 15):
        step = min(8.0, 0.25 * 2 ** (attempt - 1))
        delays = [backoff_delay(attempt, 0.25, 8.0, rng) for _ in range(200)]
        assert all(step / 2 <= delay <= step for delay in delays)
        assert max(delays) - min(delays) > step / 4, "jitter must spread re-dials"


def test_cursor_replaces_the_relay_url_query_like_v1():
    assert url_with_cursor("ws://r/x?foo=1", 42) == "ws://r/x?cursor=42"
    assert url_with_cursor("ws://r/x?foo=1", None) == "ws://r/x?foo=1"


# -- RelayClient over sockets ------------------------------------------------------------------

async def test_after_the_relay_closes_the_client_redials_from_the_cursor(corpus_frames):
    frames = renumbered(corpus_frames[:6], 100)
    relay = await ScriptedRelay([frames[:3], frames], close_after_script=True).start()
    collector = Collector()
    closed_before = counter("jetstream_relay_disconnects_total", reason="closed_by_relay")
    client = RelayClient(relay.url, collector.on_frame, lambda: collector.cursor,
                         backoff_initial_s=0.01, backoff_max_s=0.05)
    task = await run_client(client)
    try:
        await relay.wait_for_connections(2)
        await wait_until(lambda: len(collector.frames) == 6)
        assert relay.dialled_cursors[:2] == [None, 102]
        assert collector.frames == frames, "resumed after seq 102: nothing lost, nothing twice"
        assert counter("jetstream_relay_disconnects_total", reason="closed_by_relay") >= closed_before + 1
    finally:
        await stop_client(client, task)
        await relay.close()


async def test_a_reconnect_asked_for_by_the_first_frame_drops_that_connection_at_once(corpus_frames):
    """The pipeline may ask to reconnect (an error frame) while the frames that arrived with the
    handshake are handled, before ws_connect's coroutine resumes: the connection is dropped then,
    with that reason, not left open until the liveness TTL (which is an hour here)."""
    frames = renumbered(corpus_frames[:3], 300)
    relay = await ScriptedRelay([frames]).start()
    asked_before = counter("jetstream_relay_disconnects_total", reason="asked_by_first_frame")
    client = None

    def on_frame(frame: bytes) -> None:
        if seq_of(frame) == 300:
            client.reconnect("asked_by_first_frame")

    client = RelayClient(relay.url, on_frame, lambda: None, liveness_ttl_s=3600,
                         backoff_initial_s=0.01, backoff_max_s=0.05)
    task = await run_client(client)
    try:
        await relay.wait_for_connections(2)
        await wait_until(lambda: counter("jetstream_relay_disconnects_total",
                                         reason="asked_by_first_frame") >= asked_before + 1, timeout=5)
    finally:
        await stop_client(client, task)
        await relay.close()


async def test_a_silent_relay_is_redialled_after_the_liveness_ttl_not_exited(corpus_frames):
    frames = renumbered(corpus_frames[:2], 500)
    relay = await ScriptedRelay([frames]).start()  # sends, then stays open and silent
    collector = Collector()
    liveness_before = counter("jetstream_relay_disconnects_total", reason="liveness")
    client = RelayClient(relay.url, collector.on_frame, lambda: collector.cursor,
                         liveness_ttl_s=0.3, backoff_initial_s=0.01, backoff_max_s=0.05)
    task = await run_client(client)
    try:
        await relay.wait_for_connections(3)
        assert relay.dialled_cursors[:3] == [None, 501, 501]
        assert counter("jetstream_relay_disconnects_total", reason="liveness") >= liveness_before + 2
        assert not task.done(), "the client keeps running"
    finally:
        await stop_client(client, task)
        await relay.close()


async def test_refused_dials_are_retried_with_growing_backoff_until_stopped():
    errors_before = counter("jetstream_relay_connects_total", outcome="error")
    client = RelayClient(f"ws://127.0.0.1:{free_port()}{PATH}", lambda frame: None, lambda: None,
                         backoff_initial_s=0.005, backoff_max_s=0.04)
    task = await run_client(client)
    try:
        await wait_until(lambda: client.attempt >= 5)
        assert counter("jetstream_relay_connects_total", outcome="error") >= errors_before + 4
    finally:
        await stop_client(client, task)


async def test_an_error_frame_does_not_reset_the_backoff(corpus_frames):
    from tests.ingest.test_pipeline_faults import error_frame

    relay = await ScriptedRelay([[error_frame("FutureCursor", "nope")]], close_after_script=True).start()
    client = RelayClient(relay.url, lambda frame: None, lambda: None, backoff_initial_s=0.005, backoff_max_s=0.02)
    task = await run_client(client)
    try:
        await relay.wait_for_connections(4)
        assert client.attempt >= 3, "a relay answering only errors is backed off from"
    finally:
        await stop_client(client, task)
        await relay.close()


# -- through the daemon ---------------------------------------------------------------------------

def serve_config(tmp_path, relay_url: str, *extra: str):
    return parse_serve_args(["--ws-url", relay_url, "--listen-addr", "127.0.0.1:0", "--metrics-listen-addr", "",
                             "--data-dir", str(tmp_path / "data"), "--relay-backoff-initial", "10ms",
                             "--relay-backoff-max", "50ms", *extra], environ={})


async def run_daemon_once(cfg, relay: ScriptedRelay, cursor: int) -> None:
    """Start a daemon, wait for its dial and for the log to reach `cursor`, stop it."""
    dials = len(relay.dialled_cursors)
    daemon = Daemon(cfg)
    await daemon.start()
    try:
        await relay.wait_for_connections(dials + 1)
        await wait_until(lambda: daemon.event_log.relay_cursor() == cursor)
    finally:
        await daemon.stop()


async def test_daemon_resumes_from_the_stored_cursor_and_override_wins_when_given(tmp_path, corpus_frames):
    frames = renumbered(corpus_frames[:5], 1000)
    relay = await ScriptedRelay([frames]).start()
    try:
        await run_daemon_once(serve_config(tmp_path, relay.url, "--override-relay-cursor", "999"), relay, 1004)
        await run_daemon_once(serve_config(tmp_path, relay.url), relay, 1004)
        await run_daemon_once(serve_config(tmp_path, relay.url, "--override-relay-cursor", "1001"), relay, 1004)
        assert relay.dialled_cursors == [999, 1004, 1001]
    finally:
        await relay.close()


async def test_daemon_logs_an_error_frame_and_redials_from_the_stored_cursor(tmp_path, corpus_frames, caplog):
    from tests.ingest.test_pipeline_faults import error_frame

    frames = renumbered(corpus_frames[:4], 2000)
    # The relay does not close after the error frame: the daemon must leave by itself.
    relay = await ScriptedRelay([frames[:2] + [error_frame("ConsumerTooSlow", "you are too slow")], frames]).start()
    redials_before = counter("jetstream_relay_disconnects_total", reason="error_frame")
    errors_before = counter("consumer_events_processed_total", event_type="error", socket_url=relay.url)
    daemon = Daemon(serve_config(tmp_path, relay.url, "--override-relay-cursor", "1999"))
    caplog.set_level(logging.WARNING, logger="jetstream.ingest.pipeline")
    await daemon.start()
    try:
        await wait_until(lambda: daemon.event_log.relay_cursor() == 2003)
        assert relay.dialled_cursors[:2] == [1999, 2001]
    finally:
        await daemon.stop()
        await relay.close()
    assert counter("jetstream_relay_disconnects_total", reason="error_frame") == redials_before + 1
    assert counter("consumer_events_processed_total", event_type="error", socket_url=relay.url) == errors_before + 1
    logged = [r.getMessage() for r in caplog.records if "relay_error_frame" in r.getMessage()]
    assert len(logged) == 1 and "ConsumerTooSlow" in logged[0] and "you are too slow" in logged[0]
