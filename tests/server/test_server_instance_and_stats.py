"""Instance identity, /healthz's new fields, --ingest-collections and /stats/collections.

Real Daemon (RocksDB in tmp_path) fed by relay-sim replaying the recorded corpus over a
real websocket; expected figures are counted here from tests/data/expected_v1.jsonl.
"""
from __future__ import annotations

import collections
import json

import libipld
import pytest

from jetstream.config import parse_serve_args
from jetstream.daemon import Daemon
from jetstream.instance import INSTANCE_HEADER
from jetstream.relaysim.server import FileSource, RelaySim
from tests.server.server_helpers import http_get, settle
from tests.wsclient import connect

pytestmark = pytest.mark.timeout(60)


def first_seq(frames: list[bytes]) -> int:
    return libipld.decode_dag_cbor_multi(frames[0])[1]["seq"]


class CorpusDaemon:
    """relay-sim over the corpus (played once) + an in-process Daemon on `data_dir`."""

    def __init__(self, data_dir, corpus_dir, corpus_frames, *extra_flags: str, connect_relay: bool = True) -> None:
        self.data_dir, self.corpus_dir, self.frames, self.extra = data_dir, corpus_dir, corpus_frames, extra_flags
        self.connect_relay = connect_relay

    async def __aenter__(self) -> "CorpusDaemon":
        self.relay = RelaySim(FileSource(self.corpus_dir / "frames.bin.zst", loops=1), rate=0)
        await self.relay.start("127.0.0.1", 0)
        cfg = parse_serve_args([
            "--ws-url", self.relay.url, "--listen-addr", "127.0.0.1:0", "--metrics-listen-addr", "",
            "--data-dir", str(self.data_dir), "--override-relay-cursor", str(first_seq(self.frames) - 1),
            "--max-sub-rate", "100000", *self.extra,
        ], environ={})
        self.daemon = Daemon(cfg)
        await self.daemon.start(connect_relay=self.connect_relay)
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.daemon.stop()
        await self.relay.close()

    @property
    def port(self) -> int:
        return self.daemon.port

    async def ingested(self) -> None:
        last = first_seq(self.frames) + len(self.frames) - 1
        await settle(lambda: self.daemon.event_log.relay_cursor() == last, timeout=30)

    async def get_json(self, path: str) -> tuple[int, dict]:
        status, _, body = await http_get(self.port, path)
        return status, json.loads(body)


def stored_lines(event_log) -> list[bytes]:
    return [row.payload for row in event_log.read_after(0, 100_000, False)]


def collection_and_op(line: bytes) -> tuple[str, str]:
    parsed = json.loads(line)
    if parsed["kind"] == "commit":
        return parsed["commit"]["collection"], parsed["commit"]["operation"]
    return "", parsed["kind"]


async def test_instance_id_is_in_healthz_and_the_101_and_survives_a_restart(tmp_path, corpus_dir, corpus_frames,
                                                                         expected_v1_lines):
    data = tmp_path / "data"
    async with CorpusDaemon(data, corpus_dir, corpus_frames) as running:
        await running.ingested()
        status, health = await running.get_json("/healthz")
        instance = health["instance"]
        assert status == 200 and len(instance) == 32 and int(instance, 16) >= 0
        times = [json.loads(line)["time_us"] for line in stored_lines(running.daemon.event_log)]
        assert (health["oldest_time_us"], health["newest_time_us"]) == (times[0], times[-1])
        assert len(times) == len(expected_v1_lines)
        assert (health["oldest_seq"], health["newest_seq"]) == (1, len(times))
        transport, _ = await connect(f"ws://127.0.0.1:{running.port}/subscribe")
        assert transport.response.headers[INSTANCE_HEADER] == instance
        transport.disconnect()
    async with CorpusDaemon(data, corpus_dir, corpus_frames, connect_relay=False) as restarted:
        _, health = await restarted.get_json("/healthz")
        assert health["instance"] == instance
        assert (health["oldest_time_us"], health["newest_time_us"]) == (times[0], times[-1])
        assert (health["oldest_seq"], health["newest_seq"]) == (1, len(times)), "recovered from the log"
        transport, _ = await connect(f"ws://127.0.0.1:{restarted.port}/subscribe")
        assert transport.response.headers[INSTANCE_HEADER] == instance
        transport.disconnect()
    async with CorpusDaemon(tmp_path / "other", corpus_dir, corpus_frames, connect_relay=False) as other:
        _, health = await other.get_json("/healthz")
        assert health["instance"] != instance and len(health["instance"]) == 32
        assert (health["oldest_time_us"], health["newest_time_us"]) == (None, None)  # nothing stored yet
        assert (health["oldest_seq"], health["newest_seq"]) == (None, None)


async def test_ingest_collections_stores_exactly_the_posts_plus_identity_and_account(tmp_path, corpus_dir, corpus_frames,
                                                                                   expected_v1_lines):
    from jetstream import metrics

    dropped_before = metrics.INGEST_DROPS.labels("not_ingested")._value.get()
    async with CorpusDaemon(tmp_path / "data", corpus_dir, corpus_frames,
                            "--ingest-collections", "app.bsky.feed.post") as running:
        await running.ingested()
        stored = stored_lines(running.daemon.event_log)
    expected = [line for line in expected_v1_lines if collection_and_op(line)[0] in ("app.bsky.feed.post", "")]
    strip = lambda line: {k: v for k, v in json.loads(line).items() if k != "time_us"}  # noqa: E731
    assert [strip(line) for line in stored] == [strip(line) for line in expected]
    assert sum(collection_and_op(line)[0] == "app.bsky.feed.post" for line in stored) == 18
    assert sorted(collection_and_op(line)[1] for line in stored if not collection_and_op(line)[0]) == ["account", "identity"]
    dropped = metrics.INGEST_DROPS.labels("not_ingested")._value.get() - dropped_before
    assert dropped == len(expected_v1_lines) - len(expected)


async def test_ingest_collections_prefix_keeps_a_namespace(tmp_path, corpus_dir, corpus_frames, expected_v1_lines):
    async with CorpusDaemon(tmp_path / "data", corpus_dir, corpus_frames,
                            "--ingest-collections", "app.bsky.graph.*,fm.teal.alpha.actor.status") as running:
        await running.ingested()
        stored = stored_lines(running.daemon.event_log)
    kept = lambda c: c == "" or c.startswith("app.bsky.graph.") or c == "fm.teal.alpha.actor.status"  # noqa: E731
    assert [collection_and_op(line) for line in stored] == [
        collection_and_op(line) for line in expected_v1_lines if kept(collection_and_op(line)[0])]


@pytest.mark.parametrize("value", ["app.bsky.feed.post,not an nsid", ".*", "nodots"])
def test_ingest_collections_refuses_entries_that_are_not_nsids_or_prefixes(value):
    from jetstream.config import ConfigError

    with pytest.raises(ConfigError):  # refused naming the flag and its variable (tests/operator)
        parse_serve_args(["--ingest-collections", value], environ={})
    assert parse_serve_args([], environ={"JETSTREAM_INGEST_COLLECTIONS": "app.bsky.feed.*"}).ingest_collections == (
        "app.bsky.feed.*",)


async def test_stats_collections_counts_what_was_stored_by_collection_and_operation(tmp_path, corpus_dir, corpus_frames,
                                                                                  expected_v1_lines):
    async with CorpusDaemon(tmp_path / "data", corpus_dir, corpus_frames) as running:
        await running.ingested()
        status, stats = await running.get_json("/stats/collections")
    assert status == 200
    expected = collections.Counter(collection_and_op(line) for line in expected_v1_lines)
    by_collection = collections.defaultdict(dict)
    for (collection, op), count in expected.items():
        if collection:
            by_collection[collection][op] = count
    assert set(stats["collections"]) == set(by_collection)
    for collection, ops in by_collection.items():
        for window in ("minute", "hour", "retention"):
            counted = stats["collections"][collection][window]
            assert {op: n for op, n in counted.items() if n} == ops, (collection, window)
        assert stats["collections"][collection]["since_start"] == sum(ops.values())
    assert stats["total_events"] == len(expected_v1_lines)
    for window in ("minute", "hour", "retention"):
        totals = stats["totals"][window]
        assert totals["all"] == len(expected_v1_lines)
        assert (totals["identity"], totals["account"], totals["sync"]) == (1, 1, 0)
        assert totals["create"] == sum(n for (c, op), n in expected.items() if c and op == "create")
    assert stats["windows_seconds"] == {"minute": 60, "hour": 3600, "retention": 86400}


async def test_status_page_is_served_self_contained(tmp_path, corpus_dir, corpus_frames):
    async with CorpusDaemon(tmp_path / "data", corpus_dir, corpus_frames, connect_relay=False) as running:
        status, headers, body = await http_get(running.port, "/status")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    text = body.decode()
    assert "/stats/collections" in text and "/healthz" in text
    # nothing loaded from elsewhere: no external scripts, styles, fonts or images
    for marker in ("http://", "https://", "src=", "<link"):
        assert marker not in text, marker
