"""getSegment / getBlock / listSegments / planSnapshot over real HTTP from a real `jetstream serve`:
Range (closed, open-ended, suffix, past the end), If-Range, If-None-Match -> 304, ETag = the quoted
checksum, v2's error envelopes, 503 before the first scan, and a corrupt segment detected,
reported on /healthz and never served."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from jetstream.archive import SegmentReader
from jetstream.archive.format import FRAME_PREFIX_SIZE
from tests.archive.serve_helpers import Serve, build_archive, corpus_archive_events
from tests.waiting import until

pytestmark = pytest.mark.timeout(180)

SEG = "/xrpc/network.bsky.jetstream.getSegment?name="
BLOCK = "/xrpc/network.bsky.jetstream.getBlock"
LIST = "/xrpc/network.bsky.jetstream.listSegments"
PLAN = "/xrpc/network.bsky.jetstream.planSnapshot"


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("http") / "data"
    paths = build_archive(data_dir / "archive", corpus_archive_events(), segments=3, block_events=8)
    server = Serve(data_dir)
    try:
        server.wait_ready()
        yield server, paths
    finally:
        server.stop()


def error_of(body: bytes) -> tuple[str, str]:
    doc = json.loads(body)
    return doc["error"], doc.get("message", "")


def test_get_segment_whole_file_with_etag_and_validators(archive):
    server, paths = archive
    raw = open(paths[0], "rb").read()
    with SegmentReader.open(paths[0]) as reader:
        etag = f'"{reader.header.checksum:016x}"'
    status, headers, body = server.get(SEG + os.path.basename(paths[0]))
    assert status == 200 and body == raw
    assert headers["ETag"] == etag and headers["Accept-Ranges"] == "bytes"
    assert headers["Content-Type"] == "application/octet-stream" and headers["Cache-Control"] == "public, no-cache"
    assert int(headers["Content-Length"]) == len(raw) and "Last-Modified" in headers


@pytest.mark.parametrize("spec, start, end", [
    ("bytes=0-99", 0, 100),
    ("bytes=100-", 100, None),  # open-ended
    ("bytes=-50", -50, None),  # suffix
    ("bytes=200-999999999", 200, None),  # clamped at EOF: a short body
])
def test_get_segment_ranges(archive, spec, start, end):
    server, paths = archive
    raw = open(paths[1], "rb").read()
    status, headers, body = server.get(SEG + os.path.basename(paths[1]), {"Range": spec})
    want = raw[start:end]
    assert status == 206 and body == want
    first = start % len(raw)
    assert headers["Content-Range"] == f"bytes {first}-{first + len(want) - 1}/{len(raw)}"


def test_a_range_past_the_end_is_416_and_a_bad_one_too(archive):
    server, paths = archive
    size = os.path.getsize(paths[0])
    status, headers, body = server.get(SEG + os.path.basename(paths[0]), {"Range": f"bytes={size}-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{size}"
    assert body == b"invalid range: failed to overlap\n" and "ETag" not in headers
    status, _, body = server.get(SEG + os.path.basename(paths[0]), {"Range": "bytes=9-3"})
    assert status == 416 and body == b"invalid range\n"
    status, _, body = server.get(SEG + os.path.basename(paths[0]), {"Range": "pages=1-2"})
    assert status == 416


def test_if_none_match_is_304_and_if_range_falls_back_to_the_whole_file(archive):
    server, paths = archive
    name = os.path.basename(paths[2])
    _, headers, raw = server.get(SEG + name)
    etag = headers["ETag"]
    status, headers304, body = server.get(SEG + name, {"If-None-Match": etag})
    assert status == 304 and body == b"" and headers304["ETag"] == etag and "Last-Modified" not in headers304
    assert server.get(SEG + name, {"If-None-Match": '"0000000000000000"'})[0] == 200
    status, _, body = server.get(SEG + name, {"Range": "bytes=0-9", "If-Range": etag})
    assert status == 206 and body == raw[:10]
    status, _, body = server.get(SEG + name, {"Range": "bytes=0-9", "If-Range": '"0000000000000000"'})
    assert status == 200 and body == raw  # the client's copy is another file: all of this one


def test_get_block_serves_the_stored_frame(archive):
    server, paths = archive
    name = os.path.basename(paths[0])
    raw = open(paths[0], "rb").read()
    with SegmentReader.open(paths[0]) as reader:
        info = reader.blocks[2]
        checksum = reader.header.checksum
        count = len(reader.blocks)
    status, headers, body = server.get(f"{BLOCK}?segment={name}&blockIndex=2")
    assert status == 200
    assert body == raw[info.offset + FRAME_PREFIX_SIZE:info.offset + FRAME_PREFIX_SIZE + info.compressed_size]
    assert headers["ETag"] == f'"{checksum:016x}:2"'
    assert server.get(f"{BLOCK}?segment={name}&blockIndex=2", {"If-None-Match": headers["ETag"]})[0] == 304
    status, _, ranged = server.get(f"{BLOCK}?segment={name}&blockIndex=2", {"Range": "bytes=4-"})
    assert status == 206 and ranged == body[4:]
    status, _, err = server.get(f"{BLOCK}?segment={name}&blockIndex={count}")
    assert status == 404 and error_of(err) == ("BlockNotFound", "block index out of range")


@pytest.mark.parametrize("path, status, error", [
    (SEG.rstrip("?name="), 400, ("InvalidRequest", "missing required parameter: name")),
    (SEG, 400, ("InvalidRequest", "malformed segment name")),
    (SEG + "..%2Fetc%2Fpasswd", 400, ("InvalidRequest", "malformed segment name")),
    (SEG + "seg_0000000000.txt", 400, ("InvalidRequest", "malformed segment name")),
    (SEG + "seg_00000000zz.jss", 404, ("SegmentNotFound", "segment not found")),
    (BLOCK + "?segment=seg_0000000000.jss", 400, ("InvalidRequest", "missing required parameter: blockIndex")),
    (BLOCK + "?segment=seg_0000000000.jss&blockIndex=x", 400, ("InvalidRequest", "invalid integer parameter: blockIndex")),
    (BLOCK + "?segment=seg_0000000000.jss&blockIndex=-1", 400, ("InvalidRequest", "blockIndex must be >= 0")),
    (BLOCK + "?segment=seg_00000000zz.jss&blockIndex=0", 404, ("SegmentNotFound", "segment not found")),
    (LIST + "?limit=0", 400, ("InvalidRequest", "limit must be positive")),
    (LIST + "?limit=x", 400, ("InvalidRequest", "invalid integer parameter: limit")),
    (LIST + "?cursor=-1", 400, ("InvalidRequest", "invalid cursor")),
])
def test_v2s_errors(archive, path, status, error):
    server, _ = archive
    got_status, headers, body = server.get(path)
    assert (got_status, error_of(body)) == (status, error)
    assert headers["Content-Type"] == "application/json"


def test_wrong_methods_are_405_as_v2(archive):
    server, _ = archive
    status, _, body = server.get(PLAN)
    assert (status, error_of(body)) == (405, ("MethodNotAllowed", "expected POST"))
    status, _, body = server.post_json(LIST, {})
    assert (status, error_of(body)) == (405, ("MethodNotAllowed", "expected GET"))


def test_list_segments_pages_with_a_cursor(archive):
    server, paths = archive
    _, _, body = server.get(LIST + "?limit=2")
    first = json.loads(body)
    assert [s["name"] for s in first["segments"]] == [os.path.basename(p) for p in paths[:2]]
    assert first["cursor"] == "2"
    _, _, body = server.get(LIST + "?limit=2&cursor=2")
    second = json.loads(body)
    assert [s["name"] for s in second["segments"]] == [os.path.basename(paths[2])] and "cursor" not in second
    row = first["segments"][0]
    with SegmentReader.open(paths[0]) as reader:
        h = reader.header
    assert row == {"checksum": f"{h.checksum:016x}", "eventCount": h.event_count, "index": 0, "maxSeq": h.max_seq,
                   "maxWitnessedAt": h.max_witnessed_at, "minSeq": h.min_seq, "minWitnessedAt": h.min_witnessed_at,
                   "name": os.path.basename(paths[0]), "sizeBytes": os.path.getsize(paths[0])}


def test_plan_snapshot_400s_and_413(archive):
    server, _ = archive
    for body, message in [
        (b"", "invalid request body"), (b"[1]", "invalid request body"), (b'{"kinds":"commit"}', "invalid request body"),
        ({"kinds": ["commit", "nope"]}, "invalid kind: nope"),
        ({"dids": ["did:plc:ok", "notadid"]}, "invalid DID: notadid"),
        ({"collections": ["app.*"]}, "invalid collection wildcard: app.*"),
        ({"collections": ["app.bsky"]}, "invalid collection: app.bsky"),
        ({"collections": ["app.bsky.feed.post"], "kinds": ["identity"]},
         "collections filter can never apply: kinds excludes commit"),
        ({"afterSeq": -1}, "afterSeq must be >= 0"),
        ({"afterSeq": 5, "beforeSeq": 5}, "beforeSeq must be greater than afterSeq"),
    ]:
        status, _, answer = server.post_json(PLAN, body)
        assert (status, error_of(answer)) == (400, ("InvalidRequest", message)), body
    status, _, answer = server.post_json(PLAN, {"dids": ["did:plc:" + "a" * 24] * 200_000})
    assert (status, error_of(answer)[0]) == (413, "TooLarge")


def test_a_corrupt_segment_is_detected_reported_and_never_served(tmp_path):
    data_dir = tmp_path / "data"
    events = corpus_archive_events()
    paths = build_archive(data_dir / "archive", events, segments=3, block_events=8)
    blob = bytearray(open(paths[1], "rb").read())
    with SegmentReader.open(paths[1]) as reader:
        blob[reader.header.footer_offset + 3] ^= 0xFF  # a footer byte: the header checksum no longer holds
    open(paths[1], "wb").write(bytes(blob))
    server = Serve(data_dir)
    try:
        server.wait_ready()
        health = server.healthz()
        kinds = [p["kind"] for p in health.get("problems", [])]
        assert "archive_segment_corrupt" in kinds
        problem = next(p for p in health["problems"] if p["kind"] == "archive_segment_corrupt")
        assert "seg_0000000001.jss" in problem["detail"] and "checksum" in problem["detail"]
        assert server.get(SEG + "seg_0000000001.jss")[0] == 500  # held but refused: a fault, not an absence
        assert server.get(f"{BLOCK}?segment=seg_0000000001.jss&blockIndex=0")[0] == 500
        assert server.get(SEG + "seg_0000000009.jss")[0] == 404
        listed = json.loads(server.get(LIST)[2])["segments"]
        assert [s["name"] for s in listed] == ["seg_0000000000.jss", "seg_0000000002.jss"]
        plan = json.loads(server.post_json(PLAN, {})[2])
        assert [s["name"] for s in plan["segments"]] == ["seg_0000000000.jss", "seg_0000000002.jss"]
        assert "event=health_degraded problem=archive_segment_corrupt" in server.logs()

        # A listed segment truncated behind the daemon's back: the download refuses it and reports it.
        good = paths[2]
        with open(good, "r+b") as f:
            f.truncate(os.path.getsize(good) - 10)
        status, _, body = server.get(SEG + "seg_0000000002.jss")
        assert status == 500 and error_of(body)[0] == "InternalServerError"
        assert server.get(SEG + "seg_0000000002.jss")[0] == 500

        # The operator restores good copies: served again, the problem ends.
        build_archive(tmp_path / "fresh", events, segments=3, block_events=8)
        for name in ("seg_0000000001.jss", "seg_0000000002.jss"):
            shutil.copyfile(tmp_path / "fresh" / name, data_dir / "archive" / name)
        until_listed = lambda: len(json.loads(server.get(LIST)[2])["segments"]) == 3  # noqa: E731
        import asyncio

        asyncio.run(until(until_listed, "the restored segments to be listed", timeout=30))
        assert "archive_segment_corrupt" not in [p["kind"] for p in server.healthz().get("problems", [])]
    finally:
        server.stop()


def test_503_until_the_first_scan_and_off_with_archive_false(tmp_path):
    from jetstream.archive.xrpc import ArchiveService, ArchiveSettings, Request

    service = ArchiveService(ArchiveSettings(str(tmp_path)))
    import asyncio

    answer = asyncio.run(service.handle(Request("GET", "/xrpc/network.bsky.jetstream.listSegments", b"", {}, b"")))
    assert answer.status == 503 and b'"ServiceUnavailable"' in answer.body
    data_dir = tmp_path / "data"
    build_archive(data_dir / "archive", corpus_archive_events()[:20], segments=1)
    server = Serve(data_dir, "--archive", "false")
    try:
        until_up = lambda: server.process.poll() is None and server.get("/healthz")[0] in (200, 503)  # noqa: E731
        asyncio.run(until(lambda: _quiet(until_up), "the daemon to listen", timeout=30))
        status, _, body = server.get(LIST)
        assert status == 404 and body == b'{"message":"Not Found"}\n'  # v1's unknown path
    finally:
        server.stop()


def _quiet(check) -> bool:
    try:
        return check()
    except OSError:
        return False
