"""A real S3 endpoint for the archive tests: moto's standalone server on loopback, or JETSTREAM_TEST_S3_URL.

`moto_server()` starts `python -m moto.server` (the test extra's moto[server]) on a free loopback
port, creates a bucket, and gives the environment a process needs to reach it (AWS_ENDPOINT_URL,
AWS_ALLOW_HTTP, dummy credentials). With JETSTREAM_TEST_S3_URL=s3://bucket/prefix set, the same
tests also run against that endpoint, with the credentials and endpoint of the test's own
environment, under a fresh sub-prefix per run.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field

from tests.archive.serve_helpers import free_port

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
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


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
