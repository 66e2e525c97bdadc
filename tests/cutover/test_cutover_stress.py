"""Replay -> live cutover under load: relay-sim -> daemon -> 50 clients, real sockets and RocksDB.

Relay-sim plays the corpus in a loop at 2,000 frames/s (about 2,000 events/s). After a
few seconds of history, 50 clients connect at random moments with cursors 0..HISTORY_S
in the past: plain, filtered, compressed, slow (small receive buffer, reading paused most
of the time), sending an options_update during replay/cutover, and some hanging up early.
The ring holds about one second, so every replay starts in RocksDB and crosses into the
ring, and slow clients fall out of it and back to the log.

Scaled down from the issue's 30 s of history to HISTORY_S = 3 s so the test stays far under
60 s on a shared 2-core machine; what is exercised (log -> ring cutover, ring -> log
fallback, filter switches at every stage) does not depend on the length.
"""
from __future__ import annotations

import asyncio
import random
import socket

import pytest

from tests.cutover.cutover_helpers import (
    SPECS,
    LogView,
    connect_client,
    daemon_for,
    now_us,
    options_update,
    play_role,
    start_relay,
    stop_ingest,
    subscribe_query,
    violations_of,
    wait_all_delivered,
)

pytestmark = pytest.mark.timeout(120)

RATE = 2000.0  # frames/s; the corpus averages just over one event per frame
HISTORY_S = 3.0
CONNECT_WINDOW_S = 3.0
TAIL_S = 2.0  # after the last connect, before ingest stops
RING_CAPACITY = 2000  # about one second of events: replays start in the log
CLIENTS = 50

def plan_clients(rng: random.Random, did_pool: list[str]) -> list[dict]:
    """What each of the 50 clients does (its role, filter, cursor age, connect delay)."""
    plans = []
    for index in range(CLIENTS):
        role = ("plain", "filtered", "slow", "updater", "compressed", "early")[min(index // 9, 5)]
        spec = SPECS[0]
        if role in ("filtered", "slow", "updater") and index % 3:
            spec = rng.choice(SPECS[1:])
        if role == "filtered" and index % 4 == 0:
            spec = ((), tuple(rng.sample(did_pool, 5)))
        plans.append({
            "role": role,
            "spec": spec,
            "new_spec": rng.choice([s for s in SPECS if s != spec]) if role == "updater" else None,
            "cursor_age_s": rng.uniform(0, HISTORY_S),
            # slow clients come early, so each has time for at least one long pause
            "delay_s": rng.uniform(0, 1.0 if role == "slow" else CONNECT_WINDOW_S),
            "session_s": rng.uniform(0.5, 2.0) if role == "early" or (role == "filtered" and index % 2) else None,
            "update_after": rng.randrange(1, 400),
        })
    return plans


def limit_server_send_buffer(server, client_port: int) -> None:
    """A small SO_SNDBUF on the server's end of a slow client's connection.

    Loopback autotunes send buffers to megabytes, which would absorb seconds of events
    without ever pushing back; a real slow client far away fills a much smaller window.
    """
    for reader in server.subscribers:
        transport = reader.transport.underlying_transport
        if transport.get_extra_info("peername")[1] == client_port:
            transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
            return
    raise AssertionError("the slow client's reader is not registered")


async def run_client(url: str, plan: dict, clients: list, stop: asyncio.Event, daemon_server) -> None:
    await asyncio.sleep(plan["delay_s"])
    cursor = now_us() - int(plan["cursor_age_s"] * 1e6)
    plan["cursor"] = cursor
    kwargs = {}
    if plan["role"] == "updater":
        kwargs = {"update_after": plan["update_after"], "update": options_update(plan["new_spec"])}
    client = await connect_client(url + subscribe_query(plan["spec"], cursor, plan["role"] == "compressed"),
                                  receive_buffer=4096 if plan["role"] == "slow" else 0, **kwargs)
    plan["client"] = client
    clients.append((plan, client))
    if plan["role"] == "slow":
        limit_server_send_buffer(daemon_server, client.local_port)
    await play_role(client, plan, stop)


@pytest.mark.parametrize("live_fastpath", ["true", "false"], ids=["fastpath", "own_steps"])
async def test_fifty_clients_cut_over_from_replay_to_live_without_gaps_or_duplicates(tmp_path, corpus_dir,
                                                                                    live_fastpath):
    rng = random.Random()
    seed = rng.randrange(2**32)
    rng.seed(seed)
    relay = await start_relay(corpus_dir, RATE)
    daemon = daemon_for(tmp_path, relay, "--ring-capacity", str(RING_CAPACITY), "--max-sub-rate", "50000",
                        "--per-ip-limit", "false", "--max-lag-seconds", "30", "--max-lag-grace", "5s",
                        "--live-fastpath", live_fastpath)
    await daemon.start()
    url = f"ws://127.0.0.1:{daemon.port}/subscribe"
    clients: list = []
    try:
        await asyncio.sleep(HISTORY_S)
        did_pool = sorted({row[1] for row in LogView.read(daemon.event_log).rows})
        plans = plan_clients(rng, did_pool)
        stop_slow = asyncio.Event()
        tasks = [asyncio.ensure_future(run_client(url, plan, clients, stop_slow, daemon.server)) for plan in plans]
        await asyncio.sleep(CONNECT_WINDOW_S + TAIL_S)
        stop_slow.set()  # slow clients now read at full speed and must catch up from the log
        await asyncio.gather(*tasks)
        await stop_ingest(daemon, relay)
        try:
            await wait_all_delivered(daemon, timeout=30)
        except AssertionError as exc:
            roles = {client.local_port: (plan["role"], plan.get("hung_up_early"), client.disconnected.is_set(),
                                         client.transport.underlying_transport.is_reading())
                     for plan, client in clients}
            raise AssertionError(f"{exc} roles={roles}") from None
        readers = {sub.transport.underlying_transport.get_extra_info("peername")[1]: sub
                   for sub in daemon.server.subscribers}
        server_disconnects = dict(daemon.server.disconnects)
        fanout_passes = daemon.server.live.passes
        closed_by_server = {id(client): (client.close_code, client.close_reason) for _, client in clients
                            if client.close_code is not None}  # before shutdown closes everyone
        log = LogView.read(daemon.event_log)
    finally:
        await daemon.stop()
        await relay.close()

    assert len(log.rows) > RATE * (HISTORY_S + CONNECT_WINDOW_S), f"ingest too slow (seed {seed})"
    problems = {}
    for plan, client in clients:
        whole = not plan.get("hung_up_early")
        found = violations_of(client.payloads, log, plan["cursor"], plan["spec"], plan["new_spec"],
                              compressed=plan["role"] == "compressed", whole_session=whole)
        if id(client) in closed_by_server:
            found.append(f"closed by the server: {closed_by_server[id(client)]}")
        if found:
            problems[f"{plan['role']} {plan['spec']} cursor_age={plan['cursor_age_s']:.2f}"] = found
    assert problems == {}, f"seed {seed}"
    assert server_disconnects == {}, f"seed {seed}"
    assert len(clients) == CLIENTS
    # The live fan-out served caught-up readers exactly when it is on.
    assert (fanout_passes > 0) == (live_fastpath == "true"), f"passes={fanout_passes}"
    # The scenario really exercised what it claims to:
    assert all(client.payloads for plan, client in clients if plan["role"] == "plain")
    assert all(client.update_sent for plan, client in clients if plan["role"] == "updater" and
               len(client.payloads) > plan["update_after"])
    slow_readers = [readers[client.local_port] for plan, client in clients
                    if plan["role"] == "slow" and client.local_port in readers]
    assert sum(reader.fell_behind for reader in slow_readers) > 0, "no slow client ever fell out of the ring"
    full_readers = [readers[client.local_port] for plan, client in clients
                    if not plan.get("hung_up_early") and client.local_port in readers]
    # Cursor ages are uniform over 3 s and the ring spans ~1 s: about 2/3 of the clients that
    # stay to the end start in the log; a quarter of all clients is a safe floor.
    assert sum(1 for reader in full_readers if reader.log_steps and reader.ring_steps) >= CLIENTS // 4, \
        "replays should start in the log and cut over to the ring"
