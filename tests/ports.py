"""Loopback ports in tests: a free one to listen on, and whether one accepts connections yet.

Owns nothing but these two probes and never holds a port: a free port is released before it is
returned (jetstream/cluster/natsserver.py's free_port, which the cluster harness uses too), so
whoever binds it next may race another binder; it lies below the kernel's ephemeral range, so the
local end of an outgoing connection (a test's client, a daemon's relay dial) never takes it first.
Every test that needs a port to hand to a server takes it from here.
"""
from __future__ import annotations

import socket

from jetstream.cluster.natsserver import free_port  # noqa: F401 - the tests import it from here


def port_open(port: int) -> bool:
    """True once something listens on 127.0.0.1:`port` (a connection is made and closed at once)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False
