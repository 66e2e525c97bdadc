"""IngestPipeline.process on its own, with a real RocksDB log and ring: v1's consumer
metrics count what v1 counted, and a batch whose write fails is never made visible.
"""
from __future__ import annotations

import json
from collections import Counter

from prometheus_client import REGISTRY

from jetstream.compression import EventCompressor
from jetstream.implementation import LiveRing
from jetstream.ingest.pipeline import IngestPipeline, event_type_label, operation_of
from jetstream.ingest.sequencer import Sequencer
from jetstream.log.store import EventLog
from tests.ingest.test_relay_client_reconnect import seq_of


def make_pipeline(event_log, socket_url: str, **callbacks):
    published = []
    pipeline = IngestPipeline(event_log, LiveRing(1000), Sequencer(event_log.hwm()), EventCompressor(),
                              lambda: published.append(True), socket_url=socket_url, **callbacks)
    return pipeline, published


def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_labels_follow_v1_names():
    assert event_type_label("#commit") == "commit"
    assert event_type_label("#sync") == "sync"
    assert event_type_label("#made-up-by-a-relay") == "unknown"
    assert operation_of(b',"kind":"commit","commit":{"rev":"x","operation":"delete","collection":"a"}}') == "delete"


def test_corpus_batch_counts_frames_by_type_and_ops_by_action_and_collection(tmp_path, corpus_frames,
                                                                                expected_v1_lines):
    url = f"wss://accounting.test/{tmp_path.name}"  # a label of its own: the registry is process-wide
    with EventLog(str(tmp_path / "log")) as event_log:
        pipeline, published = make_pipeline(event_log, url)
        assert pipeline.process(corpus_frames) == len(expected_v1_lines)
        assert event_log.relay_cursor() == seq_of(corpus_frames[-1])
        assert len(pipeline.ring) == len(expected_v1_lines) and published

    kinds = Counter(json.loads(line)["kind"] for line in expected_v1_lines)
    assert sample("consumer_events_processed_total", event_type="identity", socket_url=url) == kinds["identity"]
    assert sample("consumer_events_processed_total", event_type="account", socket_url=url) == kinds["account"]
    # Every corpus commit frame is counted, including one that yields no event.
    commit_frames = len(corpus_frames) - kinds["identity"] - kinds["account"]
    assert sample("consumer_events_processed_total", event_type="commit", socket_url=url) == commit_frames
    ops = Counter((c["operation"], c["collection"]) for c in
                  (json.loads(line).get("commit") for line in expected_v1_lines) if c)
    for (operation, collection), count in ops.items():
        assert sample("consumer_ops_processed_total", kind=operation, op_path=collection, socket_url=url) == count
    assert sample("consumer_events_persisted_total", socket_url=url) == len(expected_v1_lines)
    assert sample("consumer_last_seq", socket_url=url) == seq_of(corpus_frames[-1])
    assert sample("consumer_last_evt_created_at", socket_url=url) > 0


def test_a_batch_whose_write_fails_is_not_published_and_the_cursor_falls_back(tmp_path, corpus_frames):
    event_log = EventLog(str(tmp_path / "log"))
    failures = []
    pipeline, published = make_pipeline(event_log, "wss://write-failure.test",
                                         on_write_failure=lambda: failures.append(True))
    assert pipeline.process(corpus_frames[:10]) > 0
    durable = event_log.relay_cursor()
    ring_before = len(pipeline.ring)
    published.clear()
    event_log.close()  # every later append fails inside RocksDB's binding

    assert pipeline.process(corpus_frames[10:20]) == 0
    assert failures == [True]
    assert published == [] and len(pipeline.ring) == ring_before, "nothing unwritten becomes visible"
    assert pipeline.last_accepted_seq == durable == seq_of(corpus_frames[9])
