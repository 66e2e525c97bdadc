"""tests/ports.py: a port handed to a server is never one an outgoing connection can take first.

A port picked by binding port 0 is an ephemeral port, the kind the kernel gives the local end of
every outgoing connection; a CI run lost a daemon's start to one ("Address already in use" on its
--metrics-listen-addr). free_port picks below the ephemeral range instead."""
from __future__ import annotations

import socket

from jetstream.cluster.natsserver import EPHEMERAL_RANGE
from tests.ports import free_port


def ephemeral_range() -> tuple[int, int]:
    with open(EPHEMERAL_RANGE) as handle:
        low, high = (int(part) for part in handle.read().split()[:2])
    return low, high


def test_free_ports_lie_below_the_ephemeral_range_differ_and_bind():
    low, high = ephemeral_range()
    ports = [free_port() for _ in range(50)]
    assert all(1024 <= port < low for port in ports), (low, ports)
    assert len(set(ports)) == len(ports), "consecutive picks do not repeat"
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", ports[-1]))
        listener.listen()
        outgoing = [socket.create_connection(("127.0.0.1", ports[-1])) for _ in range(20)]
        try:
            assert all(low <= s.getsockname()[1] <= high for s in outgoing), "clients take ephemeral ports"
        finally:
            for s in outgoing:
                s.close()


def test_a_port_something_listens_on_is_passed_over():
    taken = socket.socket()
    taken.bind(("127.0.0.1", free_port()))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        # Walk the whole span once: the held port never comes back.
        assert all(free_port() != port for _ in range(10_000))
    finally:
        taken.close()
