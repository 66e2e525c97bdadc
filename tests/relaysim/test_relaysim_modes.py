"""Relay-sim serving modes: burst pacing, the pre-rendered fast path, and the command line."""
from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time

import libipld
import pytest
from picows import WSListener, WSMsgType, ws_connect

from jetstream.relaysim.server import RelaySim
from jetstream.relaysim.synthetic import SyntheticSource, prerendered
from jetstream.relaysim.timeline import Timeline
from tests.wsclient import connect

pytestmark = pytest.mark.timeout(60)

LISTENING = re.compile(r"event=relay_sim_listening url=(\S+)")


def seq_of(frame: bytes) -> int:
    return libipld.decode_dag_cbor_multi(frame)[1]["seq"]


def test_burst_makes_the_first_k_seqs_available_at_start_then_paces_the_rest():
    timeline = Timeline(SyntheticSource(seed=1, dids=10), rate=10, burst=100)
    timeline.start(50.0)
    assert timeline.is_available(100, 50.0) and timeline.is_available(101, 50.0)
    assert not timeline.is_available(102, 50.0)
    assert timeline.available_at(102) == pytest.approx(50.1)
    assert timeline.available_at(111) == pytest.approx(51.0)
    assert timeline.head_seq(50.0) == 101 and timeline.head_seq(51.0) == 111


async def test_a_burst_arrives_at_once_where_the_rate_alone_would_take_a_minute():
    relay = RelaySim(SyntheticSource(seed=1, dids=10), rate=5, burst=300)
    await relay.start("127.0.0.1", 0)
    try:
        _, client = await connect(relay.url + "?cursor=0")
        received = await client.wait_for_count(300, timeout=20)  # 60 s at 5/s without the burst
        assert [seq_of(frame) for frame in received[:300]] == list(range(1, 301))
        await asyncio.sleep(0.3)
        assert len(client.messages) < 320, "after the burst the rate applies again"
    finally:
        await relay.close()


class CountingListener(WSListener):
    """Counts binary frames; nothing else, so the client costs as little CPU as possible."""

    def __init__(self, target: int) -> None:
        self.count = 0
        self.target = target
        self.done = asyncio.get_running_loop().create_future()
        self.last = b""

    def on_ws_frame(self, transport, frame) -> None:
        if frame.msg_type == WSMsgType.BINARY:
            self.count += 1
            if self.count == self.target:
                self.last = frame.get_payload_as_bytes()
                self.done.set_result(time.perf_counter())


async def test_prerendered_mode_serves_one_client_well_over_five_thousand_frames_a_second():
    frames = 40_000
    relay = RelaySim(prerendered(SyntheticSource(seed=1, dids=1000), 2000), rate=0)
    await relay.start("127.0.0.1", 0)
    try:
        started = time.perf_counter()
        transport, listener = await ws_connect(lambda: CountingListener(frames), relay.url + "?cursor=0")
        finished = await asyncio.wait_for(listener.done, 40)
        rate = frames / (finished - started)
        print(f"\nprerendered relay-sim -> one client on loopback (same process): {rate:,.0f} frames/s")
        assert seq_of(listener.last) == frames
        assert rate > 5_000
        transport.disconnect()
    finally:
        await relay.close()


def test_relay_sim_command_serves_synthetic_frames_with_faults():
    command = [sys.executable, "-m", "jetstream.cli", "relay-sim", "--synthetic", "--rate", "0", "--seed", "9",
               "--dids", "50", "--fault-too-big", "5", "--listen-addr", "127.0.0.1:0",
               "--clock", "false"]  # exact seqs and frames: the source's own, not the clock's
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        url = _listening_url(process)
        received = asyncio.run(_first_frames(url, 20))
        source = SyntheticSource(seed=9, dids=50)
        for seq, frame in zip(range(1, 21), received):
            if seq % 5:
                assert frame == source.frame(seq)
            else:
                assert libipld.decode_dag_cbor_multi(frame)[1]["tooBig"] is True and seq_of(frame) == seq
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _listening_url(process: subprocess.Popen) -> str:
    for _ in range(200):
        line = process.stderr.readline()
        if not line:
            break
        match = LISTENING.search(line)
        if match:
            return match.group(1)
    raise AssertionError("relay-sim never logged its listening url")


async def _first_frames(url: str, count: int) -> list[bytes]:
    transport, client = await connect(url + "?cursor=0")
    try:
        return (await client.wait_for_count(count))[:count]
    finally:
        transport.disconnect()
