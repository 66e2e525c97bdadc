"""atheris harness: raw bytes to the real SubscribeServer over 127.0.0.1. Each input is
sent, the socket half-closed, and the server must answer with HTTP or close (within
ANSWER_TIMEOUT_S), then still answer `GET /`. The server runs on a uvloop thread in this
process, so an exception in it shows up in its log and a crash of the process is a crash
of the harness. Run via `make fuzz`."""
import asyncio
import socket
import sys
import tempfile
import threading

import atheris

with atheris.instrument_imports(include=["jetstream"]):
    import uvloop

    from jetstream.implementation import LiveRing
    from jetstream.log.store import EventLog
    from jetstream.server.app import SubscribeServer

ANSWER_TIMEOUT_S = 10.0


def start_server() -> int:
    loop = uvloop.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    event_log = EventLog(tempfile.mkdtemp(prefix="fuzz_http_") + "/log")
    server = SubscribeServer(event_log, LiveRing(1000, floor_time_us=event_log.hwm()))
    asyncio.run_coroutine_threadsafe(server.start("127.0.0.1", 0), loop).result(10)
    return server.port


def exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT_S) as sock:
        try:
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    return b"".join(chunks)


PORT = 0


def test_one_input(data: bytes) -> None:
    reply = exchange(PORT, data)  # socket.timeout propagates: a hang is a finding
    assert reply == b"" or reply.startswith(b"HTTP/1.1 "), reply[:100]
    assert exchange(PORT, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").endswith(b"Welcome to Jetstream")


if __name__ == "__main__":
    PORT = start_server()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
