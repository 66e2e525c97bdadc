"""History on the live wire: what archive replays cost live subscribers (event-loop latency).

Usage: python bench/bench_history_loop_lag.py [seconds] [replays ...]   (default 10 s; 0 1 4 replays)

The in-process stack of tests/server/history_helpers.py (real ingest, RocksDB, sealer, server): 30,000
synthetic events sealed into a local archive (blocks of 4096) and trimmed from the log, so a
`cursor=1` / `cursor=0` client replays from the archive. Then, for each count of concurrent replays,
for `seconds`: the relay's frames are ingested on the server's loop at 1,000 frames/s, one live v1
client (same loop) measures each event's age (receipt time - its time_us), a probe measures the loop's
lag (overshoot of a 1 ms sleep), and N replay clients in their own processes (half v2
`subscribeEvents?cursor=1`, half v1 `/subscribe?cursor=0`) replay the archive over and over. Prints
p50 / p99 / max of the live event age and of the loop lag, and the replays' events/s; and, since
wall-clock figures on a shared machine also measure other processes, the loop thread's CPU time of
each archive step (`SubscriberListener.pump` calls that served sealed segments, time.thread_time):
how long one replay holds the loop, whatever else the machine runs.
"""
from __future__ import annotations

import asyncio
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from picows import WSListener, WSMsgType, ws_connect  # noqa: E402

from jetstream.server.subscriber import SubscriberListener  # noqa: E402
from tests.server.history_helpers import V2_PATH, HistoryStack  # noqa: E402

FRAMES = 30_000
LIVE_FRAMES_PER_S = 1000
INGEST_TICK_S = 0.01


class _Counter(WSListener):
    def __init__(self) -> None:
        self.count = 0
        self.closed = asyncio.Event()

    def on_ws_frame(self, transport, frame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            transport.disconnect()
        else:
            self.count += 1

    def on_ws_disconnected(self, transport) -> None:
        self.closed.set()


async def _replay_forever(url: str, count: int, events, stop) -> None:
    while not stop.is_set():
        transport, client = await ws_connect(_Counter, url)
        counted = 0
        while client.count < count and not client.closed.is_set() and not stop.is_set():
            await asyncio.sleep(0.05)
            with events.get_lock():
                events.value += client.count - counted
            counted = client.count
        transport.disconnect()


ARCHIVE_STEP_CPU_MS: list[float] = []


def _timed_pump(pump):
    def timed(self) -> None:
        steps, started = self.archive_steps, time.thread_time()
        pump(self)
        if self.archive_steps != steps:
            ARCHIVE_STEP_CPU_MS.append((time.thread_time() - started) * 1000)
    return timed


def _replay_process(url: str, count: int, events, stop) -> None:
    asyncio.run(_replay_forever(url, count, events, stop))


class _Age(WSListener):
    def __init__(self) -> None:
        self.ages_ms: list[float] = []

    def on_ws_frame(self, transport, frame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            time_us = json.loads(frame.get_payload_as_bytes())["time_us"]
            self.ages_ms.append((time.time_ns() // 1000 - time_us) / 1000)


def _quantiles(values: list[float]) -> str:
    if len(values) < 2:
        return "n/a"
    cuts = statistics.quantiles(values, n=100)
    return f"p50 {cuts[49]:.2f} / p99 {cuts[98]:.2f} / max {max(values):.2f} ms"


async def _measure(stack: HistoryStack, replays: int, seconds: float, count: int) -> None:
    stop = multiprocessing.Event()
    events = multiprocessing.Value("q", 0)
    processes = []
    for i in range(replays):
        url = stack.url(V2_PATH, "cursor=1") if i % 2 == 0 else stack.url("/subscribe", "cursor=0")
        process = multiprocessing.Process(target=_replay_process, args=(url, count * 9 // 10, events, stop))
        process.start()
        processes.append(process)
    await asyncio.sleep(1.0 if replays else 0)  # the replays are under way
    transport, live = await ws_connect(_Age, stack.url("/subscribe"))
    lags_ms: list[float] = []
    ARCHIVE_STEP_CPU_MS.clear()
    deadline = time.monotonic() + seconds
    started_events = events.value

    async def probe() -> None:
        while time.monotonic() < deadline:
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            lags_ms.append((time.perf_counter() - before - 0.001) * 1000)

    async def ingest() -> None:
        per_tick = int(LIVE_FRAMES_PER_S * INGEST_TICK_S)
        while time.monotonic() < deadline:
            stack.ingest(per_tick)
            await asyncio.sleep(INGEST_TICK_S)

    await asyncio.gather(probe(), ingest())
    replayed = events.value - started_events
    stop.set()
    for process in processes:
        process.join(10)
        if process.is_alive():
            process.terminate()
    transport.disconnect()
    print(f"replays={replays}: live event age {_quantiles(live.ages_ms)} ({len(live.ages_ms)} events); "
          f"loop lag {_quantiles(lags_ms)}; replayed ~{replayed / seconds:,.0f} events/s; "
          f"archive step CPU {_quantiles(ARCHIVE_STEP_CPU_MS)} ({len(ARCHIVE_STEP_CPU_MS)} steps)")


async def main(seconds: float, counts: list[int]) -> None:
    SubscriberListener.pump = _timed_pump(SubscriberListener.pump)
    stack = await HistoryStack(Path(tempfile.mkdtemp()), ring_capacity=4096, block_events=4096,
                               segment_bytes=64 << 20).start()
    try:
        count = stack.ingest(FRAMES)
        stack.seal()
        stack.trim_below_seq(count - 100)
        print(f"events={count} segments={len(stack.service.manifest.segments)}")
        for replays in counts:
            await _measure(stack, replays, seconds, count)
    finally:
        await stack.stop()


if __name__ == "__main__":
    arguments = sys.argv[1:]
    asyncio.run(main(float(arguments[0]) if arguments else 10.0, [int(a) for a in arguments[1:]] or [0, 1, 4]))
