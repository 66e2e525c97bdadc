"""Downloads sent by sendfile threads from a real `jetstream serve`: the same bytes as streamed ones, and a
client that stops reading is given up after --archive-send-timeout, freeing its thread for the next."""
from __future__ import annotations

import asyncio
import os
import socket
import time
import urllib.request

import pytest

from jetstream.archive import KIND_CREATE, SegmentEvent, SegmentOptions, SegmentWriter, segment_name
from tests.archive.serve_helpers import Serve, free_port
from tests.waiting import until

pytestmark = pytest.mark.timeout(180)

SEG = "/xrpc/network.bsky.jetstream.getSegment?name="


@pytest.fixture(scope="module")
def big_segment(tmp_path_factory):
    """An ~8 MiB segment of incompressible payloads: more than loopback socket buffers hold."""
    archive = tmp_path_factory.mktemp("sendfile") / "archive"
    archive.mkdir()
    path = archive / segment_name(0)
    writer = SegmentWriter(str(path) + ".tmp", 1, SegmentOptions(block_events=256, fsync=False))
    for seq in range(1, 8 * 1024 + 1):
        writer.add(SegmentEvent(seq, seq, 0, KIND_CREATE, f"did:plc:{seq % 100:024x}", "app.bsky.feed.post",
                                f"r{seq}", "rev", os.urandom(1024)))
    writer.seal()
    return path


def serve(tmp_path, archive_path, *extra: str) -> Serve:
    server = Serve(tmp_path / "data", "--archive-dir", str(archive_path.parent), *extra)
    server.wait_ready()
    return server


@pytest.mark.parametrize("threads", ["8", "0"])  # sendfile threads, and the streamed path they fall back to
def test_whole_file_and_range_slices_are_the_files_bytes(tmp_path, big_segment, threads):
    raw = big_segment.read_bytes()
    server = serve(tmp_path, big_segment, "--archive-send-threads", threads)
    try:
        status, headers, body = server.get(SEG + big_segment.name)
        assert status == 200 and body == raw and int(headers["Content-Length"]) == len(raw)
        slice_bytes = 3 << 20
        pieces = []
        for start in range(0, len(raw), slice_bytes):  # the SDK's pattern; the last slice is short at EOF
            status, headers, body = server.get(SEG + big_segment.name,
                                               {"Range": f"bytes={start}-{start + slice_bytes - 1}"})
            assert status == 206 and headers["Content-Range"].startswith(f"bytes {start}-")
            pieces.append(body)
        assert b"".join(pieces) == raw and len(pieces[-1]) < slice_bytes
        etag = headers["ETag"]
        assert server.get(SEG + big_segment.name, {"If-None-Match": etag})[0] == 304
    finally:
        server.stop()


def stalled_download(port: int, name: str) -> socket.socket:
    """A client that asks for the whole segment and reads none of it (a tiny receive window)."""
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", port))
    client.sendall(f"GET {SEG}{name} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return client


def received_until_closed(client: socket.socket) -> int:
    total = 0
    client.settimeout(10)
    try:
        while chunk := client.recv(1 << 20):
            total += len(chunk)
    except ConnectionResetError:
        pass
    return total


def test_a_client_that_stops_reading_is_aborted_and_its_thread_serves_the_next(tmp_path, big_segment):
    size = big_segment.stat().st_size
    metrics_port = free_port()
    server = serve(tmp_path, big_segment, "--archive-send-threads", "1", "--archive-send-timeout", "1s",
                   "--metrics-listen-addr", f"127.0.0.1:{metrics_port}")
    try:
        first = stalled_download(server.port, big_segment.name)
        asyncio.run(until(lambda: server.logs().count("event=file_send_stalled") == 1, "the first stall", timeout=30))
        assert received_until_closed(first) < size  # cut short: the client sees a failure, not a short success
        first.close()
        # The one send thread is free again: the next stalled client is sent by it (and given up) too.
        second = stalled_download(server.port, big_segment.name)
        asyncio.run(until(lambda: server.logs().count("event=file_send_stalled") == 2, "the second stall",
                          timeout=30))
        second.close()
        status, _, body = server.get(SEG + big_segment.name)
        assert status == 200 and body == big_segment.read_bytes()
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        assert 'jetstream_server_disconnects_total{reason="archive_send_stalled"} 2.0' in metrics
    finally:
        server.stop()


def test_while_every_send_thread_is_busy_a_download_is_streamed(tmp_path, big_segment):
    server = serve(tmp_path, big_segment, "--archive-send-threads", "1", "--archive-send-timeout", "60s")
    try:
        pinned = stalled_download(server.port, big_segment.name)
        pinned.settimeout(10)
        assert pinned.recv(12) == b"HTTP/1.1 200"  # its send has begun: the one thread is taken
        status, _, body = server.get(SEG + big_segment.name)  # not queued behind the pinned thread
        assert status == 200 and body == big_segment.read_bytes()
        assert "event=file_send_stalled" not in server.logs()
        pinned.close()
    finally:
        server.stop()


@pytest.mark.parametrize("threads", ["8", "0"])
def test_bytes_the_client_sent_after_its_request_do_not_reset_the_answer(tmp_path, big_segment, threads):
    """Unread bytes in a socket closed by the server turn its FIN into a RST, and the client loses what it had
    not read yet; the send drains them as the streamed path does (uvloop keeps reading there)."""
    raw = big_segment.read_bytes()
    server = serve(tmp_path, big_segment, "--archive-send-threads", threads)
    try:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # a slow reader: the server's send
        client.connect(("127.0.0.1", server.port))  # queue still holds the tail when its send returns
        client.sendall(f"GET {SEG}{big_segment.name} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        client.settimeout(10)
        received = bytearray(client.recv(65536))  # the answer has begun: what we send now arrives unread
        client.sendall(b"GET /next HTTP/1.1\r\n\r\n")
        while chunk := client.recv(65536):
            received += chunk
            time.sleep(0.0005)
        head, _, body = bytes(received).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and body == raw
        client.close()
    finally:
        server.stop()
