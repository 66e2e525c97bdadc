"""Archive -> wire rendering, per stage, against reading the same events from the log (same run).

Run: `.venv/bin/python bench/bench_archive_render.py [--frames N] [--mix synthetic|corpus] [--profile]`.

Ingests N relay frames into a log (IngestPipeline) and seals them into a local archive directory
(ArchiveSealer, blocks of 4096 events), then, in this process and one thread, per wire:
- the baseline: every event's row from the log, v1 JSON (read_after, uncompressed) or the v2 frame
  (read_after v2=True + frame_of_record), 512 a read: what a log replay reads per event;
- the archive: every block's zstd frame (read once beforehand) decompressed (`decompress_frame`),
  decoded (`decode_block`) and rendered (render.render_block_v1 / render_block_v2; per event where
  the checkout has no batch API, so the script measures a before/after pair as it is).
The passes are interleaved, best of 5, by this process's CPU time (the machine is shared). Prints
events per CPU-second and the ratio archive/log (bench/suite.py's gated numbers), and CPU µs/event
of each archive stage alone. --profile: cProfile of a per-event replay of every block.
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


class Passes:
    """One full pass per wire over the log's rows and over the archive's blocks (see the module docstring)."""

    def __init__(self, event_log: EventLog, frames: list[tuple[bytes, object]]) -> None:
        self.event_log = event_log
        self.frames = frames

    def log_v1(self) -> int:
        after, count = 0, 0
        while rows := self.event_log.read_after(after, LOG_READ, False):
            count += len(rows)
            after = rows[-1].time_us
        return count

    def log_v2(self) -> int:
        after, count = 0, 0
        while rows := self.event_log.read_after(after, LOG_READ, False, v2=True):
            for row in rows:
                frame_of_record(bytes(row.payload), row.seq, row.time_us)
            count += len(rows)
            after = rows[-1].time_us
        return count

    def archive_v1(self) -> int:
        return self._archive(render.v1_json, getattr(render, "render_block_v1", None))

    def archive_v2(self) -> int:
        return self._archive(render.v2_frame, getattr(render, "render_block_v2", None))

    def _archive(self, per_event, per_block) -> int:
        count = 0
        for frame, info in self.frames:
            events = decode_block(decompress_frame(frame, limit=info.uncompressed_size))
            if per_block is not None:
                per_block(events)
            else:
                for event in events:
                    per_event(event)
            count += len(events)
        return count


def block_frames(archive_dir: str) -> list[tuple[bytes, object]]:
    """Every block's zstd frame and index entry, read once (the reads are not timed)."""
    out = []
    for name in sorted(os.listdir(archive_dir)):
        if not name.endswith(".jss"):
            continue
        with SegmentReader.open(os.path.join(archive_dir, name)) as reader:
            for index, info in enumerate(reader.blocks):
                out.append((reader.read_block_frame(index), info))
    return out


def cpu_seconds(work) -> tuple[float, int]:
    """(CPU seconds of this process, the count) of one call: CPU, not wall, as the machine is shared."""
    started = time.process_time()
    count = work()
    return time.process_time() - started, count


def stage_times(frames: list[tuple[bytes, object]], rounds: int) -> dict:
    """CPU µs per event of each archive stage alone (best of rounds)."""
    bodies = [decompress_frame(frame, limit=info.uncompressed_size) for frame, info in frames]
    blocks = [decode_block(body) for body in bodies]
    events = sum(map(len, blocks))

    def best(work) -> float:
        return min(cpu_seconds(work)[0] for _ in range(rounds)) / events * 1e6

    def each(renderer):
        return lambda: [renderer(event) for block in blocks for event in block]

    times = {"decompress": best(lambda: [decompress_frame(f, limit=i.uncompressed_size) for f, i in frames]),
             "decode_block": best(lambda: [decode_block(body) for body in bodies]),
             "v1_json": best(each(render.v1_json)), "v2_frame": best(each(render.v2_frame))}
    if hasattr(render, "render_block_v1"):  # not in a checkout from before the batch API (a before/after run)
        times["render_block_v1"] = best(lambda: [render.render_block_v1(block) for block in blocks])
        times["render_block_v2"] = best(lambda: [render.render_block_v2(block) for block in blocks])
    return times


def measure(frames: list[bytes], rounds: int = 5) -> dict:
    """Events per CPU-second of each pass (best of `rounds`, the passes interleaved), ratios archive/log."""
    with tempfile.TemporaryDirectory() as directory:
        log_dir, archive_dir = build(frames, directory)
        blocks = block_frames(archive_dir)
        with EventLog(log_dir) as event_log:
            passes = Passes(event_log, blocks)
            names = ("log_v1", "archive_v1", "log_v2", "archive_v2")
            rates = dict.fromkeys(names, 0.0)
            for _ in range(rounds):
                for name in names:
                    seconds, count = cpu_seconds(getattr(passes, name))
                    rates[name] = max(rates[name], count / seconds)
        result = {"events": count, "us_per_event": stage_times(blocks, rounds), **rates}
    result["v1_ratio"] = result["archive_v1"] / result["log_v1"]
    result["v2_ratio"] = result["archive_v2"] / result["log_v2"]
    return result


def show(mix: str, result: dict) -> None:
    stages = " ".join(f"{k}={v:.2f}" for k, v in result["us_per_event"].items())
    print(f"impl={IMPLEMENTATION} mix={mix} events={result['events']} us/event: {stages}")
    print(f"  v1: archive {result['archive_v1']:,.0f} events/CPU-s, log {result['log_v1']:,.0f} events/CPU-s, "
          f"ratio {result['v1_ratio']:.2f}")
    print(f"  v2: archive {result['archive_v2']:,.0f} events/CPU-s, log {result['log_v2']:,.0f} events/CPU-s, "
          f"ratio {result['v2_ratio']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--frames", type=int, default=30_000)
    parser.add_argument("--mix", choices=("synthetic", "corpus"), default="synthetic")
    parser.add_argument("--profile", action="store_true", help="cProfile a per-event replay of every block")
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
