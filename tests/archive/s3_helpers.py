"""A real S3 endpoint for the archive tests: moto's standalone server on loopback, or JETSTREAM_TEST_S3_URL.

`moto_server()` starts `python -m moto.server` (the test extra's moto[server]) on a free loopback
port, creates a bucket, and gives the environment a process needs to reach it (AWS_ENDPOINT_URL,
AWS_ALLOW_HTTP, dummy credentials). With JETSTREAM_TEST_S3_URL=s3://bucket/prefix set, the same
tests also run against that endpoint, with the credentials and endpoint of the test's own
environment, under a fresh sub-prefix per run. `s3` is the module-scoped moto fixture the
archive and cluster tests share; `TcpProxy` stands between a daemon and the store so a test can
make the store unreachable (or slow, in a subclass).
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from jetstream.cluster.natsserver import stop_process
from tests.ports import free_port

TEST_S3_URL_ENV = "JETSTREAM_TEST_S3_URL"
MOTO_BUCKET = "jetstream-archive-test"


@dataclass
class S3Endpoint:
    url: str  # s3://bucket/prefix, empty of objects at the start
    env: dict = field(default_factory=dict)  # what a process needs on top of os.environ to reach it
    process: subprocess.Popen | None = None

    def apply(self) -> dict:
        """Put env into this process's environment (obstore reads it at store creation); the old values."""
        old = {key: os.environ.get(key) for key in self.env}
        os.environ.update(self.env)
        return old

    def stop(self) -> None:
        stop_process(self.process)


def _wait_port(port: int, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"moto server exited {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("moto server did not listen in time")


def moto_server(log_path) -> S3Endpoint:
    port = free_port()
    log_file = open(log_path, "ab")  # noqa: SIM115 - the server's output, kept open for its life
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=log_file, stderr=subprocess.STDOUT)
    log_file.close()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        _wait_port(port, process)
        import urllib.request
        # CreateBucket: an unsigned PUT is accepted by moto (it does not check signatures).
        request = urllib.request.Request(f"{endpoint}/{MOTO_BUCKET}", method="PUT")  # noqa: S310 - loopback
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
            assert response.status == 200
    except BaseException:
        process.kill()
        process.wait()
        raise
    return S3Endpoint(f"s3://{MOTO_BUCKET}/archive", env, process)


def env_endpoint() -> S3Endpoint | None:
    """JETSTREAM_TEST_S3_URL under a fresh prefix, or None when it is not set."""
    url = os.environ.get(TEST_S3_URL_ENV, "")
    if not url:
        return None
    return S3Endpoint(url.rstrip("/") + "/jetstream-test-" + uuid.uuid4().hex[:12], {})


@contextlib.contextmanager
def s3_environment(endpoint: S3Endpoint) -> Iterator[S3Endpoint]:
    """`endpoint` in this process's environment while the block runs; then stopped, the old values put back."""
    old = endpoint.apply()
    try:
        yield endpoint
    finally:
        endpoint.stop()
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> Iterator[S3Endpoint]:
    """moto's S3 server for one test module (import the fixture into the module that uses it)."""
    with s3_environment(moto_server(tmp_path_factory.mktemp("moto") / "moto.log")) as endpoint:
        yield endpoint


def endpoint_port(endpoint: S3Endpoint) -> int:
    """The loopback port of a moto endpoint (what a TcpProxy in front of it targets)."""
    return int(endpoint.env["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])


class TcpProxy:
    """127.0.0.1:port -> target port; stop() closes the listener and every connection (the store is
    unreachable: connection refused), start() listens on the same port again. A subclass changes how
    bytes flow by overriding `_start_pumps`."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None

    def env(self, endpoint: S3Endpoint) -> dict:
        """`endpoint`'s environment with the store reached through this proxy."""
        return dict(endpoint.env, AWS_ENDPOINT_URL=f"http://127.0.0.1:{self.port}")

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        self._shut(*sockets)
        for sock in sockets:
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            self._start_pumps(client, upstream)

    def _start_pumps(self, client: socket.socket, upstream: socket.socket) -> None:
        """One thread per direction, each copying bytes as they come."""
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @classmethod
    def _pump(cls, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            cls._shut(source, sink)

    @staticmethod
    def _shut(*sockets: socket.socket) -> None:
        """Shut both directions of each socket (the other side sees the connection end); never raises."""
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
