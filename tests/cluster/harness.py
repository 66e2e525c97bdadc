"""Real processes for the cluster tests: a 3-server NATS cluster, relay-sim, daemon nodes.

Every process is started by a `ClusterRig` and killed by its `close()` (a fixture
finalizer), so a failing test leaks nothing. Ports are picked by binding port 0. Also what
the cluster tests share on top of it: `start_cluster` (NATS, a synthetic relay, a leader and
followers), websocket reads (`collect`), and the cursor-move scenario both wires are held to.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from jetstream.cluster.natsserver import NatsCluster, free_port, stop_process
from jetstream.log.store import EventLog
from jetstream.relaysim.server import SUBSCRIBE_REPOS_PATH
from tests.ports import port_open
from tests.wsclient import connect

REPO_ROOT = Path(__file__).resolve().parents[2]
LEASE_TTL = "2s"
SEED, DIDS = 5, 200  # the synthetic relay of start_cluster


def wait_for(condition, what: str, timeout: float = 30.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def healthz(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            return json.loads(exc.read())
        except ValueError:
            return None
    except (OSError, ValueError):
        return None


@dataclass
class Node:
    name: str
    port: int
    data_dir: Path
    log_path: Path
    args: list[str]
    process: subprocess.Popen | None = None
    env: dict = field(default_factory=dict)  # on top of os.environ (an S3 endpoint, ...)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def health(self) -> dict | None:
        return healthz(self.port)

    def cluster(self) -> dict:
        report = self.health() or {}
        return report.get("cluster") or {}

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class ClusterRig:
    base: Path
    nats_servers: int = 3
    nats: NatsCluster | None = None
    relay: subprocess.Popen | None = None
    relay_port: int = 0
    nodes: list[Node] = field(default_factory=list)

    def start_nats(self) -> NatsCluster:
        self.nats = NatsCluster(self.base / "nats", size=self.nats_servers).start()
        return self.nats

    def start_relay(self, *args: str) -> None:
        self.relay_port = free_port()
        self.relay = self._spawn(["relay-sim", "--listen-addr", f"127.0.0.1:{self.relay_port}",
                                  "--log-level", "warning", "--clock", "false", *args], self.base / "relay.log")
        wait_for(lambda: port_open(self.relay_port), "relay-sim to listen")

    @property
    def relay_url(self) -> str:
        return f"ws://127.0.0.1:{self.relay_port}{SUBSCRIBE_REPOS_PATH}"

    def add_node(self, name: str, *extra: str, nats_urls: str | None = None, start: bool = True,
                 env: dict | None = None) -> Node:
        port = free_port()
        data_dir = self.base / name / "data"
        args = ["serve", "--cluster", nats_urls or self.nats.url_list, "--node-name", name,
                "--ws-url", self.relay_url, "--listen-addr", f"127.0.0.1:{port}", "--metrics-listen-addr", "",
                "--data-dir", str(data_dir), "--lease-ttl", LEASE_TTL, "--log-level", "info", *extra]
        node = Node(name, port, data_dir, self.base / name / "node.log", args, env=dict(env or {}))
        (self.base / name).mkdir(parents=True, exist_ok=True)
        self.nodes.append(node)
        if start:
            self.start_node(node)
        return node

    def start_node(self, node: Node) -> None:
        node.process = self._spawn(node.args, node.log_path, node.env)
        wait_for(lambda: node.health() is not None and node.cluster().get("applied_stream_seq") is not None,
                 f"node {node.name} to serve /healthz")

    def stop_node(self, node: Node, sig: int = signal.SIGTERM) -> None:
        stop_process(node.process, sig, timeout=20)

    def leader(self) -> Node | None:
        leaders = [n for n in self.nodes if n.running and n.cluster().get("role") == "leader"]
        return leaders[0] if len(leaders) == 1 else None

    def _spawn(self, args: list[str], log_path: Path, extra_env: dict | None = None) -> subprocess.Popen:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(extra_env or {}))
        with open(log_path, "ab") as log_file:
            return subprocess.Popen([sys.executable, "-m", "jetstream.cli", *args], cwd=REPO_ROOT, env=env,
                                    stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)

    def close(self) -> None:
        for node in self.nodes:
            self.stop_node(node, signal.SIGKILL)
        stop_process(self.relay, signal.SIGKILL)
        if self.nats is not None:
            self.nats.stop()


def start_cluster(rig: ClusterRig, rate: int, names=("a", "b"), follower_args: tuple = (),
                  node_args: tuple = ()) -> list:
    rig.start_nats()
    rig.start_relay("--synthetic", "true", "--rate", str(rate), "--seed", str(SEED), "--dids", str(DIDS))
    first = rig.add_node(names[0], "--override-relay-cursor", "0", *node_args)
    wait_for(lambda: first.cluster().get("role") == "leader", "the first node to lead", 30)
    return [first] + [rig.add_node(name, *node_args, *follower_args) for name in names[1:]]


def applied(node) -> int:
    return node.cluster().get("applied_stream_seq") or 0


async def collect(url: str, until, timeout: float) -> tuple[list[bytes], object]:
    """Read `url` until `until(listener)`, `timeout` s or a close; (the payloads, the listener)."""
    transport, listener = await connect(url)
    try:
        deadline = time.monotonic() + timeout
        while not until(listener) and time.monotonic() < deadline and listener.close_code is None:
            listener.changed.clear()
            try:
                await asyncio.wait_for(listener.changed.wait(), 0.2)
            except asyncio.TimeoutError:
                pass
    finally:
        transport.disconnect()
    return listener.payloads, listener


def move_a_cursor(a: Node, b: Node, path: str, cursor_of, time_us_of) -> tuple[list[bytes], list[bytes]]:
    """A client reads `path` on node a from the start, then brings the cursor of its last frame
    (`cursor_of(frame)`, inclusive) to node b while b is held back with SIGSTOP: the cursor is
    ahead of what b has applied (a sequences later events, `time_us_of(frame)` says when), so
    b must hold the client until it caught up. Another client stays on a all along.

    Checked here: b does not close the moved client and starts with the event at the cursor,
    and moving equals staying over at least 1200 frames. Returns (moved, stayed): what the
    moving client received (a's frames, then b's after the one at the cursor) and the stayer's.
    """
    async def scenario():
        stayer = asyncio.ensure_future(collect(f"{a.url}{path}?cursor=1", lambda l: len(l.messages) >= 1500, 60))
        first, _ = await collect(f"{a.url}{path}?cursor=1", lambda l: len(l.messages) >= 400, 30)
        b.process.send_signal(signal.SIGSTOP)  # with --workers, b's main process: its workers still serve
        try:
            held_since_us = time.time_ns() // 1000  # a sequences later events; b cannot have applied them
            more, _ = await collect(f"{a.url}{path}?cursor={cursor_of(first[-1]) + 1}",
                                    lambda l: l.payloads and time_us_of(l.payloads[-1]) > held_since_us + 300_000, 30)
            on_a = first + more
            moved = asyncio.ensure_future(
                collect(f"{b.url}{path}?cursor={cursor_of(on_a[-1])}", lambda l: len(l.messages) >= 800, 60))
            await asyncio.sleep(1.0)
        finally:
            b.process.send_signal(signal.SIGCONT)
        on_b, listener = await moved
        return on_a, on_b, listener, await stayer

    on_a, on_b, listener_b, (stayed, _) = asyncio.run(scenario())
    assert listener_b.close_code is None, listener_b.close_reason
    assert on_b and on_b[0] == on_a[-1], "the cursor is inclusive: b starts with the event at the cursor"
    moved = on_a + on_b[1:]
    common = min(len(moved), len(stayed))
    assert common >= 1200
    assert moved[:common] == stayed[:common], "moving from a to b = staying on a"
    return moved, stayed


def read_log(data_dir: Path) -> list[tuple[int, bytes]]:
    """(time_us, JSON) of every event in a stopped node's log, ascending."""
    with EventLog(str(data_dir), create=False) as event_log:
        return [(row.time_us, bytes(row.payload)) for row in event_log.read_after(0, 10_000_000, compressed=False)]


def read_seqs(data_dir: Path) -> list[tuple[int, int]]:
    """(seq, time_us) of every event in a stopped node's log, ascending."""
    with EventLog(str(data_dir), create=False) as event_log:
        return [(row.seq, row.time_us) for row in event_log.read_after(0, 10_000_000, compressed=False)]


class CuttableProxy:
    """TCP proxies to NATS servers, in a thread of their own, that a test can cut at once.

    `cut()` closes every proxied connection and refuses new ones: the node behind it is
    cut off from NATS while everything else keeps running; `restore()` lets it back.
    """

    def __init__(self, targets: list[int]) -> None:
        import asyncio
        import threading

        self._targets = targets
        self.ports: list[int] = []
        self._loop = asyncio.new_event_loop()
        self._servers = []
        self._writers: set = set()
        self._cut = False
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(10)

    @property
    def url_list(self) -> str:
        return ",".join(f"nats://127.0.0.1:{port}" for port in self.ports)

    def _run(self, ready) -> None:
        import asyncio

        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            for target in self._targets:
                server = await asyncio.start_server(
                    lambda r, w, t=target: self._pipe(r, w, t), "127.0.0.1", 0)
                self._servers.append(server)
                self.ports.append(server.sockets[0].getsockname()[1])
            ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    async def _pipe(self, client_reader, client_writer, target: int) -> None:
        import asyncio

        if self._cut:
            client_writer.close()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            client_writer.close()
            return
        self._writers.update((client_writer, upstream_writer))

        async def copy(reader, writer) -> None:
            try:
                while not self._cut:
                    data = await reader.read(65536)
                    if not data:
                        break
                    writer.write(data)
                    await writer.drain()
            except (OSError, ConnectionError):
                pass
            finally:
                writer.close()

        await asyncio.gather(copy(client_reader, upstream_writer), copy(upstream_reader, client_writer))

    def cut(self) -> None:
        def do_cut() -> None:
            self._cut = True
            for writer in list(self._writers):
                writer.transport.abort()
            self._writers.clear()

        self._loop.call_soon_threadsafe(do_cut)

    def restore(self) -> None:
        """Let new connections through again (the node behind it reconnects on its own)."""
        self._loop.call_soon_threadsafe(setattr, self, "_cut", False)

    def close(self) -> None:
        self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
