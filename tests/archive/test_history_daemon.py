"""History on the live wire against a real `jetstream serve` (issue 24): archive -> log -> live.

relay-sim streams synthetic frames the whole time; the daemon seals small segments quickly and its
TTL is a few seconds, so history leaves the log while clients read. A v2 `subscribeEvents?cursor=1`
must receive every seq from 1 exactly once, in order, into the live stream; a v1 client's live bytes
must equal what `/subscribe?cursor=0` later replays from the archive; the atproto SDK's `replay()`
crosses into the live tail with no gap and no duplicate at ~1k frames/s; and `--workers 2` serves
history too.
"""
from __future__ import annotations

import asyncio
import json
import threading

import pytest
from atproto_jetstream import JetstreamClient

from tests.archive.writer_helpers import SMALL, RelaySim, archive_report, serve, wait_until
from tests.server.history_helpers import V2_PATH
from tests.wsclient import connect

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

HISTORY_FLAGS = (*SMALL, "--event-ttl", "3s", "--ttl-trim-interval", "300ms", "--max-sub-rate", "1000000")


def history_out_of_the_log(server, min_oldest_seq: int = 500) -> None:
    """Until segments are sealed and the TTL trim has dropped the first `min_oldest_seq` events."""
    wait_until(lambda: (server.healthz().get("oldest_seq") or 0) > min_oldest_seq
               and archive_report(server).get("sealed_segments", 0) >= 3, "history out of the log", 120, server)


def _event_seq(frame: bytes) -> int:
    return json.loads(frame)["payload"].get("seq", 0)  # 0: an #info frame


async def v2_until(port: int, query: str, seq: int, timeout: float = 120.0) -> list[int]:
    """Seqs of the event frames received until `seq` (#info frames left out)."""
    transport, client = await connect(f"ws://127.0.0.1:{port}{V2_PATH}?{query}")
    try:
        async def reached() -> None:
            while not client.payloads or _event_seq(client.payloads[-1]) < seq:
                if client.close_code is not None:
                    raise AssertionError(f"closed {client.close_code} {client.close_reason}")
                client.changed.clear()
                await client.changed.wait()
        await asyncio.wait_for(reached(), timeout)
        return [s for s in map(_event_seq, client.payloads) if s]
    finally:
        transport.disconnect()


@pytest.mark.parametrize("workers", [1, 2])
async def test_v2_cursor_1_and_v1_cursor_0_cross_archive_log_and_live(tmp_path, workers):
    relay = RelaySim(tmp_path / "relay.log", rate=400)
    extra = ("--workers", str(workers)) if workers > 1 else ()
    server = serve(tmp_path / "data", relay, *HISTORY_FLAGS, *extra)
    try:
        server.wait_ready()
        live_transport, live = await connect(f"ws://127.0.0.1:{server.port}/subscribe")  # v1, live from now
        await asyncio.to_thread(history_out_of_the_log, server)  # the live client reads meanwhile
        newest = server.healthz()["newest_seq"]
        oldest = server.healthz()["oldest_seq"]
        assert oldest > 500, "the log no longer holds the start"
        seqs = await v2_until(server.port, "cursor=1", newest + 400)  # past what existed at connect: live
        assert seqs == list(range(1, len(seqs) + 1)), "every seq once, in order, archive -> log -> live"
        time_cursor = await v2_until(server.port, "cursor=1000000000000000", newest)  # a time cursor older than all
        assert time_cursor[0] == 1 and time_cursor == list(range(1, len(time_cursor) + 1))
        await live.wait_for_count(501, 60)  # what it was sent while the test waited: it reads on this loop
        live_transport.disconnect()
        live_bytes = list(live.payloads)
        first = json.loads(live_bytes[0])["time_us"]
        assert first < server.healthz()["oldest_time_us"], "the live client's first events left the log"
        transport, replay = await connect(f"ws://127.0.0.1:{server.port}/subscribe?cursor={first}")
        await replay.wait_for_count(len(live_bytes), 120)
        transport.disconnect()
        assert replay.payloads[:len(live_bytes)] == live_bytes, "v1's exact bytes, from the archive"
    finally:
        relay.stop()
        server.stop()


def test_the_sdk_replay_crosses_archive_to_live_with_no_gap_at_1k_frames_per_second(tmp_path):
    relay = RelaySim(tmp_path / "relay.log", rate=1000)
    server = serve(tmp_path / "data", relay, *HISTORY_FLAGS)
    try:
        server.wait_ready()
        history_out_of_the_log(server, 2000)
        target = server.healthz()["newest_seq"] + 3000  # well into the live tail
        seqs: list[int] = []
        failure: list[BaseException] = []

        def run() -> None:
            client = JetstreamClient(base_uri=f"ws://127.0.0.1:{server.port}/xrpc", api_key="any", compress=False)
            try:
                for message in client.replay():
                    seqs.append(message.seq)
                    if message.seq >= target:
                        break
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                failure.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(200)
        assert not failure, failure
        assert seqs and seqs[-1] >= target
        assert seqs == list(range(1, len(seqs) + 1)), "no gap, no duplicate across archive -> live"
    finally:
        relay.stop()
        server.stop()
