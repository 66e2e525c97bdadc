"""Archive -> wire rendering, per stage, against reading the same events from the log (same run).

Run: `.venv/bin/python bench/bench_archive_render.py [--frames N] [--mix synthetic|corpus] [--profile]`.

Ingests N relay frames into a log (IngestPipeline) and seals them into a local archive directory
(ArchiveSealer, blocks of 4096 events), then, in this process and one thread:
- the baseline: the log's rows for every event, v1 JSON (read_after, uncompressed) and the v2 frame
  (read_after v2=True + frame_of_record), in batches of 512: what a log replay reads per event;
- the archive: every block's pread, zstd decompress (`decompress_frame`), `decode_block`, then
  rendering each event to v1 JSON and to the v2 frame, per event (render.v1_json / v2_frame) and
  per block (render.render_block_v1 / render_block_v2), each stage timed on its own.
Prints µs/event per stage and events/s, and the ratio archive/log (the suite's gated number).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

if __name__ == "__main__":  # run as a script: the checkout may not be on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jetstream.archive import render
from jetstream.archive.format import decode_block, decompress_frame
from jetstream.archive.reader import SegmentReader
from jetstream.archive.sealer import ArchiveSealer, SealerSettings
from jetstream.compression import EventCompressor
from jetstream.dictionary import active_dictionary, active_v2_dictionary
from jetstream.framefile import read_frames
from jetstream.implementation import IMPLEMENTATION, LiveRing, frame_of_record
from jetstream.ingest.pipeline import IngestPipeline
from jetstream.ingest.sequencer import Sequencer
from jetstream.log.store import EventLog
from jetstream.relaysim.filesource import FileSource
from jetstream.relaysim.synthetic import SyntheticSource

FRAMES_PATH = Path(__file__).resolve().parents[1] / "tests" / "data" / "frames.bin.zst"
BATCH = 64
LOG_READ = 512


def frames_of(source, count: int) -> list[bytes]:
    seq, out = source.first_seq - 1, []
    for _ in range(count):
        seq = source.next_seq_after(seq)
        out.append(source.frame(seq))
    return out


def mix_frames(mix: str, count: int) -> list[bytes]:
    source = SyntheticSource(seed=1, dids=5000) if mix == "synthetic" else FileSource(read_frames(FRAMES_PATH), loops=0)
    return frames_of(source, count)


def build(frames: list[bytes], directory: str) -> tuple[str, str]:
    """(log dir, archive dir): the frames ingested into a log, every event sealed into segments."""
    log_dir, archive_dir = os.path.join(directory, "log"), os.path.join(directory, "archive")
    with EventLog(log_dir) as event_log:
        pipeline = IngestPipeline(event_log, LiveRing(200_000), Sequencer(0),
                                  EventCompressor(active_dictionary(), active_v2_dictionary()), lambda: None,
                                  socket_url="bench")
        for i in range(0, len(frames), BATCH):
            pipeline.process(frames[i:i + BATCH])
        sealer = ArchiveSealer(event_log, SealerSettings(archive_dir, block_events=4096, seal_after_s=1e9,
                                                         fsync=False))
        sealer.recover()
        sealer.step()
        sealer._seal()  # noqa: SLF001 - seal the rest now
    return log_dir, archive_dir


def log_rates(log_dir: str, rounds: int) -> dict:
    """Events/s the log gives a replay: v1 JSON rows, and v2 rows rendered to their frame."""
    with EventLog(log_dir) as event_log:
        def v1() -> int:
            after, count = 0, 0
            while rows := event_log.read_after(after, LOG_READ, False):
                count += len(rows)
                after = rows[-1].time_us
            return count

        def v2() -> int:
            after, count = 0, 0
            while rows := event_log.read_after(after, LOG_READ, False, v2=True):
                for row in rows:
                    frame_of_record(bytes(row.payload), row.seq, row.time_us)
                count += len(rows)
                after = rows[-1].time_us
            return count

        return {"log_v1": best_rate(v1, rounds), "log_v2": best_rate(v2, rounds)}


def best_rate(work, rounds: int) -> float:
    best = 0.0
    for _ in range(rounds):
        started = time.perf_counter()
        count = work()
        best = max(best, count / (time.perf_counter() - started))
    return best


def block_frames(archive_dir: str) -> list[tuple[bytes, object]]:
    """Every block's zstd frame and index entry, read once (the pread is timed separately)."""
    out = []
    for name in sorted(os.listdir(archive_dir)):
        if not name.endswith(".jss"):
            continue
        with SegmentReader.open(os.path.join(archive_dir, name)) as reader:
            for index, info in enumerate(reader.blocks):
                out.append((reader.read_block_frame(index), info))
    return out


def stage_times(frames: list[tuple[bytes, object]], rounds: int) -> dict:
    """Seconds per stage over every block (best of rounds), and the event count."""
    bodies = [decompress_frame(frame, limit=info.uncompressed_size) for frame, info in frames]
    blocks = [decode_block(body) for body in bodies]
    events = sum(map(len, blocks))
    has_batch = hasattr(render, "render_block_v1")

    def timed(work) -> float:
        best = float("inf")
        for _ in range(rounds):
            started = time.perf_counter()
            work()
            best = min(best, time.perf_counter() - started)
        return best

    def per_event(renderer):
        def work():
            for block in blocks:
                for event in block:
                    renderer(event)
        return work

    def per_block(renderer):
        def work():
            for block in blocks:
                renderer(block)
        return work

    times = {
        "decompress": timed(lambda: [decompress_frame(f, limit=i.uncompressed_size) for f, i in frames]),
        "decode_block": timed(lambda: [decode_block(body) for body in bodies]),
        "v1_per_event": timed(per_event(render.v1_json)),
        "v2_per_event": timed(per_event(render.v2_frame)),
    }
    if has_batch:
        times["v1_block"] = timed(per_block(render.render_block_v1))
        times["v2_block"] = timed(per_block(render.render_block_v2))
    return {"events": events, "times": times}


def measure(frames: list[bytes], rounds: int = 3) -> dict:
    with tempfile.TemporaryDirectory() as directory:
        log_dir, archive_dir = build(frames, directory)
        rates = log_rates(log_dir, rounds)
        staged = stage_times(block_frames(archive_dir), rounds)
    events, times = staged["events"], staged["times"]
    read = times["decompress"] + times["decode_block"]
    v1 = times.get("v1_block", times["v1_per_event"])
    v2 = times.get("v2_block", times["v2_per_event"])
    result = {"events": events, "us_per_event": {k: v / events * 1e6 for k, v in times.items()},
              "archive_v1": events / (read + v1), "archive_v2": events / (read + v2), **rates}
    result["v1_ratio"] = result["archive_v1"] / result["log_v1"]
    result["v2_ratio"] = result["archive_v2"] / result["log_v2"]
    return result


def show(mix: str, result: dict) -> None:
    stages = " ".join(f"{k}={v:.2f}" for k, v in result["us_per_event"].items())
    print(f"impl={IMPLEMENTATION} mix={mix} events={result['events']} us/event: {stages}")
    print(f"  v1: archive {result['archive_v1']:,.0f} events/s, log {result['log_v1']:,.0f} events/s, "
          f"ratio {result['v1_ratio']:.2f}")
    print(f"  v2: archive {result['archive_v2']:,.0f} events/s, log {result['log_v2']:,.0f} events/s, "
          f"ratio {result['v2_ratio']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--frames", type=int, default=30_000)
    parser.add_argument("--mix", choices=("synthetic", "corpus"), default="synthetic")
    parser.add_argument("--profile", action="store_true", help="cProfile the per-block render of every block")
    args = parser.parse_args()
    frames = mix_frames(args.mix, args.frames)
    if not args.profile:
        show(args.mix, measure(frames))
        return
    import cProfile
    import pstats
    with tempfile.TemporaryDirectory() as directory:
        _, archive_dir = build(frames, directory)
        blocks = block_frames(archive_dir)
        for name in ("v1_json", "v2_frame"):
            renderer = getattr(render, name)
            profiler = cProfile.Profile()
            profiler.enable()
            for frame, info in blocks:
                for event in decode_block(decompress_frame(frame, limit=info.uncompressed_size)):
                    renderer(event)
            profiler.disable()
            print(f"--- {name}")
            pstats.Stats(profiler).sort_stats("tottime").print_stats(18)


if __name__ == "__main__":
    main()
