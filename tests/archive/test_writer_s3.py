"""The daemon seals into the object store of --archive-url (issue 24, "the sealing node uploads").

A real `jetstream serve --archive-url s3://...` (moto's S3 server on loopback) reads a relay-sim
with small seal thresholds. Its segments must land in the bucket (none in the local directory),
verify with `jetstream archive verify s3://...`, hold exactly the log's events once each, and the
SDK's snapshot() against the same daemon must return them. With the endpoint unreachable (a TCP
proxy in front of moto closed; moto keeps its objects) /healthz shows archive_seal_failed; once
the proxy listens again the problem clears and the bucket still holds every seq exactly once.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from jetstream.archive import SegmentReader
from jetstream.archive.store import ObjectStore
from tests.archive.s3_helpers import TcpProxy, endpoint_port, s3  # noqa: F401 - s3 is the moto fixture
from tests.archive.serve_helpers import REPO_ROOT, Serve
from tests.archive.writer_helpers import (
    SMALL,
    RelaySim,
    archive_report,
    as_sdk_rows,
    log_rows,
    seal_then_snapshot,
    segment_paths,
    segment_tuple,
    serve,
    wait_all_sealed,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def bucket_rows(url: str) -> tuple[list[str], list[tuple]]:
    """(segment names, every row of every segment in index order), read back from the bucket."""
    store = ObjectStore(url)
    names = [obj.name for obj in store.list_segments()]
    rows = []
    for name in names:
        with SegmentReader.from_bytes(store.read(name)) as reader:
            rows += [segment_tuple(e) for e in reader.iter_events()]
    return names, rows


def problem_kinds(server: Serve) -> set[str]:
    try:
        return {p.get("kind") for p in server.healthz().get("problems") or []}
    except (OSError, ValueError):
        return set()


@pytest.mark.parametrize("scheme", ["s3", "file"])
def test_sealed_segments_are_uploaded_verified_and_served(scheme, request, tmp_path):
    """s3:// on moto, and file:// (a mounted directory through object_store's LocalFileSystem, whose
    root the daemon creates)."""
    if scheme == "s3":
        endpoint = request.getfixturevalue("s3")
        url, env = endpoint.url + "/sealed", endpoint.env
    else:
        url, env = f"file://{tmp_path}/mounted/archive", {}
    data_dir = tmp_path / "data"
    relay = RelaySim(tmp_path / "relay.log", rate=300)
    server = serve(data_dir, relay, "--archive-url", url, *SMALL, env=env)
    report, snapshot = seal_then_snapshot(server, relay, segments=2)

    names, archived = bucket_rows(url)
    assert len(names) >= 2
    assert not segment_paths(data_dir / "archive"), "nothing published in the local directory"
    assert not [n for n in os.listdir(data_dir / "archive") if n.endswith(".tmp")], "staged files removed"
    logged = log_rows(data_dir)
    assert [row[0] for row in archived] == list(range(1, len(logged) + 1)), "no gap, no duplicate across segments"
    assert archived == logged and report["sealed_tip_seq"] == len(logged)
    assert snapshot == as_sdk_rows(archived)
    verified = subprocess.run([sys.executable, "-m", "jetstream.cli", "archive", "verify", url], cwd=REPO_ROOT,
                              env=dict(os.environ, **env), capture_output=True, text=True, timeout=120)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_unreachable_store_degrades_health_then_recovers_without_loss_or_duplicates(s3, tmp_path):  # noqa: F811
    url = s3.url + "/outage"
    proxy = TcpProxy(endpoint_port(s3))
    proxy.start()
    data_dir = tmp_path / "data"
    relay = RelaySim(tmp_path / "relay.log", rate=300)
    server = serve(data_dir, relay, "--archive-url", url, *SMALL, env=proxy.env(s3))
    try:
        server.wait_ready()
        wait_until(lambda: archive_report(server).get("sealed_segments", 0) >= 1, "a sealed segment", 90, server)
        proxy.stop()
        wait_until(lambda: "archive_seal_failed" in problem_kinds(server), "archive_seal_failed", 120, server)
        status, _, _ = server.get("/healthz")
        assert status == 503
        failed_at = archive_report(server)
        proxy.start()
        wait_until(lambda: "archive_seal_failed" not in problem_kinds(server), "archive_seal_failed cleared", 120,
                   server)
        assert archive_report(server)["sealed_segments"] > failed_at["sealed_segments"]
        relay.stop()
        wait_all_sealed(server)
    finally:
        relay.stop()
        server.stop()
        proxy.stop()
    assert failed_at["failures"] >= 1
    names, archived = bucket_rows(url)
    logged = log_rows(data_dir)
    seqs = [row[0] for row in archived]
    assert seqs == list(range(1, len(logged) + 1)), "every seq in the bucket exactly once"
    assert archived == logged
    print(f"outage: segments={len(names)} events={len(seqs)} failures_at_outage={failed_at['failures']}")


def test_object_publish_refuses_an_existing_name_and_adoption_verifies_by_ranged_reads(s3, tmp_path):  # noqa: F811
    from jetstream.archive import SegmentError
    from jetstream.archive.sealer import ObjectArchiveStore, SealConflict
    from tests.archive.archive_helpers import corpus_car_events, write_segment

    url = s3.url + "/publish"
    staging = tmp_path / "staging"
    store = ObjectArchiveStore(url, str(staging))
    assert store.prepare() == [] and store.published() == []
    events = corpus_car_events()
    staged = write_segment(staging, events, block_events=8, name="seg_0000000000.jss.tmp")
    original = open(staged, "rb").read()
    store.publish(staged, "seg_0000000000.jss")
    assert not os.path.exists(staged), "the staged file goes once the upload is confirmed"
    assert store.published() == [(0, "seg_0000000000.jss")]
    assert store.verified_header("seg_0000000000.jss").max_seq == events[-1].seq

    again = write_segment(staging, events[:3], block_events=8, name="seg_0000000000.jss.tmp")
    with pytest.raises(SealConflict):
        store.publish(again, "seg_0000000000.jss")
    assert store.objects.read("seg_0000000000.jss") == original, "never replaced"

    store.objects.put("seg_0000000001.jss", original[:-1] + bytes([original[-1] ^ 1]))  # footer byte flipped
    with pytest.raises(SegmentError):
        store.verified_header("seg_0000000001.jss")
