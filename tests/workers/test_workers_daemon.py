"""`jetstream serve --workers 2` as real processes: relay-sim -> main process -> two workers -> clients.

Each client connects from a loopback address the daemon steers to a known worker, and what it
received is compared with the daemon's RocksDB log afterwards (read by this test, not the daemon).
"""
from __future__ import annotations

import asyncio
import os
import signal

import pytest
from picows import WSCloseCode, ws_connect

from jetstream import __version__
from jetstream.log.store import EventLog
from tests.workers.workers_helpers import (
    ReconnectingClient,
    WorkersRun,
    address_for_worker,
    healthz,
    http_get,
    metric_value,
    metrics_text,
    metrics_when,
    until,
)
from tests.wsclient import CollectingListener

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def logged_rows(data_dir) -> list:
    with EventLog(str(data_dir), create=False) as event_log:
        return event_log.read_after(0, 10_000_000, compressed=False)


def gap_or_duplicate(client: ReconnectingClient, times: list[int]) -> str | None:
    """None when the client got exactly the log's events from its first one on."""
    if not client.received:
        return "received nothing"
    expected = [time_us for time_us in times if time_us >= client.received[0]][:len(client.received)]
    if client.received != expected:
        return f"got {len(client.received)} events, differs from the log at {_first_difference(client.received, expected)}"
    return None


def _first_difference(left, right) -> int:
    return next((i for i, (a, b) in enumerate(zip(left, right)) if a != b), min(len(left), len(right)))


async def test_two_workers_serve_the_log_bytes_with_one_healthz_and_one_metrics(tmp_path):
    run = WorkersRun(tmp_path, workers=2)
    ips = [address_for_worker(0, 2), address_for_worker(1, 2)]
    clients: list[ReconnectingClient] = []
    try:
        await run.start()
        await asyncio.sleep(0.5)
        clients = [ReconnectingClient(run.port, ip, first_cursor=cursor) for ip in ips for cursor in (None, 1)]
        # The workers push their counters every second: wait until the scrape has every client streaming.
        metrics = await metrics_when(run.metrics_port, lambda text: _every_client_counted(text, ips),
                                     "both workers' clients and rows in /metrics")
        reports = [await healthz(run.port, ip) for ip in ips]
        stats = [await http_get(run.port, "/stats/collections", ip) for ip in ips]
        await run.stop_relay()
        await asyncio.sleep(1.5)  # the last batches reach every client
        assert await run.stop_daemon() == 0
    finally:
        for client in clients:
            await client.stop()
        await run.kill_all()

    rows = logged_rows(run.data_dir)
    times = [row.time_us for row in rows]
    payload_of = {row.time_us: row.payload for row in rows}
    for client in clients:
        assert gap_or_duplicate(client, times) is None, client.local_ip
        assert all(payload_of[t] == p for t, p in zip(client.received, client.payloads)), "the log's very bytes"
        assert client.connections == 1
        assert client.closes == [(WSCloseCode.GOING_AWAY, "server shutting down")]
    assert clients[1].received[0] == times[0], "a cursor=1 client replays the whole log"
    assert len(clients[0].received) > 500 and len(clients[2].received) > 500
    # /healthz: each worker answers for itself and lists both.
    assert [report["worker"] for report in reports] == [0, 1]
    for report in reports:
        assert report["status"] == "ok" and report["relay"]["connected"] is True
        assert report["version"] == __version__ and report["uptime_s"] > 0, "the daemon's, from its main process"
        assert [(w["index"], w["alive"], w["listening"]) for w in report["workers"]] == [(0, True, True), (1, True, True)]
        assert len({w["pid"] for w in report["workers"]}) == 2
    # /stats/collections: the main process's counts of what it stored, from either worker.
    assert all(status == 200 and b"app.bsky.feed" in body for status, body in stats)
    # /metrics: one scrape for the whole daemon, v1 names, both workers' clients in it.
    assert metric_value(metrics, "jetstream_workers_alive") == 2
    # The live path: each worker's ring fed from the rows the main process sent, not the log.
    for worker in ("0", "1"):
        assert metric_value(metrics, f'jetstream_worker_rows_fed_total{{worker="{worker}"}}') > 500
    for ip in ips:
        assert metric_value(metrics, f'jetstream_subscribers_connected{{ip_address="{ip}"}}') == 2
        assert metric_value(metrics, f'jetstream_events_delivered_total{{ip_address="{ip}"}}') > 0
    assert metric_value(metrics, "jetstream_server_connected_clients") == 4
    assert metric_value(metrics, "jetstream_events_emitted_total") > 0
    assert metric_value(metrics, 'consumer_events_persisted_total{socket_url="ws://127.0.0.1:%d/xrpc/com.atproto.sync.subscribeRepos"}'
                        % run.relay_port) > 0


def _every_client_counted(metrics: str, ips: list[str]) -> bool:
    return (metric_value(metrics, "jetstream_server_connected_clients") == 4
            and all((metric_value(metrics, f'jetstream_worker_rows_fed_total{{worker="{worker}"}}') or 0) > 500
                    for worker in ("0", "1"))
            and all((metric_value(metrics, f'jetstream_events_delivered_total{{ip_address="{ip}"}}') or 0) > 0
                    for ip in ips))


async def test_kill9_of_one_worker_under_load_its_clients_resume_and_the_other_worker_sees_nothing(tmp_path):
    run = WorkersRun(tmp_path, workers=2, rate=1500)
    victim_ip, witness_ip = address_for_worker(0, 2), address_for_worker(1, 2)
    clients: list[ReconnectingClient] = []
    try:
        await run.start()
        await asyncio.sleep(0.5)
        victims = [ReconnectingClient(run.port, victim_ip), ReconnectingClient(run.port, victim_ip, first_cursor=1)]
        witnesses = [ReconnectingClient(run.port, witness_ip), ReconnectingClient(run.port, witness_ip, first_cursor=1)]
        clients = victims + witnesses
        await asyncio.sleep(1.5)
        before = await healthz(run.port, witness_ip)
        victim_pid = before["workers"][0]["pid"]
        os.kill(victim_pid, signal.SIGKILL)

        async def restarted() -> bool:
            report = await healthz(run.port, witness_ip)
            worker = report and report["workers"][0]
            return bool(worker and worker["restarts"] == 1 and worker["listening"] and worker["pid"] != victim_pid)

        await until(restarted, "worker 0 to be restarted")
        await until(lambda: _all_reconnected(victims), "the victims to reconnect")
        await asyncio.sleep(1.5)  # both workers keep streaming under load
        metrics = await metrics_text(run.metrics_port)
        await run.stop_relay()
        await asyncio.sleep(1.5)
        assert await run.stop_daemon() == 0
    finally:
        for client in clients:
            await client.stop()
        await run.kill_all()

    times = [row.time_us for row in logged_rows(run.data_dir)]
    for client in clients:
        assert gap_or_duplicate(client, times) is None, (client.local_ip, client.first_cursor)
    assert all(client.connections == 2 for client in victims), "the victims reconnected once, to the same port"
    assert all(client.connections == 1 and client.closes == [(WSCloseCode.GOING_AWAY, "server shutting down")]
               for client in witnesses), "the other worker's clients saw nothing happen"
    assert all(len(client.received) > 1000 for client in clients)
    assert metric_value(metrics, 'jetstream_worker_restarts_total{worker="0"}') == 1
    assert metric_value(metrics, 'jetstream_worker_restarts_total{worker="1"}') == 0
    assert "event=worker_exited worker=0" in run.log_text()


async def _all_reconnected(clients) -> bool:
    return all(client.connections >= 2 for client in clients)


async def test_sigterm_closes_every_workers_clients_with_1001_before_the_log_closes(tmp_path):
    run = WorkersRun(tmp_path, workers=2)
    ips = [address_for_worker(0, 2), address_for_worker(1, 2)]
    clients: list[ReconnectingClient] = []
    try:
        await run.start()
        clients = [ReconnectingClient(run.port, ip, reconnect=False) for ip in ips for _ in range(2)]
        await until(lambda: _all_streaming(clients), "every client to stream")
        assert await run.stop_daemon() == 0
        await asyncio.wait_for(asyncio.gather(*(client.disconnected.wait() for client in clients)), 10)
    finally:
        for client in clients:
            await client.stop()
        await run.kill_all()

    for client in clients:
        assert client.closes == [(WSCloseCode.GOING_AWAY, "server shutting down")]
    times = set(row.time_us for row in logged_rows(run.data_dir))
    assert all(set(client.received) <= times for client in clients), "every event a client saw is in the log"
    lines = run.log_text().splitlines()

    def first(marker: str, after: int = 0) -> int:
        return next(i for i, line in enumerate(lines) if i >= after and marker in line)

    stopping = first("event=daemon_stopping")
    workers_stopped = first("event=workers_stopped", stopping)
    for index in (0, 1):
        assert stopping < first(f"event=worker_stopped worker={index}", stopping) < workers_stopped
    relay_stopped = first("reason=stopping", workers_stopped)
    main_log_closed = first("event=log_closed", workers_stopped)
    assert workers_stopped < relay_stopped < main_log_closed < first("event=daemon_stopped", stopping)


async def _all_streaming(clients) -> bool:
    return all(len(client.received) > 10 for client in clients)


async def test_connection_cap_per_ip_holds_for_the_daemon_not_per_worker(tmp_path):
    """--max-conns-per-ip 2 with 2 workers: an IP gets 2 connections in all, not 2 per worker."""
    run = WorkersRun(tmp_path, workers=2, rate=50)
    transports = []
    try:
        await run.start("--max-conns-per-ip", "2")
        accepted = {}
        for ip in (address_for_worker(0, 2), address_for_worker(1, 2)):
            accepted[ip] = 0
            for _ in range(6):
                try:
                    transport, _ = await ws_connect(CollectingListener, f"ws://127.0.0.1:{run.port}/subscribe",
                                                    local_addr=(ip, 0))
                except Exception:  # noqa: BLE001 - picows raises its upgrade error with the 429 response
                    continue
                transports.append(transport)
                accepted[ip] += 1
        refused = 'jetstream_server_refused_requests_total{reason="too_many_connections"}'
        metrics = await metrics_when(run.metrics_port, lambda text: metric_value(text, refused) == 8,
                                     "the workers' refusals summed in /metrics")
    finally:
        for transport in transports:
            transport.disconnect()
        await run.kill_all()
    assert list(accepted.values()) == [2, 2], accepted
    assert metric_value(metrics, 'jetstream_server_refused_requests_total{reason="too_many_connections"}') == 8



async def test_systemd_hears_ready_from_the_main_process_once_every_worker_listens(tmp_path):
    """NOTIFY_SOCKET: READY=1 comes once, from the main process, when both workers already answer."""
    import socket
    import struct

    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    notify.setblocking(False)
    run = WorkersRun(tmp_path, workers=2, rate=50)
    messages: list[tuple[int, str]] = []

    async def receive() -> tuple[int, str]:
        while True:
            try:
                data, ancillary, _, _ = notify.recvmsg(4096, socket.CMSG_SPACE(12))
            except BlockingIOError:
                await asyncio.sleep(0.01)
                continue
            pid = next(struct.unpack("iII", payload)[0] for level, kind, payload in ancillary
                       if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS)
            return pid, data.decode()

    os.environ["NOTIFY_SOCKET"] = str(tmp_path / "notify.sock")
    try:
        await run.start_relay()
        start = asyncio.ensure_future(run.start_daemon())
        messages.append(await asyncio.wait_for(receive(), 60))
        # At READY both workers answer /healthz at once (each for its own IPs).
        reports = [await healthz(run.port, address_for_worker(w, 2)) for w in (0, 1)]
        await start
        run.daemon.terminate()
        while run.daemon.returncode is None or not any(text == "STOPPING=1" for _, text in messages):
            try:
                messages.append(await asyncio.wait_for(receive(), 0.5))
            except asyncio.TimeoutError:
                if run.daemon.returncode is None:
                    await asyncio.wait_for(run.daemon.wait(), 20)
                else:
                    break
    finally:
        del os.environ["NOTIFY_SOCKET"]
        notify.close()
        await run.kill_all()
    assert messages[0] == (run.daemon.pid, "READY=1")
    assert [report["worker"] for report in reports] == [0, 1]
    assert all(report["status"] == "ok" for report in reports)
    assert {pid for pid, _ in messages} == {run.daemon.pid}, "workers never notify"
    assert [text for _, text in messages].count("READY=1") == 1 and (run.daemon.pid, "STOPPING=1") in messages
    assert run.daemon.returncode == 0
