"""--verify-processes: signature checks in real verify processes behind a real pipeline (RocksDB log, ring,
sequencer), DID documents over real HTTP. A verify process killed mid-stream loses nothing and reorders
nothing; too many deaths hand the checks back to the ingest loop; the daemon leaves no verify process behind,
whether stopped by SIGTERM or killed; and the flag's values are checked."""
from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jetstream import metrics
from jetstream.config import ConfigError, parse_serve_args
from jetstream.ingest import verifypool
from tests.ingest.did_fixtures import FakeDidDirectory, GatedPipeline, load_corpus_did_docs

pytestmark = pytest.mark.timeout(120)

TIME_US = re.compile(rb'"time_us":\d+')
REPO_ROOT = Path(__file__).resolve().parents[2]


def without_time_us(line: bytes) -> bytes:
    return TIME_US.sub(b'"time_us":0', line, count=1)


def is_running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a zombie has exited, it only waits to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def wait_until(condition, timeout: float = 10.0, what: str = "") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


async def stream_with_a_stopped_then_killed_process(gated: GatedPipeline, frames: list[bytes]) -> int:
    """Frames through the gate while its one verify process is stopped, then killed with batches unanswered;
    the rest of the frames after. Returns the killed pid."""
    pool = gated.gate.pool
    await gated.run(frames[:30])  # the process is up and has answered batches
    victim = pool.pids()[0]
    os.kill(victim, signal.SIGSTOP)  # holds its batches: they cannot be answered before the kill
    for frame in frames[30:100]:
        gated.pipeline.submit(frame)
    await wait_until(lambda: pool.outstanding > 0 and not pool._outbox_commits, what="batches sent to the stopped process")
    os.kill(victim, signal.SIGKILL)
    await gated.run(frames[100:])
    return victim


async def test_a_verify_process_killed_mid_stream_loses_and_reorders_nothing(tmp_path, corpus_dir, corpus_frames,
                                                                             expected_v1_lines, caplog):
    directory = await FakeDidDirectory(load_corpus_did_docs(corpus_dir)).start()
    gated = GatedPipeline(tmp_path / "log", directory.url, verify_processes=1)
    restarts_before = metrics.VERIFY_PROCESS_RESTARTS._value.get()
    caplog.set_level(logging.INFO, logger="jetstream.ingest.verifypool")
    try:
        victim = await stream_with_a_stopped_then_killed_process(gated, corpus_frames)
        pool = gated.gate.pool
        assert [without_time_us(line) for line in gated.event_lines()] == [without_time_us(line)
                                                                          for line in expected_v1_lines]
        assert gated.gate.verified == 148 and gated.gate.dropped == 0 and gated.gate.passed_unresolved == 0
        assert gated.gate.verdicts == 148, "every commit gets exactly one verdict"
        assert pool.restarts == 1 and pool.resent_commits > 0 and pool.usable and pool.outstanding == 0
        assert metrics.VERIFY_PROCESS_RESTARTS._value.get() - restarts_before == 1
        assert victim not in pool.pids() and len(pool.pids()) == 1 and not is_running(victim)
        died = [record.getMessage() for record in caplog.records if "event=verify_process_died" in record.getMessage()]
        assert len(died) == 1 and f"pid={victim} " in died[0] and "returncode=-9" in died[0]
        assert re.search(r"unanswered_commits=[1-9]", died[0]), died[0]
    finally:
        await gated.close()
        await directory.close()


async def test_past_the_restart_limit_the_loop_checks_every_commit_itself(tmp_path, corpus_dir, corpus_frames,
                                                                         expected_v1_lines, monkeypatch):
    monkeypatch.setattr(verifypool, "RESTART_LIMIT", 0)  # the first death gives the pool up
    directory = await FakeDidDirectory(load_corpus_did_docs(corpus_dir)).start()
    gated = GatedPipeline(tmp_path / "log", directory.url, verify_processes=1)
    in_loop_before = metrics.VERIFY_CHECKS.labels("loop")._value.get()
    try:
        victim = await stream_with_a_stopped_then_killed_process(gated, corpus_frames)
        pool = gated.gate.pool
        assert not pool.usable and pool.pids() == [] and not is_running(victim)
        assert [without_time_us(line) for line in gated.event_lines()] == [without_time_us(line)
                                                                          for line in expected_v1_lines]
        assert gated.gate.verified == 148 and gated.gate.verdicts == 148 and gated.gate.dropped == 0
        assert metrics.VERIFY_CHECKS.labels("loop")._value.get() - in_loop_before > 0
    finally:
        await gated.close()
        await directory.close()


async def test_stop_leaves_no_verify_process(tmp_path, corpus_dir, corpus_frames):
    directory = await FakeDidDirectory(load_corpus_did_docs(corpus_dir)).start()
    gated = GatedPipeline(tmp_path / "log", directory.url, verify_processes=2)
    try:
        await gated.run(corpus_frames)
        pids = gated.gate.pool.pids()
        assert len(pids) == 2 and all(is_running(pid) for pid in pids)
    finally:
        await gated.close()
        await directory.close()
    assert not any(is_running(pid) for pid in pids)


# ---------------------------------------------------------------------------
# the daemon as a process
# ---------------------------------------------------------------------------

def start_daemon(tmp_path: Path, processes: str) -> tuple[subprocess.Popen, list[int]]:
    """`jetstream serve --verify-signatures --verify-processes <processes>`; (process, verify pids) once started."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JETSTREAM_")}
    daemon = subprocess.Popen(
        [sys.executable, "-m", "jetstream.cli", "serve", "--data-dir", str(tmp_path / "data"),
         "--listen-addr", "127.0.0.1:0", "--metrics-listen-addr", "", "--verify-signatures",
         "--verify-processes", processes, "--ws-url", "ws://127.0.0.1:9/xrpc/com.atproto.sync.subscribeRepos",
         "--plc-url", "http://127.0.0.1:9"],
        cwd=tmp_path, env=dict(env, PYTHONUNBUFFERED="1"), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    pids: list[int] = []
    deadline = time.monotonic() + 60
    for line in daemon.stderr:
        found = re.search(r"event=verify_pool_started .*pids=([\d,]+)", line)
        if found:
            pids = [int(pid) for pid in found.group(1).split(",")]
        if "event=daemon_started" in line:
            break
        assert time.monotonic() < deadline, "the daemon did not start"
    assert pids, "no event=verify_pool_started line"
    return daemon, pids


def wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while any(is_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [pid for pid in pids if is_running(pid)]


def test_sigterm_stops_the_pool_and_leaves_no_verify_process(tmp_path):
    daemon, pids = start_daemon(tmp_path, "2")
    try:
        assert len(pids) == 2 and all(is_running(pid) for pid in pids)
        daemon.send_signal(signal.SIGTERM)
        rest = daemon.stderr.read()
        assert daemon.wait(30) == 0, rest
        assert "event=verify_pool_stopped processes=2" in rest, rest
        assert "event=verify_process_died" not in rest, "a stop is not a death"
        assert wait_gone(pids, timeout=1.0) == []
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()


def test_a_killed_daemon_leaves_no_verify_process(tmp_path):
    daemon, pids = start_daemon(tmp_path, "1")
    daemon.kill()  # no stop at all: the verify process sees EOF on its stdin and exits
    daemon.wait()
    daemon.stderr.close()
    assert wait_gone(pids) == []


# ---------------------------------------------------------------------------
# the flag
# ---------------------------------------------------------------------------

def test_verify_processes_values():
    cores = len(os.sched_getaffinity(0))
    assert parse_serve_args([], environ={}).verify_processes == max(1, cores - 1)  # auto
    assert parse_serve_args(["--verify-processes", "0"], environ={}).verify_processes == 0
    assert parse_serve_args([], environ={"JETSTREAM_VERIFY_PROCESSES": "3"}).verify_processes == 3
    assert parse_serve_args(["--verify-processes", "AUTO"], environ={}).verify_processes == max(1, cores - 1)
    for bad, says in (("-1", "must be >= 0"), ("many", "not a count or auto"), ("1.5", "not a count or auto")):
        with pytest.raises(ConfigError) as refused:
            parse_serve_args(["--verify-processes", bad], environ={})
        assert refused.value.flag.name == "verify-processes" and says in str(refused.value), str(refused.value)
