"""`jetstream demo`: the whole product on one machine, offline.

Owns: starting a synthetic fake relay, the real daemon pointed at it, and a small
subscriber that prints one line per event it receives from the daemon's /subscribe.
Anyone can connect more clients to the printed URL while it runs.
It must never take shortcuts around the daemon: the printed events went through
relay websocket -> ingest -> RocksDB -> ring -> /subscribe like in production.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal

from picows import WSListener, WSMsgType, ws_connect

from jetstream.daemon import Daemon
from jetstream.relaysim.server import RelaySim, SyntheticSource

DEMO_RELAY_RATE = 20.0  # frames per second: readable in a terminal


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
    relay = RelaySim(SyntheticSource(seed=1, dids=200), rate=DEMO_RELAY_RATE, clock=True)
    await relay.start("127.0.0.1", 0)
    cfg.values["ws_url"] = relay.url
    daemon = Daemon(cfg)
    await daemon.start()
    url = f"ws://127.0.0.1:{daemon.port}/subscribe"
    print(f"demo: fake relay at {relay.url}", flush=True)
    print(f"demo: jetstream serving {url} (try ?wantedCollections=app.bsky.feed.post)", flush=True)
    transport, printer = await ws_connect(_PrintingListener, url)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    seconds = float(os.environ.get("JETSTREAM_DEMO_SECONDS", "0"))
    if seconds > 0:
        loop.call_later(seconds, stop.set)
    await stop.wait()
    transport.disconnect()
    await daemon.stop()
    await relay.close()
    print(f"demo: received {printer.count} events", flush=True)
