"""`jetstream inspect DATA_DIR` on a populated log, beside a running daemon and after it."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from jetstream.dictionary import active_dictionary, dictionary_id
from jetstream.inspect import InspectError, inspect_data_dir, iso_date
from jetstream.log.store import EventLog
from tests.client.test_client_kit import corpus_seqs, ingested_daemon, logged_payloads, time_us_of

pytestmark = pytest.mark.timeout(90)
LEGACY_DICTIONARY_ID = 1612007021


def run_inspect_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jetstream.cli", "inspect", *args],
                          capture_output=True, timeout=60)


async def test_inspect_reads_a_running_daemons_log_without_its_lock(tmp_path, corpus_dir, corpus_frames):
    dictionary = str(corpus_dir / "legacy_subscribe.zdict")
    relay, daemon = await ingested_daemon(tmp_path, corpus_dir, corpus_frames,
                                          extra=("--zstd-dictionary-path", dictionary))
    stored = logged_payloads(daemon)
    try:
        summary = inspect_data_dir(tmp_path / "data", exact=True)
        hwm, relay_cursor = daemon.event_log.hwm(), daemon.event_log.relay_cursor()
    finally:
        await daemon.stop()
        await relay.close()
    assert summary.events_exact == len(stored) == 152
    assert summary.oldest_time_us == time_us_of(stored[0])
    assert summary.newest_time_us == time_us_of(stored[-1]) == hwm == summary.hwm_time_us
    assert summary.relay_cursor == relay_cursor == corpus_seqs(corpus_frames)[1]
    assert summary.zstd_dictionary_id == LEGACY_DICTIONARY_ID
    assert summary.size_bytes > sum(map(len, stored)) // 10


async def test_inspect_cli_prints_text_and_json_after_the_daemon_stopped(tmp_path, corpus_dir, corpus_frames):
    relay, daemon = await ingested_daemon(tmp_path, corpus_dir, corpus_frames)
    await daemon.stop()
    await relay.close()
    data_dir = str(tmp_path / "data")
    with EventLog(data_dir, create=False) as event_log:
        rows = event_log.read_after(0, 1000, False)
        relay_cursor = event_log.relay_cursor()
    text = await asyncio.to_thread(run_inspect_cli, data_dir, "--exact")
    as_json = await asyncio.to_thread(run_inspect_cli, data_dir, "--json")
    assert text.returncode == 0 and as_json.returncode == 0, text.stderr + as_json.stderr
    lines = text.stdout.decode().splitlines()
    assert f"events:             {len(rows)}" in lines
    assert f"oldest time_us:     {rows[0].time_us} ({iso_date(rows[0].time_us)})" in lines
    assert f"relay cursor:       {relay_cursor}" in lines
    assert f"zstd dictionary id: {dictionary_id(active_dictionary(''))}" in lines
    summary = json.loads(as_json.stdout)
    assert summary["newest_time_us"] == rows[-1].time_us and summary["events_exact"] is None
    assert summary["events_estimate"] > 0


def test_inspect_refuses_a_directory_that_is_not_an_event_log(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InspectError, match="no RocksDB"):
        inspect_data_dir(tmp_path)
    result = run_inspect_cli(str(tmp_path / "missing"))
    assert result.returncode == 1 and b"jetstream inspect: error:" in result.stderr


def test_inspect_of_a_new_empty_log_reports_no_events(tmp_path):
    EventLog(str(tmp_path / "data")).close()
    summary = inspect_data_dir(tmp_path / "data", exact=True)
    assert (summary.events_exact, summary.oldest_time_us, summary.newest_time_us) == (0, None, None)
    assert summary.relay_cursor is None and summary.hwm_time_us == 0 and summary.zstd_dictionary_id is None
    assert "events:             0" in summary.as_text()
