"""Summing the workers' counters for the one /metrics (workers/metrics.py), without processes."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from jetstream.workers.metrics import WorkersMetricsCollector, retire_counters, sum_counters


def snapshot(ip: str, connected: int, events: int, sent_bytes: int, **extra) -> dict:
    return {"connected_by_ip": {ip: connected}, "delivered_by_ip": {ip: [events, sent_bytes]},
            "connected": connected, "disconnects": extra.get("disconnects", {}),
            "refused_requests": extra.get("refused", {}), "options_updates": extra.get("options_updates", 0),
            "catch_ups": 3, "catch_up_seconds": 0.5, "catch_up_cpu_seconds": 0.25}


class _Handle:
    def __init__(self, index: int, counters: dict, alive: bool = True) -> None:
        self.index, self.counters, self.restarts = index, counters, 0
        self.alive = alive


class _Supervisor:
    def __init__(self, handles, retired) -> None:
        self.handles, self.retired, self.dropped_wakes = handles, retired, 0


class _Tail:
    events_emitted, bytes_emitted = 7, 700


def test_gauges_sum_over_live_workers_and_counters_keep_what_exited_workers_counted():
    retired: dict = {}
    retire_counters(retired, snapshot("10.0.0.1", 4, 100, 1000, disconnects={"shutdown": 2}), max_ip_labels=10)
    assert retired["connected"] == 0 and retired["connected_by_ip"] == {}, "gauges are not carried over"
    live = [snapshot("10.0.0.1", 1, 5, 50, disconnects={"shutdown": 1}), snapshot("10.0.0.2", 2, 7, 70)]
    total = sum_counters([retired] + live)
    assert total["connected"] == 3
    assert total["connected_by_ip"] == {"10.0.0.1": 1, "10.0.0.2": 2}
    assert total["delivered_by_ip"] == {"10.0.0.1": [105, 1050], "10.0.0.2": [7, 70]}
    assert total["disconnects"] == {"shutdown": 3}


def test_retired_ips_beyond_the_label_budget_fold_into_other_with_totals_kept():
    retired: dict = {}
    for last in range(5):
        retire_counters(retired, snapshot(f"10.0.0.{last}", 1, 10, 100), max_ip_labels=3)
    delivered = retired["delivered_by_ip"]
    assert len(delivered) == 3 and "other" in delivered
    assert sum(events for events, _ in delivered.values()) == 50


def test_the_scrape_shows_v1_names_summed_and_the_worker_families():
    supervisor = _Supervisor([_Handle(0, snapshot("10.0.0.1", 2, 5, 50)), _Handle(1, snapshot("10.0.0.1", 1, 6, 60))],
                             retired={})
    registry = CollectorRegistry()
    registry.register(WorkersMetricsCollector(supervisor, _Tail()))
    text = generate_latest(registry).decode()
    assert 'jetstream_subscribers_connected{ip_address="10.0.0.1"} 3.0' in text
    assert 'jetstream_events_delivered_total{ip_address="10.0.0.1"} 11.0' in text
    assert "jetstream_events_emitted_total 7.0" in text, "counted once, by the main process"
    assert "jetstream_server_connected_clients 3.0" in text
    assert "jetstream_workers_alive 2.0" in text
    assert 'jetstream_worker_catch_ups_total{worker="1"} 3.0' in text
    assert 'jetstream_worker_catch_up_cpu_seconds_total{worker="0"} 0.25' in text


def test_history_counters_are_summed_per_wire_and_reads_in_flight_only_over_live_workers():
    def history(blocks: int, in_flight: int, v2_events: int) -> dict:
        return {"history_blocks_read": blocks, "history_blocks_skipped": 1, "history_reads_in_flight": in_flight,
                "history_steps": {"v2": 2}, "history_events_sent": {"v2": v2_events}}

    retired: dict = {}
    retire_counters(retired, {**snapshot("10.0.0.1", 1, 1, 1), **history(5, 3, 100)}, max_ip_labels=10)
    assert retired["history_reads_in_flight"] == 0, "a gauge is not carried over from an exited worker"
    live = [{**snapshot("10.0.0.1", 1, 1, 1), **history(2, 1, 10)}, {**snapshot("10.0.0.2", 1, 1, 1),
                                                                      **history(3, 2, 20)}]
    supervisor = _Supervisor([_Handle(0, live[0]), _Handle(1, live[1])], retired)
    registry = CollectorRegistry()
    registry.register(WorkersMetricsCollector(supervisor, _Tail()))
    text = generate_latest(registry).decode()
    assert "jetstream_history_blocks_read_total 10.0" in text
    assert "jetstream_history_blocks_skipped_total 3.0" in text
    assert "jetstream_history_reads_in_flight 3.0" in text
    assert 'jetstream_history_events_sent_total{wire="v2"} 130.0' in text
    assert 'jetstream_history_events_sent_total{wire="v1"} 0.0' in text
    assert 'jetstream_history_steps_total{wire="v2"} 6.0' in text
