"""Helpers (no tests) for client, tail and inspect tests: a real fake relay and a real daemon.

The corpus relay serves the real frames once; the daemon ingests them into RocksDB in
tmp_path and serves /subscribe on 127.0.0.1 (port 0 unless a test pins one to restart
on the same port).
"""
from __future__ import annotations

import asyncio
import json
import re

import libipld

from jetstream.config import parse_serve_args
from jetstream.daemon import Daemon
from jetstream.relaysim.server import FileSource, RelaySim

TIME_US = re.compile(rb'"time_us":\d+')


def without_time_us(line: bytes) -> bytes:
    return TIME_US.sub(b'"time_us":0', line, count=1)


def time_us_of(line: bytes) -> int:
    return json.loads(line)["time_us"]


def corpus_seqs(frames: list[bytes]) -> tuple[int, int]:
    first = libipld.decode_dag_cbor_multi(frames[0])[1]["seq"]
    last = libipld.decode_dag_cbor_multi(frames[-1])[1]["seq"]
    return first, last


async def start_corpus_relay(corpus_dir) -> RelaySim:
    relay = RelaySim(FileSource(corpus_dir / "frames.bin.zst", loops=1), rate=0)
    await relay.start("127.0.0.1", 0)
    return relay


def daemon_config(data_dir, relay_url: str, *, first_seq: int | None = None, port: int = 0,
                  max_sub_rate: float = 100000, extra: tuple[str, ...] = ()):
    argv = ["--ws-url", relay_url, "--listen-addr", f"127.0.0.1:{port}", "--metrics-listen-addr", "",
            "--data-dir", str(data_dir), "--max-sub-rate", str(max_sub_rate), *extra]
    if first_seq is not None:
        argv += ["--override-relay-cursor", str(first_seq - 1)]
    return parse_serve_args(argv, environ={})


async def wait_until(predicate, timeout: float = 20.0, step: float = 0.05) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(step)


async def ingested_daemon(tmp_path, corpus_dir, corpus_frames, *, extra: tuple[str, ...] = (),
                          max_sub_rate: float = 100000):
    """(relay, daemon) with the whole corpus already durable in the daemon's log."""
    first_seq, last_seq = corpus_seqs(corpus_frames)
    relay = await start_corpus_relay(corpus_dir)
    daemon = Daemon(daemon_config(tmp_path / "data", relay.url, first_seq=first_seq, extra=extra,
                                  max_sub_rate=max_sub_rate))
    await daemon.start()
    await wait_until(lambda: daemon.event_log.relay_cursor() == last_seq)
    return relay, daemon


def logged_payloads(daemon, compressed: bool = False) -> list[bytes]:
    """Every event in the daemon's log, as stored (the bytes the server sends)."""
    return [row.payload for row in daemon.event_log.read_after(0, 100_000, compressed)]
