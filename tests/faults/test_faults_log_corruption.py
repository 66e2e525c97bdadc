"""A damaged RocksDB table file is never read as the end of the log (issue 22, part 1).

A real log of 30,000 events in several table files per column family; 4 KiB of garbage
written into the middle of the oldest `events` table file (the block checksum must catch it).
Then, against a real `jetstream serve` subprocess (one process, and --workers 2):
- /healthz is ok until a replay meets the damage, then 503 degraded with `log_corruption`
  (in --workers mode on every worker);
- a client replaying from cursor 0 gets every event before the damage, then a 1011 close whose
  reason names the damaged range (never a jump to live);
- one `event=log_corruption` line, and the counter counts every read that met it;
- `jetstream repair` refuses while the daemon runs; `jetstream inspect` (also --exact) exits 3;
- after the daemon stops, `jetstream repair` drops the range and records it as a gap;
  inspect then exits 0 and lists it; a restarted daemon lists it in /healthz (still 200 ok:
  a recorded gap is known to the operator), a replay across it closes 1011 naming the gap, and a
  client resuming past it gets every later event.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time

import pytest

from jetstream.compression import EventCompressor
from jetstream.events import KIND_COMMIT, Event
from jetstream.log.store import CF_EVENTS, EventLog
from tests.waiting import until
from tests.workers.workers_helpers import address_for_worker, free_port, healthz, metric_value, metrics_text, spawn
from tests.wsclient import connect

pytestmark = pytest.mark.timeout(240)

EVENTS = 30_000
TABLE_FILES = 3  # per column family: the damage is in the oldest of them
GARBAGE = b"\xa5" * 4096
DAMAGE_REASON = re.compile(r"log damaged: time_us (\d+)\.\.(\d+) unreadable; replay incomplete")
GAP_REASON = re.compile(r"events lost in repair: time_us (\d+)\.\.(\d+); resume past it with cursor=(\d+)")


def build_log(data_dir: str) -> tuple[list[int], list[dict]]:
    """EVENTS events over TABLE_FILES flushes; (their time_us, the `events` table files in flush order)."""
    compressor = EventCompressor()
    start = (time.time_ns() // 1000) - 3_600_000_000  # an hour ago: well inside the 24 h retention
    times, events_files = [], []
    with EventLog(data_dir) as event_log:
        families = event_log.column_families()
        per_file = EVENTS // TABLE_FILES
        for chunk in range(TABLE_FILES):
            batch = []
            for i in range(per_file):
                time_us = start + (chunk * per_file + i) * 1000
                body = json.dumps({"did": f"did:plc:test{i % 97}", "time_us": time_us, "kind": "commit",
                                   "commit": {"rev": os.urandom(8).hex(), "text": os.urandom(48).hex()}}).encode()
                batch.append(Event(time_us, f"did:plc:test{i % 97}", KIND_COMMIT, "app.bsky.feed.post",
                                   body, compressor.compress(body)))
                times.append(time_us)
            for first in range(0, len(batch), 500):
                event_log.append(batch[first:first + 500], relay_cursor=chunk * per_file + first)
            before = {f["name"] for f in families[CF_EVENTS].live_files()}
            families[CF_EVENTS].flush()
            events_files += [f for f in families[CF_EVENTS].live_files() if f["name"] not in before]
            event_log.flush()
    return times, events_files


def damage(data_dir: str, table_file: dict) -> None:
    path = os.path.join(data_dir, table_file["name"].lstrip("/"))
    size = os.path.getsize(path)
    assert size > 4 * len(GARBAGE)
    with open(path, "r+b") as file:
        file.seek(size // 2)
        file.write(GARBAGE)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jetstream.cli", *args], capture_output=True, timeout=120)


async def replay(port: int, cursor: int, local_ip: str = "127.0.0.1") -> tuple[list[int], int | None, str]:
    """Every event a v1 client gets from `cursor` until the server closes: (time_us, close code, reason)."""
    transport, client = await connect(f"ws://127.0.0.1:{port}/subscribe?cursor={cursor}")
    try:
        await until(lambda: client.close_code is not None, "the server to close the replay", timeout=60)
    finally:
        transport.disconnect()
    times = [json.loads(payload)["time_us"] for payload in client.payloads]
    return times, int(client.close_code), client.close_reason or ""


async def replay_until(port: int, cursor: int, count: int) -> list[int]:
    """The first `count` events from `cursor` (the stream stays open: it goes live after them)."""
    transport, client = await connect(f"ws://127.0.0.1:{port}/subscribe?cursor={cursor}")
    try:
        payloads = await client.wait_for_count(count, timeout=60)
        await asyncio.sleep(0.3)  # anything beyond `count` would arrive now
        assert client.close_code is None and len(client.payloads) == count
    finally:
        transport.disconnect()
    return [json.loads(payload)["time_us"] for payload in payloads]


async def start_daemon(tmp_path, workers: int, port: int, metrics_port: int):
    relay_port = free_port()  # nothing listens: the daemon serves its log while the relay is unreachable
    daemon = await spawn("serve", "--workers", str(workers), "--data-dir", str(tmp_path / "data"),
                         "--ws-url", f"ws://127.0.0.1:{relay_port}/xrpc/com.atproto.sync.subscribeRepos",
                         "--listen-addr", f"127.0.0.1:{port}", "--metrics-listen-addr", f"127.0.0.1:{metrics_port}",
                         "--max-sub-rate", "1000000", "--log-level", "info", log_path=tmp_path / "daemon.log")

    async def serving() -> bool:
        report = await healthz(port)
        return bool(report and report["status"] in ("ok", "degraded") and report.get("listening"))

    await until(serving, "the daemon to serve")
    return daemon


async def stop_daemon(daemon) -> None:
    daemon.terminate()
    assert await asyncio.wait_for(daemon.wait(), 30) == 0


def health_problem_kinds(report: dict | None) -> list[str]:
    return [problem["kind"] for problem in (report or {}).get("problems", [])]


@pytest.mark.parametrize("workers", [1, 2])
async def test_damaged_table_file_is_reported_closed_1011_repaired_and_its_gap_reported(tmp_path, workers):
    data_dir = str(tmp_path / "data")
    times, events_files = await asyncio.to_thread(build_log, data_dir)
    assert len(events_files) == TABLE_FILES  # anti-vacuity: several table files
    oldest_file = events_files[0]
    await asyncio.to_thread(damage, data_dir, oldest_file)
    file_first, file_last = (int.from_bytes(oldest_file[key], "big") for key in ("start_key", "end_key"))

    port, metrics_port = free_port(), free_port()
    daemon = await start_daemon(tmp_path, workers, port, metrics_port)
    try:
        # Nothing has met the damage yet: healthy.
        report = await healthz(port)
        assert report["status"] == "ok" and report["gaps"] == [], report

        received, code, reason = await replay(port, 0)
        match = DAMAGE_REASON.fullmatch(reason)
        assert code == 1011 and match, (code, reason)
        damaged_from, damaged_to = int(match[1]), int(match[2])
        # The range lies inside the damaged file, and the client got every event before it, in order.
        assert file_first <= damaged_from <= damaged_to <= file_last
        assert received == [t for t in times if t < damaged_from]
        assert 0 < len(received) < EVENTS // TABLE_FILES  # the damage is mid-file, not at the end of the log
        assert times[len(received)] >= damaged_from and times[-1] > damaged_to

        # /healthz: 503 degraded with log_corruption, on every worker.
        for worker in range(workers):
            local_ip = address_for_worker(worker, workers) if workers > 1 else "127.0.0.1"

            async def degraded(local_ip: str = local_ip) -> bool:
                return "log_corruption" in health_problem_kinds(await healthz(port, local_ip))

            await until(degraded, f"worker {worker}'s /healthz to show log_corruption")
            report = await healthz(port, local_ip)
            assert report["status"] == "degraded", report

        # A second replay meets it too: counted again, but logged once.
        _, code, again = await replay(port, 0)
        assert code == 1011 and again == reason

        async def counted_twice() -> bool:
            value = metric_value(await metrics_text(metrics_port),
                                 'jetstream_log_corruption_reads_total{column_family="events"}')
            return value == 2

        await until(counted_twice, "the corruption counter to count both replays")
        logs = (tmp_path / "daemon.log").read_text()
        assert len(re.findall(r"event=log_corruption ", logs)) == 1, logs[-3000:]
        line = next(line for line in logs.splitlines() if "event=log_corruption " in line)
        assert oldest_file["name"].lstrip("/") in line and "jetstream repair" in line

        # Ingest and live serving go on: a client without a cursor stays connected.
        transport, live = await connect(f"ws://127.0.0.1:{port}/subscribe")
        await asyncio.sleep(0.5)
        assert live.close_code is None
        transport.disconnect()

        # Repair refuses while the daemon holds the log.
        refused = await asyncio.to_thread(run_cli, "repair", data_dir)
        assert refused.returncode == 1 and b"stop the daemon first" in refused.stderr, refused.stderr
    finally:
        await stop_daemon(daemon)

    # inspect reports the damage and exits non-zero, with and without --exact.
    for extra in ((), ("--exact",)):
        inspected = await asyncio.to_thread(run_cli, "inspect", data_dir, *extra)
        assert inspected.returncode == 3, inspected.stdout + inspected.stderr
        assert b"the log is damaged" in inspected.stderr and oldest_file["name"].lstrip("/").encode() in inspected.stderr

    repaired = await asyncio.to_thread(run_cli, "repair", data_dir)
    assert repaired.returncode == 0, repaired.stderr
    dropped = re.search(rb"dropped: time_us (\d+)\.\.(\d+) \((\d+) events lost\)", repaired.stdout)
    assert dropped, repaired.stdout
    gap_from, gap_to, lost = map(int, dropped.groups())
    assert gap_from <= damaged_from and damaged_to <= gap_to
    assert lost == sum(1 for t in times if gap_from <= t <= gap_to) > 0

    inspected = await asyncio.to_thread(run_cli, "inspect", data_dir, "--exact")
    assert inspected.returncode == 0, inspected.stderr
    assert f"events:             {EVENTS - lost}".encode() in inspected.stdout
    assert f"time_us {gap_from}..{gap_to} ({lost} events lost".encode() in inspected.stdout

    daemon = await start_daemon(tmp_path, workers, port, metrics_port)
    try:
        report = await healthz(port)
        assert report["status"] == "ok", report  # a recorded gap is known and accepted: not degraded
        assert [(gap["from_time_us"], gap["to_time_us"], gap["events_lost"]) for gap in report["gaps"]] == [
            (gap_from, gap_to, lost)]

        received, code, reason = await replay(port, 0)
        match = GAP_REASON.fullmatch(reason)
        assert code == 1011 and match, (code, reason)
        assert (int(match[1]), int(match[2]), int(match[3])) == (gap_from, gap_to, gap_to + 1)
        assert received == [t for t in times if t < gap_from]

        after = [t for t in times if t > gap_to]
        assert await replay_until(port, gap_to + 1, len(after)) == after
        assert len(received) + lost + len(after) == EVENTS
    finally:
        await stop_daemon(daemon)
