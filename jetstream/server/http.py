"""Plain HTTP on the public listener: routing, v1's canned responses, CORS, handshake checks.

Owns: which route a request target names, the exact bytes v1 (echo v4.11 + gorilla
websocket 1.5) answered for `/`, unknown paths, 400s and broken websocket handshakes
(V1-REFERENCE §2.1, §2.3), and echo's CORS middleware headers.
It must never parse subscriber options (params.py) or hold connection state.

picows answers non-GET requests itself (400) before routing, so v1's 405 and CORS
preflight (OPTIONS) cannot be reached through it; they are out of scope here.
"""
from __future__ import annotations

import base64
import binascii
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
# gorilla's Upgrader.returnError: http.Error(w, StatusText(400), 400).
HANDSHAKE_ERROR_BODY = b"Bad Request\n"


class Route(Enum):
    WELCOME = "/"
    SUBSCRIBE = "/subscribe"
    NOT_FOUND = ""


def split_target(target: bytes) -> tuple[bytes, bytes]:
    """Request target -> (decoded path, raw query); echo routes on the decoded path."""
    raw_path, _, raw_query = target.partition(b"?")
    return unquote_to_bytes(raw_path), raw_query


def route_of(path: bytes) -> Route:
    if path == b"/":
        return Route.WELCOME
    if path == b"/subscribe":
        return Route.SUBSCRIBE
    return Route.NOT_FOUND


def cors_headers(request_headers: Mapping[str, str]) -> list[tuple[str, str]]:
    """echo CORSWithConfig{AllowOrigins: ["*"]} on a simple (non-preflight) request.

    echo always adds `Vary: Origin`, and sets `Access-Control-Allow-Origin: *` only
    when the request carries an Origin header (every browser cross-origin request does).
    """
    headers = [("Vary", "Origin")]
    if request_headers.get("Origin"):
        headers.append(("Access-Control-Allow-Origin", "*"))
    return headers


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


def _header_has_token(headers: Mapping[str, str], name: str, token: str) -> bool:
    """gorilla tokenListContainsValue over every value of the header."""
    values = headers.getall(name, []) if hasattr(headers, "getall") else [headers.get(name, "")]
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
