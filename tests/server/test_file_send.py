"""server/file_send.py over real loopback TCP sockets and real files: what reaches the peer, and every way a send ends."""
from __future__ import annotations

import asyncio
import os
import socket
import threading
import time

import pytest

from jetstream.server.file_send import FileSender, FileShort, SendStalled, SendStopped, send_range

pytestmark = pytest.mark.timeout(60)


def tcp_pair(receive_buffer: int | None = None) -> tuple[socket.socket, socket.socket]:
    """(server side, non-blocking as the event loop keeps it; client side), connected over 127.0.0.1."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = socket.socket()
        if receive_buffer:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        client.connect(listener.getsockname())
        server, _ = listener.accept()
    server.setblocking(False)
    return server, client


def file_of(tmp_path, data: bytes) -> int:
    path = tmp_path / "file.bin"
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY)


def read_all(sock: socket.socket, out: bytearray) -> None:
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return
        out += chunk


def closed(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


def test_the_head_then_exactly_the_range_and_both_descriptors_closed(tmp_path):
    data = os.urandom(3 << 20)
    server, client = tcp_pair()
    received = bytearray()
    reader = threading.Thread(target=read_all, args=(client, received))
    reader.start()
    sock_fd, file_fd = os.dup(server.fileno()), file_of(tmp_path, data)
    sent = send_range(sock_fd, b"HEAD\r\n\r\n", file_fd, 12345, 2 << 20, 5.0, (threading.Event(),))
    server.close()  # the last descriptor of the connection: the reader sees EOF
    reader.join(10)
    assert sent == 2 << 20
    assert bytes(received) == b"HEAD\r\n\r\n" + data[12345:12345 + (2 << 20)]
    assert closed(sock_fd) and closed(file_fd)
    client.close()


def test_a_file_shorter_than_the_range_is_reported_not_padded(tmp_path):
    server, client = tcp_pair()
    file_fd = file_of(tmp_path, b"x" * 1000)
    with pytest.raises(FileShort):
        send_range(os.dup(server.fileno()), b"H", file_fd, 0, 5000, 5.0, (threading.Event(),))
    server.close()
    received = bytearray()
    read_all(client, received)
    assert bytes(received) == b"H" + b"x" * 1000
    assert closed(file_fd)
    client.close()


def test_a_client_that_reads_nothing_is_given_up_after_the_stall_timeout(tmp_path):
    server, client = tcp_pair(receive_buffer=4096)
    file_fd = file_of(tmp_path, os.urandom(16 << 20))
    started = time.monotonic()
    with pytest.raises(SendStalled, match="no progress"):
        send_range(os.dup(server.fileno()), b"H", file_fd, 0, 16 << 20, 0.5, (threading.Event(),))
    assert 0.5 <= time.monotonic() - started < 5
    assert closed(file_fd)
    server.close()
    client.close()


def test_a_stop_flag_ends_a_waiting_send(tmp_path):
    server, client = tcp_pair(receive_buffer=4096)
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    with pytest.raises(SendStopped):
        send_range(os.dup(server.fileno()), b"H", file_of(tmp_path, os.urandom(16 << 20)), 0, 16 << 20, 30.0,
                   (threading.Event(), stop))
    assert time.monotonic() - started < 3  # not the 30 s stall timeout
    server.close()
    client.close()


def test_a_client_gone_is_an_oserror(tmp_path):
    server, client = tcp_pair(receive_buffer=4096)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    threading.Timer(0.2, client.close).start()  # a reset under the send
    with pytest.raises(OSError):
        send_range(os.dup(server.fileno()), b"H", file_of(tmp_path, os.urandom(16 << 20)), 0, 16 << 20, 30.0,
                   (threading.Event(),))
    server.close()


def test_the_sender_bounds_its_threads_and_cancelling_frees_one(tmp_path):
    async def scenario():
        sender = FileSender(threads=1, stall_timeout_s=30.0)
        server, client = tcp_pair(receive_buffer=4096)
        file_fd = file_of(tmp_path, os.urandom(16 << 20))
        assert sender.available
        task = asyncio.ensure_future(sender.send(server.fileno(), b"H", file_fd, 0, 16 << 20))
        await asyncio.sleep(0.2)
        assert sender.busy == 1 and not sender.available  # the next download is streamed instead
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        deadline = time.monotonic() + 5
        while sender.busy and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # the thread sees the stop flag within a poll slice
        assert sender.busy == 0 and sender.available and closed(file_fd)
        assert server.fileno() >= 0  # the caller's descriptor is untouched: the sender worked on a duplicate
        sender.close()
        assert not sender.available
        server.close()
        client.close()

    asyncio.run(scenario())
