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
4. v2: pipeline µs/frame as the daemon runs it beside the same pipeline with the events' v2
   records dropped before sequencing (no v2 frame; events_v2 gets the empty record), interleaved:
   what the v2 wire adds to ingest after decoding (the v2 record's decode-side cost is
   bench_ingest_decode's). And the cost moved to serving: ring append + one live fan-out pass
   for a compressed v2 subscriber, with the v2 zstd form made by the ring on demand (as now)
   and made at ingest (as before).
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
from jetstream.events import PendingEvent
from jetstream.framefile import read_frames
from jetstream.implementation import LiveFanout, LiveRing, LiveSlot, Position
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


class WithoutV2Sequencer(Sequencer):
    """The same-run baseline of what v2 adds to ingest: each event sequenced without its v2 record."""

    def sequence(self, pending, compressor):
        make, no_record = tuple.__new__, (b"",)
        return super().sequence([make(PendingEvent, event[:5] + no_record) for event in pending], compressor)


def run_pipeline(frames: list[bytes], verify_mst: bool = False, v2: bool = True,
                 clock=time.perf_counter) -> tuple[float, int]:
    """(seconds, events) to push `frames` through a fresh pipeline and RocksDB log (v2=False: no v2 frames).

    clock: wall time by default; time.thread_time gives the ingest thread's CPU seconds.
    """
    with tempfile.TemporaryDirectory() as directory, EventLog(directory) as event_log:
        # The daemon's default compressor: the shipped dictionaries (measured ~10% faster than none).
        compressor = EventCompressor(active_dictionary(), active_v2_dictionary())
        sequencer = Sequencer(0) if v2 else WithoutV2Sequencer(0)
        pipeline = IngestPipeline(event_log, LiveRing(200_000), sequencer, compressor, lambda: None,
                                  socket_url="bench", verify_mst=verify_mst)
        events = 0
        started = clock()
        for start in range(0, len(frames), BATCH):
            events += pipeline.process(frames[start:start + BATCH])
        elapsed = clock() - started
        if event_log.newest_seq() != events:  # a failed batch is logged, not raised: never time one
            raise RuntimeError(f"the pipeline stored {event_log.newest_seq()} of {events} events")
        return elapsed, events


def decode_only(frames: list[bytes]) -> tuple[float, int]:
    started = time.perf_counter()
    events = sum(len(decode_frame(frame).events) for frame in frames)
    return time.perf_counter() - started, events


def best(fn, frames, repeat: int = 3) -> tuple[float, int]:
    return min((fn(frames) for _ in range(repeat)), key=lambda result: result[0])


def paired_v2_pipeline(frames: list[bytes], rounds: int = 5) -> tuple[float, float]:
    """Best CPU µs per frame of the pipeline (with v2, without v2), interleaved batch by batch.

    Two pipelines, each with its own log, take the same batches in turn (ABBA order), each batch
    timed by the ingest thread's CPU time (RocksDB's background threads excluded): on a shared
    machine a load swing then hits both sides alike, where whole runs in turn differed by 30%.
    """
    best = [float("inf"), float("inf")]
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as directory:
            logs = [EventLog(f"{directory}/v2"), EventLog(f"{directory}/without")]
            try:
                spent = _paired_batches(frames, logs)
            finally:
                for event_log in logs:
                    event_log.close()
        best = [min(best[side], spent[side]) for side in (0, 1)]
    return best[0] / len(frames) * 1e6, best[1] / len(frames) * 1e6


def _paired_batches(frames: list[bytes], logs: list) -> list[float]:
    pipelines = [IngestPipeline(event_log, LiveRing(200_000), sequencer,
                                EventCompressor(active_dictionary(), active_v2_dictionary()), lambda: None,
                                socket_url="bench")
                 for event_log, sequencer in zip(logs, (Sequencer(0), WithoutV2Sequencer(0)))]
    spent, events, clock = [0.0, 0.0], [0, 0], time.thread_time
    for number, start in enumerate(range(0, len(frames), BATCH)):
        batch = frames[start:start + BATCH]
        for side in ((0, 1) if number % 2 == 0 else (1, 0)):
            started = clock()
            events[side] += pipelines[side].process(batch)
            spent[side] += clock() - started
    if events[0] != events[1] or logs[0].newest_seq() != events[0] or logs[1].newest_seq() != events[1]:
        raise RuntimeError(f"the pipelines stored {logs[0].newest_seq()} and {logs[1].newest_seq()} of {events}")
    return spent


def sequenced_events(frames: list[bytes]) -> list:
    """The frames' events as the sequencer makes them (v2 frame, no v2 zstd form)."""
    pending = [event for frame in frames for event in decode_frame(frame).events]
    return Sequencer(0).sequence(pending, EventCompressor(active_dictionary(), active_v2_dictionary()))


def serve_compressed_v2(events: list, batch: int = BATCH) -> float:
    """CPU seconds to append `events` to a ring in batches, each followed by one fan-out pass serving
    one compressed v2 subscriber (the ring makes each v2 zstd form the events lack)."""
    compress_v2 = EventCompressor(None, active_v2_dictionary()).compress_v2
    ring = LiveRing(len(events) + 1, floor_time_us=events[0].time_us - 1, compress_v2=compress_v2)
    fanout = LiveFanout(max_events=batch * 4, max_bytes=1 << 24)
    sent: list[bytes] = []
    slot = LiveSlot(None, Position(ring.floor_time_us), sent.append, None, True, True)
    slot.set_options(None, 0, True)
    fanout.join(slot)
    started = time.thread_time()
    for start in range(0, len(events), batch):
        for event in events[start:start + batch]:
            ring.append(event)
        fanout.step(ring)
    return time.thread_time() - started


def paired_v2_serving(events: list, rounds: int = 7) -> tuple[float, float]:
    """Best CPU µs per event of serve_compressed_v2 (form made by the ring, form made at ingest), interleaved."""
    compress_v2 = EventCompressor(None, active_v2_dictionary()).compress_v2
    premade = [event._replace(v2_zstd=compress_v2(event.v2)) if event.v2 else event for event in events]
    on_demand = made_at_ingest = float("inf")
    for _ in range(rounds):
        on_demand = min(on_demand, serve_compressed_v2(events))
        made_at_ingest = min(made_at_ingest, serve_compressed_v2(premade))
    return on_demand / len(events) * 1e6, made_at_ingest / len(events) * 1e6


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


def test_report_v2_cost(corpus_mix, synthetic_mix):
    """What the v2 wire adds to ingest (same run, interleaved), and the cost moved to a compressed v2 reader."""
    lines = ["\nevent=bench_ingest_v2_cost batch=%d frames=%d rounds=5" % (BATCH, FRAME_COUNT)]
    for name, frames in (("corpus mix", corpus_mix), ("synthetic mix", synthetic_mix)):
        with_v2, without_v2 = paired_v2_pipeline(frames)
        lines.append(f"  {name:<14} CPU with v2 {with_v2:6.1f} µs/frame | without v2 frames {without_v2:6.1f} µs/frame"
                     f" (v2 adds {with_v2 - without_v2:+.1f} µs, ratio {without_v2 / with_v2:.2f})")
    on_demand, made_at_ingest = paired_v2_serving(sequenced_events(corpus_mix))
    lines.append(f"  compressed v2 reader, ring append + fan-out: form made by the ring {on_demand:.2f} µs/event"
                 f" | made at ingest {made_at_ingest:.2f} µs/event (moved {on_demand - made_at_ingest:+.2f} µs)")
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
