"""The archive's XRPC endpoints, as Jetstream v2 serves them: planSnapshot, getSegment, getBlock, listSegments.

Owns: `ArchiveService`, the read side of the archive in one process: its store (a directory, or
an object store with `--archive-url`, store.py), its Manifest (scanned at start in a thread,
rescanned when the writer says a segment was sealed and every `RESCAN_INTERVAL_S` as a
fallback), for an object store the local SegmentCache (cache.py) downloads are served from or
the redirect to a presigned / CDN URL (`--archive-redirect`), the `archive_segment_corrupt` and
`archive_store_unreachable` problems, and the answer to
each request as a `Response` (status, headers, and bytes or a `FileRange` of an open file the
caller streams): v2's routing by NSID and method (405 MethodNotAllowed), the optional bearer key
(`--archive-api-key`, 401 AuthRequired; v2 has none on these), 503 ServiceUnavailable until the
first scan is done, v2's parameter errors and names (InvalidRequest, SegmentNotFound,
BlockNotFound), ETag = the quoted 16-hex xxh3 checksum (getBlock: `"<hex>:<block>"`),
`Cache-Control: public, no-cache`, and Go's ServeContent rules (http_content.py).
It must never touch a socket (server/front.py writes the answer), never read a whole segment
into memory (a FileRange is streamed), and never serve a file that no longer matches what was
verified when it was listed: each download re-reads the header and the version (size, mtime) from
the descriptor it serves (from a directory), or fetches with If-Match on the listed version and
checks the header (from an object store); and never send a byte that integrity.py has not checked
for that version (blocks by their zstd checksums, the footer by the header's), nor redirect to a
version not yet checked whole (its first downloads are served here, which checks them). A segment found
damaged is refused (logged once, `archive_segment_corrupt`, unlisted so no plan names it) and its
downloads answer 500, never the bytes.
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
from jetstream.archive.cache import SegmentCache
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
from jetstream.archive.integrity import ServedBytes
from jetstream.archive.manifest import Manifest, SegmentSummary
from jetstream.archive.store import ObjectChanged, StoreError, file_version, open_store
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
UNREACHABLE_ACTION = ("check the store's URL, credentials (AWS_*/GOOGLE_*/AZURE_* in the environment) and network; "
                      "segments listed before keep being planned, downloads that need the store fail with 500")
REDIRECT_PRESIGN = "presign"
CORRUPT_ACTION = ("move the file out of the archive directory and restore a good copy (`jetstream archive verify` "
                  "names the damage); clients are never served it")


class _Changed(Exception):
    """The file is no longer the version that was listed (its size or mtime moved)."""


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
    directory: str  # a directory, or an object store URL (--archive-url)
    api_key: str = ""
    plan_max_entries: int = planner.DEFAULT_MAX_ENTRIES
    footer_cache_bytes: int = 256 << 20
    max_body_bytes: int = 2 << 20  # atmos xrpcserver's default MaxRequestBody
    cache_dir: str = ""  # object stores: where downloads are cached (this process's own directory)
    cache_bytes: int = 4 << 30
    cache_chunk_bytes: int = 8 << 20
    redirect: str = ""  # "" (serve the bytes), "presign", or a URL prefix (a CDN) the segment name is appended to
    redirect_expiry_s: float = 3600.0
    # Where this process remembers the segment versions it checked whole ("" = not remembered):
    # <checked_dir>/<process>.json; every process of the node trusts every file there at start.
    checked_dir: str = ""
    process: str = "main"

    @classmethod
    def from_config(cls, cfg, process: str = "main") -> ArchiveSettings:
        location = cfg.archive_url or cfg.archive_dir or os.path.join(cfg.data_dir, "archive")
        cache_dir = os.path.join(cfg.data_dir, "archive", "cache", process)
        checked_dir = os.path.join(cfg.data_dir, "archive", "checked")
        return cls(location, cfg.archive_api_key, cfg.plan_max_entries, cfg.archive_footer_cache_bytes,
                   cfg.archive_max_body_bytes, cache_dir, cfg.archive_cache_bytes, cfg.archive_cache_chunk_bytes,
                   cfg.archive_redirect, cfg.archive_redirect_expiry, checked_dir, process)


def archive_service(cfg, problems, process: str = "main") -> ArchiveService | None:
    """The service `--archive` asks for (None with --archive=false); the caller runs its `run()` as a task.

    `process` names this process's own cache directory (main, worker-N): processes never share one."""
    if not cfg.archive:
        return None
    try:
        service = ArchiveService(ArchiveSettings.from_config(cfg, process), problems)
    except StoreError as exc:  # a URL obstore refuses (no bucket, unknown options): one clear start-up line
        from jetstream.startup import StartupError
        raise StartupError("archive-url", cfg.archive_url, str(exc).split("\n", 1)[0]) from exc
    log.info("event=archive_serving directory=%s api_key=%s plan_max_entries=%d cache=%s redirect=%s",
             service.settings.directory, "set" if cfg.archive_api_key else "none", cfg.plan_max_entries,
             service.cache.directory if service.cache is not None else "none", cfg.archive_redirect or "none")
    return service


def _checked_documents(checked_dir: str, location: str):
    """(file name, document) of every process's checked-versions file for `location` (this node's processes).

    A missing, unreadable or foreign file is passed over: it only costs checking those bytes again."""
    if not checked_dir or not os.path.isdir(checked_dir):
        return
    for entry in sorted(os.listdir(checked_dir)):
        if not entry.endswith(".json"):
            continue
        try:
            with open(os.path.join(checked_dir, entry), "rb") as handle:
                document = json.loads(handle.read())
            if isinstance(document, dict) and document.get("location") == location:
                yield entry, document
        except (OSError, ValueError) as exc:
            log.warning("event=archive_checked_versions_unreadable file=%s error=%r", entry, str(exc)[:200])


def load_checked_versions(checked_dir: str, location: str) -> list[tuple[str, str]]:
    """The (name, version) pairs any process of this node checked whole in an earlier run, for `location`."""
    versions: list[tuple[str, str]] = []
    for entry, document in _checked_documents(checked_dir, location):
        try:
            versions += [(str(name), str(version)) for name, version in document["versions"]]
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("event=archive_checked_versions_unreadable file=%s error=%r", entry, str(exc)[:200])
    return versions


def load_damaged_versions(checked_dir: str, location: str) -> dict[tuple[str, str], str]:
    """(name, version) -> reason of every segment version a process of this node refused as damaged.

    How one process's finding (a download's check, the scrub) reaches the others: a version another
    process checked whole and trusts would otherwise go on being served from there."""
    damaged: dict[tuple[str, str], str] = {}
    for entry, document in _checked_documents(checked_dir, location):
        try:
            for name, version, reason in document.get("damaged", ()):
                damaged[(str(name), str(version))] = f"{reason} (found by {entry.removesuffix('.json')})"
        except (TypeError, ValueError) as exc:
            log.warning("event=archive_checked_versions_unreadable file=%s error=%r", entry, str(exc)[:200])
    return damaged


def checked_files_signature(checked_dir: str) -> tuple:
    """What changes when any process rewrites its checked-versions file (names, sizes, mtimes)."""
    try:
        entries = sorted(os.scandir(checked_dir), key=lambda e: e.name)
        return tuple((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in entries if e.name.endswith(".json"))
    except OSError:
        return ()


def save_checked_versions(checked_dir: str, process: str, location: str, versions, damaged=()) -> None:
    """Write this process's file of versions checked whole, and of versions it refused as damaged
    ((name, version, reason)); atomic rename; no fsync: losing it costs a check again, or a finding
    each other process then makes on its own."""
    path = os.path.join(checked_dir, f"{process}.json")
    try:
        os.makedirs(checked_dir, exist_ok=True)
        with open(path + ".tmp", "w") as handle:
            json.dump({"location": location, "versions": [list(v) for v in versions],
                       "damaged": [list(d) for d in damaged]}, handle)
        os.replace(path + ".tmp", path)
    except OSError as exc:
        log.warning("event=archive_checked_versions_not_saved path=%s error=%r", path, str(exc)[:200])


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


def _etag(summary: SegmentSummary, block: int | None = None) -> str:
    """The strong ETag of a segment (its header checksum), or of one of its blocks (checksum:index)."""
    checksum = planner.checksum_hex(summary.checksum)
    return f'"{checksum}"' if block is None else f'"{checksum}:{block}"'


class ArchiveService:
    """One process's archive read side: the manifest, its problem, and every XRPC answer."""

    def __init__(self, settings: ArchiveSettings, problems=None) -> None:
        self.settings = settings
        self.problems = problems
        self.store = open_store(settings.directory)
        self.manifest = Manifest(self.store, settings.footer_cache_bytes)
        self.remote = self.store.local_path("seg_0000000000.jss") is None
        self.cache = SegmentCache(self.store, settings.cache_dir, settings.cache_bytes, settings.cache_chunk_bytes) \
            if self.remote else None
        self.integrity = ServedBytes()
        self.integrity.trust(load_checked_versions(settings.checked_dir, settings.directory))
        self._rescanning: set[str] = set()  # names unlisted because they changed, until the next scan
        # What this process last wrote of its refusals, and how the node's checked-versions files looked
        # when it last read the others' (`_share_checked`).
        self._saved_damaged: list[tuple[str, str, str]] = []
        self._peers_signature: tuple = ()
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
            rescanning = set(self._rescanning)
            try:
                scan = await asyncio.to_thread(self.manifest.scan)
            except StoreError as exc:
                self._store_unreachable(f"listing {self.settings.directory} failed: {exc}")
            else:
                self._rescanning -= rescanning  # those changed before this scan began: it saw them
                self._apply_scan(scan)
            if self.settings.checked_dir:
                await self._share_checked()
            self._rescan.clear()
            try:
                await asyncio.wait_for(self._rescan.wait(), RESCAN_INTERVAL_S)
            except asyncio.TimeoutError:
                pass

    async def _share_checked(self) -> None:
        """Save what this process checked whole or refused when either changed; refuse what another
        process of this node refused (its file changed since the last look)."""
        settings = self.settings
        damaged = self.manifest.refused_versions()
        if self.integrity.changed or damaged != self._saved_damaged:
            await asyncio.to_thread(save_checked_versions, settings.checked_dir, settings.process,
                                    settings.directory, self.integrity.complete_versions(), damaged)
            self._saved_damaged = damaged
        signature = await asyncio.to_thread(checked_files_signature, settings.checked_dir)
        if signature == self._peers_signature:
            return
        self._peers_signature = signature
        found = await asyncio.to_thread(load_damaged_versions, settings.checked_dir, settings.directory)
        for summary in self.manifest.segments:
            reason = found.get((summary.name, summary.version))
            if reason is not None:
                self.refuse(summary, reason)

    def segment_sealed(self) -> None:
        """The writer published a segment: list it now rather than at the next poll."""
        self._rescan.set()

    def _apply_scan(self, scan) -> None:
        for name in scan.added:
            log.info("event=archive_segment_listed name=%s", name)
        for name in scan.removed:
            log.info("event=archive_segment_gone name=%s", name)
        self.integrity.retain((s.name, s.version) for s in self.manifest.segments)
        self._report_corrupt()
        if scan.unreadable:
            self._store_unreachable(f"{len(scan.unreadable)} segment(s) could not be read: "
                                    + ", ".join(sorted(scan.unreadable)[:5]))
        elif self.problems is not None:
            self.problems.clear("archive_store_unreachable")

    def _store_unreachable(self, detail: str) -> None:
        if self.problems is None:
            log.error("event=archive_store_unreachable detail=%r", detail)
            return
        self.problems.raise_problem("archive_store_unreachable", detail, UNREACHABLE_ACTION)

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

    def refuse(self, summary: SegmentSummary, reason: str) -> None:
        """A listed segment version is damaged: unlist it (no plan names it, no download is served),
        report it, and tell the node's other processes (the run loop saves it at once)."""
        log.error("event=archive_segment_corrupt name=%s reason=%r", summary.name, reason)
        self.manifest.refuse(summary, reason)
        self._report_corrupt()
        self._rescan.set()

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
                if self.remote:
                    return await self._get_remote_segment(request, params)
                return await self._get_segment(request, params)
            if request.path == GET_BLOCK:
                if self.remote:
                    return await self._get_remote_block(request, params)
                return await self._get_block(request, params)
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
        except StoreError as exc:
            self._store_unreachable(f"planning read a footer and failed: {exc}")
            return internal_error("failed to plan snapshot")
        return Response(HTTPStatus.OK, [("Content-Type", JSON_TYPE)], plan.to_json())

    def _segment(self, name: str) -> SegmentSummary | None:
        index = parse_segment_name(name)
        if index is None:
            raise _Param("malformed segment name")
        return self.manifest.get(index)

    def _block_params(self, params) -> tuple[str, SegmentSummary | None, int]:
        """getBlock's parameters, checked as both stores check them: (segment name, its summary or None
        when it is not listed, block index >= 0); _Param when malformed."""
        name = _string(params, "segment")
        summary = self._segment(name)
        block = _int64(params, "blockIndex")
        if block < 0:
            raise _Param("blockIndex must be >= 0")
        return name, summary, block

    def _not_listed(self, name: str) -> Response:
        """404 for a name the store does not hold; 500 for one it holds that failed verification (a
        server fault, not an absence: a CDN must not cache it as gone, and a client must not read it)."""
        if name in self.manifest.corrupt or name in self._rescanning:
            return internal_error("segment failed verification")
        return _error(HTTPStatus.NOT_FOUND, "SegmentNotFound", "segment not found")

    def _changed(self, summary: SegmentSummary, detail: str) -> Response:
        """The object is no longer the version that was listed: unlisted until a rescan verifies what is there."""
        log.warning("event=archive_segment_changed name=%s detail=%r", summary.name, detail[:300])
        # Unlisted until the rescan (requested now) verifies what is there now and lists it, or refuses
        # and reports it; meanwhile its name answers 500, not 404.
        self.manifest.forget(summary)
        self._rescanning.add(summary.name)
        self.segment_sealed()
        return internal_error("failed to read segment")

    async def footer_blocks(self, summary: SegmentSummary):
        footer = self.manifest.cached_footer(summary.index)
        if footer is None:
            footer = await asyncio.to_thread(self.manifest.footer, summary)
        return footer.blocks

    async def _check_served(self, summary: SegmentSummary, fd: int, offset: int, length: int) -> Response | None:
        """None when [offset, offset + length) of fd may be sent (checked now or before, integrity.py);
        else the 500 to answer, the segment refused (reported, unlisted, never served)."""
        if self.integrity.complete(summary):
            return None
        try:
            check = self.integrity.plan(summary, await self.footer_blocks(summary), offset, length)
            if check is not None:
                await asyncio.to_thread(self.integrity.run, check, fd, summary)
        except (OSError, SegmentError) as exc:
            self.refuse(summary, str(exc))
            return internal_error("segment failed verification")
        except StoreError as exc:
            self._store_unreachable(f"reading {summary.name}'s footer failed: {exc}")
            return internal_error("failed to read segment")
        return None

    def _open_checked(self, summary: SegmentSummary) -> tuple[int, int]:
        """(fd, block_count) of the listed file, its header re-read from that fd and equal to the listed one."""
        fd = os.open(summary.path, os.O_RDONLY)
        try:
            st = os.fstat(fd)
            if file_version(st) != summary.version:
                raise _Changed(f"size {st.st_size}, mtime_ns {st.st_mtime_ns}; listed as {summary.version}")
            header = decode_header(os.pread(fd, HEADER_SIZE, 0))
            if header != summary.header:
                raise SegmentError("header changed since it was verified")
        except BaseException:
            os.close(fd)
            raise
        return fd, header.block_count

    def _open_or_answer(self, name: str, summary: SegmentSummary | None):
        """(fd, block count) of a listed segment, or the answer: the 404/500 of `_not_listed` when it is
        not listed (summary None), the 500 when it cannot be read as listed."""
        if summary is None:
            return self._not_listed(name)
        try:
            return self._open_checked(summary)
        except FileNotFoundError:
            log.error("event=archive_segment_missing name=%s", summary.name)
            return internal_error("failed to open segment")
        except _Changed as exc:
            return self._changed(summary, str(exc))
        except (OSError, SegmentError) as exc:
            self.refuse(summary, str(exc))
            return internal_error("failed to read segment header")

    async def _get_segment(self, request: Request, params) -> Response:
        name = _string(params, "name")
        summary = self._segment(name)
        opened = self._open_or_answer(name, summary)
        if isinstance(opened, Response):
            return opened
        fd, _ = opened
        etag = _etag(summary)
        return await self._content(request, summary, fd, etag, 0, summary.size)

    async def _get_block(self, request: Request, params) -> Response:
        name, summary, block = self._block_params(params)
        opened = self._open_or_answer(name, summary)
        if isinstance(opened, Response):
            return opened
        fd, block_count = opened
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
            self.refuse(summary, str(exc))
            return internal_error("failed to read block")
        etag = _etag(summary, block)
        return await self._content(request, summary, fd, etag, info.offset + FRAME_PREFIX_SIZE,
                                   info.compressed_size)

    async def _content(self, request: Request, summary: SegmentSummary, fd: int, etag: str, base: int,
                       size: int) -> Response:
        """Go ServeContent over [base, base + size) of fd (closed here unless handed on in a FileRange);
        the bytes to send are checked first (once per segment version)."""
        served = serve_content(request.method, request.headers, etag, summary.mtime_ns, size)
        headers = [("Content-Type", OCTET_STREAM), ("ETag", etag), ("Cache-Control", CACHE_CONTROL)]
        headers = [(k, v) for k, v in headers if k not in served.drop_headers] + served.headers
        if served.status == 416:
            os.close(fd)
            headers = [(k, v) for k, v in headers if k != "Content-Type"] + [("Content-Type", TEXT_PLAIN)]
            return Response(served.status, headers, served.error_body)
        if served.status in (304, 412) or served.length == 0:
            os.close(fd)
            return Response(served.status, headers, b"")
        refusal = await self._check_served(summary, fd, base + served.offset, served.length)
        if refusal is not None:
            os.close(fd)
            return refusal
        return Response(served.status, headers, FileRange(fd, base + served.offset, served.length))

    # -- downloads from an object store ----------------------------------------------------------

    async def _get_remote_segment(self, request: Request, params) -> Response:
        name = _string(params, "name")
        summary = self._segment(name)
        if summary is None:
            return self._not_listed(name)
        etag = _etag(summary)
        return await self._remote_content(request, summary, etag, 0, summary.size, redirect=True)

    async def _get_remote_block(self, request: Request, params) -> Response:
        name, summary, block = self._block_params(params)
        if summary is None:
            return self._not_listed(name)
        if block >= summary.header.block_count:
            return _error(HTTPStatus.NOT_FOUND, "BlockNotFound", "block index out of range")
        try:
            footer = await asyncio.to_thread(self.manifest.footer, summary)
        except SegmentError as exc:
            self.refuse(summary, str(exc))
            return internal_error("failed to read block")
        except StoreError as exc:
            self._store_unreachable(f"reading {summary.name}'s footer failed: {exc}")
            return internal_error("failed to read block")
        info = footer.blocks[block]
        etag = _etag(summary, block)
        # A redirect cannot carry the block's byte range: blocks are served through the cache.
        return await self._remote_content(request, summary, etag, info.offset + FRAME_PREFIX_SIZE,
                                          info.compressed_size, redirect=False)

    async def _remote_content(self, request: Request, summary: SegmentSummary, etag: str, base: int, size: int,
                              redirect: bool) -> Response:
        """Go ServeContent over [base, base + size) of a stored object: preconditions answered here, the
        bytes from the cache (or a redirect to them)."""
        served = serve_content(request.method, request.headers, etag, summary.mtime_ns, size)
        headers = [("Content-Type", OCTET_STREAM), ("ETag", etag), ("Cache-Control", CACHE_CONTROL)]
        headers = [(k, v) for k, v in headers if k not in served.drop_headers] + served.headers
        if served.status == 416:
            headers = [(k, v) for k, v in headers if k != "Content-Type"] + [("Content-Type", TEXT_PLAIN)]
            return Response(served.status, headers, served.error_body)
        if served.status in (304, 412) or served.length == 0:
            return Response(served.status, headers, b"")
        # Only a version whose every byte was checked here is redirected (the CDN or the store sends bytes
        # we never see); until then its bytes are served, and checked, by us: a first sweep completes it.
        if redirect and self.settings.redirect and self.integrity.complete(summary):
            location = self._redirect_url(summary)
            if location is not None:
                return Response(HTTPStatus.TEMPORARY_REDIRECT, [("Location", location), ("Cache-Control", "no-store")])
        offset, length = base + served.offset, served.length
        try:
            check = None
            if not self.integrity.complete(summary):
                check = self.integrity.plan(summary, await self.footer_blocks(summary), offset, length)
            # the span the check reads is fetched with the range (whole blocks, the whole footer)
            start = offset if check is None else min(offset, check.start)
            stop = offset + length if check is None else max(offset + length, check.end)
            fd = await self.cache.open_range(summary.name, summary.version, summary.size, start, stop - start,
                                             summary.header)
            if check is not None:
                try:
                    await asyncio.to_thread(self.integrity.run, check, fd, summary)
                except BaseException:
                    os.close(fd)
                    raise
        except ObjectChanged as exc:
            return self._changed(summary, str(exc))
        except SegmentError as exc:
            self.refuse(summary, str(exc))
            return internal_error("segment failed verification")
        except StoreError as exc:
            log.error("event=archive_store_read_failed name=%s error=%r", summary.name, str(exc)[:300])
            self._store_unreachable(f"reading {summary.name} failed: {exc}")
            return internal_error("failed to read segment")
        return Response(served.status, headers, FileRange(fd, offset, length))

    def _redirect_url(self, summary: SegmentSummary) -> str | None:
        if self.settings.redirect == REDIRECT_PRESIGN:
            try:
                return self.store.presign(summary.name, self.settings.redirect_expiry_s)
            except StoreError as exc:
                log.error("event=archive_presign_failed name=%s error=%r", summary.name, str(exc)[:300])
                return None  # serve the bytes instead
        return self.settings.redirect.rstrip("/") + "/" + summary.name

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
