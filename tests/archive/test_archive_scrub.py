"""The archive scrub (jetstream/archive/scrub.py): bytes that rot on disk after they were checked are found.

Serving checks a segment version's bytes once and then trusts them, so a byte that changes in place
later, with the file's size and mtime unchanged (silent disk damage), would be served for ever. The
scrub reads every sealed segment again at a bounded rate. Real segment files, a real ArchiveService
and real `jetstream serve` processes (one process, and --workers 2 with clients steered to each
worker): the damage is found, refused everywhere (500, never the bytes; unlisted; unplanned;
`archive_segment_corrupt`), and a restored file is served again. A pass resumes where it stopped.
"""
from __future__ import annotations

import asyncio
import http.client
import json
import os
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from jetstream.archive.format import CorruptSegment
from jetstream.archive.integrity import check_whole
from jetstream.archive.manifest import Manifest
from jetstream.archive.scrub import STATE_FILE, ArchiveScrub, Pace, ScrubStopped
from jetstream.archive.store import open_store
from jetstream.archive.xrpc import ArchiveService, ArchiveSettings
from tests.archive.serve_helpers import Serve, build_archive, corpus_archive_events
from tests.archive.test_serve_http import SEG
from tests.archive.test_serve_integrity import (
    NAMES,
    corrupt_detail,
    flipped,
    listed,
    mid_block_offset,
    refused_and_reported,
)
from tests.archive.test_store_s3 import wait_for
from tests.ports import free_port
from tests.workers.workers_helpers import address_for_worker

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def events():
    return corpus_archive_events()


def listed_segments(directory):
    manifest = Manifest(open_store(str(directory)))
    manifest.scan()
    return manifest, list(manifest.segments)


def rot_in_place(path: Path, offset: int) -> bytes:
    """Flip one byte, then put the mtime back: what silent disk damage leaves (same size, same mtime)."""
    original = path.read_bytes()
    st = path.stat()
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(bytes([original[offset] ^ 0x5A]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_size == st.st_size
    return original


# -- the check and the pace -----------------------------------------------------------------------

def test_check_whole_reads_every_byte_once_and_names_the_first_damage(events, tmp_path):
    paths = [Path(p) for p in build_archive(tmp_path / "a", events, segments=1, block_events=8)]
    manifest, (summary,) = listed_segments(tmp_path / "a")
    blocks = manifest.footer(summary).blocks
    data = paths[0].read_bytes()
    paced: list[int] = []
    fd = os.open(paths[0], os.O_RDONLY)
    try:
        assert check_whole(fd, summary, blocks, paced.append) == len(data)
    finally:
        os.close(fd)
    assert sum(paced) == len(data) and len(paced) == len(blocks) + 2, "header, each block, footer"

    footer_offset = summary.header.footer_offset
    for offset, damage in ((mid_block_offset(paths[0]), "block 2"), (footer_offset + 3, "checksum mismatch"),
                           (100, "header differs")):
        paths[0].write_bytes(flipped(data, offset))
        fd = os.open(paths[0], os.O_RDONLY)
        try:
            with pytest.raises(CorruptSegment, match=damage):
                check_whole(fd, summary, blocks)
        finally:
            os.close(fd)
    paths[0].write_bytes(data[:footer_offset - 10])
    fd = os.open(paths[0], os.O_RDONLY)
    try:
        with pytest.raises(CorruptSegment):
            check_whole(fd, summary, blocks)
    finally:
        os.close(fd)


def test_the_pace_holds_the_rate_and_a_stop_ends_a_throttled_read():
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    stopping = threading.Event()
    pace = Pace(1000, stopping, clock=lambda: now[0], sleep=sleep)
    pace(500)
    assert sum(slept) == pytest.approx(0.5)
    pace(1500)
    assert sum(slept) == pytest.approx(2.0), "2,000 bytes at 1,000 bytes/s: 2 s"
    assert max(slept) <= 0.25, "in slices, so a stop is seen"
    now[0] += 10  # behind the rate: no sleep
    before = len(slept)
    pace(100)
    assert len(slept) == before

    def stop_while_sleeping(seconds: float) -> None:
        sleep(seconds)
        stopping.set()

    pace = Pace(1000, stopping, clock=lambda: now[0], sleep=stop_while_sleeping)
    with pytest.raises(ScrubStopped):
        pace(10_000)  # 10 s of reading at this rate: stopped after one slice
    assert now[0] - 12.0 < 0.3


# -- a pass over a real ArchiveService --------------------------------------------------------------

def test_a_pass_resumes_where_it_stopped_and_leaves_its_segments_checked_for_serving(events, tmp_path):
    directory = tmp_path / "archive"
    build_archive(directory, events, segments=3, block_events=8)
    checked = tmp_path / "checked"
    checked.mkdir()
    # A pass that read seg 0 before the process stopped.
    (checked / STATE_FILE).write_text(json.dumps({"location": str(directory), "pass_started": time.time() - 60,
                                                  "last_pass_finished": None, "position": 0}))

    async def scenario():
        service = ArchiveService(ArchiveSettings(str(directory), checked_dir=str(checked)))
        scrub = ArchiveScrub(service, 2.0, 1 << 30, str(checked), start_delay_s=0)
        manifest_task = asyncio.ensure_future(service.run())
        scrub_task = asyncio.ensure_future(scrub.run())
        try:
            deadline = time.monotonic() + 30
            while scrub.passes < 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            first = dict(scrub.segments)
            complete = [service.integrity.complete(s) for s in service.manifest.segments]
            # The next pass is due 2 s after the resumed one started (a minute ago): after the pause between passes.
            while scrub.passes < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return first, complete, dict(scrub.segments), scrub.report()
        finally:
            scrub_task.cancel()
            manifest_task.cancel()
            await asyncio.gather(scrub_task, manifest_task, return_exceptions=True)

    first, complete, second, report = asyncio.run(scenario())
    assert first == {"ok": 2, "damaged": 0, "skipped": 0}, "the resumed pass read seg 1 and seg 2 only"
    assert complete == [False, True, True], "what the scrub read whole is checked for serving (redirects)"
    assert second == {"ok": 5, "damaged": 0, "skipped": 0}, "the next pass read all three"
    assert report["passes"] == 2 and report["position"] is None
    state = json.loads((checked / STATE_FILE).read_text())
    assert state["position"] == -1 and state["last_pass_finished"] >= state["pass_started"]


# -- `jetstream serve` --------------------------------------------------------------------------------

def scrub_report(server: Serve) -> dict:
    return server.healthz().get("archive_scrub") or {}


def test_bytes_that_rot_after_serving_checked_them_are_found_refused_and_a_restored_file_served(events, tmp_path):
    data_dir = tmp_path / "data"
    paths = [Path(p) for p in build_archive(data_dir / "archive", events, segments=3, block_events=8)]
    metrics_port = free_port()
    server = Serve(data_dir, "--archive-scrub-interval", "2s", "--metrics-listen-addr", f"127.0.0.1:{metrics_port}")
    try:
        server.wait_ready()
        assert server.get(SEG + NAMES[1])[0] == 200, "served whole: every byte of this version checked"
        wait_for(lambda: scrub_report(server).get("passes", 0) >= 1, timeout=60)
        segments = scrub_report(server)["segments"]
        assert segments["ok"] >= 3 and segments["damaged"] == 0 and segments["skipped"] == 0
        assert corrupt_detail(server) == ""

        original = rot_in_place(paths[1], mid_block_offset(paths[1]))
        wait_for(lambda: NAMES[1] in corrupt_detail(server), timeout=60)
        refused_and_reported(server, NAMES[1], original)
        assert "scrub: block 2" in corrupt_detail(server)
        assert f"event=archive_scrub_damage name={NAMES[1]}" in server.logs()
        assert scrub_report(server)["segments"]["damaged"] == 1
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:  # noqa: S310
            scraped = response.read().decode()
        assert 'jetstream_archive_scrub_segments_total{outcome="damaged"} 1.0' in scraped
        assert "jetstream_archive_scrub_passes_total" in scraped and "jetstream_archive_scrub_bytes_total" in scraped
        assert listed(server) == [NAMES[0], NAMES[2]]

        paths[1].write_bytes(original)  # the operator restores a good copy: a new version
        wait_for(lambda: listed(server) == NAMES, timeout=60)
        status, _, body = server.get(SEG + NAMES[1])
        assert status == 200 and body == original
        wait_for(lambda: NAMES[1] not in corrupt_detail(server), timeout=30)
    finally:
        server.stop()


def get_from(port: int, path: str, source_ip: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source_ip, 0))
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def whole_in(checked_file: Path, name: str) -> bool:
    try:
        return any(entry[0] == name for entry in json.loads(checked_file.read_text())["versions"])
    except (OSError, ValueError, KeyError):
        return False


def test_with_workers_what_the_scrub_refuses_no_worker_serves_even_one_that_trusted_the_bytes(events, tmp_path):
    """Each worker serves from its own trust: one that checked a version whole sends it without a
    look. The main process's scrub finds the rot; every worker must refuse it too."""
    data_dir = tmp_path / "data"
    paths = [Path(p) for p in build_archive(data_dir / "archive", events, segments=3, block_events=8)]
    server = Serve(data_dir, "--workers", "2", "--archive-scrub-interval", "3s")
    sources = [address_for_worker(w, 2) for w in range(2)]
    checked = data_dir / "archive" / "checked"
    try:
        server.wait_ready()
        for source in sources:
            wait_for(lambda source=source: get_from(server.port, SEG + NAMES[1], source)[0] != 503, timeout=60)
            status, body = get_from(server.port, SEG + NAMES[1], source)
            assert status == 200 and body == paths[1].read_bytes()
        wait_for(lambda: all(whole_in(checked / f"worker-{w}.json", NAMES[1]) for w in range(2)), timeout=30)

        original = rot_in_place(paths[1], mid_block_offset(paths[1]))
        wait_for(lambda: f"event=archive_scrub_damage name={NAMES[1]}" in server.logs(), timeout=60)
        wait_for(lambda: all(get_from(server.port, SEG + NAMES[1], s)[0] == 500 for s in sources), timeout=30)
        for source in sources * 3:
            status, body = get_from(server.port, SEG + NAMES[1], source)
            assert status == 500 and original[:256] not in body, source
        wait_for(lambda: NAMES[1] in corrupt_detail(server), timeout=30)  # the main process's problem, shown
    finally:
        server.stop()
