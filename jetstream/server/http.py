"""Plain HTTP on the public listener: routing, v1's canned responses, CORS, handshake checks.

Owns: which route a request target names, the exact bytes v1 (echo v4.11 + gorilla
websocket 1.5) answered for `/`, unknown paths, 400s and broken websocket handshakes
(docs/protocol.md §2, §3.8), echo's CORS middleware headers, the client IP rule
(socket peer, or echo's RealIP when proxy headers are trusted), and the answers v1
did not have: `/healthz`, `/zstd-dictionary` and the per-IP connection-limit refusal.
It must never parse subscriber options (params.py) or hold connection state.

Requests with other methods never reach picows: request_head.py answers them with the bytes
built here (`raw_response`: echo's 405, its CORS preflight, 404).
"""
from __future__ import annotations

import base64
import binascii
import json
from enum import Enum
from http import HTTPStatus
from typing import Mapping
from urllib.parse import unquote_to_bytes

from picows import WSUpgradeResponse, WSUpgradeResponseWithListener

WELCOME_BODY = b"Welcome to Jetstream"  # no trailing newline (echo c.String)
TEXT_PLAIN = "text/plain; charset=UTF-8"  # echo's MIMETextPlainCharsetUTF8
# echo's default error handler writes c.JSON(map{"message": ...}) through a json.Encoder,
# which appends a newline; since echo v4.10 c.JSON sends plain "application/json".
NOT_FOUND_BODY = b'{"message":"Not Found"}\n'
JSON_TYPE = "application/json"
METHOD_NOT_ALLOWED_BODY = b'{"message":"Method Not Allowed"}\n'
# echo's router lists the methods a path has, OPTIONS first (RFC 7231: a 405 carries Allow).
ALLOW_GET = "OPTIONS, GET"
# v1: middleware.CORSWithConfig{AllowOrigins: ["*"], AllowMethods: [GET, HEAD, OPTIONS]}
CORS_ALLOW_METHODS = "GET,HEAD,OPTIONS"
# gorilla's Upgrader.returnError: http.Error(w, StatusText(400), 400).
HANDSHAKE_ERROR_BODY = b"Bad Request\n"


# Not v1: the dictionary changes only when the operator restarts with another file, and the
# id header lets a client notice; a short lifetime keeps caches from outliving a change long.
DICTIONARY_CACHE_CONTROL = "public, max-age=300"
DICTIONARY_ID_HEADER = "X-Zstd-Dictionary-Id"


class Route(Enum):
    WELCOME = "/"
    SUBSCRIBE = "/subscribe"
    HEALTHZ = "/healthz"
    ZSTD_DICTIONARY = "/zstd-dictionary"
    STATS_COLLECTIONS = "/stats/collections"
    STATUS = "/status"
    # The Jetstream v2 wire (XRPC): the stream and its compression dictionary.
    SUBSCRIBE_EVENTS = "/xrpc/network.bsky.jetstream.subscribeEvents"
    GET_ZSTD_DICTIONARY = "/xrpc/network.bsky.jetstream.getZstdDictionary"
    NOT_FOUND = ""


_ROUTES = {route.value.encode(): route for route in Route if route is not Route.NOT_FOUND}


def split_target(target: bytes) -> tuple[bytes, bytes]:
    """Request target -> (decoded path, raw query); echo routes on the decoded path."""
    raw_path, _, raw_query = target.partition(b"?")
    return unquote_to_bytes(raw_path), raw_query


def route_of(path: bytes) -> Route:
    return _ROUTES.get(path, Route.NOT_FOUND)


def _strip_brackets(text: str) -> str:
    return text.removeprefix("[").removesuffix("]")


def client_ip(request_headers: Mapping[str, str], peer_ip: str, trust_proxy_headers: bool) -> str:
    """The address limits and metrics are keyed on.

    With trust_proxy_headers, echo v4.11's RealIP (what v1 always did), quirks kept:
    X-Forwarded-For's part before its first comma (trimmed, [] stripped) or, without a
    comma after the first byte, the whole value untouched; else X-Real-IP with [] stripped;
    else the socket peer. Without it (our default), only the socket peer: any client can
    put anything in those headers.
    """
    if trust_proxy_headers:
        forwarded = request_headers.get("X-Forwarded-For", "")
        if forwarded:
            comma = forwarded.find(",")
            return _strip_brackets(forwarded[:comma].strip()) if comma > 0 else forwarded
        real_ip = request_headers.get("X-Real-IP", "")
        if real_ip:
            return _strip_brackets(real_ip)
    return peer_ip


def cors_headers(request_headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """echo CORSWithConfig{AllowOrigins: ["*"]} on a simple (non-preflight) request.

    echo always adds `Vary: Origin`, and sets `Access-Control-Allow-Origin: *` only
    when the request carries an Origin header (every browser cross-origin request does).
    """
    headers = [("Vary", "Origin")]
    if request_headers.get("Origin"):
        headers.append(("Access-Control-Allow-Origin", "*"))
    return headers


def preflight_headers(request_headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """echo's CORS middleware on an OPTIONS request: answered 204 there, for every path.

    Without an Origin header echo stops after `Vary: Origin`; with one it allows any
    origin, v1's methods, and echoes the requested headers back (no AllowHeaders configured).
    """
    headers = [("Vary", "Origin")]
    if not request_headers.get("Origin"):
        return headers
    headers += [("Vary", "Access-Control-Request-Method"), ("Vary", "Access-Control-Request-Headers"),
                ("Access-Control-Allow-Origin", "*"), ("Access-Control-Allow-Methods", CORS_ALLOW_METHODS)]
    requested = request_headers.get("Access-Control-Request-Headers")
    if requested:
        headers.append(("Access-Control-Allow-Headers", requested))
    return headers


def raw_response(status: int, body: bytes, content_type: str | None, headers: list[tuple[str, str]]) -> bytes:
    """A complete HTTP/1.1 response, for answers written before picows has the connection."""
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if content_type:
        lines.append(f"Content-Type: {content_type}")
    if status != HTTPStatus.NO_CONTENT:  # RFC 9110: a 204 carries no Content-Length
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _respond(status: int, body: bytes, content_type: str,
             request_headers: Mapping[str, str], extra: list[tuple[str, str]] | None = None
             ) -> WSUpgradeResponseWithListener:
    headers = cors_headers(request_headers) + [("Content-Type", content_type)] + (extra or [])
    if status < 400:
        response = WSUpgradeResponse.create_ok_response(body, headers)
    else:
        response = WSUpgradeResponse.create_error_response(status, body, headers)
    return WSUpgradeResponseWithListener(response, None)


def welcome_response(request_headers: Mapping[str, str]) -> WSUpgradeResponseWithListener:
    return _respond(HTTPStatus.OK, WELCOME_BODY, TEXT_PLAIN, request_headers)


def not_found_response(request_headers: Mapping[str, str]) -> WSUpgradeResponseWithListener:
    return _respond(HTTPStatus.NOT_FOUND, NOT_FOUND_BODY, JSON_TYPE, request_headers)


def bad_request_response(body: bytes, request_headers: Mapping[str, str]) -> WSUpgradeResponseWithListener:
    """A /subscribe option error: v1's c.String(400, text)."""
    return _respond(HTTPStatus.BAD_REQUEST, body, TEXT_PLAIN, request_headers)


def handshake_error_response(request_headers: Mapping[str, str]) -> WSUpgradeResponseWithListener:
    """gorilla's answer to a valid /subscribe request that is not a websocket handshake."""
    extra = [("Sec-Websocket-Version", "13"), ("X-Content-Type-Options", "nosniff")]
    return _respond(HTTPStatus.BAD_REQUEST, HANDSHAKE_ERROR_BODY, "text/plain; charset=utf-8",
                    request_headers, extra)


def too_many_connections_response(ip: str, limit: int, request_headers: Mapping[str, str]
                                  ) -> WSUpgradeResponseWithListener:
    """Not v1 (it had no such limit): refused before the upgrade, like every v1 refusal."""
    body = f"too many connections from {ip} (limit {limit} per IP)".encode()
    return _respond(HTTPStatus.TOO_MANY_REQUESTS, body, TEXT_PLAIN, request_headers)


def healthz_response(ready: bool, report: dict, request_headers: Mapping[str, str]
                     ) -> WSUpgradeResponseWithListener:
    """200 with the report when ready, 503 with the same report otherwise."""
    status = HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE
    body = json.dumps(report, separators=(",", ":"), sort_keys=True).encode()
    return _respond(status, body, JSON_TYPE, request_headers, [("Cache-Control", "no-store")])


def json_response(document: dict, request_headers: Mapping[str, str]) -> WSUpgradeResponseWithListener:
    """200 with `document` as compact JSON, never cached (figures that change every second)."""
    body = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
    return _respond(HTTPStatus.OK, body, JSON_TYPE, request_headers, [("Cache-Control", "no-store")])


def html_response(body: bytes, request_headers: Mapping[str, str]) -> WSUpgradeResponseWithListener:
    return _respond(HTTPStatus.OK, body, "text/html; charset=utf-8", request_headers, [("Cache-Control", "no-cache")])


def upgrade_response(listener, extra_headers: list[tuple[str, str]]) -> WSUpgradeResponseWithListener:
    """The 101 for a subscriber, with headers of ours (picows adds the handshake's own)."""
    return WSUpgradeResponseWithListener(WSUpgradeResponse.create_101_response(extra_headers), listener)


def zstd_dictionary_response(dictionary: bytes, dictionary_id: int, request_headers: Mapping[str, str]
                             ) -> WSUpgradeResponseWithListener:
    """The active zstd dictionary, named by the id every compressed frame carries."""
    if not dictionary:
        return not_found_response(request_headers)
    extra = [(DICTIONARY_ID_HEADER, str(dictionary_id)), ("Cache-Control", DICTIONARY_CACHE_CONTROL)]
    return _respond(HTTPStatus.OK, dictionary, "application/octet-stream", request_headers, extra)


# v2's getZstdDictionary (internal/xrpcapi/getzstddictionary.go): immutable for an id.
V2_DICTIONARY_CACHE_CONTROL = "public, max-age=31536000, immutable"


def xrpc_refusal_response(refusal, request_headers: Mapping[str, str]) -> WSUpgradeResponseWithListener:
    """A v2 refusal (wire_v2_request.Refusal: an XRPC error envelope) with our CORS headers."""
    headers = cors_headers(request_headers) + list(refusal.headers)
    response = WSUpgradeResponse.create_error_response(refusal.status, refusal.body, headers)
    return WSUpgradeResponseWithListener(response, None)


def v2_zstd_dictionary_response(dictionary: bytes, dictionary_id: int, raw_query: bytes,
                                request_headers: Mapping[str, str]) -> WSUpgradeResponseWithListener:
    """getZstdDictionary: the v2 wire's dictionary; `id` (optional) must name it (v2's answers otherwise)."""
    from jetstream.server.wire_v2_request import go_parse_query, invalid_request, parse_go_int64, xrpc_error

    params, query_error = go_parse_query(raw_query)
    if query_error is not None:
        return xrpc_refusal_response(invalid_request(query_error), request_headers)
    if "id" in params:
        values = params["id"]
        requested = parse_go_int64(values[0]) if values and values[0] else None
        if requested is None:
            return xrpc_refusal_response(invalid_request("id must be an integer zstd dictionary ID"),
                                         request_headers)
        if requested <= 0 or requested != dictionary_id:
            return xrpc_refusal_response(xrpc_error(HTTPStatus.NOT_FOUND, "DictionaryNotFound",
                                                    f"no dictionary with id {requested}; current dictionary id is "
                                                    f"{dictionary_id}"), request_headers)
    extra = [("ETag", f'"zstd-dict-{dictionary_id}"'), ("Cache-Control", V2_DICTIONARY_CACHE_CONTROL),
             (DICTIONARY_ID_HEADER, str(dictionary_id))]
    return _respond(HTTPStatus.OK, dictionary, "application/octet-stream", request_headers, extra)


def header_values(headers: Mapping[str, str], name: str) -> list[str]:
    """Every value of a header the request repeats (picows' headers are a multidict)."""
    return headers.getall(name, []) if hasattr(headers, "getall") else [headers.get(name, "")]


def _header_has_token(headers: Mapping[str, str], name: str, token: str) -> bool:
    """gorilla tokenListContainsValue over every value of the header."""
    values = header_values(headers, name)
    return any(part.strip().lower() == token for value in values for part in value.split(","))


def _is_valid_challenge_key(key: str) -> bool:
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


def is_websocket_handshake(headers: Mapping[str, str]) -> bool:
    """gorilla Upgrader.Upgrade's checks: Connection/Upgrade tokens, version 13, a 16-byte key."""
    return (
        _header_has_token(headers, "Connection", "upgrade")
        and _header_has_token(headers, "Upgrade", "websocket")
        and headers.get("Sec-WebSocket-Version", "") == "13"
        and _is_valid_challenge_key(headers.get("Sec-WebSocket-Key", ""))
    )
