"""How fast does a new cluster node fill its log window from the archive? (issue 24: say how long 24 h takes)

Run: `.venv/bin/python bench/bench_cluster_bootstrap.py [--frames N] [--mix synthetic|corpus] [--profile]`.

1. Ingest N relay frames into a log (IngestPipeline, as a leader does) and seal them all into a
   local archive directory (ArchiveSealer, segments of --archive-segment-bytes' default shape).
2. The bootstrap's load on a fresh log: jetstream/cluster/bootstrap.py's ArchiveBootstrap reading
   those segments, rendering every row with jetstream/archive/render.py (v1 JSON, zstd, v2 record
   and frame) and writing it to the log and the live ring in batches: what a new node does before
   it applies the stream. The stream's part (a binary search of a few get_msg) is not timed.
Reports events/s by wall clock and by this process's CPU, and what a day of the firehose at
86M events/day (~1,000 events/s) would take at that rate on this machine.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

if __name__ == "__main__":  # run as a script: the checkout may not be on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_ingest_pipeline import FRAMES_PATH, frames_of  # the same frames as the ingest bench draws

from jetstream.archive.sealer import ArchiveSealer, SealerSettings
from jetstream.archive.store import LocalStore
from jetstream.cluster.bootstrap import ArchiveBootstrap
from jetstream.compression import EventCompressor
from jetstream.dictionary import active_dictionary, active_v2_dictionary
from jetstream.framefile import read_frames
from jetstream.implementation import LiveRing
from jetstream.ingest.pipeline import IngestPipeline
from jetstream.ingest.sequencer import Sequencer
from jetstream.log.store import EventLog
from jetstream.relaysim.filesource import FileSource
from jetstream.relaysim.synthetic import SyntheticSource

EVENTS_PER_DAY = 86_000_000
BATCH = 64


def build_archive(frames: list[bytes], data_dir: str, archive_dir: str) -> int:
    compressor = EventCompressor(active_dictionary(), active_v2_dictionary())
    with EventLog(data_dir) as event_log:
        pipeline = IngestPipeline(event_log, LiveRing(200_000), Sequencer(0), compressor, lambda: None,
                                  socket_url="bench")
        events = sum(pipeline.process(frames[i:i + BATCH]) for i in range(0, len(frames), BATCH))
        sealer = ArchiveSealer(event_log, SealerSettings(archive_dir, seal_after_s=1e9, fsync=False))
        sealer.recover()
        sealer.step()
        sealer._seal()  # noqa: SLF001 - seal the rest now
    return events


def measure_load(archive_dir: str, data_dir: str, profile: bool) -> dict:
    cfg = SimpleNamespace(event_ttl=1e12, archive_dir=archive_dir, archive_url="", data_dir=data_dir)
    compressor = EventCompressor(active_dictionary(), active_v2_dictionary())
    with EventLog(data_dir) as event_log:
        boot = ArchiveBootstrap(cfg, event_log, None, "bench", "bench.batches", LiveRing(200_000), lambda: None,
                                compressor, None, store=LocalStore(archive_dir))

        async def load() -> None:
            run = boot._segments_of_window(0, 0)  # noqa: SLF001 - the timed part only
            await boot._load(run, 0, run[-1].header.max_seq, 0)  # noqa: SLF001

        profiler = None
        if profile:
            import cProfile
            profiler = cProfile.Profile()
            profiler.enable()
        wall, cpu = time.perf_counter(), time.process_time()
        asyncio.run(load())
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if profiler is not None:
            import pstats
            profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
        assert event_log.newest_seq() == boot.report.loaded_through_seq
    events = boot.report.events
    return {"events": events, "segments": boot.report.segments, "wall_s": wall, "cpu_s": cpu,
            "events_per_s_wall": events / wall, "events_per_s_cpu": events / cpu,
            "day_hours_wall": EVENTS_PER_DAY / (events / wall) / 3600}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--mix", choices=("synthetic", "corpus"), default="synthetic")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    source = SyntheticSource(seed=1, dids=5000) if args.mix == "synthetic" else \
        FileSource(read_frames(FRAMES_PATH), loops=0)
    frames = frames_of(source, args.frames)
    with tempfile.TemporaryDirectory() as directory:
        archive_dir = os.path.join(directory, "archive")
        built = build_archive(frames, os.path.join(directory, "leader"), archive_dir)
        result = measure_load(archive_dir, os.path.join(directory, "new-node"), args.profile)
    assert result["events"] == built
    print(f"mix={args.mix} events={result['events']} segments={result['segments']} "
          f"wall_s={result['wall_s']:.1f} cpu_s={result['cpu_s']:.1f} "
          f"events_per_s_wall={result['events_per_s_wall']:.0f} events_per_s_cpu={result['events_per_s_cpu']:.0f} "
          f"24h_of_86M_events_h={result['day_hours_wall']:.1f}")


if __name__ == "__main__":
    main()
