"""How fast the fake relay can feed an ingest: generation cost and frames/s served.

Measures, in one run: the synthetic generator's cost per frame, and the frames/s one
client receives from `jetstream relay-sim` (its own process, like a real relay) with live
generation versus --prerender, printed as a ratio. Run:

    .venv/bin/python bench/bench_relaysim.py [--frames 100000] [--prerender 5000]

Not part of the test suite's pass/fail (tests/relaysim asserts only a loose floor).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import time

from picows import WSListener, WSMsgType, ws_connect

from jetstream.relaysim.synthetic import SyntheticSource, prerendered

LISTENING = re.compile(r"event=relay_sim_listening url=(\S+)")


class CountingListener(WSListener):
    def __init__(self, target: int) -> None:
        self.count = 0
        self.bytes = 0
        self.target = target
        self.done = asyncio.get_running_loop().create_future()

    def on_ws_frame(self, transport, frame) -> None:
        if frame.msg_type == WSMsgType.BINARY:
            self.count += 1
            self.bytes += len(frame.get_payload_as_memoryview())
            if self.count == self.target and not self.done.done():
                self.done.set_result(time.perf_counter())


def generation_cost(frames: int) -> float:
    source = SyntheticSource(seed=1, dids=1000)
    started = time.perf_counter()
    for seq in range(1, frames + 1):
        source.frame(seq)
    return (time.perf_counter() - started) / frames


def prerender_cost(frames: int) -> float:
    started = time.perf_counter()
    prerendered(SyntheticSource(seed=1, dids=1000), frames)
    return time.perf_counter() - started


async def receive(url: str, frames: int) -> tuple[float, float]:
    """(frames/s, MB/s) of one client reading `frames` frames from seq 1."""
    started = time.perf_counter()
    transport, listener = await ws_connect(lambda: CountingListener(frames), url + "?cursor=0",
                                           max_frame_size=64 * 1024 * 1024)
    finished = await asyncio.wait_for(listener.done, 600)
    transport.disconnect()
    elapsed = finished - started
    return frames / elapsed, listener.bytes / elapsed / 1e6


def served_rate(frames: int, extra_flags: list[str]) -> tuple[float, float]:
    command = [sys.executable, "-m", "jetstream.cli", "relay-sim", "--synthetic", "--rate", "0",
               "--listen-addr", "127.0.0.1:0", "--log-level", "info", "--clock", "false", *extra_flags]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        url = None
        while url is None:
            line = process.stderr.readline()
            if not line:
                raise RuntimeError("relay-sim exited before listening")
            match = LISTENING.search(line)
            url = match.group(1) if match else None
        return asyncio.run(receive(url, frames))
    finally:
        process.terminate()
        process.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100_000, help="frames received per served-rate run")
    parser.add_argument("--prerender", type=int, default=5_000, help="frames rendered once for --prerender")
    args = parser.parse_args()

    per_frame = generation_cost(3_000)
    print(f"synthetic generation: {per_frame * 1e6:.1f} us/frame ({1 / per_frame:,.0f} frames/s, one core)")
    print(f"pre-rendering {args.prerender} frames: {prerender_cost(args.prerender):.2f} s")
    live_frames = min(args.frames, 20_000)  # live generation is slow; keep that run short
    live, live_mb = served_rate(live_frames, [])
    fast, fast_mb = served_rate(args.frames, ["--prerender", str(args.prerender)])
    print("served to one client, relay in its own process (loopback):")
    print(f"  live generation   {live:>10,.0f} frames/s  {live_mb:7.1f} MB/s  ({live_frames} frames)")
    print(f"  --prerender {args.prerender:<5d} {fast:>10,.0f} frames/s  {fast_mb:7.1f} MB/s  ({args.frames} frames)")
    print(f"  ratio prerendered/live: {fast / live:.1f}x")


if __name__ == "__main__":
    main()
