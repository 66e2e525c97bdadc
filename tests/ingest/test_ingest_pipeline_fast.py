"""The pipeline's batched histogram observation records exactly what one observe() per
value records (bucket counts, count and sum), on bucket bounds, between them and beyond."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

from jetstream.ingest.pipeline import observe_many

BUCKETS = (0.0001, 0.001, 0.01, 0.1)


def _samples(histogram: Histogram) -> dict:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for metric in histogram.collect() for sample in metric.samples if not sample.name.endswith("_created")}


def test_observe_many_records_what_observe_per_value_records():
    amounts = [0.0, 0.00005, 0.0001, 0.00010001, 0.0009, 0.001, 0.05, 0.1, 0.2, 7.0, 0.0001]
    one_by_one = Histogram("per_value", "x", ["socket_url"], buckets=BUCKETS, registry=CollectorRegistry())
    batched = Histogram("per_value", "x", ["socket_url"], buckets=BUCKETS, registry=CollectorRegistry())
    for amount in amounts:
        one_by_one.labels("u").observe(amount)
    observe_many(batched.labels("u"), amounts[:4])
    observe_many(batched.labels("u"), amounts[4:])
    expected = _samples(one_by_one)
    assert expected[("per_value_count", (("socket_url", "u"),))] == len(amounts)
    assert _samples(batched) == expected


def test_observe_many_falls_back_to_observe_for_other_histograms():
    class Recording:
        def __init__(self) -> None:
            self.seen: list[float] = []

        def observe(self, amount: float) -> None:
            self.seen.append(amount)

    histogram = Recording()
    observe_many(histogram, [0.5, 0.25])
    assert histogram.seen == [0.5, 0.25]
