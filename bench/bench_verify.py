"""--verify-signatures: what checking every commit's signature costs (one core).

Run: .venv/bin/python bench/bench_verify.py   (or: .venv/bin/python -m pytest bench/bench_verify.py -s)

1. µs per verified commit: verify.check_commit (split the signed block, decode did/rev, ECDSA
   verify) over the 148 corpus commits with their corpus keys.
2. Ingest throughput, verification off vs on, interleaved round by round in the same run: the
   150 corpus frames through IngestPipeline.submit + flush every 64 frames (the group commit), into
   a fresh RocksDB log per round, with the resolver cache warm (keys primed from the corpus DID
   documents, so no HTTP is timed). Each round is one pass: a second pass of the same frames
   would be dropped as stale revs without a signature check, which would flatter "on".
3. Cache hit rate on the corpus mix: the relay-sim loop (the corpus repeated with fresh seqs)
   through a cold resolver; the first pass is all misses (148 commits, 148 distinct authors), and
   later passes are stale revs, which are dropped before any look-up.

`measure()` returns a plain dict; bench/suite.py's `verify` stage and the pytest entry print it.
"""
from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import zstandard

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT)]

from jetstream.compression import EventCompressor  # noqa: E402
from jetstream.core import LiveRing  # noqa: E402
from jetstream.dictionary import active_dictionary  # noqa: E402
from jetstream.framefile import read_frames  # noqa: E402
from jetstream.ingest.car import read_car  # noqa: E402
from jetstream.ingest.didres import DidResolver  # noqa: E402
from jetstream.ingest.frames import split_frame  # noqa: E402
from jetstream.ingest.pipeline import IngestPipeline  # noqa: E402
from jetstream.ingest.sequencer import Sequencer  # noqa: E402
from jetstream.ingest.sigcheck import RevTracker, SignatureGate  # noqa: E402
from jetstream.ingest.verify import check_commit, signing_key_of  # noqa: E402
from jetstream.log.store import EventLog  # noqa: E402

DATA_DIR = REPO_ROOT / "tests" / "data"
BATCH = 64


def corpus_keys() -> dict:
    raw = (DATA_DIR / "did_docs.json.zst").read_bytes()
    docs = json.loads(zstandard.ZstdDecompressor().decompress(raw, max_output_size=1 << 26))
    return {did: signing_key_of(doc, did) for did, doc in docs.items()}


def corpus_commits(frames: list[bytes]) -> list[tuple[str, str, bytes]]:
    out = []
    for frame in frames:
        header, body = split_frame(frame)
        if header["t"] == "#commit":
            car = read_car(body["blocks"])
            out.append((body["repo"], body["rev"], bytes(car.blocks[car.roots[0]])))
    return out


def us_per_verified_commit(frames: list[bytes], keys: dict, repeat: int = 5) -> float:
    commits = corpus_commits(frames)
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for repo, rev, block in commits:
            assert check_commit(block, repo, rev, keys[repo]) is None
        best = min(best, time.perf_counter() - started)
    return best / len(commits) * 1e6


def new_resolver(plc_url: str = "http://127.0.0.1:9") -> DidResolver:
    return DidResolver(plc_url=plc_url, cache_size=100_000, cache_ttl_s=3600, negative_ttl_s=60, timeout_s=0.5,
                       max_concurrency=32, max_doc_bytes=65_536)


async def one_round(frames: list[bytes], resolver: DidResolver | None) -> tuple[float, int]:
    """(seconds, events) for one pass of `frames` through submit + group-commit flushes."""
    with tempfile.TemporaryDirectory() as directory, EventLog(directory) as event_log:
        ring = LiveRing(200_000)
        pipeline = IngestPipeline(event_log, ring, Sequencer(0), EventCompressor(active_dictionary()), lambda: None,
                                  socket_url="bench")
        if resolver is not None:
            pipeline.attach_gate(SignatureGate(pipeline, resolver, RevTracker(event_log.last_rev, 200_000)))
        submit = pipeline.submit
        events = 0
        started = time.perf_counter()
        for index, frame in enumerate(frames, 1):
            submit(frame)
            if index % BATCH == 0:
                pipeline.flush()
        pipeline.flush()
        elapsed = time.perf_counter() - started
        if resolver is not None:
            assert pipeline.gate.held_count() == 0 and pipeline.gate.verified == 148, "every commit must verify"
        events = len(event_log.read_after(0, 1_000_000, compressed=False))
        return elapsed, events


async def throughput(frames: list[bytes], keys: dict, rounds: int) -> dict:
    warm = new_resolver()
    for did, key in keys.items():
        warm.remember(did, key)
    off_s = on_s = 0.0
    events_off = events_on = 0
    for _ in range(rounds):  # interleaved, so a busy machine slows both alike
        seconds, events_off = await one_round(frames, None)
        off_s += seconds
        seconds, events_on = await one_round(frames, warm)
        on_s += seconds
    assert events_on == events_off, "verification on must not change the events"
    total = len(frames) * rounds
    await warm.close()
    return {"frames_per_s_off": total / off_s, "frames_per_s_on": total / on_s, "ratio_on_vs_off": off_s / on_s,
            "events_per_pass": events_on}


async def serve_corpus_documents():
    """A plc.directory stand-in on an ephemeral loopback port serving the corpus DID documents."""
    from aiohttp import web

    raw = (DATA_DIR / "did_docs.json.zst").read_bytes()
    docs = json.loads(zstandard.ZstdDecompressor().decompress(raw, max_output_size=1 << 26))

    async def document(request):
        found = docs.get(request.match_info["did"])
        return web.json_response(found) if found else web.Response(status=404)

    app = web.Application()
    app.router.add_get("/{did}", document)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"


async def cold_hit_rate(frames: list[bytes], loops: int = 3) -> dict:
    """Hit rate of a cold cache over the relay-sim loop (the corpus, `loops` times, fresh seqs)."""
    from jetstream.relaysim.seqpatch import patch_seq

    runner, url = await serve_corpus_documents()
    resolver = new_resolver(url)
    mix = [patch_seq(frame, index + 1) for index, frame in enumerate(frames * loops)]
    with tempfile.TemporaryDirectory() as directory, EventLog(directory) as event_log:
        pipeline = IngestPipeline(event_log, LiveRing(10_000), Sequencer(0), EventCompressor(), lambda: None,
                                  socket_url="bench")
        gate = SignatureGate(pipeline, resolver, RevTracker(event_log.last_rev, 200_000))
        pipeline.attach_gate(gate)
        for frame in mix:
            pipeline.submit(frame)
            await asyncio.sleep(0)
        while gate.held_count():
            await asyncio.sleep(0.001)
        pipeline.flush()
    fetches = resolver.fetches
    await resolver.close()
    await runner.cleanup()
    lookups = resolver.hits + resolver.misses
    return {"lookups": lookups, "hits": resolver.hits, "misses": resolver.misses,
            "hit_rate": resolver.hits / lookups if lookups else 0.0, "stale_rev_drops": gate.dropped,
            "frames": len(mix), "fetches": fetches}


def measure(rounds: int = 20) -> dict:
    import logging

    logging.disable(logging.WARNING)  # one line per stale-rev drop would be timed too
    frames = read_frames(DATA_DIR / "frames.bin.zst")
    keys = corpus_keys()
    result = {"us_per_verified_commit": us_per_verified_commit(frames, keys)}
    result.update(asyncio.run(throughput(frames, keys, rounds)))
    result["cache"] = asyncio.run(cold_hit_rate(frames))
    return result


def report(result: dict) -> str:
    cache = result["cache"]
    return "\n".join([
        "event=bench_verify_signatures",
        f"  check_commit (split + decode + ECDSA verify): {result['us_per_verified_commit']:.1f} µs/commit",
        f"  ingest, corpus pass, off: {result['frames_per_s_off']:,.0f} frames/s   "
        f"on (warm cache): {result['frames_per_s_on']:,.0f} frames/s   on/off = {result['ratio_on_vs_off']:.2f}x",
        f"  cache on the relay-sim loop ({cache['frames']} frames): {cache['hits']} hits / {cache['lookups']} "
        f"look-ups = {cache['hit_rate']:.0%} ({cache['fetches']} fetches); {cache['stale_rev_drops']} repeated "
        "commits dropped as stale revs before any look-up",
    ])


def test_report_verify_signatures_cost():
    print("\n" + report(measure(rounds=5)))


if __name__ == "__main__":
    print(report(measure()))
