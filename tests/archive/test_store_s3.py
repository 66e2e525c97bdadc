"""The archive on object storage: a real S3 endpoint process (moto's server on loopback, and
JETSTREAM_TEST_S3_URL when set) against a real `jetstream serve --archive-url s3://...`.

Segments are written by SegmentWriter from the corpus' relay frames, uploaded through our store,
and every answer (listSegments, planSnapshot, getSegment with ranges and ETags, getBlock, the
atproto SDK's snapshot()) must equal the one a `jetstream serve` gives from the same files in a
local directory. A corrupt object is refused, reported and never served; the download cache
stays within its bound; `jetstream archive verify|ls` work on a directory and on an s3:// URL.
"""
from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from atproto_jetstream import JetstreamClient

from jetstream.archive import SegmentReader
from jetstream.archive.cache import SegmentCache
from jetstream.archive.store import ObjectChanged, ObjectMissing, ObjectStore
from tests.archive.s3_helpers import TEST_S3_URL_ENV, env_endpoint, moto_server, s3_environment
from tests.archive.serve_helpers import BASE_US, REPO_ROOT, Serve, build_archive, corpus_archive_events

pytestmark = pytest.mark.timeout(300)

LIST = "/xrpc/network.bsky.jetstream.listSegments"
PLAN = "/xrpc/network.bsky.jetstream.planSnapshot"
SEGMENT = "/xrpc/network.bsky.jetstream.getSegment?name="
BLOCK = "/xrpc/network.bsky.jetstream.getBlock?segment={}&blockIndex={}"


@pytest.fixture(scope="module", params=["moto", "env"])
def s3(request, tmp_path_factory):
    if request.param == "moto":
        endpoint = moto_server(tmp_path_factory.mktemp("moto") / "moto.log")
    else:
        endpoint = env_endpoint()
        if endpoint is None:
            pytest.skip(f"{TEST_S3_URL_ENV} is not set: no external S3 endpoint to test against")
    with s3_environment(endpoint):
        yield endpoint


def upload(directory, url: str) -> ObjectStore:
    store = ObjectStore(url)
    for name in sorted(os.listdir(directory)):
        if name.endswith(".jss"):
            store.put(name, Path(directory, name).read_bytes())
    return store


@pytest.fixture(scope="module")
def events():
    return corpus_archive_events()


@pytest.fixture(scope="module")
def archive(s3, events, tmp_path_factory):
    directory = tmp_path_factory.mktemp("archive") / "segments"
    build_archive(directory, events, segments=3, block_events=8)
    url = s3.url + "/main"
    upload(directory, url)
    return directory, url


@pytest.fixture(scope="module")
def servers(s3, archive, tmp_path_factory):
    directory, url = archive
    local = Serve(tmp_path_factory.mktemp("local") / "data", "--archive-dir", str(directory))
    remote = Serve(tmp_path_factory.mktemp("remote") / "data", "--archive-url", url, env=s3.env)
    try:
        local.wait_ready()
        remote.wait_ready()
        yield local, remote
    finally:
        local.stop()
        remote.stop()


def client(server: Serve, **params) -> JetstreamClient:
    return JetstreamClient(params=params or None, base_uri=f"ws://127.0.0.1:{server.port}/xrpc", api_key="any")


def rows(server: Serve, **params) -> list[tuple]:
    out = []
    for m in client(server, **params).snapshot():
        out.append((m.seq, m.did, getattr(m, "operation", None), getattr(m, "collection", None),
                    getattr(m, "rkey", None), str(getattr(m, "cid", "") or ""), m.py_type))
    return out


# -- the store itself -----------------------------------------------------------------------------

def test_store_operations_against_s3(s3):
    store = ObjectStore(s3.url + "/ops")
    assert store.list_segments() == []
    first = store.put("seg_0000000001.jss", b"A" * 1000)
    store.put("seg_0000000000.jss", b"B" * 10)
    store.put("notes.txt", b"not a segment")
    listed = store.list_segments()
    assert [(o.name, o.index, o.size) for o in listed] == [("seg_0000000000.jss", 0, 10), ("seg_0000000001.jss", 1, 1000)]
    assert listed[1].version == first.version == store.head("seg_0000000001.jss").version
    assert store.read_range("seg_0000000001.jss", 990, 100) == b"A" * 10  # short at the end
    assert store.read("seg_0000000000.jss") == b"B" * 10
    store.put("seg_0000000001.jss", b"C" * 1000)  # replaced: the old version's ETag no longer matches
    with pytest.raises(ObjectChanged):
        store.read_range("seg_0000000001.jss", 0, 10, first.version)
    with pytest.raises(ObjectMissing):
        store.read_range("seg_0000000009.jss", 0, 10)
    url = store.presign("seg_0000000001.jss", 60)
    request = urllib.request.Request(url, headers={"Range": "bytes=5-9"})  # noqa: S310 - loopback / test endpoint
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        assert response.status == 206 and response.read() == b"CCCCC"


def test_cache_fetches_ranges_once_and_stays_within_its_bound(s3, tmp_path):
    payloads = {f"seg_000000000{i}.jss": os.urandom(20_000 + i * 1000) for i in range(5)}
    store = ObjectStore(s3.url + "/cache-unit")
    versions = {name: store.put(name, data).version for name, data in payloads.items()}
    cache_dir = tmp_path / "cache"

    async def scenario():
        cache = SegmentCache(store, str(cache_dir), max_bytes=48_000, chunk_bytes=4096)
        ranges = [(0, 100), (4000, 300), (0, 20_000), (19_000, 1500), (4096, 4096)]
        for name, data in payloads.items():
            for offset, length in ranges:
                length = min(length, len(data) - offset)
                fd = await cache.open_range(name, versions[name], len(data), offset, length)
                try:
                    assert os.pread(fd, length, offset) == data[offset:offset + length]
                finally:
                    os.close(fd)
                on_disk = sum(p.stat().st_blocks * 512 for p in cache_dir.iterdir())
                assert cache.cached_bytes <= 48_000 and on_disk <= 48_000 + 4096 * 2
        # the same ranges again for the last segment: all hits, nothing fetched
        name = list(payloads)[-1]
        fetched, hits = cache.stats.fetched_bytes, cache.stats.hits
        fds = await asyncio.gather(*(cache.open_range(name, versions[name], len(payloads[name]), 0, 8192)
                                     for _ in range(4)))
        for fd in fds:
            os.close(fd)
        assert cache.stats.fetched_bytes == fetched and cache.stats.hits == hits + 4
        # concurrent misses of one chunk: fetched once
        cold = list(payloads)[0]
        fetched = cache.stats.fetched_bytes
        fds = await asyncio.gather(*(cache.open_range(cold, versions[cold], len(payloads[cold]), 8192, 100)
                                     for _ in range(5)))
        for fd in fds:
            os.close(fd)
        assert cache.stats.fetched_bytes - fetched == 4096
        # larger than the whole bound: a temporary file, nothing kept
        big = "seg_0000000009.jss"
        data = os.urandom(100_000)
        version = store.put(big, data).version
        before = cache.cached_bytes
        fd = await cache.open_range(big, version, len(data), 0, len(data))
        try:
            assert os.pread(fd, len(data), 0) == data
        finally:
            os.close(fd)
        assert cache.stats.oversize == 1 and cache.cached_bytes == before
        # replaced since listed: refused, never mixed in
        store.put(big, os.urandom(100_000))
        with pytest.raises(ObjectChanged):
            await cache.open_range(big, version, len(data), 0, 100)
        return cache.stats

    stats = asyncio.run(scenario())
    assert stats.evicted_segments > 0


# -- the daemon on S3 answers as on a directory ---------------------------------------------------

def test_list_segments_and_plans_equal_the_directory(servers, events):
    local, remote = servers
    assert local.get(LIST)[2] == remote.get(LIST)[2]
    assert json.loads(remote.get(LIST)[2])["segments"][0]["name"] == "seg_0000000000.jss"
    bodies = [{}, {"dids": [events[0].did]}, {"collections": ["app.bsky.feed.like"]},
              {"afterSeq": 40, "beforeSeq": 120}, {"kinds": ["identity", "account"]},
              {"dids": [events[5].did, events[77].did], "collections": ["app.bsky.feed.*"]}]
    for body in bodies:
        a, b = local.post_json(PLAN, body), remote.post_json(PLAN, body)
        assert a[0] == b[0] == 200
        assert json.loads(a[2]) == json.loads(b[2]), body


def test_get_segment_and_block_equal_the_directory(servers, archive):
    local, remote = servers
    directory, _ = archive
    for path in sorted(Path(directory).iterdir()):
        name = path.name
        data = path.read_bytes()
        size = len(data)
        cases = [{}, {"Range": "bytes=0-99"}, {"Range": "bytes=100-"}, {"Range": "bytes=-50"},
                 {"Range": f"bytes=1000-{size + 5000}"}, {"Range": f"bytes={size}-"}]
        for headers in cases:
            a, b = local.get(SEGMENT + name, headers), remote.get(SEGMENT + name, headers)
            assert a[0] == b[0] and a[2] == b[2], (name, headers, a[0], b[0])
            for header in ("ETag", "Content-Range", "Cache-Control", "Accept-Ranges", "Content-Length"):
                assert a[1].get(header) == b[1].get(header), (name, headers, header)
        assert remote.get(SEGMENT + name)[2] == data
        etag = remote.get(SEGMENT + name)[1]["ETag"]
        assert remote.get(SEGMENT + name, {"If-None-Match": etag})[0] == 304
        assert remote.get(SEGMENT + name, {"Range": "bytes=0-9", "If-Range": '"0000000000000000"'})[2] == data
        with SegmentReader.open(str(path)) as reader:
            blocks = len(reader.blocks)
            frames = [reader.read_block_frame(i) for i in range(blocks)]
        for i in range(blocks):
            a, b = local.get(BLOCK.format(name, i)), remote.get(BLOCK.format(name, i))
            assert a[0] == b[0] == 200 and a[2] == b[2] == frames[i] and a[1]["ETag"] == b[1]["ETag"]
        assert local.get(BLOCK.format(name, blocks))[0] == remote.get(BLOCK.format(name, blocks))[0] == 404
    assert remote.get(SEGMENT + "seg_00000000zz.jss")[0] == 404


def test_sdk_snapshot_equals_the_directory(servers, events):
    local, remote = servers
    everything = rows(remote)
    assert everything == rows(local)
    assert [r[0] for r in everything] == [e.seq for e in events]
    did = events[0].did
    assert rows(remote, dids=[did]) == rows(local, dids=[did]) != []
    assert rows(remote, collections=["app.bsky.feed.post"]) == rows(local, collections=["app.bsky.feed.post"]) != []
    assert remote.healthz()["status"] == "ok"


# -- corruption -----------------------------------------------------------------------------------

def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def _flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x40]) + data[offset + 1:]


def test_corrupt_objects_are_refused_reported_and_never_served(s3, events, tmp_path):
    directory = tmp_path / "segments"
    paths = build_archive(directory, events, segments=4, block_events=8)
    url = s3.url + "/corrupt"
    store = upload(directory, url)
    bad_name = os.path.basename(paths[3])
    good = Path(paths[3]).read_bytes()
    store.put(bad_name, _flip(good, len(good) - 20))  # a footer byte: the header checksum no longer holds
    server = Serve(tmp_path / "data", "--archive-url", url, env=s3.env)
    try:
        server.wait_ready()
        listed = [s["name"] for s in json.loads(server.get(LIST)[2])["segments"]]
        assert listed == [os.path.basename(p) for p in paths[:3]]
        assert server.get(SEGMENT + bad_name)[0] == 500  # held but refused: a fault, not an absence
        problems = server.healthz()["problems"]
        assert any(p["kind"] == "archive_segment_corrupt" and bad_name in p["detail"] for p in problems)
        # A listed object replaced by damaged bytes after listing: the download refuses it.
        victim = os.path.basename(paths[1])
        victim_bytes = Path(paths[1]).read_bytes()
        store.put(victim, _flip(victim_bytes, len(victim_bytes) - 30))  # a footer byte: the checksum fails
        status, _, body = server.get(SEGMENT + victim)
        assert status in (404, 500) and body != victim_bytes and victim_bytes[:256] not in body
        wait_for(lambda: any(p["kind"] == "archive_segment_corrupt" and victim in p["detail"]
                          for p in server.healthz().get("problems", [])), timeout=30)
        # Restore both (the same bytes: S3 gives them their old ETags back): the problem ends.
        store.put(bad_name, good)
        store.put(victim, victim_bytes)
        wait_for(lambda: server.healthz()["status"] == "ok", timeout=30)
        assert server.get(SEGMENT + victim)[2] == victim_bytes
    finally:
        server.stop()
    assert "event=health_degraded problem=archive_segment_corrupt" in server.logs()


# -- the cache's bound in the daemon --------------------------------------------------------------

def test_serve_cache_stays_within_its_bound(s3, events, tmp_path):
    many = []
    for r in range(8):
        many += [e._replace(did=e.did + (f"x{r}" if r else ""), rkey=e.rkey + str(r)) for e in events]
    many = [e._replace(seq=i + 1, witnessed_at=BASE_US + i * 1000) for i, e in enumerate(many)]
    directory = tmp_path / "segments"
    paths = build_archive(directory, many, segments=6, block_events=64)
    assert sum(os.path.getsize(p) for p in paths) > 2.5 * 65536  # the cache holds about two of six
    url = s3.url + "/bounded"
    upload(directory, url)
    data_dir = tmp_path / "data"
    server = Serve(data_dir, "--archive-url", url, "--archive-cache-bytes", "65536",
                   "--archive-cache-chunk-bytes", "4096", env=s3.env)
    cache_dir = data_dir / "archive" / "cache" / "main"

    def on_disk() -> int:
        return sum(p.stat().st_blocks * 512 for p in cache_dir.iterdir()) if cache_dir.exists() else 0

    try:
        server.wait_ready()
        for _ in range(2):
            for path in paths:
                name, data = os.path.basename(path), Path(path).read_bytes()
                for start in range(0, len(data), 8192):
                    status, _, body = server.get(SEGMENT + name, {"Range": f"bytes={start}-{start + 8191}"})
                    assert status == 206 and body == data[start:start + 8192]
                    assert on_disk() <= 65536 + 4096
                assert server.get(SEGMENT + name)[2] == data
                assert on_disk() <= 65536 + 4096
        seen = [r[0] for r in rows(server)]
        assert seen == [e.seq for e in many]
        assert on_disk() <= 65536 + 4096
    finally:
        server.stop()


# -- redirects ------------------------------------------------------------------------------------

def test_redirect_to_presigned_url(s3, archive, events, tmp_path):
    directory, url = archive
    server = Serve(tmp_path / "data", "--archive-url", url, "--archive-redirect", "presign", env=s3.env)
    try:
        server.wait_ready()
        name = "seg_0000000001.jss"
        data = (Path(directory) / name).read_bytes()

        def get_range(first: int, last: int):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            conn.request("GET", SEGMENT + name, headers={"Range": f"bytes={first}-{last}"})
            response = conn.getresponse()
            body = response.read()
            conn.close()
            return response.status, response.getheader("Location"), body

        # Not redirected before every byte of it was checked here: the first sweep is served (and checked).
        half = len(data) // 2
        assert get_range(10, 59) == (206, None, data[10:60])
        assert get_range(0, half)[0] == 206
        assert get_range(0, half)[0] == 206, "half of it checked: still served here"
        assert get_range(half + 1, len(data) - 1) == (206, None, data[half + 1:])
        status, location, _ = get_range(10, 59)
        assert status == 307 and location
        target = urllib.parse.urlsplit(location)
        assert "X-Amz-Signature" in target.query or TEST_S3_URL_ENV in os.environ
        request = urllib.request.Request(location, headers={"Range": "bytes=10-59"})  # noqa: S310
        with urllib.request.urlopen(request, timeout=10) as fetched:  # noqa: S310
            assert fetched.status == 206 and fetched.read() == data[10:60]
        # preconditions are still answered here
        etag = json.loads(server.get(LIST)[2])["segments"][1]["checksum"]
        assert server.get(SEGMENT + name, {"If-None-Match": f'"{etag}"'})[0] == 304
        # getBlock is always served (a redirect cannot carry the block's range)
        assert server.get(BLOCK.format(name, 0))[0] == 200
        # the SDK follows the redirect (httpx follow_redirects=True, Authorization dropped cross-origin)
        assert [r[0] for r in rows(server)] == [e.seq for e in events]
    finally:
        server.stop()


# -- jetstream archive verify | ls ----------------------------------------------------------------

def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "jetstream.cli", "archive", *args], cwd=REPO_ROOT,
                          env=dict(os.environ, **(env or {})), capture_output=True, text=True, timeout=120)


def test_archive_verify_and_ls_on_a_directory_and_on_s3(s3, events, tmp_path):
    directory = tmp_path / "segments"
    paths = build_archive(directory, events, segments=3, block_events=8)
    url = s3.url + "/cli"
    store = upload(directory, url)
    for location in (str(directory), url):
        done = run_cli("verify", location, env=s3.env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "verified 3 segments: 3 good (152 events), 0 bad" in done.stdout
        listed = run_cli("ls", location, env=s3.env)
        assert listed.returncode == 0, listed.stdout + listed.stderr
        lines = listed.stdout.splitlines()
        assert [line.split()[0] for line in lines[1:4]] == [os.path.basename(p) for p in paths]
        assert lines[-1] == f"total: 3 segments, 152 events, {sum(os.path.getsize(p) for p in paths)} bytes, seq 1..152"
    # damage: a zstd frame byte in one (the footer checksum still holds: only verify sees it) and an
    # overlapping seq range in another
    data = Path(paths[1]).read_bytes()
    with SegmentReader.open(paths[1]) as reader:
        offset = reader.blocks[0].offset + 8 + reader.blocks[0].compressed_size - 6  # inside the frame's checksum
    damaged = _flip(data, offset)
    overlapping = tmp_path / "other"
    build_archive(overlapping, events[100:], segments=1, block_events=8)
    stale = Path(overlapping, "seg_0000000000.jss").read_bytes()
    bad_dir = tmp_path / "bad"
    shutil.copytree(directory, bad_dir)
    Path(bad_dir, os.path.basename(paths[1])).write_bytes(damaged)
    Path(bad_dir, "seg_0000000003.jss").write_bytes(stale)
    store.put(os.path.basename(paths[1]), damaged)
    store.put("seg_0000000003.jss", stale)
    for location in (str(bad_dir), url):
        done = run_cli("verify", location, env=s3.env)
        assert done.returncode == 1, done.stdout + done.stderr
        bad_lines = [line for line in done.stdout.splitlines() if line.startswith("BAD ")]
        assert len(bad_lines) == 2, done.stdout
        assert bad_lines[0].startswith(f"BAD {os.path.basename(paths[1])}: ")
        assert bad_lines[1].startswith("BAD seg_0000000003.jss: min_seq 101 is not above")
    assert run_cli("verify", s3.url + "/nothing-here", env=s3.env).returncode == 0  # an empty archive is fine
    assert run_cli("ls", str(tmp_path / "missing")).returncode == 0
