"""The archive's XRPC endpoints, as Jetstream v2 serves them: planSnapshot, getSegment, getBlock, listSegments.

Owns: `ArchiveService`, the read side of the archive in one process: its Manifest (scanned at
start in a thread, rescanned when the writer says a segment was sealed and every
`RESCAN_INTERVAL_S` as a fallback), the `archive_segment_corrupt` problem, and the answer to
each request as a `Response` (status, headers, and bytes or a `FileRange` of an open file the
caller streams): v2's routing by NSID and method (405 MethodNotAllowed), the optional bearer key
(`--archive-api-key`, 401 AuthRequired; v2 has none on these), 503 ServiceUnavailable until the
first scan is done, v2's parameter errors and names (InvalidRequest, SegmentNotFound,
BlockNotFound), ETag = the quoted 16-hex xxh3 checksum (getBlock: `"<hex>:<block>"`),
`Cache-Control: public, no-cache`, and Go's ServeContent rules (http_content.py).
It must never touch a socket (server/front.py writes the answer), never read a whole segment
into memory (a FileRange is streamed), and never serve a file that no longer matches what was
verified when it was listed: each download re-reads the header from the descriptor it serves.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
from dataclasses import dataclass
from hashlib import sha256
from http import HTTPStatus
from typing import Mapping, NamedTuple

from jetstream.archive import planner
from jetstream.archive.format import (
    BLOCK_INDEX_ENTRY_SIZE,
    FRAME_PREFIX_SIZE,
    HEADER_SIZE,
    SegmentError,
    decode_block_index,
    decode_header,
    parse_segment_name,
    segment_name,
)
from jetstream.archive.http_content import TEXT_PLAIN, serve_content
from jetstream.archive.manifest import Manifest, SegmentSummary
from jetstream.server.http import cors_headers, split_target
from jetstream.server.params import parse_query
from jetstream.server.request_head import Local, LocalRoutes
from jetstream.server.wire_v2_request import parse_go_int64, parse_go_uint, xrpc_error

log = logging.getLogger(__name__)

NSID_PREFIX = "network.bsky.jetstream."
PLAN_SNAPSHOT = "/xrpc/network.bsky.jetstream.planSnapshot"
GET_SEGMENT = "/xrpc/network.bsky.jetstream.getSegment"
GET_BLOCK = "/xrpc/network.bsky.jetstream.getBlock"
LIST_SEGMENTS = "/xrpc/network.bsky.jetstream.listSegments"
METHODS = {PLAN_SNAPSHOT: "POST", GET_SEGMENT: "GET", GET_BLOCK: "GET", LIST_SEGMENTS: "GET"}
PATHS = frozenset(path.encode() for path in METHODS)

CACHE_CONTROL = "public, no-cache"  # v2 cacheControlHeader with --segment-cache-max-age 0 (its default)
OCTET_STREAM = "application/octet-stream"
JSON_TYPE = "application/json"
LIST_DEFAULT_LIMIT, LIST_MAX_LIMIT = 100, 1000
RESCAN_INTERVAL_S = 5.0  # fallback for segments sealed by another process (--workers)
CORRUPT_ACTION = ("move the file out of the archive directory and restore a good copy (`jetstream archive verify` "
                  "names the damage); clients are never served it")


class FileRange(NamedTuple):
    """`length` bytes of the open descriptor `fd` from `offset`; whoever sends them closes `fd`."""

    fd: int
    offset: int
    length: int


class Response(NamedTuple):
    status: int
    headers: list[tuple[str, str]]
    body: bytes | FileRange = b""


class Request(NamedTuple):
    method: str
    path: str  # decoded, without the query
    raw_query: bytes
    headers: Mapping[str, str]  # canonical-case names
    body: bytes
    body_error: str | None = None  # "too_large" / "length_required": the front door did not read it


@dataclass(frozen=True)
class ArchiveSettings:
    directory: str
    api_key: str = ""
    plan_max_entries: int = planner.DEFAULT_MAX_ENTRIES
    footer_cache_bytes: int = 256 << 20
    max_body_bytes: int = 2 << 20  # atmos xrpcserver's default MaxRequestBody

    @classmethod
    def from_config(cls, cfg) -> ArchiveSettings:
        directory = cfg.archive_dir or os.path.join(cfg.data_dir, "archive")
        return cls(directory, cfg.archive_api_key, cfg.plan_max_entries, cfg.archive_footer_cache_bytes,
                   cfg.archive_max_body_bytes)


def archive_service(cfg, problems) -> ArchiveService | None:
    """The service `--archive` asks for (None with --archive=false); the caller runs its `run()` as a task."""
    if not cfg.archive:
        return None
    service = ArchiveService(ArchiveSettings.from_config(cfg), problems)
    log.info("event=archive_serving directory=%s api_key=%s plan_max_entries=%d", service.settings.directory,
             "set" if cfg.archive_api_key else "none", cfg.plan_max_entries)
    return service


def _error(status: int, name: str, message: str) -> Response:
    refusal = xrpc_error(status, name, message)
    return Response(refusal.status, list(refusal.headers), refusal.body)


def invalid_request(message: str) -> Response:
    return _error(HTTPStatus.BAD_REQUEST, "InvalidRequest", message)


def internal_error(message: str) -> Response:
    return _error(HTTPStatus.INTERNAL_SERVER_ERROR, "InternalServerError", message)


def _json(document: dict) -> Response:
    return Response(HTTPStatus.OK, [("Content-Type", JSON_TYPE)], json.dumps(document, separators=(",", ":")).encode())


class _Param(Exception):
    def __init__(self, message: str) -> None:
        self.message = message


def _string(params: dict[str, list[str]], key: str) -> str:
    """xrpcserver Params.String: present (even empty) or 400."""
    if key not in params:
        raise _Param("missing required parameter: " + key)
    return params[key][0]


def _int64(params: dict[str, list[str]], key: str) -> int:
    """xrpcserver Params.Int64."""
    if key not in params:
        raise _Param("missing required parameter: " + key)
    value = parse_go_int64(params[key][0])
    if value is None:
        raise _Param("invalid integer parameter: " + key)
    return value


class ArchiveService:
    """One process's archive read side: the manifest, its problem, and every XRPC answer."""

    def __init__(self, settings: ArchiveSettings, problems=None) -> None:
        self.settings = settings
        self.problems = problems
        self.manifest = Manifest(settings.directory, settings.footer_cache_bytes)
        self._key_digest = sha256(settings.api_key.encode()).digest() if settings.api_key else None
        self._rescan = asyncio.Event()
        self.requests: dict[str, int] = {}

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.manifest.scanned

    async def run(self) -> None:
        """Scan now (in a thread: it verifies every new file), then whenever told to and every few seconds."""
        while True:
            scan = await asyncio.to_thread(self.manifest.scan)
            self._apply_scan(scan)
            self._rescan.clear()
            try:
                await asyncio.wait_for(self._rescan.wait(), RESCAN_INTERVAL_S)
            except asyncio.TimeoutError:
                pass

    def segment_sealed(self) -> None:
        """The writer published a segment: list it now rather than at the next poll."""
        self._rescan.set()

    def _apply_scan(self, scan) -> None:
        for name in scan.added:
            log.info("event=archive_segment_listed name=%s", name)
        for name in scan.removed:
            log.info("event=archive_segment_gone name=%s", name)
        self._report_corrupt()

    def _report_corrupt(self) -> None:
        corrupt = self.manifest.corrupt
        if self.problems is None:
            for name, reason in corrupt.items():
                log.error("event=archive_segment_corrupt name=%s reason=%r", name, reason)
            return
        if corrupt:
            detail = "; ".join(f"{name}: {reason}" for name, reason in sorted(corrupt.items())[:5])
            if len(corrupt) > 5:
                detail += f"; and {len(corrupt) - 5} more"
            self.problems.raise_problem("archive_segment_corrupt",
                                        f"{len(corrupt)} segment(s) in {self.settings.directory} refused: {detail}",
                                        CORRUPT_ACTION)
        else:
            self.problems.clear("archive_segment_corrupt")

    def _refuse(self, summary: SegmentSummary, reason: str) -> None:
        log.error("event=archive_segment_corrupt name=%s reason=%r", summary.name, reason)
        self.manifest.refuse(summary, reason)
        self._report_corrupt()

    # -- requests --------------------------------------------------------------------------------

    @property
    def routes(self) -> LocalRoutes:
        """What the front door answers through `answer` instead of handing to picows."""
        return LocalRoutes(PATHS, self.settings.max_body_bytes)

    async def answer(self, local: Local) -> tuple[bytes, bytes | FileRange]:
        """The front door's call: the response head (CORS as every answer of ours, Connection: close)
        and its body, bytes or a FileRange for the caller to stream and close."""
        path, raw_query = split_target(local.target)
        request = Request(local.method, path.decode("utf-8", "surrogateescape"), raw_query, local.headers,
                          local.body, local.body_error)
        response = await self.handle(request)
        body = response.body
        length = body.length if isinstance(body, FileRange) else len(body)
        if request.method == "HEAD" and isinstance(body, FileRange):
            os.close(body.fd)
            body = b""
        lines = [f"HTTP/1.1 {response.status} {HTTPStatus(response.status).phrase}"]
        lines += [f"{name}: {value}" for name, value in cors_headers(local.headers) + response.headers]
        if response.status not in (HTTPStatus.NO_CONTENT, HTTPStatus.NOT_MODIFIED):
            lines.append(f"Content-Length: {length}")
        lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"), body

    async def handle(self, request: Request) -> Response:
        """The answer to one request for one of PATHS (never raises: a failure is a 500 envelope)."""
        expected = METHODS[request.path]
        self.requests[request.path] = self.requests.get(request.path, 0) + 1
        if request.method != expected:
            return _error(HTTPStatus.METHOD_NOT_ALLOWED, "MethodNotAllowed", "expected " + expected)
        if not self._authorized(request.headers):
            return _error(HTTPStatus.UNAUTHORIZED, "AuthRequired", "invalid or missing bearer token")
        if not self.ready:
            return _error(HTTPStatus.SERVICE_UNAVAILABLE, "ServiceUnavailable",
                          "service not ready: archive manifest warming up")
        try:
            if request.path == PLAN_SNAPSHOT:
                return await self._plan_snapshot(request)
            params = parse_query(request.raw_query)
            if request.path == GET_SEGMENT:
                return self._get_segment(request, params)
            if request.path == GET_BLOCK:
                return self._get_block(request, params)
            return self._list_segments(params)
        except _Param as exc:
            return invalid_request(exc.message)
        except Exception:  # noqa: BLE001 - a request never takes the server down
            log.exception("event=archive_request_failed path=%s", request.path)
            return internal_error("internal server error")

    def _authorized(self, headers: Mapping[str, str]) -> bool:
        """--archive-api-key: `Authorization: Bearer <key>`, compared as digests in constant time (v2 auth.go)."""
        if self._key_digest is None:
            return True
        value = headers.get("Authorization", "")
        if len(value) < 7 or value[:7].lower() != "bearer ":
            return False
        presented = sha256(value[7:].encode("utf-8", "surrogateescape")).digest()
        return hmac.compare_digest(presented, self._key_digest)

    async def _plan_snapshot(self, request: Request) -> Response:
        if request.body_error == "too_large":
            return _error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "TooLarge", "request body too large")
        if request.body_error == "length_required":
            return invalid_request("invalid request body")
        try:
            req = planner.parse_plan_request(request.body)
        except planner.BadPlanRequest as exc:
            return invalid_request(str(exc))
        try:
            # In a thread: a plan over a large archive with a cold footer cache reads files.
            plan = await asyncio.to_thread(planner.plan_snapshot, self.manifest, req, self.settings.plan_max_entries)
        except SegmentError as exc:
            log.error("event=archive_plan_failed reason=%r", str(exc))
            self.segment_sealed()  # rescan now: the changed file is re-verified, refused and reported
            return internal_error("failed to plan snapshot")
        return Response(HTTPStatus.OK, [("Content-Type", JSON_TYPE)], plan.to_json())

    def _segment(self, name: str) -> SegmentSummary | None:
        index = parse_segment_name(name)
        if index is None:
            raise _Param("malformed segment name")
        return self.manifest.get(index)

    def _open_checked(self, summary: SegmentSummary) -> tuple[int, int]:
        """(fd, block_count) of the listed file, its header re-read from that fd and equal to the listed one."""
        fd = os.open(summary.path, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            header = decode_header(os.pread(fd, HEADER_SIZE, 0))
            if size != summary.size or header != summary.header:
                raise SegmentError(f"file changed since it was verified (size {size}, was {summary.size})")
        except BaseException:
            os.close(fd)
            raise
        return fd, header.block_count

    def _get_segment(self, request: Request, params) -> Response:
        summary = self._segment(_string(params, "name"))
        if summary is None:
            return _error(HTTPStatus.NOT_FOUND, "SegmentNotFound", "segment not found")
        try:
            fd, _ = self._open_checked(summary)
        except FileNotFoundError:
            log.error("event=archive_segment_missing name=%s", summary.name)
            return internal_error("failed to open segment")
        except (OSError, SegmentError) as exc:
            self._refuse(summary, str(exc))
            return internal_error("failed to read segment header")
        etag = f'"{planner.checksum_hex(summary.checksum)}"'
        return self._content(request, fd, etag, summary.mtime_ns, 0, summary.size)

    def _get_block(self, request: Request, params) -> Response:
        summary = self._segment(_string(params, "segment"))
        block = _int64(params, "blockIndex")
        if block < 0:
            raise _Param("blockIndex must be >= 0")
        if summary is None:
            return _error(HTTPStatus.NOT_FOUND, "SegmentNotFound", "segment not found")
        try:
            fd, block_count = self._open_checked(summary)
        except FileNotFoundError:
            log.error("event=archive_segment_missing name=%s", summary.name)
            return internal_error("failed to open segment")
        except (OSError, SegmentError) as exc:
            self._refuse(summary, str(exc))
            return internal_error("failed to read segment header")
        if block >= block_count:
            os.close(fd)
            return _error(HTTPStatus.NOT_FOUND, "BlockNotFound", "block index out of range")
        try:
            entry = os.pread(fd, BLOCK_INDEX_ENTRY_SIZE,
                             summary.header.block_index_offset + block * BLOCK_INDEX_ENTRY_SIZE)
            info = decode_block_index(entry, 1)[0]
            if info.offset + FRAME_PREFIX_SIZE + info.compressed_size > summary.header.footer_offset:
                raise SegmentError(f"block {block} runs past the footer")
        except (OSError, SegmentError) as exc:
            os.close(fd)
            self._refuse(summary, str(exc))
            return internal_error("failed to read block")
        etag = f'"{planner.checksum_hex(summary.checksum)}:{block}"'
        return self._content(request, fd, etag, summary.mtime_ns, info.offset + FRAME_PREFIX_SIZE,
                             info.compressed_size)

    def _content(self, request: Request, fd: int, etag: str, mtime_ns: int, base: int, size: int) -> Response:
        """Go ServeContent over [base, base + size) of fd (closed here unless handed on in a FileRange)."""
        served = serve_content(request.method, request.headers, etag, mtime_ns, size)
        headers = [("Content-Type", OCTET_STREAM), ("ETag", etag), ("Cache-Control", CACHE_CONTROL)]
        headers = [(k, v) for k, v in headers if k not in served.drop_headers] + served.headers
        if served.status == 416:
            os.close(fd)
            headers = [(k, v) for k, v in headers if k != "Content-Type"] + [("Content-Type", TEXT_PLAIN)]
            return Response(served.status, headers, served.error_body)
        if served.status in (304, 412) or served.length == 0:
            os.close(fd)
            return Response(served.status, headers, b"")
        return Response(served.status, headers, FileRange(fd, base + served.offset, served.length))

    def _list_segments(self, params) -> Response:
        limit = LIST_DEFAULT_LIMIT
        if "limit" in params:
            limit = _int64(params, "limit")
            if limit <= 0:
                raise _Param("limit must be positive")
        limit = min(limit, LIST_MAX_LIMIT)
        start = 0
        cursor = params.get("cursor", [""])[0]
        if cursor:
            start = parse_go_uint(cursor, 64)
            if start is None:
                raise _Param("invalid cursor")
        segments = [s for s in self.manifest.segments if s.index >= start]
        page, rest = segments[:limit], segments[limit:]
        rows = [{"checksum": planner.checksum_hex(s.checksum), "eventCount": s.header.event_count, "index": s.index,
                 "maxSeq": s.header.max_seq, "maxWitnessedAt": s.header.max_witnessed_at, "minSeq": s.header.min_seq,
                 "minWitnessedAt": s.header.min_witnessed_at, "name": segment_name(s.index), "sizeBytes": s.size}
                for s in page]
        document = {"cursor": str(rest[0].index), "segments": rows} if rest else {"segments": rows}
        return _json(document)
