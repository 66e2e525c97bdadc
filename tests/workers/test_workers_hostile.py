"""Hostile clients against `jetstream serve --workers 2` (the process-tree side of tests/hostile/).

Each test runs the real daemon behind relay-sim, attacks it from an address steered to worker 0,
and keeps two witnesses streaming: one on the attacked worker (another address steered there)
and one on the other worker. Afterwards each witness must have received exactly the log's
events from its first one on: an attack on one worker costs the other clients nothing.
"""
from __future__ import annotations

import asyncio
import socket

import pytest
from picows import WSCloseCode, WSMsgType, ws_connect

from jetstream.log.store import EventLog
from tests.waiting import until
from tests.workers.workers_helpers import (
    ReconnectingClient,
    WorkersRun,
    address_for_worker,
    metric_value,
    metrics_text,
    metrics_when,
)
from tests.wsclient import CollectingListener

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

ATTEMPTS = 600
CONNS_PER_IP = 3


def upgrade_request(path: str = "/subscribe") -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").encode()


class Attacked:
    """The daemon, the attacker's address and the two witnesses."""

    def __init__(self, tmp_path) -> None:
        self.run = WorkersRun(tmp_path, workers=2, rate=500)
        self.attacker_ip = address_for_worker(0, 2)
        self.witnesses: list[ReconnectingClient] = []

    async def __aenter__(self) -> "Attacked":
        return self

    async def start(self, *flags: str) -> None:
        await self.run.start(*flags)
        same_worker = address_for_worker(0, 2, skip=(self.attacker_ip,))
        self.witnesses = [ReconnectingClient(self.run.port, ip, reconnect=False)
                          for ip in (same_worker, address_for_worker(1, 2))]

    async def witnesses_saw_everything(self) -> None:
        # Let each witness stream a while (a quick attack can end before they have much).
        deadline = asyncio.get_running_loop().time() + 30
        while any(len(witness.received) <= 50 for witness in self.witnesses):
            assert asyncio.get_running_loop().time() < deadline, [len(w.received) for w in self.witnesses]
            await asyncio.sleep(0.1)
        await self.run.stop_relay()
        await asyncio.sleep(1.5)
        assert await self.run.stop_daemon() == 0
        with EventLog(str(self.run.data_dir), create=False) as event_log:
            times = [row.time_us for row in event_log.read_after(0, 10_000_000, False)]
        for witness in self.witnesses:
            assert witness.connections == 1 and len(witness.received) > 50
            assert witness.received == [t for t in times if t >= witness.received[0]], witness.local_ip
            assert witness.closes == [(WSCloseCode.GOING_AWAY, "server shutting down")]

    async def __aexit__(self, *exc_info) -> None:
        for witness in self.witnesses:
            await witness.stop()
        await self.run.kill_all()


async def _attempt(port: int, ip: str, held: list) -> int:
    """One raw upgrade attempt from `ip`: the HTTP status (the socket is kept open if upgraded)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(ip, 0))
    writer.write(upgrade_request())
    status = int((await asyncio.wait_for(reader.readline(), 20)).split()[1])
    if status == 101:
        held.append(writer)
    else:
        writer.close()
    return status


async def test_a_connection_flood_from_one_ip_holds_the_daemon_wide_cap_and_nobody_else_notices(tmp_path):
    async with Attacked(tmp_path) as attacked:
        await attacked.start("--max-conns-per-ip", str(CONNS_PER_IP))
        held: list = []
        statuses: list = []
        for start in range(0, ATTEMPTS, 150):
            statuses += await asyncio.gather(*(_attempt(attacked.run.port, attacked.attacker_ip, held)
                                               for _ in range(start, min(start + 150, ATTEMPTS))))
        refused = 'jetstream_server_refused_requests_total{reason="too_many_connections"}'
        # The workers push their counters every second: wait for the refusals to be summed.
        metrics = await metrics_when(attacked.run.metrics_port,
                                     lambda text: (metric_value(text, refused) or 0) >= ATTEMPTS - CONNS_PER_IP,
                                     "every refusal counted")
        assert statuses.count(101) == CONNS_PER_IP
        assert statuses.count(429) == ATTEMPTS - CONNS_PER_IP
        assert metric_value(metrics, refused) == ATTEMPTS - CONNS_PER_IP
        assert metric_value(metrics, f'jetstream_subscribers_connected{{ip_address="{attacked.attacker_ip}"}}') == \
            CONNS_PER_IP
        for writer in held:
            writer.close()
        await attacked.witnesses_saw_everything()


async def test_a_client_that_never_reads_is_dropped_by_its_worker_and_the_others_stream_on(tmp_path):
    async with Attacked(tmp_path) as attacked:
        await attacked.start("--max-lag-events", "1000", "--max-lag-grace", "0.5s")
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.bind((attacked.attacker_ip, 0))
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", attacked.run.port))
        sock.send(upgrade_request())

        async def dropped() -> bool:
            text = await metrics_text(attacked.run.metrics_port)
            return metric_value(text, 'jetstream_server_disconnects_total{reason="lag_events"}') == 1

        deadline = asyncio.get_running_loop().time() + 40
        while not await dropped():
            assert asyncio.get_running_loop().time() < deadline, "the never-reading client was not dropped"
            await asyncio.sleep(0.3)
        sock.close()
        await attacked.witnesses_saw_everything()


async def test_bad_frames_get_v1_closes_from_their_worker_and_the_others_stream_on(tmp_path):
    async with Attacked(tmp_path) as attacked:
        await attacked.start()
        url = f"ws://127.0.0.1:{attacked.run.port}/subscribe"
        transport, bad_utf8 = await ws_connect(CollectingListener, url, local_addr=(attacked.attacker_ip, 0))
        transport.send(WSMsgType.TEXT, b"\xff\xfe\xfd")
        await asyncio.wait_for(transport.wait_disconnected(), 10)
        transport, bad_close = await ws_connect(CollectingListener, url, local_addr=(attacked.attacker_ip, 0))
        transport.send(WSMsgType.CLOSE, (1005).to_bytes(2, "big"))
        await asyncio.wait_for(transport.wait_disconnected(), 10)
        transport, too_big = await ws_connect(CollectingListener, url, local_addr=(attacked.attacker_ip, 0))
        transport.send(WSMsgType.TEXT, b"x" * 11_000_000)
        await asyncio.wait_for(transport.wait_disconnected(), 20)
        assert bad_utf8.close_code == WSCloseCode.OK
        assert bad_utf8.close_reason.startswith("failed to unmarshal subscriber sourced message: invalid character")
        assert bad_close.close_code == WSCloseCode.PROTOCOL_ERROR
        # The worker closes with 1009 while the client is still writing its 11 MB, so the
        # client's TCP stack may reset before the close frame is read: the worker's own
        # disconnect line is the witness; a close frame the client did read must say 1009.
        assert too_big.close_code in (WSCloseCode.MESSAGE_TOO_BIG, None)
        # The worker logs the disconnect after it closed the socket the client saw go: wait for the line.
        await until(lambda: "closed_by=server close_code=1009" in attacked.run.log_text(),
                    "the worker's 1009 subscriber_disconnected line")
        await attacked.witnesses_saw_everything()
