"""Whole-pipeline ingest throughput and the latency group commit adds (one core).

Run: .venv/bin/python -m pytest bench/bench_ingest_pipeline.py --benchmark-enable -s

1. Throughput: IngestPipeline.process (decode + sequence + zstd + RocksDB write batch +
   ring append) in batches of 64 frames, on the corpus mix (the 150 real frames replayed
   with fresh seqs) and on the synthetic mix, beside decode_frame alone on the same frames
   in the same run (the ratio says what sequencing and durability cost on top of decoding).
2. Latency: relay-sim -> daemon -> websocket subscriber in one process at 100 frames/s;
   per event, subscriber receive time minus the moment its frame reached the relay client,
   for --group-commit-ms 0, 1, 2, 5. The added latency is reported against 0 ms.
3. --verify-mst: pipeline throughput with v1's MST lookup off and on, interleaved.
"""
from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import pytest
from picows import WSListener, WSMsgType, ws_connect

from jetstream.compression import EventCompressor
from jetstream.config import parse_serve_args
from jetstream.daemon import Daemon
from jetstream.dictionary import active_dictionary, active_v2_dictionary
from jetstream.framefile import read_frames
from jetstream.implementation import LiveRing
from jetstream.ingest.decode import decode_frame
from jetstream.ingest.pipeline import IngestPipeline
from jetstream.ingest.sequencer import Sequencer
from jetstream.log.store import EventLog
from jetstream.relaysim.filesource import FileSource
from jetstream.relaysim.server import RelaySim
from jetstream.relaysim.synthetic import SyntheticSource

DATA_DIR = Path(__file__).resolve().parents[1] / "tests" / "data"
FRAMES_PATH = DATA_DIR / "frames.bin.zst"
BATCH = 64
FRAME_COUNT = 3000


def frames_of(source, count: int) -> list[bytes]:
    seq, out = source.first_seq - 1, []
    for _ in range(count):
        seq = source.next_seq_after(seq)
        out.append(source.frame(seq))
    return out


@pytest.fixture(scope="module")
def corpus_mix() -> list[bytes]:
    if not FRAMES_PATH.exists():
        pytest.skip(f"corpus not found at {FRAMES_PATH}")
    return frames_of(FileSource(read_frames(FRAMES_PATH), loops=0), FRAME_COUNT)


@pytest.fixture(scope="module")
def synthetic_mix() -> list[bytes]:
    return frames_of(SyntheticSource(seed=1, dids=1000), FRAME_COUNT)


def run_pipeline(frames: list[bytes], verify_mst: bool = False) -> tuple[float, int]:
    """(seconds, events) to push `frames` through a fresh pipeline and RocksDB log."""
    with tempfile.TemporaryDirectory() as directory, EventLog(directory) as event_log:
        # The daemon's default compressor: the shipped dictionaries (measured ~10% faster than none).
        compressor = EventCompressor(active_dictionary(), active_v2_dictionary())
        pipeline = IngestPipeline(event_log, LiveRing(200_000), Sequencer(0), compressor, lambda: None,
                                  socket_url="bench", verify_mst=verify_mst)
        events = 0
        started = time.perf_counter()
        for start in range(0, len(frames), BATCH):
            events += pipeline.process(frames[start:start + BATCH])
        return time.perf_counter() - started, events


def decode_only(frames: list[bytes]) -> tuple[float, int]:
    started = time.perf_counter()
    events = sum(len(decode_frame(frame).events) for frame in frames)
    return time.perf_counter() - started, events


def best(fn, frames, repeat: int = 3) -> tuple[float, int]:
    return min((fn(frames) for _ in range(repeat)), key=lambda result: result[0])


def test_pipeline_throughput_corpus_mix(benchmark, corpus_mix):
    benchmark.pedantic(run_pipeline, args=(corpus_mix,), rounds=3)


def test_pipeline_throughput_synthetic_mix(benchmark, synthetic_mix):
    benchmark.pedantic(run_pipeline, args=(synthetic_mix,), rounds=3)


def test_report_throughput(corpus_mix, synthetic_mix):
    lines = ["\nevent=bench_ingest_pipeline batch=%d frames=%d" % (BATCH, FRAME_COUNT)]
    for name, frames in (("corpus mix", corpus_mix), ("synthetic mix", synthetic_mix)):
        pipe_s, events = best(run_pipeline, frames)
        decode_s, decoded_events = best(decode_only, frames)
        assert events == decoded_events
        lines.append(f"  {name:<14} pipeline {len(frames) / pipe_s:>9,.0f} frames/s {events / pipe_s:>9,.0f} events/s"
                     f" | decode alone {len(frames) / decode_s:>9,.0f} frames/s"
                     f" (pipeline = {pipe_s / decode_s:.2f}x decode)")
    print("\n".join(lines))


def test_report_verify_mst_cost(corpus_mix, synthetic_mix):
    """--verify-mst off vs on, interleaved round by round so a busy CPU hits both alike."""
    lines = ["\nevent=bench_ingest_verify_mst batch=%d frames=%d rounds=5" % (BATCH, FRAME_COUNT)]
    for name, frames in (("corpus mix", corpus_mix), ("synthetic mix", synthetic_mix)):
        off_s = on_s = float("inf")
        for _ in range(5):
            off_s = min(off_s, run_pipeline(frames)[0])
            on_s = min(on_s, run_pipeline(frames, verify_mst=True)[0])
        lines.append(f"  {name:<14} off {len(frames) / off_s:>9,.0f} frames/s | on {len(frames) / on_s:>9,.0f} frames/s"
                     f" (on = {off_s / on_s:.2f}x off)")
    print("\n".join(lines))


# -- group-commit latency ---------------------------------------------------------------------------

class _TimedListener(WSListener):
    def __init__(self) -> None:
        self.received_at: list[float] = []

    def on_ws_frame(self, transport, frame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            self.received_at.append(time.perf_counter())


async def measure_latency(group_commit_ms: float, seconds: float, rate: float) -> list[float]:
    source = SyntheticSource(seed=2, dids=1000)
    relay = RelaySim(source, rate=rate)
    await relay.start("127.0.0.1", 0)
    with tempfile.TemporaryDirectory() as directory:
        cfg = parse_serve_args(["--ws-url", relay.url, "--listen-addr", "127.0.0.1:0", "--metrics-listen-addr", "",
                                "--data-dir", directory, "--override-relay-cursor", str(source.first_seq - 1),
                                "--group-commit-ms", str(group_commit_ms), "--max-sub-rate", "1000000"], environ={})
        daemon = Daemon(cfg)
        await daemon.start(connect_relay=False)
        arrivals: list[float] = []
        submit = daemon.relay.on_frame

        def timed_submit(frame: bytes) -> None:
            arrivals.append(time.perf_counter())
            submit(frame)

        daemon.relay.on_frame = timed_submit
        transport, listener = await ws_connect(_TimedListener, f"ws://127.0.0.1:{daemon.port}/subscribe")
        daemon.connect_relay()
        await asyncio.sleep(seconds)
        await daemon.stop()
        transport.disconnect()
    await relay.close()
    # Frame i (seq first_seq + i) yields a known number of events, in order: map events to frames.
    latencies, event_index = [], 0
    for i, arrived in enumerate(arrivals):
        for _ in decode_frame(source.frame(source.first_seq + i)).events:
            if event_index < len(listener.received_at):
                latencies.append(listener.received_at[event_index] - arrived)
            event_index += 1
    return latencies


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def test_report_group_commit_latency():
    import uvloop

    results = {}
    for group_commit_ms in (0, 1, 2, 5):
        latencies = uvloop.run(measure_latency(group_commit_ms, seconds=2.0, rate=100))
        assert len(latencies) > 100
        results[group_commit_ms] = (statistics.median(latencies), percentile(latencies, 0.99), len(latencies))
    base = results[0][0]
    lines = ["\nevent=bench_group_commit_latency rate=100/s (frame at relay client -> event at subscriber)"]
    for group_commit_ms, (p50, p99, count) in results.items():
        lines.append(f"  group-commit-ms={group_commit_ms:<3} p50 {p50 * 1e3:6.2f} ms  p99 {p99 * 1e3:6.2f} ms"
                     f"  added p50 vs 0 ms: {(p50 - base) * 1e3:+.2f} ms  (n={count})")
    print("\n".join(lines))
