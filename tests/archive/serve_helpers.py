"""An archive directory of sealed segments built from the corpus' relay frames, and a real `jetstream serve` on it.

The events are the relay frames of tests/data/frames.bin.zst as v2 stores them: one row per
commit op (the record's DAG-CBOR block from the frame's CAR, empty for deletes), the event body
for identity/account/sync. Nothing here comes from the code under test but the writer.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import libipld

from jetstream.archive import (
    KIND_ACCOUNT,
    KIND_CREATE,
    KIND_DELETE,
    KIND_IDENTITY,
    KIND_SYNC,
    KIND_UPDATE,
    SegmentEvent,
    segment_name,
)
from jetstream.cluster.natsserver import stop_process
from jetstream.framefile import read_frames
from jetstream.ingest.car import read_car
from tests.archive.archive_helpers import write_segment
from tests.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
FRAMES = REPO_ROOT / "tests" / "data" / "frames.bin.zst"
_ACTIONS = {"create": KIND_CREATE, "update": KIND_UPDATE, "delete": KIND_DELETE}
_BODY_KINDS = {"#identity": KIND_IDENTITY, "#account": KIND_ACCOUNT, "#sync": KIND_SYNC}
BASE_US = 1_783_000_000_000_000


def corpus_archive_events() -> list[SegmentEvent]:
    """Every op and DID-level event of the corpus frames, seq 1.. in frame order."""
    events: list[SegmentEvent] = []
    for frame in read_frames(FRAMES):
        header, body = libipld.decode_dag_cbor_multi(frame)
        kind = header.get("t")
        if kind == "#commit":
            blocks = {bytes(cid): bytes(block) for cid, block in read_car(body["blocks"]).blocks.items()} \
                if body.get("blocks") else {}
            for op in body.get("ops") or []:
                action = _ACTIONS.get(op["action"])
                if action is None:
                    continue
                collection, rkey = op["path"].split("/", 1)
                payload = b""
                if action != KIND_DELETE:
                    cid = op.get("cid")
                    payload = blocks.get(bytes(cid), b"") if cid is not None else b""
                    if not payload:
                        continue  # tooBig or a missing block: nothing v2 could store
                events.append(SegmentEvent(0, 0, 0, action, body["repo"], collection, rkey, body["rev"], payload))
        elif kind in _BODY_KINDS:
            did = body.get("did")
            if did:
                events.append(SegmentEvent(0, 0, 0, _BODY_KINDS[kind], did, "", "", "", libipld.encode_dag_cbor(body)))
    return [e._replace(seq=i + 1, witnessed_at=BASE_US + i * 1000) for i, e in enumerate(events)]


def build_archive(directory, events: list[SegmentEvent], segments: int = 3, block_events: int = 8) -> list[str]:
    """Seal `events` into `segments` consecutive segment files (names seg_0.., blocks of block_events)."""
    os.makedirs(directory, exist_ok=True)
    per = -(-len(events) // segments)
    paths = []
    for i in range(segments):
        chunk = events[i * per:(i + 1) * per]
        paths.append(write_segment(directory, chunk, block_events=block_events, name=segment_name(i)))
    return paths


class Serve:
    """A `jetstream serve` subprocess on `data_dir`, relay pointed at a closed port (the archive needs none)."""

    def __init__(self, data_dir, *extra: str, log_path=None, env: dict | None = None) -> None:
        self.port = free_port()
        self.log_path = log_path or Path(data_dir).parent / "serve.log"
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        args = [sys.executable, "-m", "jetstream.cli", "serve", "--ws-url", f"ws://127.0.0.1:{free_port()}/x",
                "--listen-addr", f"127.0.0.1:{self.port}", "--metrics-listen-addr", "", "--data-dir", str(data_dir),
                "--log-level", "info", *extra]
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until listSegments answers something other than 503 (the manifest's first scan is done)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"jetstream serve exited {self.process.returncode}: {self.logs()[-3000:]}")
            try:
                status, _, _ = self.get("/xrpc/network.bsky.jetstream.listSegments")
                if status != 503:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"archive not ready: {self.logs()[-3000:]}")

    def request(self, method: str, path: str, headers: dict | None = None, body: bytes | None = None):
        req = urllib.request.Request(self.base + path, data=body, method=method, headers=headers or {})  # noqa: S310 - loopback http
        try:
            with urllib.request.urlopen(req, timeout=10) as response:  # noqa: S310 - loopback http
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def get(self, path: str, headers: dict | None = None):
        return self.request("GET", path, headers)

    def post_json(self, path: str, document, headers: dict | None = None):
        body = document if isinstance(document, bytes) else json.dumps(document).encode()
        return self.request("POST", path, {"Content-Type": "application/json", **(headers or {})}, body)

    def healthz(self) -> dict:
        return json.loads(self.get("/healthz")[2])

    def logs(self) -> str:
        return Path(self.log_path).read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.process, timeout=15)
