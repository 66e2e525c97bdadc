"""Zero-copy answers: a response head and a file range written to a connection's socket by os.sendfile in a thread.

Owns: `FileSender`, a small pool of send threads (`--archive-send-threads`) and the rule that
bounds each one (`--archive-send-timeout`: a send that makes no progress for that long is given
up), and `send_range`, the blocking loop one thread runs on a duplicate of the socket's
descriptor: the head, then sendfile from the page cache straight into the socket (no copy
through Python, no event-loop work per chunk), waiting in poll() while the socket is full, and
then reading away what the client sent meanwhile (so the close that follows is a FIN, not a RST).
The thread owns the duplicate socket descriptor and the file descriptor and closes both, so
whatever the event loop does meanwhile (a shutdown closing the transport) can never make the
thread write to a reused descriptor.
It must never touch the transport or the event loop from the thread, never run on a transport
that still holds unsent bytes or is reading (the caller pauses reading and hands the socket
over empty), and never wait on a client without a deadline.
"""
from __future__ import annotations

import asyncio
import os
import select
import threading
import time
from concurrent.futures import ThreadPoolExecutor

SENDFILE_MAX_CALL = 8 << 20  # bytes asked of one sendfile call (the kernel sends what the socket takes)
STOP_CHECK_S = 0.5  # a thread waiting for room looks at the stop flags at least this often
DRAIN_MAX_BYTES = 1 << 20  # read away at most this much a client sent during its download before the close


class SendStalled(Exception):
    """The client took nothing for `stall_timeout_s`: the connection is given up."""


class SendStopped(Exception):
    """The sender closed (shutdown) or the request's task was cancelled mid-send."""


class FileShort(Exception):
    """The file ended before the range did: fewer bytes were sent than the head promised."""


def send_range(sock_fd: int, head: bytes, file_fd: int, offset: int, length: int, stall_timeout_s: float,
               stops: tuple[threading.Event, ...]) -> int:
    """Write `head`, then `length` bytes of `file_fd` from `offset`, to the non-blocking socket `sock_fd`.

    Blocking (run in a thread); closes both descriptors. Returns the file bytes sent; raises SendStalled,
    SendStopped, FileShort, or OSError when the client is gone (EPIPE, ECONNRESET).
    """
    try:
        poller = select.poll()
        poller.register(sock_fd, select.POLLOUT)
        progress_at = time.monotonic()
        view = memoryview(head)
        sent = 0
        while view or sent < length:
            if any(stop.is_set() for stop in stops):
                raise SendStopped
            try:
                if view:
                    written = os.write(sock_fd, view)
                    view = view[written:]
                else:
                    written = os.sendfile(sock_fd, file_fd, offset + sent, min(length - sent, SENDFILE_MAX_CALL))
                    if written == 0:
                        raise FileShort(f"file ended {length - sent} bytes before the range")
                    sent += written
                progress_at = time.monotonic()
                continue
            except BlockingIOError:
                pass
            idle = time.monotonic() - progress_at
            if idle >= stall_timeout_s:
                raise SendStalled(f"no progress for {idle:.1f}s with {length - sent} bytes left")
            poller.poll(min(stall_timeout_s - idle, STOP_CHECK_S) * 1000)  # errors show on the next write
        _discard_unread(sock_fd)
        return sent
    finally:
        os.close(sock_fd)
        os.close(file_fd)


def _discard_unread(sock_fd: int) -> None:
    """Read away what the client sent during the send (reading was paused): a socket closed with unread
    bytes resets the connection, and the client loses the answer's tail still in flight."""
    drained = 0
    try:
        while drained < DRAIN_MAX_BYTES:
            chunk = os.read(sock_fd, 65536)
            if not chunk:
                return
            drained += len(chunk)
    except OSError:  # BlockingIOError: nothing more has arrived
        return


class FileSender:
    """Up to `threads` sends at once, each given up after `stall_timeout_s` without progress.

    `available` says whether a send can start now; when it cannot (all threads busy, or no
    os.sendfile here) the caller streams the range through the transport instead, so a crowd of
    slow clients never queues behind the threads.
    """

    def __init__(self, threads: int, stall_timeout_s: float) -> None:
        self.threads = threads if hasattr(os, "sendfile") else 0
        self.stall_timeout_s = stall_timeout_s
        self.busy = 0
        self.sent_bytes = 0
        self._executor: ThreadPoolExecutor | None = None  # made at the first send: no threads when unused
        self._closing = threading.Event()

    @property
    def available(self) -> bool:
        return self.busy < self.threads and not self._closing.is_set()

    async def send(self, sock_fd: int, head: bytes, file_fd: int, offset: int, length: int) -> None:
        """Send on a duplicate of `sock_fd` (the caller's stays open and untouched); takes `file_fd` (closed
        here, even when this raises). Raises as send_range does; cancelling stops the thread within
        STOP_CHECK_S."""
        try:
            sock_dup = os.dup(sock_fd)
        except OSError:
            os.close(file_fd)
            raise
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="file-send")
        stop = threading.Event()
        self.busy += 1
        try:
            future = asyncio.get_running_loop().run_in_executor(
                self._executor, send_range, sock_dup, head, file_fd, offset, length, self.stall_timeout_s,
                (stop, self._closing))
        except BaseException:
            self.busy -= 1
            os.close(sock_dup)
            os.close(file_fd)
            raise
        try:
            self.sent_bytes += await asyncio.shield(future)
        except asyncio.CancelledError:
            stop.set()  # the thread closes its descriptors when it sees this
            raise
        finally:
            if future.done():
                self.busy -= 1
            else:
                future.add_done_callback(self._release)

    def _release(self, future: asyncio.Future) -> None:
        self.busy -= 1
        if not future.cancelled():
            future.exception()  # SendStopped, as asked: retrieved, so asyncio does not log it as lost

    def close(self) -> None:
        """Stop every send in flight (each thread ends within STOP_CHECK_S) and start no more."""
        self._closing.set()
        if self._executor is not None:
            self._executor.shutdown(wait=False)
