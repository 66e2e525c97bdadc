"""The atproto SDK's JetstreamClient (PyPI `atproto`, the test extra) as a real v2 client.

Real processes: relay-sim replays the recorded corpus once, `jetstream serve` ingests it; the
SDK's AsyncJetstreamClient subscribes to `subscribeEvents` over loopback and a plain websocket
client reads v1's `/subscribe` for the same events. Each SDK message must carry the seq, did,
collection, rkey, cid and record the v1 stream carries for the same event (records compared as
the atproto data model: v2's `$link`/`$bytes` JSON and v1's JSON decode to the same values).
"""
from __future__ import annotations

import asyncio
import json

import pytest

from jetstream.dictionary import active_v2_dictionary, dictionary_id
from tests.waiting import until
from tests.workers.workers_helpers import free_port, healthz, http_get, spawn
from tests.wsclient import connect

atproto_jetstream = pytest.importorskip("atproto_jetstream")

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

SUBSCRIBE_REPOS = "/xrpc/com.atproto.sync.subscribeRepos"


class CorpusRun:
    """relay-sim (the corpus, once) + `jetstream serve`, each its own process."""

    def __init__(self, tmp_path, corpus_dir, *extra: str) -> None:
        self.tmp_path, self.corpus = tmp_path, corpus_dir / "frames.bin.zst"
        self.extra = extra
        self.relay_port, self.port = free_port(), free_port()
        self.logs = tmp_path / "logs.txt"
        self.processes = []

    async def start(self, expected_events: int) -> None:
        from jetstream.relaysim.filesource import FileSource

        first_cursor = FileSource(self.corpus, loops=1).first_seq - 1
        self.processes.append(await spawn(
            "relay-sim", "--frames-file", str(self.corpus), "--loops", "1", "--rate", "0",
            "--listen-addr", f"127.0.0.1:{self.relay_port}", "--log-level", "warning", "--clock", "false",
            log_path=self.logs))
        self.processes.append(await spawn(
            "serve", "--ws-url", f"ws://127.0.0.1:{self.relay_port}{SUBSCRIBE_REPOS}",
            "--listen-addr", f"127.0.0.1:{self.port}", "--metrics-listen-addr", "",
            "--data-dir", str(self.tmp_path / "data"), "--max-sub-rate", "1000000",
            "--override-relay-cursor", str(first_cursor), *self.extra, log_path=self.logs))

        async def ingested() -> bool:
            report = await healthz(self.port)
            return bool(report and report.get("newest_seq") == expected_events)

        await until(ingested, "the daemon to ingest the whole corpus", timeout=60)

    async def stop(self) -> None:
        for process in reversed(self.processes):
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), 20)
                except asyncio.TimeoutError:
                    process.kill()
                    await process.wait()


async def v1_events(port: int, count: int) -> list[dict]:
    _, client = await connect(f"ws://127.0.0.1:{port}/subscribe?cursor=0")
    return [json.loads(payload) for payload in await client.wait_for_count(count, timeout=30)]


async def sdk_messages(port: int, count: int, params: dict | None = None, compress: bool = False,
                       settle_s: float = 0.5):
    """The first `count` messages the SDK's async client delivers (then `settle_s` more for extras)."""
    client = atproto_jetstream.AsyncJetstreamClient(params=params, base_uri=f"ws://127.0.0.1:{port}/xrpc",
                                                    compress=compress, api_key="any")
    messages, enough = [], asyncio.Event()

    async def on_message(message) -> None:
        messages.append(message)
        if len(messages) >= count:
            enough.set()

    errors = []

    async def on_error(exc) -> None:
        errors.append(exc)

    task = asyncio.ensure_future(client.start(on_message, on_error))
    try:
        await asyncio.wait_for(enough.wait(), 60)
        await asyncio.sleep(settle_s)
    finally:
        await client.stop()
        await asyncio.wait_for(task, 20)
    assert not errors
    return messages, client


def v1_view(event: dict, seq: int) -> tuple:
    kind = event["kind"]
    if kind != "commit":
        return (seq, event["did"], kind)
    commit = event["commit"]
    return (seq, event["did"], "commit", commit["operation"], commit["collection"], commit["rkey"],
            commit.get("cid"), commit["rev"])


def sdk_view(message) -> tuple:
    kind = message.py_type.rsplit("#", 1)[1]
    if kind != "commit":
        return (message.seq, message.did, kind)
    return (message.seq, message.did, "commit", message.operation, message.collection, message.rkey,
            message.cid, message.rev)


async def check_every_corpus_event_arrives_with_what_v1_carries(corpus_run, expected_v1_lines):
    count = len(expected_v1_lines)
    v1 = await v1_events(corpus_run.port, count)
    messages, client = await sdk_messages(corpus_run.port, count, {"cursor": 1})
    assert len(messages) == count and client.cursor == count
    assert [sdk_view(m) for m in messages] == [v1_view(e, seq) for seq, e in enumerate(v1, start=1)]
    # The record: the frame's record JSON (what the SDK parses) is v1's record, value for value, and
    # the SDK's model of it has v1's $type and createdAt.
    raw = await raw_v2_frames(corpus_run.port, count)
    records = 0
    for event, frame, message in zip(v1, raw, messages):
        if event["kind"] == "commit" and event["commit"]["operation"] != "delete":
            v1_record = event["commit"]["record"]
            assert frame["payload"]["record"] == v1_record
            record = message.record
            if getattr(record, "py_type", None) is None:  # a lexicon the SDK does not know: its DotDict
                assert record.to_dict() == v1_record
            else:
                assert record.py_type == v1_record["$type"]
                assert getattr(record, "created_at", None) == v1_record.get("createdAt")
            records += 1
    assert records > 100


async def raw_v2_frames(port: int, count: int) -> list[dict]:
    _, client = await connect(f"ws://127.0.0.1:{port}/xrpc/network.bsky.jetstream.subscribeEvents?cursor=1")
    return [json.loads(payload) for payload in await client.wait_for_count(count, timeout=30)]


async def check_filters_by_kinds_dids_and_collections(corpus_run, expected_v1_lines):
    v1 = await v1_events(corpus_run.port, len(expected_v1_lines))
    numbered = list(enumerate(v1, start=1))
    dids = sorted({e["did"] for e in v1})[:3]
    cases = [
        ({"kinds": ["identity", "account"]}, lambda e: e["kind"] in ("identity", "account")),
        ({"collections": ["app.bsky.feed.post"]},
         lambda e: e["kind"] != "commit" or e["commit"]["collection"] == "app.bsky.feed.post"),
        ({"collections": ["app.bsky.graph.*"], "kinds": ["commit"]},
         lambda e: e["kind"] == "commit" and e["commit"]["collection"].startswith("app.bsky.graph.")),
        ({"dids": dids}, lambda e: e["did"] in dids),
    ]
    for params, wanted in cases:
        expected = [v1_view(e, seq) for seq, e in numbered if wanted(e)]
        assert expected, params
        messages, _ = await sdk_messages(corpus_run.port, len(expected), dict(params, cursor=1))
        assert [sdk_view(m) for m in messages] == expected, params


async def check_compress_fetches_our_dictionary_and_decodes_every_frame(corpus_run, expected_v1_lines):
    count = len(expected_v1_lines)
    v1 = await v1_events(corpus_run.port, count)
    messages, client = await sdk_messages(corpus_run.port, count, {"cursor": 1}, compress=True)
    assert client.compressed  # it did not fall back to text frames
    assert client._compression.dictionary_id == dictionary_id(active_v2_dictionary())
    assert [sdk_view(m) for m in messages] == [v1_view(e, seq) for seq, e in enumerate(v1, start=1)]


async def check_time_cursor_health_report_and_a_refusal(corpus_run, expected_v1_lines):
    count = len(expected_v1_lines)
    v1 = await v1_events(corpus_run.port, count)
    middle = count // 2
    messages, _ = await sdk_messages(corpus_run.port, count - middle, {"cursor": v1[middle]["time_us"]})
    assert [m.seq for m in messages] == list(range(middle + 1, count + 1))
    report = await healthz(corpus_run.port)
    assert report["oldest_seq"] == 1 and report["newest_seq"] == count
    status, body = await http_get(corpus_run.port, "/xrpc/network.bsky.jetstream.subscribeEvents?cursor=x")
    assert status == 400 and json.loads(body)["error"] == "InvalidRequest"


async def test_the_sdk_receives_the_corpus_replay_as_v1_carries_it_filtered_compressed_and_by_time(
        tmp_path, corpus_dir, expected_v1_lines):
    run = CorpusRun(tmp_path, corpus_dir)
    try:
        await run.start(len(expected_v1_lines))
        await check_every_corpus_event_arrives_with_what_v1_carries(run, expected_v1_lines)
        await check_filters_by_kinds_dids_and_collections(run, expected_v1_lines)
        await check_compress_fetches_our_dictionary_and_decodes_every_frame(run, expected_v1_lines)
        await check_time_cursor_health_report_and_a_refusal(run, expected_v1_lines)
    finally:
        await run.stop()
