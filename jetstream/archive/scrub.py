"""The scrub: every sealed segment of an archive on this machine's disk read back and checked whole, pass after pass.

Owns: `ArchiveScrub`, one per node (the main process, beside the manifest it reports to): a pass over
every listed segment, oldest first, started once per `--archive-scrub-interval`, reading at most
`--archive-scrub-rate` bytes a second in a thread, with the checks serving makes
(integrity.check_whole: header, the blocks' tiling, every block's length prefix and zstd content
checksum, the footer under the header's checksum); the first pass after a start waits
min(interval, START_DELAY_S). Serving checks a version's bytes once and then
trusts them; a byte that rots in place later (disk corruption: size and mtime unchanged) would be
served and redirected to for ever. The scrub reads the same version again, so such a segment is
refused (`ArchiveService.refuse`: `archive_segment_corrupt` on /healthz, unlisted, and shared with
the node's other processes) instead. A version it checks whole counts as checked for serving too
(`--archive-redirect` needs that). Where a pass stands is saved in `<data-dir>/archive/checked/scrub.state`,
so a restart resumes it instead of starting over (and a node restarted more often than a pass
lasts still reaches its newest segments).
It must never change or move a segment file, never hold the event loop (reads run in a thread,
one segment at a time), never read faster than the rate, and never run against an object store:
there every node would download the whole archive (egress, on every node), the store keeps its own
checksums, and serving still checks every byte it sends; `jetstream archive verify URL` sweeps one
by hand.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from typing import Callable

from jetstream import metrics
from jetstream.archive.format import SegmentError
from jetstream.archive.integrity import check_whole
from jetstream.archive.store import StoreError, file_version

log = logging.getLogger(__name__)

STATE_FILE = "scrub.state"  # in the checked-versions directory, where every *.json is a process's list
READY_POLL_S = 0.5  # waiting for the manifest's first listing
# The first pass after a start waits this long (or the interval, when shorter): a start is busy enough
# (the listing verifies every new segment, the log catches up with the relay, clients reconnect).
START_DELAY_S = 600.0
MIN_PAUSE_S = 1.0  # between two passes, however short the interval
SLEEP_SLICE_S = 0.25  # a throttled read sleeps in slices, so a stop is seen within this


class ScrubStopped(Exception):
    """The daemon is stopping: the segment being read is left for the next pass."""


class Pace:
    """The rate limit and the stop, called by check_whole after each region read (in the scrub's thread)."""

    def __init__(self, rate_bytes_per_s: float, stopping: threading.Event, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate = float(rate_bytes_per_s)
        self.stopping = stopping
        self.clock = clock
        self.sleep = sleep
        self.started = clock()
        self.bytes = 0

    def __call__(self, nbytes: int) -> None:
        self.bytes += nbytes
        while True:
            if self.stopping.is_set():
                raise ScrubStopped()
            ahead = self.bytes / self.rate - (self.clock() - self.started)  # seconds read ahead of the rate
            if ahead <= 0:
                return
            self.sleep(min(ahead, SLEEP_SLICE_S))


def scrub_segment(summary, blocks, pace: Pace) -> tuple[str, str]:
    """Read one listed segment version whole and check it: ("ok", ""), ("damaged", reason), or
    ("skipped", why) when the file is gone or no longer the listed version (the manifest lists
    again what is there now and verifies it). Blocking: run it in a thread."""
    try:
        fd = os.open(summary.path, os.O_RDONLY)
    except FileNotFoundError:
        return "skipped", "gone (retention, or moved away)"
    except OSError as exc:
        return "damaged", f"cannot be opened: {exc}"
    try:
        st = os.fstat(fd)
        if file_version(st) != summary.version:
            return "skipped", "changed since it was listed"
        check_whole(fd, summary, blocks, pace)
    except SegmentError as exc:
        return "damaged", str(exc) or type(exc).__name__
    except ScrubStopped:
        raise
    except OSError as exc:  # EIO: the disk cannot read these bytes back
        return "damaged", f"read failed: {exc}"
    finally:
        os.close(fd)
    return "ok", ""


class ArchiveScrub:
    """Passes over the listed segments of one ArchiveService whose store is a local directory."""

    def __init__(self, service, interval_s: float, rate_bytes_per_s: int, state_dir: str,
                 start_delay_s: float | None = None, wall_clock: Callable[[], float] = time.time,
                 own_service: bool = False) -> None:
        self.service = service
        self.interval_s = interval_s
        self.start_delay_s = min(interval_s, START_DELAY_S) if start_delay_s is None else start_delay_s
        self.rate = rate_bytes_per_s
        self.state_path = os.path.join(state_dir, STATE_FILE)
        self.location = service.settings.directory
        self.wall_clock = wall_clock
        self._stopping = threading.Event()
        self.passes = 0
        self.segments = {"ok": 0, "damaged": 0, "skipped": 0}
        self.bytes = 0
        self.pass_started: float | None = None  # wall seconds: the pass under way, or the last one
        self.last_pass_finished: float | None = None
        self.position = -1  # the index of the last segment this pass has read
        self.own_service = own_service  # `service` was made for the scrub alone: its run() is the caller's

    def report(self) -> dict:
        """/healthz's `archive_scrub`."""
        return {"interval_s": self.interval_s, "rate_bytes_per_s": self.rate, "passes": self.passes,
                "segments": dict(self.segments), "bytes": self.bytes,
                "pass_started": self.pass_started, "last_pass_finished": self.last_pass_finished,
                "position": self.position if self.position >= 0 else None}

    async def run(self) -> None:
        self._load_state()
        try:
            await asyncio.sleep(self.start_delay_s)
            while not self.service.ready:
                await asyncio.sleep(READY_POLL_S)
            while True:
                await asyncio.sleep(self._wait_before_pass())
                await self.scrub_pass()
        finally:
            self._stopping.set()  # a cancelled run: the thread's read stops at its next region

    def _wait_before_pass(self) -> float:
        """0 when a pass is under way (resumed) or due; else until the last pass's start + the interval."""
        if self.pass_started is None or self.position >= 0:
            return 0.0
        due = self.pass_started + self.interval_s
        return max(MIN_PAUSE_S, due - self.wall_clock()) if self.last_pass_finished is not None else 0.0

    async def scrub_pass(self) -> None:
        """Read every segment listed above the saved position, oldest first; then the pass is done."""
        if self.position < 0:
            self.pass_started = self.wall_clock()
            log.info("event=archive_scrub_pass_started location=%s segments=%d rate_bytes_per_s=%d",
                     self.location, len(self.service.manifest.segments), self.rate)
        before, read_before = dict(self.segments), self.bytes  # this pass's counts: the totals' growth
        started = time.monotonic()
        while True:
            summary = next((s for s in self.service.manifest.segments if s.index > self.position), None)
            if summary is None:
                break
            await self._scrub_one(summary)
            self.position = summary.index
            await asyncio.to_thread(self._save_state)
        self.passes += 1
        self.position = -1
        self.last_pass_finished = self.wall_clock()
        metrics.ARCHIVE_SCRUB_PASSES.inc()
        metrics.ARCHIVE_SCRUB_LAST_PASS.set(self.last_pass_finished)
        await asyncio.to_thread(self._save_state)
        counts = {outcome: total - before[outcome] for outcome, total in self.segments.items()}
        log.info("event=archive_scrub_pass_done location=%s ok=%d damaged=%d skipped=%d bytes=%d seconds=%.1f",
                 self.location, counts["ok"], counts["damaged"], counts["skipped"], self.bytes - read_before,
                 time.monotonic() - started)

    async def _scrub_one(self, summary) -> None:
        service = self.service
        try:
            blocks = await service.footer_blocks(summary)
        except SegmentError as exc:
            outcome, detail = "damaged", f"footer: {exc}"
        except (StoreError, OSError) as exc:
            outcome, detail = "skipped", f"footer unreadable: {exc}"
        else:
            pace = Pace(self.rate, self._stopping)
            try:
                outcome, detail = await asyncio.to_thread(scrub_segment, summary, blocks, pace)
            finally:
                self.bytes += pace.bytes
                metrics.ARCHIVE_SCRUB_BYTES.inc(pace.bytes)
        self.segments[outcome] += 1
        metrics.ARCHIVE_SCRUB_SEGMENTS.labels(outcome).inc()
        if outcome == "ok":
            service.integrity.mark_whole(summary)
        elif outcome == "damaged":
            log.error("event=archive_scrub_damage name=%s reason=%r", summary.name, detail)
            if service.manifest.get(summary.index) is summary:  # still listed as this version: refuse it
                service.refuse(summary, f"scrub: {detail}")
        else:
            log.info("event=archive_scrub_skipped name=%s reason=%r", summary.name, detail)

    # -- where a pass stands, across restarts ----------------------------------------------------

    def _load_state(self) -> None:
        try:
            with open(self.state_path, "rb") as handle:
                state = json.loads(handle.read())
            if state.get("location") != self.location:
                return
            self.pass_started = _number(state.get("pass_started"))
            self.last_pass_finished = _number(state.get("last_pass_finished"))
            self.position = int(state.get("position", -1))
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, AttributeError) as exc:  # torn or foreign: start a pass afresh
            log.warning("event=archive_scrub_state_unreadable path=%s error=%r", self.state_path, str(exc)[:200])
            self.pass_started = self.last_pass_finished = None
            self.position = -1
            return
        if self.position >= 0:
            log.info("event=archive_scrub_resumed after_index=%d pass_started=%s", self.position, self.pass_started)

    def _save_state(self) -> None:
        """Atomic rename, no fsync: losing it costs reading some segments again."""
        state = {"location": self.location, "pass_started": self.pass_started,
                 "last_pass_finished": self.last_pass_finished, "position": self.position}
        try:
            os.makedirs(os.path.dirname(self.state_path), exist_ok=True)
            with open(self.state_path + ".tmp", "w") as handle:
                json.dump(state, handle)
            os.replace(self.state_path + ".tmp", self.state_path)
        except OSError as exc:
            log.warning("event=archive_scrub_state_not_saved path=%s error=%r", self.state_path, str(exc)[:200])


def _number(value) -> float | None:
    return None if value is None else float(value)


def archive_scrub(cfg, service, problems=None) -> ArchiveScrub | None:
    """The scrub `--archive-scrub-interval` asks for over `service`'s store; None when off, or when the
    store is not on this machine's disk (an object store: see the module's docstring).

    `service` None (the --workers main process, which serves nothing): a service of its own is made,
    to list and refuse for the scrub alone (`own_service`: the caller runs its `run()` too); its
    refusals reach the workers through the checked-versions files like any process's."""
    if not cfg.archive or cfg.archive_scrub_interval <= 0:
        return None
    own_service = service is None
    if own_service:
        from jetstream.archive.xrpc import ArchiveService, ArchiveSettings

        service = ArchiveService(ArchiveSettings.from_config(cfg, "main"), problems)
    if service.remote:
        log.info("event=archive_scrub_off reason=object_store location=%s", service.settings.directory)
        return None
    return ArchiveScrub(service, cfg.archive_scrub_interval, cfg.archive_scrub_rate, service.settings.checked_dir,
                        own_service=own_service)
