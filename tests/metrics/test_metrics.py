"""jetstream/metrics.py: the batched histogram publishes exactly what one observe() per value
would (bucket counts, count and sum: on bounds, between them and beyond) through public
collector API, and the one metrics listener serves the registry."""
from __future__ import annotations

import pathlib
import urllib.request

from prometheus_client import CollectorRegistry, Histogram

import jetstream.server.metrics as server_metrics
from jetstream import metrics

BUCKETS = (0.0001, 0.001, 0.01, 0.1)


def _samples(collector) -> dict:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for metric in collector.collect() for sample in metric.samples if not sample.name.endswith("_created")}


def test_a_batched_histogram_records_what_observe_per_value_records():
    amounts = [0.0, 0.00005, 0.0001, 0.00010001, 0.0009, 0.001, 0.05, 0.1, 0.2, 7.0, 0.0001]
    one_by_one = Histogram("per_value", "x", ["socket_url"], buckets=BUCKETS, registry=CollectorRegistry())
    batched = metrics.BatchedHistogram("per_value", "x", ["socket_url"], BUCKETS, registry=CollectorRegistry())
    for amount in amounts:
        one_by_one.labels("u").observe(amount)
    batched.labels("u").observe_many(amounts[:4])
    batched.labels(socket_url="u").observe_many(amounts[4:])
    expected = _samples(one_by_one)
    assert expected[("per_value_count", (("socket_url", "u"),))] == len(amounts)
    assert _samples(batched) == expected


def test_the_listener_serves_the_registry_it_is_given():
    registry = CollectorRegistry()
    batched = metrics.BatchedHistogram("listener_probe_seconds", "x", ["socket_url"], BUCKETS, registry=registry)
    batched.labels("wss://relay").observe(0.005)
    listener = metrics.MetricsListener("127.0.0.1:0", registry)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{listener.port}/metrics", timeout=10) as answer:
            text = answer.read().decode()
    finally:
        listener.close()
    assert 'listener_probe_seconds_bucket{le="0.01",socket_url="wss://relay"} 1.0' in text
    assert 'listener_probe_seconds_count{socket_url="wss://relay"} 1.0' in text


def test_there_is_one_listener_and_no_private_prometheus_api():
    assert not hasattr(server_metrics, "MetricsListener") and not hasattr(metrics, "start_metrics_listener")
    package = pathlib.Path(metrics.__file__).parent
    offenders = [str(path) for path in package.rglob("*.py")
                 if any(name in path.read_text() for name in ("_upper_bounds", '"_buckets"', '"_sum"'))]
    assert offenders == []
