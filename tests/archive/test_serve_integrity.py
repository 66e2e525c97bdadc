"""A damaged segment is detected by checksum, reported, and never served (issue 24, "Tests and checks").

Listing verifies a segment's header checksum over its footer; the blocks are covered only by their
zstd content checksums, so a byte flipped inside a frame must be caught when a download is about
to send it (jetstream/archive/integrity.py). Real `jetstream serve` processes, real files on disk
and moto's S3 server: a byte flipped in the middle of a block (with the file's mtime put back, as
silent disk damage leaves it, and with a plain write after the block was served once), a truncated
segment, and a segment replaced by another valid segment of the same name. Every time: a 500 and
never the bytes, `archive_segment_corrupt` on /healthz with the name, one log line, the segment
gone from listSegments and planSnapshot, and `jetstream archive verify` naming it.
"""
from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jetstream.archive import SegmentReader
from tests.archive.s3_helpers import s3  # noqa: F401 - the moto fixture
from tests.archive.serve_helpers import REPO_ROOT, Serve, build_archive, corpus_archive_events
from tests.archive.test_serve_http import BLOCK, LIST, PLAN, SEG, error_of
from tests.archive.test_store_s3 import upload, wait_for

pytestmark = pytest.mark.timeout(240)

NAMES = [f"seg_000000000{i}.jss" for i in range(3)]


@pytest.fixture(scope="module")
def events():
    return corpus_archive_events()


def mid_block_offset(path, block: int = 2) -> int:
    """A byte in the middle of a block's zstd frame: the footer checksum does not cover it."""
    with SegmentReader.open(str(path)) as reader:
        info = reader.blocks[block]
    return info.offset + 8 + info.compressed_size // 2


def flipped(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x5A]) + data[offset + 1:]


def listed(server: Serve) -> list[str]:
    return [s["name"] for s in json.loads(server.get(LIST)[2])["segments"]]


def planned(server: Serve) -> list[str]:
    return [s["name"] for s in json.loads(server.post_json(PLAN, {})[2])["segments"]]


def corrupt_detail(server: Serve) -> str:
    problems = server.healthz().get("problems") or []
    return " ".join(p["detail"] for p in problems if p["kind"] == "archive_segment_corrupt")


def refused_and_reported(server: Serve, name: str, good: bytes) -> None:
    """The segment answers 500 (never bytes) on every download, is reported, listed and planned nowhere."""
    for path in (SEG + name, f"{BLOCK}?segment={name}&blockIndex=2", f"{BLOCK}?segment={name}&blockIndex=0"):
        status, _, body = server.get(path)
        assert status == 500 and error_of(body)[0] == "InternalServerError", (path, status, body[:200])
        assert good[:256] not in body
    assert server.get(SEG + name, {"Range": "bytes=0-99"})[0] == 500
    assert name in corrupt_detail(server)
    assert server.healthz()["status"] == "degraded"
    assert name not in listed(server) and name not in planned(server)


def verify_cli(location: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jetstream.cli", "archive", "verify", location], cwd=REPO_ROOT,
                          env=dict(os.environ, **(env or {})), capture_output=True, text=True, timeout=120)


def test_local_block_damage_truncation_and_replacement(events, tmp_path):
    data_dir = tmp_path / "data"
    directory = data_dir / "archive"
    paths = [Path(p) for p in build_archive(directory, events, segments=3, block_events=8)]
    originals = [p.read_bytes() for p in paths]
    # seg 0: damaged before the daemon ever saw it, mtime put back (silent disk damage): listing cannot see it
    st = paths[0].stat()
    paths[0].write_bytes(flipped(originals[0], mid_block_offset(paths[0])))
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns))
    server = Serve(data_dir)
    try:
        server.wait_ready()
        assert listed(server) == NAMES, "the footer checksum still holds: listed"
        assert server.get(SEG + NAMES[1])[2] == originals[1], "a good segment is served whole"
        refused_and_reported(server, NAMES[0], originals[0])
        assert server.logs().count(f"event=archive_segment_corrupt name={NAMES[0]}") == 1, "logged once"

        # seg 1: served once (its blocks checked), then damaged by a plain write (the version moves)
        paths[1].write_bytes(flipped(originals[1], mid_block_offset(paths[1])))
        status, _, body = server.get(SEG + NAMES[1])
        assert status == 500 and originals[1][:256] not in body
        wait_for(lambda: server.get(SEG + NAMES[1])[0] == 500 and NAMES[1] in corrupt_detail(server), timeout=30)
        refused_and_reported(server, NAMES[1], originals[1])

        # seg 2: truncated behind the daemon's back
        with open(paths[2], "r+b") as f:
            f.truncate(len(originals[2]) - 1000)
        status, _, body = server.get(SEG + NAMES[2], {"Range": "bytes=0-"})
        assert status == 500 and originals[2][:256] not in body
        wait_for(lambda: NAMES[2] in corrupt_detail(server), timeout=30)
        refused_and_reported(server, NAMES[2], originals[2])
        assert planned(server) == []

        result = verify_cli(str(directory))
        assert result.returncode == 1
        assert [line.split(":")[0] for line in result.stdout.splitlines() if line.startswith("BAD")] == [
            f"BAD {n}" for n in NAMES]

        # the operator restores seg 0 and replaces seg 1 with another valid segment of the same name
        # (the same events cut in other blocks: another checksum, other block offsets)
        paths[0].write_bytes(originals[0])
        other = tmp_path / "other"
        build_archive(other, events, segments=3, block_events=5)
        replacement = (other / NAMES[1]).read_bytes()
        assert replacement != originals[1]
        paths[1].write_bytes(replacement)
        wait_for(lambda: listed(server) == NAMES[:2], timeout=30)
        assert server.get(SEG + NAMES[0])[2] == originals[0]
        status, headers, body = server.get(SEG + NAMES[1])
        assert status == 200 and body == replacement
        with SegmentReader.open(str(paths[1])) as reader:
            assert headers["ETag"] == f'"{reader.header.checksum:016x}"'
        assert NAMES[0] not in corrupt_detail(server) and NAMES[1] not in corrupt_detail(server)
    finally:
        server.stop()


def test_a_listed_segment_replaced_by_another_valid_one_is_never_mixed(events, tmp_path):
    """Served once (old blocks checked), then replaced: no answer mixes the old listing with the new bytes."""
    data_dir = tmp_path / "data"
    paths = [Path(p) for p in build_archive(data_dir / "archive", events, segments=3, block_events=8)]
    old = paths[1].read_bytes()
    other = tmp_path / "other"
    build_archive(other, events, segments=3, block_events=5)
    new = (other / NAMES[1]).read_bytes()
    server = Serve(data_dir)
    try:
        server.wait_ready()
        assert server.get(SEG + NAMES[1])[2] == old
        paths[1].write_bytes(new)

        def served_new() -> bool:
            status, _, body = server.get(SEG + NAMES[1])
            assert status == 500 or (status, body) == (200, new), (status, len(body))
            return status == 200

        wait_for(served_new, timeout=30)
        for block in range(3):
            status, _, frame = server.get(f"{BLOCK}?segment={NAMES[1]}&blockIndex={block}")
            with SegmentReader.open(str(paths[1])) as reader:
                assert (status, frame) == (200, reader.read_block_frame(block))
        assert "archive_segment_corrupt" not in [p["kind"] for p in server.healthz().get("problems", [])]
    finally:
        server.stop()


def bucket_with_a_damaged_first_segment(tmp_path, events, url: str, segments: int):
    """Segments built and uploaded to `url`, the first with a byte flipped mid-block (it still lists:
    the footer holds); (local paths, original bytes, the store)."""
    directory = tmp_path / "segments"
    paths = [Path(p) for p in build_archive(directory, events, segments=segments, block_events=8)]
    originals = [p.read_bytes() for p in paths]
    store = upload(directory, url)
    store.put(NAMES[0], flipped(originals[0], mid_block_offset(paths[0])))
    return paths, originals, store


def test_object_store_block_damage_truncation_and_replacement(s3, events, tmp_path):  # noqa: F811
    url = s3.url + "/integrity"
    paths, originals, store = bucket_with_a_damaged_first_segment(tmp_path, events, url, segments=3)
    server = Serve(tmp_path / "data", "--archive-url", url, env=s3.env)
    try:
        server.wait_ready()
        assert listed(server) == NAMES
        assert server.get(SEG + NAMES[1])[2] == originals[1]
        refused_and_reported(server, NAMES[0], originals[0])
        assert server.logs().count(f"event=archive_segment_corrupt name={NAMES[0]}") == 1

        # seg 1: damaged in the bucket after it was served (a new ETag): until the rescan sees the new
        # ETag the cache serves the listed version's checked bytes; after it, a 500. Never a mix.
        store.put(NAMES[1], flipped(originals[1], mid_block_offset(paths[1])))
        status, _, body = server.get(SEG + NAMES[1])
        assert (status, body) == (200, originals[1]) or status == 500
        wait_for(lambda: server.get(SEG + NAMES[1])[0] == 500 and NAMES[1] in corrupt_detail(server), timeout=30)
        refused_and_reported(server, NAMES[1], originals[1])

        # seg 2: a truncated object (the footer no longer where the header says)
        store.put(NAMES[2], originals[2][:-1000])
        server.get(SEG + NAMES[2])
        wait_for(lambda: NAMES[2] in corrupt_detail(server), timeout=30)
        refused_and_reported(server, NAMES[2], originals[2])

        result = verify_cli(url, s3.env)
        assert result.returncode == 1
        assert [line.split(":")[0] for line in result.stdout.splitlines() if line.startswith("BAD")] == [
            f"BAD {n}" for n in NAMES]

        # seg 0 restored, seg 1 replaced by another valid segment of the same name
        other = tmp_path / "other"
        build_archive(other, events, segments=3, block_events=5)
        replacement = (other / NAMES[1]).read_bytes()
        store.put(NAMES[0], originals[0])
        store.put(NAMES[1], replacement)
        wait_for(lambda: listed(server) == NAMES[:2], timeout=30)
        assert server.get(SEG + NAMES[0])[2] == originals[0]
        assert server.get(SEG + NAMES[1])[2] == replacement
        assert server.get(f"{BLOCK}?segment={NAMES[1]}&blockIndex=1")[0] == 200
    finally:
        server.stop()


def unfollowed_get(server: Serve, path: str, headers: dict | None = None) -> tuple[int, str | None, bytes]:
    """A GET that does not follow a redirect: (status, Location, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.getheader("Location"), response.read()
    finally:
        conn.close()


def test_a_redirect_goes_only_to_a_segment_whose_every_byte_was_checked(s3, events, tmp_path):  # noqa: F811
    """With --archive-redirect the bytes come from the store or a CDN, unseen by us: a damaged segment must
    never be redirected to, and a good one only once a sweep through us has checked all of it."""
    url = s3.url + "/redirect-integrity"
    _, originals, store = bucket_with_a_damaged_first_segment(tmp_path, events, url, segments=2)
    server = Serve(tmp_path / "data", "--archive-url", url, "--archive-redirect", "presign", env=s3.env)
    try:
        server.wait_ready()
        assert listed(server) == NAMES[:2]
        for _ in range(2):
            status, location, body = unfollowed_get(server, SEG + NAMES[0])
            assert (status, location) == (500, None) and originals[0][:256] not in body
        refused_and_reported(server, NAMES[0], originals[0])

        assert unfollowed_get(server, SEG + NAMES[1], {"Range": "bytes=0-99"}) == (206, None, originals[1][:100])
        assert unfollowed_get(server, SEG + NAMES[1]) == (200, None, originals[1]), "the sweep that checks it"
        status, location, _ = unfollowed_get(server, SEG + NAMES[1], {"Range": "bytes=0-99"})
        assert status == 307 and location, "checked whole: redirected"
        checked = tmp_path / "data" / "archive" / "checked" / "main.json"
        wait_for(lambda: checked.exists() and NAMES[1] in checked.read_text(), timeout=30)
    finally:
        server.stop()

    # A restart remembers what was checked whole: redirected at once, the damaged one still refused.
    server = Serve(tmp_path / "data", "--archive-url", url, "--archive-redirect", "presign", env=s3.env)
    try:
        server.wait_ready()
        assert unfollowed_get(server, SEG + NAMES[1], {"Range": "bytes=0-99"})[0] == 307
        assert unfollowed_get(server, SEG + NAMES[0])[0] == 500
        # ...but not a new version of it (another ETag): served, and checked, here first.
        other = tmp_path / "other"
        build_archive(other, events, segments=2, block_events=5)
        replacement = (other / NAMES[1]).read_bytes()
        store.put(NAMES[1], replacement)
        server.get(SEG + NAMES[1], {"Range": "bytes=0-0"})  # the listed version moved: rescanned
        wait_for(lambda: unfollowed_get(server, SEG + NAMES[1], {"Range": "bytes=0-99"}) ==
                 (206, None, replacement[:100]), timeout=30)
        assert unfollowed_get(server, SEG + NAMES[1]) == (200, None, replacement)
        assert unfollowed_get(server, SEG + NAMES[1], {"Range": "bytes=0-99"})[0] == 307
    finally:
        server.stop()


def test_versions_checked_whole_are_remembered_per_version_and_location(events, tmp_path):
    from jetstream.archive.integrity import ServedBytes
    from jetstream.archive.manifest import Manifest
    from jetstream.archive.xrpc import load_checked_versions, save_checked_versions

    paths = build_archive(tmp_path / "segments", events, segments=2, block_events=8)
    manifest = Manifest(str(tmp_path / "segments"))
    manifest.scan()
    first, second = manifest.segments
    served = ServedBytes()
    blocks = manifest.footer(first).blocks
    half = served.plan(first, blocks, 0, first.size // 2)
    fd = os.open(paths[0], os.O_RDONLY)
    try:
        served.run(half, fd, first)
        assert not served.complete(first) and not served.changed, "half checked is not whole"
        served.run(served.plan(first, blocks, 0, first.size), fd, first)
    finally:
        os.close(fd)
    assert served.complete(first) and served.changed and not served.complete(second)
    versions = served.complete_versions()
    assert versions == [(first.name, first.version)] and not served.changed

    checked = tmp_path / "checked"
    save_checked_versions(str(checked), "main", "/the/archive", versions)
    (checked / "worker-1.json").write_text("{not json")  # a torn or foreign file costs a re-check, no more
    assert load_checked_versions(str(checked), "/the/archive") == versions
    assert load_checked_versions(str(checked), "s3://another/archive") == []
    again = ServedBytes()
    again.trust(load_checked_versions(str(checked), "/the/archive"))
    assert again.complete(first) and again.plan(first, blocks, 0, first.size) is None
    again.retain([(first.name, "another-version"), (second.name, second.version)])
    assert not again.complete(first) and again.changed, "a version no longer listed is forgotten"
    assert again.plan(first, blocks, 0, 100) is not None
