"""History on the live wire: one client's replay rate from sealed segments against the log, same run.

Usage: python bench/bench_history_replay.py [frames]   (default 30000 synthetic relay frames)

The in-process stack of tests/server/history_helpers.py (real ingest, RocksDB, sealer, server,
websocket client over loopback): every event is first replayed from the log (ring of 64), then the
log is trimmed of all but the newest 100 sealed events and the same replays read the archive
(a local directory, blocks of 4096 events). Prints events/s for v1 `/subscribe?cursor=0` and v2
`subscribeEvents?cursor=1`, each from the log and from the archive.
"""
from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.server.history_helpers import V2_PATH, HistoryStack  # noqa: E402
from tests.wsclient import connect  # noqa: E402


async def replay_rate(stack: HistoryStack, path: str, query: str, count: int) -> float:
    started = time.perf_counter()
    transport, client = await connect(stack.url(path, query))
    await client.wait_for_count(count, 600)
    elapsed = time.perf_counter() - started
    transport.disconnect()
    return count / elapsed


async def main(frames: int) -> None:
    stack = await HistoryStack(Path(tempfile.mkdtemp()), block_events=4096, segment_bytes=64 << 20).start()
    try:
        count = stack.ingest(frames)
        stack.seal()
        v1_count = len(stack.event_log.read_after(0, 1 << 30, False))
        rates = {}
        rates["v1 log"] = await replay_rate(stack, "/subscribe", "cursor=0&includeSync=true", v1_count)
        rates["v2 log"] = await replay_rate(stack, V2_PATH, "cursor=1", count)
        stack.trim_below_seq(count - 100)
        rates["v1 archive"] = await replay_rate(stack, "/subscribe", "cursor=0&includeSync=true", v1_count)
        rates["v2 archive"] = await replay_rate(stack, V2_PATH, "cursor=1", count)
        print(f"events={count} segments={len(stack.service.manifest.segments)}")
        for name, rate in rates.items():
            print(f"{name}: {rate:,.0f} events/s")
    finally:
        await stack.stop()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 30_000))
