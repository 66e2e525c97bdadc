"""Loopback ports in tests: a free one to listen on, and whether one accepts connections yet.

Owns nothing but these two probes; it never holds a port (a free port is closed again before
it is returned, so whoever binds it next may race another binder: callers retry or wait).
"""
from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    """True once something listens on 127.0.0.1:`port` (a connection is made and closed at once)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False
