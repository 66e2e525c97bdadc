"""A relay-sim process and a `jetstream serve` with the archive writer on, and what to compare after.

The log's events (read back from RocksDB after the daemon stopped, their v1 JSON parsed) and the
segments' rows (read with our reader, record CIDs computed by the atproto SDK) are reduced to the
same tuples: (seq, time_us, did, kind, collection, rkey, record CID); what the atproto SDK's
snapshot() gives, to the same tuples without time_us.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from atproto_jetstream import JetstreamClient
from atproto_jetstream.archive import compute_record_cid

from jetstream.archive import (
    KIND_ACCOUNT,
    KIND_CREATE,
    KIND_DELETE,
    KIND_IDENTITY,
    KIND_SYNC,
    KIND_UPDATE,
    SegmentReader,
    parse_segment_name,
)
from jetstream.log.store import EventLog
from jetstream.relaysim.server import SUBSCRIBE_REPOS_PATH
from tests.archive.serve_helpers import REPO_ROOT, Serve
from tests.ports import free_port

SEGMENT_KINDS = {KIND_CREATE: "create", KIND_UPDATE: "update", KIND_DELETE: "delete", KIND_IDENTITY: "identity",
                 KIND_ACCOUNT: "account", KIND_SYNC: "sync"}
SMALL = ("--archive-block-events", "64", "--archive-block-seconds", "1s", "--archive-seal-after", "2s")


class RelaySim:
    """`jetstream relay-sim --synthetic` at `rate` frames/s on a free loopback port."""

    def __init__(self, log_path: Path, rate: float = 300, seed: int = 7, dids: int = 300) -> None:
        self.port = free_port()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "jetstream.cli", "relay-sim", "--synthetic", "true", "--rate", str(rate),
                 "--seed", str(seed), "--dids", str(dids), "--listen-addr", f"127.0.0.1:{self.port}",
                 "--log-level", "warning"], cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        self.url = f"ws://127.0.0.1:{self.port}{SUBSCRIBE_REPOS_PATH}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def serve(data_dir: Path, relay: RelaySim, *extra: str, log_path: Path | None = None,
          env: dict | None = None) -> Serve:
    """The daemon on `data_dir` reading `relay` (the later --ws-url wins over Serve's closed port)."""
    return Serve(data_dir, "--ws-url", relay.url, *extra, log_path=log_path, env=env)


def wait_until(condition, what: str, timeout: float = 60.0, server: Serve | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if server is not None and server.process.poll() is not None:
            raise AssertionError(f"daemon exited {server.process.returncode}: {server.logs()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}" + (f": {server.logs()[-3000:]}" if server else ""))


def archive_report(server: Serve) -> dict:
    try:
        return server.healthz().get("archive") or {}
    except (OSError, ValueError):
        return {}


def wait_all_sealed(server: Serve, timeout: float = 60.0) -> dict:
    """After the relay stopped: until the tip reaches the log's newest seq and stays put.

    The tip alone can sit still while the sealer has not yet been fed the last events ingest
    stored (it wakes on its own clock), so it is compared with the log's newest seq.
    """
    last = {}

    def settled() -> bool:
        nonlocal last
        try:
            health = server.healthz()
        except (OSError, ValueError):
            return False
        report = health.get("archive") or {}
        tip = report.get("sealed_tip_seq") or 0
        # newest_seq is None once the TTL trimmed every sealed event: then nothing is left to seal.
        done = tip > 0 and report.get("active_events") == 0 and tip >= (health.get("newest_seq") or 0) \
            and tip == last.get("sealed_tip_seq")
        last = report
        return done

    wait_until(settled, "every event sealed", timeout, server)
    return last


def seal_then_snapshot(server: Serve, relay: RelaySim, segments: int) -> tuple[dict, list[tuple]]:
    """Once `server` has sealed `segments` segments: stop the relay, wait until every event is sealed, read
    the SDK's snapshot(). (The last archive report, the snapshot's rows); relay and server stopped either way."""
    try:
        server.wait_ready()
        wait_until(lambda: archive_report(server).get("sealed_segments", 0) >= segments,
                   f"{segments} sealed segments", 90, server)
        relay.stop()
        report = wait_all_sealed(server)
        return report, snapshot_rows(server)
    finally:
        relay.stop()
        server.stop()


def snapshot_rows(server: Serve) -> list[tuple]:
    """What the atproto SDK's snapshot() against the daemon returns, as sdk_tuple rows."""
    client = JetstreamClient(base_uri=f"ws://127.0.0.1:{server.port}/xrpc", api_key="any")
    return [sdk_tuple(m) for m in client.snapshot()]


def sdk_tuple(m) -> tuple:
    operation = getattr(m, "operation", None)
    if operation is not None:
        return (m.seq, m.did, operation, m.collection, m.rkey, getattr(m, "cid", None))
    return (m.seq, m.did, m.py_type.rsplit("#", 1)[-1], "", "", None)


def as_sdk_rows(rows: list[tuple]) -> list[tuple]:
    """Segment or log rows as the SDK gives them: without time_us."""
    return [(seq, did, kind, collection, rkey, cid) for seq, _, did, kind, collection, rkey, cid in rows]


def segment_paths(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted((p for p in directory.iterdir() if parse_segment_name(p.name) is not None),
                  key=lambda p: parse_segment_name(p.name))


def segment_rows(path: Path) -> list[tuple]:
    with SegmentReader.open(str(path)) as reader:
        return [segment_tuple(e) for e in reader.iter_events()]


def segment_tuple(e) -> tuple:
    kind = SEGMENT_KINDS[e.kind]
    cid = compute_record_cid(bytes(e.payload)) if kind in ("create", "update") else None
    return (e.seq, e.witnessed_at, e.did, kind, e.collection, e.rkey, cid)


def log_rows(data_dir: Path) -> list[tuple]:
    """Every event the log holds, as the same tuples, from its v1 JSON."""
    with EventLog(str(data_dir), create=False) as event_log:
        rows = event_log.read_after(0, 10_000_000, compressed=False)
    out = []
    for row in rows:
        document = json.loads(row.payload)
        kind = document["kind"]
        if kind == "commit":
            commit = document["commit"]
            out.append((row.seq, row.time_us, document["did"], commit["operation"], commit.get("collection", ""),
                        commit.get("rkey", ""), commit.get("cid")))
        else:
            out.append((row.seq, row.time_us, document["did"], kind, "", "", None))
    return out
