"""The v2 wire (subscribeEvents) on every worker of `jetstream serve --workers 2`.

Real processes: relay-sim replaying the corpus in a loop, the daemon with two workers. A v2
client on each worker (picked by its loopback source address) replays from seq 1 into live:
both get the same frames, seqs 1, 2, 3, ... without gap or repeat, each frame the v2 form of
the v1 event the same worker sends at the same position.
"""
from __future__ import annotations

import asyncio
import json

import pytest
from picows import ws_connect

from tests.workers.workers_helpers import WorkersRun, address_for_worker
from tests.wsclient import CollectingListener

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

COUNT = 600


async def collect(port: int, path: str, local_ip: str, count: int) -> list[bytes]:
    transport, listener = await ws_connect(CollectingListener, f"ws://127.0.0.1:{port}{path}",
                                           local_addr=(local_ip, 0))
    try:
        return (await listener.wait_for_count(count, timeout=60))[:count]
    finally:
        transport.disconnect()


async def test_both_wires_on_every_worker_carry_the_same_events(tmp_path, corpus_dir):
    run = WorkersRun(tmp_path, 2, rate=400, frames_file=corpus_dir / "frames.bin.zst")
    try:
        await run.start()
        results = []
        for worker in (0, 1):
            ip = address_for_worker(worker, 2)
            v2, v1 = await asyncio.gather(
                collect(run.port, "/xrpc/network.bsky.jetstream.subscribeEvents?cursor=1", ip, COUNT),
                collect(run.port, "/subscribe?cursor=0", ip, COUNT))
            results.append((v2, v1))
        (v2_a, v1_a), (v2_b, v1_b) = results
        assert v2_a == v2_b and v1_a == v1_b
        frames = [json.loads(frame)["payload"] for frame in v2_a]
        assert [frame["seq"] for frame in frames] == list(range(1, COUNT + 1))
        for frame, line in zip(frames, v1_a):
            event = json.loads(line)
            assert frame["did"] == event["did"]
            assert frame["$type"].endswith("#" + event["kind"])
            if event["kind"] == "commit":
                assert (frame["collection"], frame["rkey"]) == (event["commit"]["collection"],
                                                                event["commit"]["rkey"])
    finally:
        await run.kill_all()


async def test_compressed_v2_live_readers_on_every_worker_get_the_zstd_form_of_the_same_frames(tmp_path, corpus_dir):
    # Ingest no longer makes the v2 zstd form: each worker's ring makes it on the first compressed read.
    from jetstream.compression import decompress
    from jetstream.dictionary import active_v2_dictionary, dictionary_id

    dictionary = active_v2_dictionary()
    path = "/xrpc/network.bsky.jetstream.subscribeEvents"
    run = WorkersRun(tmp_path, 2, rate=400, frames_file=corpus_dir / "frames.bin.zst")
    try:
        await run.start()
        for worker in (0, 1):
            ip = address_for_worker(worker, 2)
            compressed, plain = await asyncio.gather(
                collect(run.port, f"{path}?zstdDictionary={dictionary_id(dictionary)}", ip, 300),
                collect(run.port, path, ip, 300))
            frames = [decompress(payload, dictionary) for payload in compressed]
            seqs = [json.loads(frame)["payload"]["seq"] for frame in frames]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
            by_seq = {json.loads(frame)["payload"]["seq"]: frame for frame in plain}
            shared = [frame for seq, frame in zip(seqs, frames) if seq in by_seq]
            assert len(shared) >= 200 and shared == [by_seq[json.loads(frame)["payload"]["seq"]] for frame in shared]
    finally:
        await run.kill_all()
