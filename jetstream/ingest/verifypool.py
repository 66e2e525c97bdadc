"""Signature checks on other cores: the pool of verify processes behind the signature stage.

Owns: starting `--verify-processes` verify processes (jetstream/ingest/verify_worker.py), gathering
the commits the stage (sigcheck.SignatureGate) hands it into batches (one pipe message per event
loop turn or per BATCH_SIZE commits, never one per commit), spreading the batches over the
processes, handing each batch's verdicts back to the stage on the event loop, noticing a process
that died (EOF or a broken pipe), starting another and sending it the dead one's unanswered
batches, giving up after RESTART_LIMIT deaths in RESTART_WINDOW_S (the stage then verifies in the
loop, as with --verify-processes 0), and stopping every process at shutdown.
It must never decide anything about a commit (the stage applies verdicts, in relay order), never
block the event loop on a process (pipes are non-blocking, served by add_reader/add_writer), and
never leave a process behind: each exits at EOF on its stdin, which is closed at stop and by the
kernel if the daemon dies.

Why a small pool over pipes, not concurrent.futures.ProcessPoolExecutor + run_in_executor:
- the executor moves work and results through helper threads of this process; under a busy
  ingest loop those threads wait for the GIL (why a verify thread failed before), while a pipe
  read from the loop's own add_reader costs nothing between batches;
- one dead executor process breaks the whole executor and fails every pending future; here the
  dead process's batches are known, sent again, and the other processes carry on;
- processes are started with subprocess (exec of a fresh interpreter, as --workers does): no copy
  of the daemon's uvloop, RocksDB handles or threads ever runs (fork would), no __main__ is
  re-imported (multiprocessing's spawn), and no server process lingers (forkserver).
"""
from __future__ import annotations

import asyncio
import logging
import os
import pickle
import subprocess
import sys
import time
from collections import deque
from typing import Callable

from jetstream import metrics
from jetstream.ingest.verify_worker import LENGTH, KeyCache, encode_message, verdict_of

log = logging.getLogger(__name__)

BATCH_SIZE = 64  # commits per message at most: ~3-6 ms of work, ~20-40 kB
IN_FLIGHT_BATCHES = 2  # per process: one being checked while the next waits in its pipe
RESTART_LIMIT = 5  # deaths within RESTART_WINDOW_S; one more and the loop verifies instead
RESTART_WINDOW_S = 60.0
STOP_TIMEOUT_S = 2.0  # a process finishing its batch after EOF; then SIGKILL
READ_CHUNK = 1 << 20
# systemd's variables are the daemon's: a verify process must neither notify nor be watched.
_NOT_FOR_CHILDREN = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID")

Deliver = Callable[[list, list], None]  # (tags of a batch, their verdicts in the same order)


def default_processes() -> int:
    """`auto`: one per core this process may run on, less the ingest loop's, at least one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)


class Batch:
    """Commits sent as one message: the stage's tags, and the message to send again if need be."""

    __slots__ = ("batch_id", "tags", "commits", "message")

    def __init__(self, batch_id: int, tags: list, commits: list) -> None:
        self.batch_id = batch_id
        self.tags = tags
        self.commits = commits  # (block, repo, rev, curve, point)
        self.message = encode_message((batch_id, commits))


class VerifyProcess:
    """One verify process and the parent's side of its two pipes."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process
        self.pid = process.pid
        self.to_child = process.stdin.fileno()
        self.from_child = process.stdout.fileno()
        os.set_blocking(self.to_child, False)
        os.set_blocking(self.from_child, False)
        self.unsent = bytearray()  # what the pipe would not take yet
        self.received = bytearray()  # a partly read answer
        self.batches: dict[int, Batch] = {}  # sent, not yet answered
        self.commits = 0  # in those batches
        self.broken = False  # a write failed: no more batches; the loss is handled on the next turn
        self.lost = False

    def close_pipes(self) -> None:
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass


def spawn_verify_process() -> VerifyProcess:
    env = {name: value for name, value in os.environ.items() if name not in _NOT_FOR_CHILDREN}
    process = subprocess.Popen([sys.executable, "-m", "jetstream.ingest.verify_worker"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, env=env)
    return VerifyProcess(process)


def reap(process: subprocess.Popen, timeout_s: float = 0.5) -> int:
    """The exit status of a process whose pipe closed (it is exiting); killed if it lingers."""
    try:
        return process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


class VerifyPool:
    """Batches of commits out to verify processes, verdicts back to `deliver`; see the module docstring."""

    def __init__(self, processes: int, deliver: Deliver, *, batch_size: int = BATCH_SIZE,
                 in_flight_batches: int = IN_FLIGHT_BATCHES, clock: Callable[[], float] = time.monotonic) -> None:
        self.size = max(1, processes)
        self.deliver = deliver
        self.batch_size = max(1, batch_size)
        # Commits out at once (queued here or sent): beyond it the stage checks the head itself.
        self.capacity = self.size * self.batch_size * max(1, in_flight_batches)
        self.clock = clock
        self.usable = False  # started and not given up: the stage may submit
        self.outstanding = 0  # commits submitted and not yet answered
        self._processes: list[VerifyProcess] = []
        self._outbox_tags: list = []
        self._outbox_commits: list = []
        self._flush_handle: asyncio.Handle | None = None
        self._next_batch_id = 0
        self._deaths: deque[float] = deque()
        self._closing = False
        # Plain counters for tests and the bench (the prometheus ones are process-wide).
        self.restarts = self.resent_commits = self.batches_sent = 0

    # -- lifetime -----------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the processes (they import while the first batches wait in their pipes)."""
        self._loop = asyncio.get_running_loop()
        try:
            for _ in range(self.size):
                self._adopt(spawn_verify_process())
        except OSError as exc:
            log.error("event=verify_pool_start_failed error=%r action=verify_in_loop", str(exc)[:200])
            self._give_up("start_failed")
            return
        self.usable = True
        log.info("event=verify_pool_started processes=%d pids=%s batch_size=%d",
                 self.size, ",".join(str(pid) for pid in self.pids()), self.batch_size)

    def pids(self) -> list[int]:
        return [proc.pid for proc in self._processes if not proc.lost]

    async def close(self) -> None:
        """EOF to every process, wait for it to exit (SIGKILL after STOP_TIMEOUT_S). Unanswered work is dropped:
        the stage's held frames were never acknowledged, the relay sends them again after a restart."""
        self._closing = True
        self.usable = False
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        processes, self._processes = self._processes, []
        for proc in processes:
            self._detach(proc)
            proc.close_pipes()  # EOF: the process finishes its batch and exits
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc in processes:
            while proc.process.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            if proc.process.poll() is None:
                log.warning("event=verify_process_killed pid=%d reason=stop_timeout", proc.pid)
                proc.process.kill()
                proc.process.wait()
        metrics.VERIFY_PROCESSES.set(0)
        if processes:
            log.info("event=verify_pool_stopped processes=%d unanswered_commits=%d", len(processes), self.outstanding)

    # -- work in --------------------------------------------------------------------------------------
    @property
    def saturated(self) -> bool:
        return self.outstanding >= self.capacity

    def submit(self, tag, block: bytes, repo: str, rev: str, curve: str, point: bytes) -> None:
        """Queue one commit; its verdict reaches `deliver` with `tag` on a later loop turn."""
        self._outbox_tags.append(tag)
        self._outbox_commits.append((block, repo, rev, curve, point))
        self.outstanding += 1
        if len(self._outbox_commits) >= self.batch_size:
            self._send_outbox()
        elif self._flush_handle is None:
            # The rest of this loop turn's frames join the batch; it leaves at the turn's end.
            self._flush_handle = self._loop.call_soon(self._send_outbox)

    def _send_outbox(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._outbox_commits or not self._healthy():
            return  # no process to take it now: it goes with the next batch or after a restart
        batch = Batch(self._next_batch_id, self._outbox_tags, self._outbox_commits)
        self._next_batch_id += 1
        self._outbox_tags, self._outbox_commits = [], []
        self._assign(batch)

    def _healthy(self) -> list[VerifyProcess]:
        return [proc for proc in self._processes if not proc.broken and not proc.lost]

    def _assign(self, batch: Batch) -> None:
        """Send `batch` to the process with the least work out."""
        proc = min(self._healthy(), key=lambda candidate: candidate.commits)
        proc.batches[batch.batch_id] = batch
        proc.commits += len(batch.commits)
        self.batches_sent += 1
        self._write(proc, batch.message)

    def _write(self, proc: VerifyProcess, data: bytes) -> None:
        if proc.unsent:
            proc.unsent += data
            return
        try:
            written = os.write(proc.to_child, data)
        except BlockingIOError:
            written = 0
        except OSError:
            self._broken(proc)
            return
        if written < len(data):
            proc.unsent += data[written:]
            self._loop.add_writer(proc.to_child, self._on_writable, proc)

    def _on_writable(self, proc: VerifyProcess) -> None:
        try:
            written = os.write(proc.to_child, proc.unsent)
        except BlockingIOError:
            return
        except OSError:
            self._loop.remove_writer(proc.to_child)
            self._broken(proc)
            return
        del proc.unsent[:written]
        if not proc.unsent:
            self._loop.remove_writer(proc.to_child)

    def _broken(self, proc: VerifyProcess) -> None:
        # Handled on the next turn, not here: _write runs inside the stage's own calls, and a
        # restart delivers verdicts, which would re-enter the stage.
        proc.broken = True
        self._loop.call_soon(self._lost, proc, "write_failed")

    # -- verdicts back ------------------------------------------------------------------------------------
    def _on_readable(self, proc: VerifyProcess) -> None:
        try:
            data = os.read(proc.from_child, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._lost(proc, "eof")
            return
        proc.received += data
        self._take_answers(proc)

    def _take_answers(self, proc: VerifyProcess) -> None:
        received = proc.received
        while len(received) >= LENGTH.size:
            end = LENGTH.size + LENGTH.unpack_from(received)[0]
            if len(received) < end:
                return
            batch_id, verdicts = pickle.loads(received[LENGTH.size:end])
            del received[:end]
            batch = proc.batches.pop(batch_id, None)
            if batch is None:
                continue  # cannot happen: each batch is answered once, by the process it was sent to
            proc.commits -= len(batch.commits)
            self._answered(batch, verdicts, "pool")

    def _answered(self, batch: Batch, verdicts: list, where: str) -> None:
        self.outstanding -= len(batch.commits)
        metrics.VERIFY_CHECKS.labels(where).inc(len(verdicts))
        self.deliver(batch.tags, verdicts)

    # -- a process died ---------------------------------------------------------------------------------
    def _lost(self, proc: VerifyProcess, why: str) -> None:
        if proc.lost or self._closing:
            return
        proc.lost = True
        self._detach(proc)
        proc.close_pipes()
        returncode = reap(proc.process)
        self._processes.remove(proc)
        unanswered = list(proc.batches.values())
        self.restarts += 1
        metrics.VERIFY_PROCESS_RESTARTS.inc()
        now = self.clock()
        self._deaths.append(now)
        while self._deaths and now - self._deaths[0] > RESTART_WINDOW_S:
            self._deaths.popleft()
        log.warning("event=verify_process_died pid=%d returncode=%s reason=%s unanswered_batches=%d "
                    "unanswered_commits=%d restarts=%d", proc.pid, returncode, why, len(unanswered),
                    proc.commits, self.restarts)
        if len(self._deaths) > RESTART_LIMIT:
            self._give_up("restart_limit", unanswered)
            return
        try:
            self._adopt(spawn_verify_process())
        except OSError as exc:
            log.error("event=verify_process_spawn_failed error=%r", str(exc)[:200])
            self._give_up("spawn_failed", unanswered)
            return
        for batch in unanswered:
            self.resent_commits += len(batch.commits)
            self._assign(batch)
        if unanswered:
            log.info("event=verify_batches_resent batches=%d commits=%d to_pid=%d", len(unanswered),
                     sum(len(batch.commits) for batch in unanswered), self._processes[-1].pid)
        self._send_outbox()

    def _give_up(self, why: str, unanswered: list[Batch] = ()) -> None:
        """No more processes: every unanswered commit is checked here, the stage verifies in the loop."""
        self.usable = False
        log.error("event=verify_pool_given_up reason=%s restarts=%d action=verify_in_loop", why, self.restarts)
        work = list(unanswered)
        for proc in self._processes:
            proc.lost = True
            self._detach(proc)
            proc.close_pipes()
            proc.process.kill()
            proc.process.wait()
            work.extend(proc.batches.values())
        self._processes = []
        metrics.VERIFY_PROCESSES.set(0)
        if self._outbox_commits:
            work.append(Batch(-1, self._outbox_tags, self._outbox_commits))
            self._outbox_tags, self._outbox_commits = [], []
        keys = KeyCache()
        for batch in work:
            self._answered(batch, [verdict_of(keys, *commit) for commit in batch.commits], "loop")

    def _adopt(self, proc: VerifyProcess) -> None:
        self._processes.append(proc)
        self._loop.add_reader(proc.from_child, self._on_readable, proc)
        metrics.VERIFY_PROCESSES.set(len(self._processes))
        log.info("event=verify_process_started pid=%d", proc.pid)

    def _detach(self, proc: VerifyProcess) -> None:
        self._loop.remove_reader(proc.from_child)
        if proc.unsent:
            self._loop.remove_writer(proc.to_child)
            proc.unsent.clear()
