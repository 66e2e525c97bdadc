"""`jetstream demo`: the whole product on one machine, offline.

Owns: starting a synthetic fake relay, the real daemon pointed at it, and a small
subscriber that prints one line per event it receives from the daemon's /subscribe.
Anyone can connect more clients to the printed URL while it runs. Its log lives in a
temporary directory removed at exit, unless `--data-dir` names one on its command line.
It must never take shortcuts around the daemon: the printed events went through
relay websocket -> ingest -> RocksDB -> ring -> /subscribe like in production. It must
never write into `./data` or the directory `JETSTREAM_DATA_DIR` names (a real daemon's log).
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import tempfile
from contextlib import contextmanager
from typing import Iterator

from picows import WSListener, WSMsgType, ws_connect

from jetstream.daemon import Daemon
from jetstream.relaysim.server import RelaySim, SyntheticSource

DEMO_RELAY_RATE = 20.0  # frames per second: readable in a terminal
# Set to a number of seconds to stop the demo by itself (tests, `JETSTREAM_DEMO_SECONDS=6 make demo`).
DEMO_SECONDS_ENV = "JETSTREAM_DEMO_SECONDS"


@contextmanager
def demo_data_dir(named: str) -> Iterator[tuple[str, bool]]:
    """(directory, is_throwaway): the one the user named, else a temp dir removed on exit."""
    if named:
        yield named, False
        return
    with tempfile.TemporaryDirectory(prefix="jetstream-demo-") as throwaway:
        yield throwaway, True


def header_lines(relay_url: str, subscribe_url: str, data_dir: str, throwaway: bool, seconds: float) -> list[str]:
    """The few lines printed before the events: what runs where, and how it ends."""
    ends = f"stops after {seconds:g} s" if seconds > 0 else "Ctrl-C to stop"
    kept = "removed at exit" if throwaway else "kept"
    return [
        f"demo: synthetic relay -> jetstream -> this client ({ends})",
        f"demo: fake relay at {relay_url}",
        f"demo: jetstream serving {subscribe_url} (try ?wantedCollections=app.bsky.feed.post)",
        f"demo: event log in {data_dir} ({kept})",
    ]


def summarize(event: dict) -> str:
    """One human line per event: kind, collection, DID and a snippet of post text."""
    kind = event.get("kind")
    head = f"time_us={event.get('time_us')} kind={kind} did={event.get('did')}"
    if kind != "commit":
        return head
    commit = event["commit"]
    line = f"{head} {commit['operation']} {commit['collection']}/{commit['rkey']}"
    text = (commit.get("record") or {}).get("text")
    return f"{line} text={text[:60]!r}" if isinstance(text, str) else line


class _PrintingListener(WSListener):
    def __init__(self) -> None:
        self.count = 0

    def on_ws_frame(self, transport, frame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            self.count += 1
            print(summarize(json.loads(frame.get_payload_as_bytes())), flush=True)


async def run_demo(cfg) -> None:
    with demo_data_dir(cfg.data_dir) as (data_dir, throwaway):
        cfg.values["data_dir"] = data_dir
        await _run_demo_in(cfg, throwaway)


async def _run_demo_in(cfg, throwaway: bool) -> None:
    relay = RelaySim(SyntheticSource(seed=1, dids=200), rate=DEMO_RELAY_RATE, clock=True)
    await relay.start("127.0.0.1", 0)
    cfg.values["ws_url"] = relay.url
    daemon = Daemon(cfg)
    try:
        await daemon.start()
        url = f"ws://127.0.0.1:{daemon.port}/subscribe"
        seconds = float(os.environ.get(DEMO_SECONDS_ENV, "0") or 0)
        for line in header_lines(relay.url, url, cfg.data_dir, throwaway, seconds):
            print(line, flush=True)
        transport, printer = await ws_connect(_PrintingListener, url)
        await _wait_for_stop(seconds)
        transport.disconnect()
    finally:
        await daemon.stop()
        await relay.close()
    print(f"demo: received {printer.count} events", flush=True)


async def _wait_for_stop(seconds: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if seconds > 0:
        loop.call_later(seconds, stop.set)
    await stop.wait()
