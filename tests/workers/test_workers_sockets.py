"""The reuseport sockets of a --workers daemon and the kernel rule that keeps one IP on one worker."""
from __future__ import annotations

import socket
import time
from collections import Counter

import pytest

from jetstream.workers.sockets import bind_worker_sockets, worker_of_address


def accepted_by(sockets: list[socket.socket], source_ip: str) -> int | None:
    """Connect from `source_ip`; the index of the socket whose backlog got the connection."""
    port = sockets[0].getsockname()[1]
    with socket.socket() as client:
        client.bind((source_ip, 0))
        client.connect(("127.0.0.1", port))
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            for index, sock in enumerate(sockets):
                try:
                    connection, _ = sock.accept()
                except BlockingIOError:
                    continue
                connection.close()
                return index
            time.sleep(0.002)
    return None


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_every_connection_of_an_ip_goes_to_the_worker_the_rule_names(workers):
    sockets = bind_worker_sockets("127.0.0.1", 0, workers, steer_by_ip=True)
    try:
        assert len({sock.getsockname()[1] for sock in sockets}) == 1, "one port for all"
        for sock in sockets:
            sock.setblocking(False)
        picked = {}
        for last in range(2, 42):
            address = f"127.0.0.{last}"
            picked[address] = {accepted_by(sockets, address) for _ in range(3)}
    finally:
        for sock in sockets:
            sock.close()
    assert picked == {address: {worker_of_address(address, workers)} for address in picked}
    spread = Counter(next(iter(indexes)) for indexes in picked.values())
    assert len(spread) == workers and min(spread.values()) >= 40 // workers // 3, spread


def test_without_the_rule_one_ip_is_spread_over_the_workers():
    """--trust-proxy-headers: every client shares the proxy's address, so the kernel spreads connections."""
    sockets = bind_worker_sockets("127.0.0.1", 0, 2, steer_by_ip=False)
    try:
        for sock in sockets:
            sock.setblocking(False)
        picked = Counter(accepted_by(sockets, "127.0.0.1") for _ in range(40))
    finally:
        for sock in sockets:
            sock.close()
    assert set(picked) == {0, 1}, picked
