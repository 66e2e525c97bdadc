"""Go's `http.ServeContent` rules for one immutable representation: bytes in, an answer's shape out.

Owns: what v2's getSegment and getBlock inherit from Go net/http (fs.go serveContent,
checkPreconditions, parseRange): `Last-Modified`, `If-Match` / `If-Unmodified-Since` -> 412,
`If-None-Match` (weak comparison) / `If-Modified-Since` -> 304 (without Content-Type and, with an
ETag, without Last-Modified), `If-Range` (strong ETag or exact date), `Range` (`bytes=a-b`,
`a-` open-ended, `-n` suffix, clamped at the end: a short body at EOF), a start past the end ->
416 with `Content-Range: bytes */size` and Go's text body, ranges summing past the size ignored.
It must never read or send the bytes (the caller streams `offset`/`length`) and never know about
segments. One deliberate difference: several ranges in one request are answered with the whole
representation (200) where Go sends multipart/byteranges; RFC 9110 lets a server ignore Range,
and no archive client asks for more than one.
"""
from __future__ import annotations

from datetime import datetime, timezone
from email.utils import format_datetime, parsedate_to_datetime
from typing import Mapping, NamedTuple

TEXT_PLAIN = "text/plain; charset=utf-8"


class Served(NamedTuple):
    status: int  # 200, 206, 304, 412 or 416
    headers: list[tuple[str, str]]  # to add to the caller's (ETag, Cache-Control, Content-Type are the caller's)
    offset: int  # the bytes to send: [offset, offset + length)
    length: int
    error_body: bytes = b""  # a 416's text (sent instead of the bytes)
    drop_headers: tuple[str, ...] = ()  # caller headers Go removes on this answer


def http_date(mtime_ns: int) -> str:
    """Go's http.TimeFormat of a file modification time (whole seconds, GMT)."""
    return format_datetime(datetime.fromtimestamp(mtime_ns // 1_000_000_000, timezone.utc), usegmt=True)


def _parse_http_date(text: str) -> int | None:
    try:
        parsed = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return int(parsed.timestamp())


def _etags(header: str) -> list[str] | None:
    """The entity tags of an If-Match / If-None-Match list; None for "*"; malformed parts end the list (Go)."""
    out = []
    rest = header.strip(" \t")
    while rest:
        if rest.startswith(","):
            rest = rest[1:].lstrip(" \t")
            continue
        if rest.startswith("*"):
            return None
        tag, rest = _scan_etag(rest)
        if tag is None:
            break
        out.append(tag)
        rest = rest.lstrip(" \t")
    return out


def _scan_etag(text: str) -> tuple[str | None, str]:
    """Go scanETag: a leading W/ kept, then a quoted opaque tag of visible characters."""
    opaque = text[2:] if text.startswith("W/") else text
    if len(opaque) < 2 or opaque[0] != '"':
        return None, ""
    for i in range(1, len(opaque)):
        c = opaque[i]
        if c == '"':
            return text[:len(text) - len(opaque) + i + 1], opaque[i + 1:]
        if not (c == "\x21" or "\x23" <= c <= "\x7e" or c >= "\x80"):
            return None, ""
    return None, ""


def _strong_match(a: str, b: str) -> bool:
    return a == b and a != "" and a[0] == '"'


def _weak_match(a: str, b: str) -> bool:
    return a.removeprefix("W/") == b.removeprefix("W/")


def _if_match(headers: Mapping[str, str], etag: str) -> bool | None:
    value = headers.get("If-Match", "")
    if not value:
        return None
    tags = _etags(value)
    if tags is None:
        return True
    return any(_strong_match(tag, etag) for tag in tags)


def _if_none_match(headers: Mapping[str, str], etag: str) -> bool | None:
    """False when the client's copy is current (304)."""
    value = headers.get("If-None-Match", "")
    if not value:
        return None
    tags = _etags(value)
    if tags is None:
        return False
    return not any(_weak_match(tag, etag) for tag in tags)


def _if_range(headers: Mapping[str, str], etag: str, mtime_s: int) -> bool:
    value = headers.get("If-Range", "")
    if not value:
        return True
    tag, _ = _scan_etag(value)
    if tag is not None:
        return _strong_match(tag, etag)
    parsed = _parse_http_date(value)
    return parsed is not None and parsed == mtime_s


def _parse_int(text: str) -> int | None:
    """strconv.ParseInt(text, 10, 64) for what a range can hold."""
    if not text or not text.lstrip("+-").isdigit() or not text.isascii() or len(text) > 20:
        return None
    value = int(text)
    return value if -(1 << 63) <= value < 1 << 63 else None


class _NoOverlap(Exception):
    pass


class _Invalid(Exception):
    pass


def parse_range(header: str, size: int) -> list[tuple[int, int]]:
    """Go parseRange: [(start, length)]; _Invalid or _NoOverlap."""
    if not header.startswith("bytes="):
        raise _Invalid
    ranges = []
    no_overlap = False
    for part in header[len("bytes="):].split(","):
        part = part.strip(" \t")
        if not part:
            continue
        start_text, dash, end_text = part.partition("-")
        if not dash:
            raise _Invalid
        start_text, end_text = start_text.strip(" \t"), end_text.strip(" \t")
        if not start_text:
            if not end_text or end_text[0] == "-":
                raise _Invalid
            suffix = _parse_int(end_text)
            if suffix is None or suffix < 0:
                raise _Invalid
            suffix = min(suffix, size)
            ranges.append((size - suffix, suffix))
            continue
        start = _parse_int(start_text)
        if start is None or start < 0:
            raise _Invalid
        if start >= size:
            no_overlap = True
            continue
        if not end_text:
            ranges.append((start, size - start))
            continue
        end = _parse_int(end_text)
        if end is None or start > end:
            raise _Invalid
        end = min(end, size - 1)
        ranges.append((start, end - start + 1))
    if no_overlap and not ranges:
        raise _NoOverlap
    return ranges


def serve_content(method: str, headers: Mapping[str, str], etag: str, mtime_ns: int, size: int) -> Served:
    """What Go's ServeContent answers for a representation of `size` bytes with this ETag and mtime."""
    mtime_s = mtime_ns // 1_000_000_000
    last_modified = [("Last-Modified", http_date(mtime_ns))] if mtime_ns else []
    match = _if_match(headers, etag)
    if match is None and mtime_ns:
        since = headers.get("If-Unmodified-Since", "")
        parsed = _parse_http_date(since) if since else None
        if parsed is not None:
            match = mtime_s <= parsed
    if match is False:
        return Served(412, last_modified, 0, 0)
    none_match = _if_none_match(headers, etag)
    not_modified = none_match is False
    if none_match is None and mtime_ns and method in ("GET", "HEAD"):
        since = headers.get("If-Modified-Since", "")
        parsed = _parse_http_date(since) if since else None
        not_modified = parsed is not None and mtime_s <= parsed
    if not_modified:
        kept = [] if etag else last_modified
        return Served(304, kept, 0, 0, drop_headers=("Content-Type",))
    range_header = headers.get("Range", "")
    if range_header and not _if_range(headers, etag, mtime_s):
        range_header = ""
    ranges: list[tuple[int, int]] = []
    if range_header:
        try:
            ranges = parse_range(range_header, size)
        except _NoOverlap:
            return Served(416, [("Content-Range", f"bytes */{size}"), ("X-Content-Type-Options", "nosniff")], 0, 0,
                          b"invalid range: failed to overlap\n", ("ETag", "Last-Modified", "Cache-Control"))
        except _Invalid:
            return Served(416, [("X-Content-Type-Options", "nosniff")], 0, 0, b"invalid range\n",
                          ("ETag", "Last-Modified", "Cache-Control"))
        if sum(length for _, length in ranges) > size:
            ranges = []  # Go: probably an attack or a confused client; ignore the Range
    common = last_modified + [("Accept-Ranges", "bytes")]
    if len(ranges) == 1:
        start, length = ranges[0]
        content_range = f"bytes {start}-{start + length - 1}/{size}"
        return Served(206, common + [("Content-Range", content_range)], start, length)
    return Served(200, common, 0, size)
