"""The one place that touches picows beyond its documented API.

Owns: building picows' server-side WSProtocol by hand (the positional arguments of its
constructor, in picows 2.3's order, as its own ws_create_server does; we need the protocol
object to hand a connection over from the front door and to learn the socket peer before
routing), the logger picows is given (its private `_resolve_logger`), and reading the close
picows itself sent (auto-ping timeout, oversize frame) from a transport's close handshake.
tests/server/test_picows_adapter.py fails loudly when a picows upgrade changes any of it.
It must never hold server policy: SubscribeServer decides what the arguments are.
"""
from __future__ import annotations

from picows import WSAutoPingStrategy, WSCloseCode
from picows.api import _resolve_logger
from picows.picows import WSProtocol

# What picows' own closes say (auto-ping), to count them by reason.
PING_TIMEOUT_PREFIX = "peer has not replied to ping"


class PeerAwareProtocol(WSProtocol):
    """picows' server protocol that remembers the socket peer before the request is routed.

    picows hands the router only the HTTP request; the per-IP connection cap must refuse
    before the upgrade, so the peer address is captured when the TCP connection is made.
    """

    peer_ip = ""
    full_target: bytes | None = None  # the request target, when picows was handed it without its query

    def connection_made(self, transport) -> None:
        peer = transport.get_extra_info("peername")
        self.peer_ip = peer[0] if peer else ""
        super().connection_made(transport)


def server_protocol(route, *, logger_name: str, handshake_timeout_s: float, ping_interval_s: float,
                    pong_timeout_s: float, max_frame_size: int, read_buffer_init_size: int) -> PeerAwareProtocol:
    """What picows' ws_create_server builds for each connection, with the peer captured.

    `route(request)` is picows' listener factory (returns a WSUpgradeResponse or a listener).
    ping_interval_s <= 0 disables pings. PING_WHEN_IDLE: a ping goes out only after
    ping_interval_s without anything from the client.
    """
    ping = ping_interval_s > 0
    return PeerAwareProtocol(
        None, None, False, route, _resolve_logger(logger_name, "server"),
        True,  # disconnect_on_exception
        handshake_timeout_s,
        ping, ping_interval_s if ping else 20, pong_timeout_s if ping else 20,
        WSAutoPingStrategy.PING_WHEN_IDLE,
        True,  # enable_auto_pong: answer client pings like gorilla's default handler
        max_frame_size,
        None,  # extra_headers
        read_buffer_init_size,
    )


def close_sent_by_picows(transport) -> str | None:
    """Why picows closed this connection on its own ("client_message_too_big", "pong_timeout"), if it did.

    None when we sent no close, the peer closed first (we only echoed), or the close was ours.
    """
    handshake = transport.close_handshake if transport is not None else None
    if handshake is None or handshake.sent is None or handshake.recv_then_sent:
        return None
    if handshake.sent.code == WSCloseCode.MESSAGE_TOO_BIG:
        return "client_message_too_big"
    if handshake.sent.reason.startswith(PING_TIMEOUT_PREFIX):
        return "pong_timeout"
    return None
