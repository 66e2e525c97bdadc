"""Real processes for the cluster tests: a 3-server NATS cluster, relay-sim, daemon nodes.

Every process is started by a `ClusterRig` and killed by its `close()` (a fixture
finalizer), so a failing test leaks nothing. Ports are picked by binding port 0.
"""
from __future__ import annotations

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

REPO_ROOT = Path(__file__).resolve().parents[2]
LEASE_TTL = "2s"


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
        wait_for(lambda: _port_open(self.relay_port), "relay-sim to listen")

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


def _port_open(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


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
