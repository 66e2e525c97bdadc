"""Fuzzing the archive endpoints' request parsing: never a 500, never an exception, v2's error shape.

test_fuzz_segment.py covers the segment reader; this covers what a client sends: planSnapshot
bodies (kinds, dids, collections, afterSeq, beforeSeq, `$type`, unknown fields, any JSON, any
bytes), getSegment / getBlock / listSegments queries (name, segment, blockIndex, limit, cursor) and
the download headers Go's ServeContent reads (Range, If-Range, If-Match, If-None-Match,
If-Modified-Since, If-Unmodified-Since). Every request goes through ArchiveService.handle, the
answer path the daemon uses, over a real archive of three sealed segments on disk. The answer is
a success of the endpoint (200, 206, 304, 412, 416 for downloads), a 404 naming a segment or block
that is not there, or a 400 InvalidRequest; every JSON error is one `{"error", "message"}` object.
"""
from __future__ import annotations

import asyncio
import json
import os
import urllib.parse

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from jetstream.archive.xrpc import (
    GET_BLOCK,
    GET_SEGMENT,
    LIST_SEGMENTS,
    PLAN_SNAPSHOT,
    ArchiveService,
    ArchiveSettings,
    FileRange,
    Request,
)
from tests.archive.serve_helpers import build_archive, corpus_archive_events
from tests.fuzz.test_fuzz_strategies import fuzz_settings

pytestmark = pytest.mark.timeout(240)

DOWNLOAD_STATUSES = {200, 206, 304, 412, 416, 400, 404}
ERROR_NAMES = {400: {"InvalidRequest"}, 404: {"SegmentNotFound", "BlockNotFound"}, 413: {"TooLarge"}}
SEEN: dict[int, int] = {}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    directory = tmp_path_factory.mktemp("fuzz-archive")
    build_archive(directory, corpus_archive_events(), segments=3, block_events=8)
    archive = ArchiveService(ArchiveSettings(str(directory), plan_max_entries=2))
    archive.manifest.scan()
    loop = asyncio.new_event_loop()
    yield archive, loop
    loop.close()


def answer(service, method: str, path: str, raw_query: bytes = b"", headers=None, body: bytes = b""):
    archive, loop = service
    response = loop.run_until_complete(archive.handle(Request(method, path, raw_query, headers or {}, body)))
    if isinstance(response.body, FileRange):
        os.close(response.body.fd)
    SEEN[response.status] = SEEN.get(response.status, 0) + 1
    return response


def assert_error_shape(response) -> None:
    headers = dict(response.headers)
    if response.status in ERROR_NAMES:
        assert headers.get("Content-Type") == "application/json"
        doc = json.loads(response.body)
        assert set(doc) <= {"error", "message"} and doc["error"] in ERROR_NAMES[response.status], doc
        assert isinstance(doc.get("message", ""), str)


# -- planSnapshot bodies ---------------------------------------------------------------------------

TEXT = st.one_of(st.sampled_from(("commit", "identity", "account", "sync", "likes", "", "app.bsky.feed.post",
                                  "app.bsky.*", "a.*", ".*", "app.bsky.feed.post*", "did:plc:ewvi7nxzyoun6zhxrhs64oiz",
                                  "did:web:example.com", "did:plc:", "$account", "did:plc:" + "a" * 24)),
                 st.text(max_size=40))
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(1 << 70), max_value=1 << 70),
                   st.floats(allow_nan=False), TEXT)
VALUE = st.recursive(SCALAR, lambda inner: st.one_of(st.lists(inner, max_size=6),
                                                     st.dictionaries(TEXT, inner, max_size=4)), max_leaves=12)
FIELDS = st.sampled_from(("kinds", "dids", "collections", "afterSeq", "beforeSeq", "$type", "cursor", "limit",
                          "Kinds", "extra"))
FIELD_VALUES = st.one_of(VALUE, st.lists(TEXT, max_size=5), st.integers(min_value=-5, max_value=400))


@fuzz_settings(400)
@given(doc=st.dictionaries(FIELDS, FIELD_VALUES, max_size=6))
def test_plan_bodies_are_planned_or_refused_with_a_400(service, doc):
    response = answer(service, "POST", PLAN_SNAPSHOT, body=json.dumps(doc).encode())
    assert response.status in (200, 400), (doc, response)
    assert_error_shape(response)
    if response.status == 200:
        plan = json.loads(response.body)
        assert {"segments", "plannedThroughSeq", "sealedTipSeq"} <= set(plan)


@fuzz_settings(300)
@given(body=st.one_of(st.binary(max_size=300), VALUE.map(lambda v: json.dumps(v).encode()),
                      st.text(max_size=200).map(str.encode)))
def test_plan_body_bytes_never_fail_the_server(service, body):
    response = answer(service, "POST", PLAN_SNAPSHOT, body=body)
    assert response.status in (200, 400), (body, response)
    assert_error_shape(response)


# -- downloads: query and headers -------------------------------------------------------------------

NAMES = st.one_of(st.sampled_from(("seg_0000000000.jss", "seg_0000000002.jss", "seg_0000000009.jss", "seg_0.jss",
                                   "../seg_0000000000.jss", "seg_000000000Z.jss", "", "seg_zzzzzzzzzz.jss")),
                  st.text(max_size=30))
NUMBERS = st.one_of(st.integers(min_value=-3, max_value=40).map(str),
                    st.sampled_from(("", "+1", "-0", "0x1", "1e2", " 1", "9223372036854775808", "99999999999999999999",
                                     "١", "00000000000000000000001")))
QUERY_KEYS = st.sampled_from(("name", "segment", "blockIndex", "limit", "cursor", "Name", ""))
POSITIONS = st.integers(min_value=-2, max_value=30_000).map(str)
RANGE = st.one_of(
    st.builds(lambda a, b: f"bytes={a}-{b}", st.one_of(POSITIONS, st.just("")), st.one_of(POSITIONS, st.just(""))),
    st.builds(lambda parts: "bytes=" + ",".join(parts),
              st.lists(st.builds(lambda a, b: f"{a}-{b}", POSITIONS, POSITIONS), max_size=4)),
    st.sampled_from(("bytes=", "bytes=-", "bytes=--1", "items=0-1", "bytes=0-0,-1", "bytes= 1 - 2 ", "bytes=1-0",
                     "bytes=99999999999999999999999-", "bytes=-99999999999999999999999")),
    st.text(max_size=30))
VALIDATOR = st.one_of(st.sampled_from(('"', '*', 'W/"x"', '"0000000000000000"', 'W/', '"a", "b"', ",,",
                                       "Mon, 02 Jan 2006 15:04:05 GMT", "Thu, 01 Jan 1970 00:00:00 GMT",
                                       "Fri, 31 Dec 9999 23:59:59 GMT", "yesterday")),
                      st.text(max_size=30))
VALIDATORS = st.dictionaries(st.sampled_from(("If-Range", "If-Match", "If-None-Match", "If-Modified-Since",
                                              "If-Unmodified-Since", "Range")), st.one_of(VALIDATOR, RANGE), max_size=3)
HEADERS = st.builds(lambda validators, range_header: {**validators, **range_header},
                    st.one_of(st.just({}), VALIDATORS), st.one_of(st.just({}), RANGE.map(lambda r: {"Range": r})))


def encode(pairs, percent: bool) -> bytes:
    if percent:
        return urllib.parse.urlencode(pairs).encode()
    return "&".join(f"{k}={v}" for k, v in pairs).encode("utf-8", "surrogatepass")


# half the queries name a real segment and block first (the first value of a key wins), so that the
# headers reach the range and precondition rules; the other half are anything
VALID = [("name", "seg_0000000001.jss"), ("segment", "seg_0000000001.jss"), ("blockIndex", "1")]


@fuzz_settings(500)
# Each kind of answer at least once whatever the random draw (the last test checks they were reached):
# a whole segment, a range of it, a range past its end, a segment that is not there.
@example(path=GET_SEGMENT, valid=True, pairs=[], percent=False, headers={})
@example(path=GET_SEGMENT, valid=True, pairs=[], percent=False, headers={"Range": "bytes=0-9"})
@example(path=GET_SEGMENT, valid=True, pairs=[], percent=False, headers={"Range": "bytes=99999999-"})
@example(path=GET_SEGMENT, valid=False, pairs=[("name", "seg_0000000009.jss")], percent=False, headers={})
@given(path=st.sampled_from((GET_SEGMENT, GET_BLOCK, LIST_SEGMENTS)), valid=st.booleans(),
       pairs=st.lists(st.tuples(QUERY_KEYS, st.one_of(NAMES, NUMBERS)), max_size=4),
       percent=st.booleans(), headers=HEADERS)
def test_download_queries_and_headers_are_answered_never_failed(service, path, valid, pairs, percent, headers):
    response = answer(service, "GET", path, encode((VALID if valid else []) + pairs, percent), headers)
    assert response.status in DOWNLOAD_STATUSES, (path, pairs, headers, response.status, response.body[:300])
    assert_error_shape(response)
    if response.status == 206:
        content_range = dict(response.headers)["Content-Range"]
        assert content_range.startswith("bytes ") and "/" in content_range


@fuzz_settings(300)
@given(path=st.sampled_from((GET_SEGMENT, GET_BLOCK, LIST_SEGMENTS)), raw=st.binary(max_size=120),
       range_header=st.text(max_size=40))
def test_random_query_bytes_and_ranges_never_fail_the_server(service, path, raw, range_header):
    response = answer(service, "GET", path, raw, {"Range": range_header})
    assert response.status in DOWNLOAD_STATUSES, (path, raw, range_header, response.status, response.body[:300])
    assert_error_shape(response)


def test_the_fuzzing_reached_plans_downloads_ranges_and_refusals():
    """Run after the fuzz tests in this module: the inputs reached every kind of answer."""
    assert {200, 206, 400, 404, 416} <= set(SEEN), SEEN
