"""The /status page in a real browser: Debian's headless Chromium against a real daemon.

The daemon ingests the recorded corpus from relay-sim over a websocket; Chromium loads
/status, runs its script (polling /healthz and /stats/collections), and the test reads the
numbers off the rendered DOM and checks them against what those two routes answer: health,
version, uptime, when it was updated, rates over the time really covered, identity/account
totals, and a degraded daemon's problems. A screenshot of a page fed by a live stream is kept
in build/test-artifacts/status.png.

Needs the `chromium` apt package (.ci/run installs it); without it the tests are skipped
with that reason, except under CI=true, where they fail.
"""
from __future__ import annotations

import asyncio
import os
import re
import shutil
import time
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path

import pytest

from jetstream import __version__
from jetstream.relaysim.server import FileSource, RelaySim
from tests.server.server_helpers import settle
from tests.server.test_server_instance_and_stats import CorpusDaemon
from tests.wsclient import connect

pytestmark = pytest.mark.timeout(120)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts"
# Headless, as root, offline: no sandbox (root), no GPU, no background traffic, a fresh profile.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage")

if CHROMIUM is None:
    if os.environ.get("CI") == "true":
        raise RuntimeError("chromium is not installed; .ci/run installs the apt package")
    pytestmark = [pytestmark, pytest.mark.skip(reason="needs Debian's chromium (apt-get install chromium)")]


async def run_chromium(tmp_path, url: str, *args: str, budget_ms: int = 6000) -> str:
    """Load `url` headless with `budget_ms` of virtual time for its script; return stdout."""
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    process = await asyncio.create_subprocess_exec(
        CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", *args, url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), 90)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode == 0, stderr.decode(errors="replace")[-2000:]
    return stdout.decode()


class _PageReader(HTMLParser):
    """Text (and attributes) of every element with an id, the body's data-polls, and the rows of
    the collections table (data-collection), the kinds table (data-kind) and the problems list
    (data-problem), each as {cell or span class: text}."""

    ROW_KEYS = {"tr": ("data-collection", "data-kind"), "li": ("data-problem",)}

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, str] = {}
        self.attrs_by_id: dict[str, dict] = {}
        self.rows: dict[str, dict[str, str]] = {}
        self.kind_rows: dict[str, dict[str, str]] = {}
        self.problems: dict[str, dict[str, str]] = {}
        self.polls = 0
        self._stack: list[tuple[str | None, str | None]] = []  # (id, cell class)
        self._row: dict[str, str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "body":
            self.polls = int(attrs.get("data-polls", "0"))
        for key in self.ROW_KEYS.get(tag, ()):
            if key in attrs:
                table = {"data-collection": self.rows, "data-kind": self.kind_rows, "data-problem": self.problems}[key]
                self._row = table[attrs[key]] = {}
        self._stack.append((attrs.get("id"), attrs.get("class") if tag in ("td", "span") else None))
        if attrs.get("id"):
            self.by_id[attrs["id"]] = ""
            self.attrs_by_id[attrs["id"]] = attrs

    def handle_endtag(self, tag):
        if self._stack:
            self._stack.pop()
        if tag in self.ROW_KEYS:
            self._row = None

    def handle_data(self, data):
        for element_id, _cell in self._stack:
            if element_id:
                self.by_id[element_id] += data
        if self._row is not None and self._stack and self._stack[-1][1]:
            self._row[self._stack[-1][1]] = data


def read_page(dom: str) -> _PageReader:
    reader = _PageReader()
    reader.feed(dom)
    return reader


def seconds_of(duration: str) -> int:
    """The page's uptime ("1h 02m 05s") in seconds."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+)([dhms])", duration)
    assert parts, duration
    return sum(int(number) * units[unit] for number, unit in parts)


async def test_status_page_shows_what_healthz_and_stats_collections_say(tmp_path, corpus_dir, corpus_frames):
    async with CorpusDaemon(tmp_path / "data", corpus_dir, corpus_frames) as running:
        await running.ingested()
        transport, _ = await connect(f"ws://127.0.0.1:{running.port}/subscribe")
        await settle(lambda: running.daemon.server.connected_count == 1)
        _, health_before = await running.get_json("/healthz")
        _, stats_before = await running.get_json("/stats/collections")
        wall_before = time.time()
        dom = await run_chromium(tmp_path, f"http://127.0.0.1:{running.port}/status", "--dump-dom")
        wall_after = time.time()
        _, health = await running.get_json("/healthz")
        _, stats = await running.get_json("/stats/collections")
        transport.disconnect()
    page = read_page(dom)
    assert page.polls >= 2, "the page's script did not poll"
    assert page.by_id["error"] == ""
    # health, version, uptime and when the page last heard from the daemon
    assert page.by_id["health-status"] == health["status"] == "ok"
    assert "hidden" in page.attrs_by_id["problems"] and page.problems == {}
    assert page.by_id["version"] == health["version"] == __version__
    assert health_before["uptime_s"] - 1 <= seconds_of(page.by_id["uptime"]) <= health["uptime_s"]
    updated = datetime.fromisoformat(page.by_id["updated"].replace("Z", "+00:00")).timestamp()
    assert wall_before - 1 <= updated <= wall_after + 10, "updated at: the last poll (virtual time runs ahead)"
    # The corpus was stored seconds ago: the minute's count over the seconds it really covers,
    # not over 60 (which would show a tenth of the rate or less).
    minute_count = stats["totals"]["minute"]["all"]
    assert minute_count == stats_before["totals"]["minute"]["all"] > 0
    assert stats_before["covered_seconds"]["minute"] < 30
    rate = float(page.by_id["events-per-s-minute"])
    assert minute_count / stats["covered_seconds"]["minute"] - 0.1 <= rate
    assert rate <= minute_count / stats_before["covered_seconds"]["minute"] + 0.1
    # identity and account totals (the corpus holds both)
    for kind in ("identity", "account", "sync"):
        for window in ("minute", "hour", "retention"):
            assert page.kind_rows[kind][window] == str(stats["totals"][window][kind]), (kind, window)
    assert int(page.kind_rows["identity"]["retention"]) > 0 and int(page.kind_rows["account"]["retention"]) > 0
    assert page.by_id["instance"] == health["instance"]
    assert page.by_id["subscribers"] == str(health["subscribers"]) == "1"
    assert page.by_id["relay-state"] == "connected" and health["relay"]["connected"] is True
    assert page.by_id["relay-cursor"] == str(health["relay"]["cursor"])
    # The lag grows with the wall clock while the (replayed-out) relay sends nothing: /healthz is read after the page.
    assert -0.01 <= health["relay"]["lag_seconds"] - float(page.by_id["relay-lag"]) < 30
    assert page.by_id["oldest"] == str(health["oldest_time_us"])
    assert page.by_id["newest"] == str(health["newest_time_us"])
    assert set(page.rows) == set(stats["collections"])
    for collection, row in page.rows.items():
        counted = stats["collections"][collection]
        for window in ("minute", "hour", "retention"):
            assert row[window] == str(sum(counted[window].values())), (collection, window)
        for operation in ("create", "update", "delete"):
            assert row[operation] == str(counted["retention"][operation]), (collection, operation)
    # ranked by the last minute's events: the busiest collection first
    assert next(iter(page.rows)) == max(stats["collections"], key=lambda c: sum(stats["collections"][c]["minute"].values()))


async def test_status_page_shows_a_degraded_daemons_problems(tmp_path, corpus_dir, corpus_frames):
    async with CorpusDaemon(tmp_path / "data", corpus_dir, corpus_frames) as running:
        await running.ingested()
        running.daemon.problems.raise_problem("test_kind", "the disk said no (3 times)", "free some space")
        status, health = await running.get_json("/healthz")
        dom = await run_chromium(tmp_path, f"http://127.0.0.1:{running.port}/status", "--dump-dom")
        running.daemon.problems.clear("test_kind")
    assert status == 503 and health["status"] == "degraded"
    page = read_page(dom)
    assert page.polls >= 2 and page.by_id["error"] == ""
    assert page.by_id["health-status"] == "degraded"
    assert "hidden" not in page.attrs_by_id["problems"], "the problems are shown, not tucked away"
    assert set(page.problems) == {"test_kind"}
    shown = page.problems["test_kind"]
    assert shown["kind"] == "test_kind" and "the disk said no (3 times)" in shown["detail"]
    assert "free some space" in shown["action"] and shown["count"].startswith(" (1×")
    # the rest of the page still works
    assert page.by_id["instance"] == health["instance"] and page.by_id["version"] == __version__


async def test_status_page_plots_a_live_stream_and_keeps_a_screenshot(tmp_path, corpus_dir, corpus_frames):
    relay = RelaySim(FileSource(corpus_dir / "frames.bin.zst", loops=0), rate=400)  # the corpus, looped live
    await relay.start("127.0.0.1", 0)
    try:
        async with CorpusDaemon(tmp_path / "data", corpus_dir, corpus_frames, "--ws-url", relay.url) as running:
            await settle(lambda: running.daemon.event_log.hwm() > 0, timeout=30)
            url = f"http://127.0.0.1:{running.port}/status"
            dom = await run_chromium(tmp_path, url, "--dump-dom")
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            screenshot = ARTIFACTS / "status.png"
            screenshot.unlink(missing_ok=True)
            await run_chromium(tmp_path, url, "--window-size=1000,900", f"--screenshot={screenshot}")
            _, health = await running.get_json("/healthz")
    finally:
        await relay.close()
    page = read_page(dom)
    assert page.polls >= 2 and page.by_id["instance"] == health["instance"]
    assert float(page.by_id["events-per-s"]) > 0
    assert len(re.findall(r"<polyline", dom)) >= 2  # all events + at least one collection
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 10_000
