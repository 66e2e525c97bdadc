"""--verify-signatures: what checking every commit's signature costs, in the ingest loop and in verify processes.

Run: .venv/bin/python bench/bench_verify.py   (or: .venv/bin/python -m pytest bench/bench_verify.py -s)

1. µs per verified commit: verify.check_commit (split the signed block, decode did/rev, ECDSA
   verify) over the 148 corpus commits with their corpus keys.
2. Ingest throughput, interleaved round by round in the same run, in these modes: verification
   off; on, checked in the ingest loop (--verify-processes 0); on, with 1 verify process; on, with
   `auto` processes (cores - 1) when that is not 1; on, with as many processes as cores (more
   processes than spare cores: shows what oversubscription costs). A round is the corpus
   (150 frames) PASSES times under fresh seqs, submitted CHUNK frames per event loop turn (as a
   relay read would hand them over), through a fresh RocksDB log, with the resolver cache warm
   (keys primed from the corpus DID documents, so no HTTP is timed) and the group commit at
   every loop turn. The stale-rev rule is off in these rounds (NoStaleRevs): the corpus repeats
   its commits, which would otherwise be dropped unchecked and flatter "on". The verify
   processes are started before the first round and kept (their start-up is not timed).
3. Verify processes alone: commits/s that N processes answer with nothing else running in this
   process (N = 1 and N = cores), the ceiling of what the pool can feed ingest with on this machine.
4. Cache hit rate on the corpus mix: the relay-sim loop (the corpus repeated with fresh seqs)
   through a cold resolver; the first pass is all misses (148 commits, 148 distinct authors), and
   later passes are stale revs, which are dropped before any look-up.

`measure()` returns a plain dict; bench/suite.py's `verify` stage and the pytest entry print it.
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import uvloop
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
from jetstream.ingest.verifypool import VerifyPool, default_processes  # noqa: E402
from jetstream.log.store import EventLog  # noqa: E402
from jetstream.relaysim.seqpatch import patch_seq  # noqa: E402

DATA_DIR = REPO_ROOT / "tests" / "data"
CHUNK = 64  # frames per event loop turn
# The daemon's default --group-commit-ms: with verification, verdicts arrive a few at a time, and
# a batch per loop turn (group commit 0) would cost every mode but "off" one RocksDB write per handful.
GROUP_COMMIT_S = 0.002
IDLE_WAIT_S = 0.0005
PASSES = 20  # corpus passes per round: ~3,000 frames, long enough that start and drain are noise


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


class NoStaleRevs(RevTracker):
    """The bench's rev memory: nothing is stale, so the corpus's repeated commits are checked, not dropped."""

    def is_stale(self, did: str, rev: str) -> bool:
        return False


def round_frames(frames: list[bytes], passes: int) -> list[bytes]:
    return [patch_seq(frame, index + 1) for index, frame in enumerate(frames * passes)]


async def drain(pipeline: IngestPipeline) -> None:
    """Wait for every frame to be written. Sleeps in the loop's poll (woken by verdicts on the pipes),
    not sleep(0): a spinning loop would take the core a verify process needs."""
    gate = pipeline.gate
    while (gate is not None and gate.held_count()) or pipeline._pending:
        await asyncio.sleep(IDLE_WAIT_S)
    pipeline.flush()


async def one_round(frames: list[bytes], gate: SignatureGate | None) -> tuple[float, float, int]:
    """(seconds, CPU seconds of this process, events) for one round of `frames`, CHUNK per loop turn,
    through a fresh log (and `gate`)."""
    with tempfile.TemporaryDirectory() as directory, EventLog(directory) as event_log:
        pipeline = IngestPipeline(event_log, LiveRing(200_000), Sequencer(0), EventCompressor(active_dictionary()),
                                  lambda: None, socket_url="bench", group_commit_s=GROUP_COMMIT_S)
        if gate is not None:
            gate.pipeline, gate.revs = pipeline, NoStaleRevs(event_log.last_rev, 200_000)
            pipeline.attach_gate(gate)
            verified_before = gate.verified
        submit = pipeline.submit
        started, cpu_started = time.perf_counter(), time.process_time()
        for start in range(0, len(frames), CHUNK):
            for frame in frames[start:start + CHUNK]:
                submit(frame)
            await asyncio.sleep(0)  # the loop turns: group commit, verdicts read from the pipes
        await drain(pipeline)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        if gate is not None:
            commits = sum(1 for frame in frames if split_frame(frame)[0]["t"] == "#commit")
            assert gate.verified - verified_before == commits, "every commit must verify"
        events = len(event_log.read_after(0, 10_000_000, compressed=False))
        return elapsed, cpu, events


def new_gate(keys: dict, processes: int) -> SignatureGate:
    """A gate with a warm key cache; its pipeline and revs are set per round (one_round)."""
    resolver = new_resolver()
    for did, key in keys.items():
        resolver.remember(did, key)
    return SignatureGate(None, resolver, NoStaleRevs(lambda did: None, 1), verify_processes=processes,
                         max_held=1_000_000)


def throughput_modes() -> dict[str, int | None]:
    """Mode name -> --verify-processes (None: verification off)."""
    cores = len(os.sched_getaffinity(0))
    modes: dict[str, int | None] = {"off": None, "loop": 0, "pool_1": 1}
    if default_processes() != 1:
        modes["pool_auto"] = default_processes()
    if cores not in (1, default_processes()):
        modes[f"pool_{cores}"] = cores
    return modes


async def throughput(frames: list[bytes], keys: dict, rounds: int, passes: int = PASSES) -> dict:
    stream = round_frames(frames, passes)
    modes = throughput_modes()
    gates = {name: new_gate(keys, processes) for name, processes in modes.items() if processes is not None}
    seconds = dict.fromkeys(modes, 0.0)
    cpu_seconds = dict.fromkeys(modes, 0.0)
    events = {}
    await one_round(stream[:600], None)  # warm-up: imports, first log, and the verify processes' start
    for gate in gates.values():
        await one_round(stream[:600], gate)
    for _ in range(rounds):  # interleaved, so a busy machine slows every mode alike
        for name in modes:
            elapsed, cpu, events[name] = await one_round(stream, gates.get(name))
            seconds[name] += elapsed
            cpu_seconds[name] += cpu
    assert len(set(events.values())) == 1, f"verification must not change the events: {events}"
    for gate in gates.values():
        await gate.close()
    total = len(stream) * rounds
    result = {f"frames_per_s_{name}": total / elapsed for name, elapsed in seconds.items()}
    # The ingest process's own CPU per frame (verify processes not included): with enough verify
    # cores, on/off approaches cpu(off) / cpu(pool).
    result.update({f"ingest_cpu_us_per_frame_{name}": cpu / total * 1e6 for name, cpu in cpu_seconds.items()})
    for name in modes:
        if name != "off":
            result[f"ratio_{name}_vs_off"] = seconds["off"] / seconds[name]
    default = "pool_auto" if "pool_auto" in modes else "pool_1"  # what --verify-signatures runs by default
    result.update({"frames_per_s_on": result[f"frames_per_s_{default}"],
                   "ratio_on_vs_off": result[f"ratio_{default}_vs_off"], "default_mode": default,
                   "frames_per_round": len(stream), "events_per_round": events["off"],
                   "modes": {name: processes for name, processes in modes.items()}})
    return result


async def pool_alone(frames: list[bytes], keys: dict, processes: int, passes: int = 20) -> float:
    """Commits/s `processes` verify processes answer, kept full, with no ingest beside them."""
    commits = corpus_commits(frames) * passes
    room = asyncio.Event()

    def deliver(tags: list, verdicts: list) -> None:
        assert all(verdict is None for verdict in verdicts)
        room.set()

    pool = VerifyPool(processes, deliver)
    pool.start()

    async def run(work) -> float:
        started = time.perf_counter()
        for repo, rev, block in work:
            while pool.saturated:
                room.clear()
                await room.wait()
            key = keys[repo]
            pool.submit(None, block, repo, rev, key.curve, key.point)
        while pool.outstanding:
            room.clear()
            await room.wait()
        return time.perf_counter() - started

    try:
        await run(commits[:500])  # start-up: the processes import while the first batches wait
        return len(commits) / await run(commits)
    finally:
        await pool.close()


async def pool_scaling(frames: list[bytes], keys: dict) -> dict:
    cores = len(os.sched_getaffinity(0))
    return {processes: await pool_alone(frames, keys, processes) for processes in sorted({1, cores})}


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
    load_before = os.getloadavg()[0]
    result = {"us_per_verified_commit": us_per_verified_commit(frames, keys)}
    # uvloop, the daemon's loop: its add_reader and call_soon are what the pool runs on.
    result.update(uvloop.run(throughput(frames, keys, rounds)))
    result["pool_alone_commits_per_s"] = uvloop.run(pool_scaling(frames, keys))
    result["cache"] = uvloop.run(cold_hit_rate(frames))
    result["machine"] = {"cores": len(os.sched_getaffinity(0)), "loadavg_1m_before": load_before,
                         "loadavg_1m_after": os.getloadavg()[0]}
    return result


def report(result: dict) -> str:
    cache, machine = result["cache"], result["machine"]
    lines = [
        "event=bench_verify_signatures",
        f"  machine: {machine['cores']} cores, load average (1 min) {machine['loadavg_1m_before']:.2f} before, "
        f"{machine['loadavg_1m_after']:.2f} after",
        f"  check_commit (split + decode + ECDSA verify): {result['us_per_verified_commit']:.1f} µs/commit",
        f"  ingest, {result['frames_per_round']:,} frames per round, interleaved (--verify-processes in brackets):",
        f"    off:{'':<25} {result['frames_per_s_off']:>9,.0f} frames/s; ingest process CPU "
        f"{result['ingest_cpu_us_per_frame_off']:.0f} µs/frame",
    ]
    for name, processes in result["modes"].items():
        if name != "off":
            where = "in the loop" if processes == 0 else f"{processes} verify process{'es' if processes > 1 else ''}"
            lines.append(f"    on, {where + ' [' + str(processes) + ']:':<24} {result['frames_per_s_' + name]:>9,.0f} "
                         f"frames/s  = {result['ratio_' + name + '_vs_off']:.2f}x of off; ingest process CPU "
                         f"{result['ingest_cpu_us_per_frame_' + name]:.0f} µs/frame")
    lines.append(f"  default (--verify-processes auto = {result['modes'][result['default_mode']]} here): "
                 f"{result['ratio_on_vs_off']:.2f}x of off")
    alone = ", ".join(f"{processes} process{'es' if processes > 1 else ''}: {rate:,.0f}"
                      for processes, rate in result["pool_alone_commits_per_s"].items())
    lines.append(f"  verify processes alone (commits/s, nothing else in this process): {alone}")
    lines.append(f"  cache on the relay-sim loop ({cache['frames']} frames): {cache['hits']} hits / "
                 f"{cache['lookups']} look-ups = {cache['hit_rate']:.0%} ({cache['fetches']} fetches); "
                 f"{cache['stale_rev_drops']} repeated commits dropped as stale revs before any look-up")
    return "\n".join(lines)


def test_report_verify_signatures_cost():
    print("\n" + report(measure(rounds=5)))


if __name__ == "__main__":
    print(report(measure()))
