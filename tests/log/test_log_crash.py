"""Crash durability: kill -9 during appends loses nothing whose append() returned.

A child process appends batches as fast as it can and prints each batch number
after append() returns; the test SIGKILLs it mid-stream and reopens the log.
Each batch carries its number as the relay cursor, so the reopened log must
hold exactly the batches up to its cursor (events and cursor are one write),
and that cursor can be at most one ahead of the last batch the child reported.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from jetstream.log.store import EventLog

EVENTS_PER_BATCH = 16

CHILD = textwrap.dedent(
    """
    import sys
    from jetstream.events import Event
    from jetstream.log.store import EventLog

    path, first_batch, per_batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    event_log = EventLog(path)  # never closed: the parent kills us
    batch = first_batch
    while True:
        base = batch * per_batch
        events = [Event(base + i + 1, "did:plc:crash", 0, "app.bsky.feed.post",
                        b'{"batch":%d,"i":%d}' % (batch, i), b"z") for i in range(per_batch)]
        event_log.append(events, relay_cursor=batch)
        print(batch, flush=True)
        batch += 1
    """
)


def run_child_until_killed(path: str, first_batch: int, batches_to_see: int) -> int:
    """Start the appender, SIGKILL it once it has reported `batches_to_see` batches; last reported."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, path, str(first_batch), str(EVENTS_PER_BATCH)],
        stdout=subprocess.PIPE,
        text=True,
    )
    last_reported = None
    try:
        for _ in range(batches_to_see):
            line = child.stdout.readline()
            assert line, f"appender exited early with {child.wait()}"
            last_reported = int(line)
        os.kill(child.pid, signal.SIGKILL)
        # Lines already in the pipe were printed after their append() returned: they count too.
        for line in child.stdout:
            last_reported = int(line)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    return last_reported


def assert_log_holds_exactly_batches_through_cursor(event_log: EventLog, last_reported: int) -> None:
    cursor = event_log.relay_cursor()
    assert cursor in (last_reported, last_reported + 1)
    rows = event_log.read_after(-1, 10**9, compressed=False)
    expected_times = list(range(1, (cursor + 1) * EVENTS_PER_BATCH + 1))
    assert [row.time_us for row in rows] == expected_times
    assert event_log.hwm() == expected_times[-1]


def test_sigkill_during_appends_keeps_every_returned_batch_and_its_cursor(tmp_path):
    path = str(tmp_path / "log")
    last_reported = run_child_until_killed(path, first_batch=0, batches_to_see=200)
    with EventLog(path, create=False) as event_log:
        assert_log_holds_exactly_batches_through_cursor(event_log, last_reported)
        resume_from = event_log.relay_cursor() + 1
    # A restarted writer continues above the durable state and survives a second kill.
    last_reported = run_child_until_killed(path, first_batch=resume_from, batches_to_see=100)
    with EventLog(path, create=False) as event_log:
        assert_log_holds_exactly_batches_through_cursor(event_log, last_reported)
