"""One /metrics for the whole --workers daemon: the workers' server counters, summed.

Owns: the collector the main process registers in place of server/metrics.py's (same v1 names
and labels: gauges summed over the live workers, counters over the live workers plus every
worker process that has exited, so a restart never makes a counter go backwards), the emitted
counters (counted once, by the main process, not once per worker), and the worker families:
`jetstream_workers_alive`, `jetstream_worker_restarts_total`, `jetstream_worker_catch_ups_total`,
`jetstream_worker_catch_up_seconds_total`, `jetstream_worker_catch_up_cpu_seconds_total`,
`jetstream_worker_rows_fed_total`, `jetstream_worker_gaps_filled_total`,
`jetstream_worker_wakes_dropped_total`; and the history replay families (`jetstream_history_*`,
server/metrics.py), summed over workers (reads in flight: the live workers' only).
Workers push their counters every second (worker.METRICS_PUSH_INTERVAL_S) and once more when
they stop, so a scrape is at most that stale; a worker killed with SIGKILL loses at most its
last second of counts.
It must never be touched on the delivery path or talk to a worker itself.
"""
from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from jetstream.server.app import OTHER_IPS_LABEL
from jetstream.server.metrics import SERVER_METRICS, _labelled, history_families

WORKER_METRICS = {
    "jetstream_workers_alive": "Worker processes running now (--workers)",
    "jetstream_worker_restarts": "Worker processes restarted after they exited, by worker",
    "jetstream_worker_catch_ups": "Catch-ups of a worker's log view with the main process's log, by worker",
    "jetstream_worker_catch_up_seconds": "Wall-clock time spent in those catch-ups, by worker",
    "jetstream_worker_catch_up_cpu_seconds": "CPU time spent in those catch-ups, by worker",
    "jetstream_worker_rows_fed":
        "Events a worker appended to its ring from the rows the main process sent (no log read), by worker",
    "jetstream_worker_gaps_filled":
        "Times a worker found it had missed rows and filled the gap from the log, by worker",
    "jetstream_worker_wakes_dropped":
        "Rows or wake-ups not sent because a worker's channel was backed up (it catches up from the log)",
}
_SUMMED = ("options_updates", "catch_ups", "catch_up_seconds", "history_blocks_read", "history_blocks_skipped")
_BY_REASON = ("disconnects", "refused_requests", "history_steps", "history_events_sent")
_GAUGES = ("connected", "history_reads_in_flight")  # live workers' only: not carried over when one exits


def _add(into: dict, values: dict) -> None:
    for key, value in values.items():
        into[key] = into.get(key, 0) + value


def sum_counters(snapshots: list[dict]) -> dict:
    """The daemon's counters from the workers' snapshots (and the retired sum)."""
    total: dict = {"connected_by_ip": {}, "delivered_by_ip": {}, **{name: 0 for name in _GAUGES},
                   **{name: {} for name in _BY_REASON}}
    for snapshot in snapshots:
        _add(total["connected_by_ip"], snapshot.get("connected_by_ip", {}))
        for ip, (events, sent_bytes) in snapshot.get("delivered_by_ip", {}).items():
            totals = total["delivered_by_ip"].setdefault(ip, [0, 0])
            totals[0] += events
            totals[1] += sent_bytes
        for name in _GAUGES:
            total[name] += snapshot.get(name, 0)
        for name in _BY_REASON:
            _add(total[name], snapshot.get(name, {}))
        for name in _SUMMED:
            total[name] = total.get(name, 0) + snapshot.get(name, 0)
    return total


def retire_counters(retired: dict, counters: dict, max_ip_labels: int) -> None:
    """Fold an exited worker's last counters into `retired` (gauges are not carried over)."""
    if not counters:
        return
    merged = sum_counters([retired, {name: value for name, value in counters.items()
                                     if name not in ("connected_by_ip", *_GAUGES)}])
    delivered = merged["delivered_by_ip"]
    while 0 < max_ip_labels < len(delivered):  # the same label budget as one process keeps
        ip = next(ip for ip in delivered if ip != OTHER_IPS_LABEL)
        events, sent_bytes = delivered.pop(ip)
        other = delivered.setdefault(OTHER_IPS_LABEL, [0, 0])
        other[0] += events
        other[1] += sent_bytes
    merged["connected_by_ip"] = {}
    merged.update({name: 0 for name in _GAUGES})
    retired.clear()
    retired.update(merged)


class WorkersMetricsCollector:
    """Reads the supervisor's latest worker snapshots and the main process's emitted counts at scrape time."""

    def __init__(self, supervisor, tail) -> None:
        self._supervisor = supervisor
        self._tail = tail

    def describe(self):
        return []

    def collect(self):
        handles = list(self._supervisor.handles)
        total = sum_counters([self._supervisor.retired] + [handle.counters for handle in handles])
        yield _labelled(GaugeMetricFamily, "jetstream_subscribers_connected", "ip_address", total["connected_by_ip"])
        yield CounterMetricFamily("jetstream_events_emitted", SERVER_METRICS["jetstream_events_emitted"],
                                  value=self._tail.events_emitted)
        yield CounterMetricFamily("jetstream_bytes_emitted", SERVER_METRICS["jetstream_bytes_emitted"],
                                  value=self._tail.bytes_emitted)
        delivered = total["delivered_by_ip"]
        yield _labelled(CounterMetricFamily, "jetstream_events_delivered", "ip_address",
                        {ip: totals[0] for ip, totals in delivered.items()})
        yield _labelled(CounterMetricFamily, "jetstream_bytes_delivered", "ip_address",
                        {ip: totals[1] for ip, totals in delivered.items()})
        yield GaugeMetricFamily("jetstream_server_connected_clients",
                                SERVER_METRICS["jetstream_server_connected_clients"], value=total["connected"])
        yield _labelled(CounterMetricFamily, "jetstream_server_disconnects", "reason", total["disconnects"])
        yield _labelled(CounterMetricFamily, "jetstream_server_refused_requests", "reason", total["refused_requests"])
        yield CounterMetricFamily("jetstream_server_options_updates",
                                  SERVER_METRICS["jetstream_server_options_updates"],
                                  value=total.get("options_updates", 0))
        yield from history_families(total)
        yield from self._worker_families(handles)

    def _worker_families(self, handles):
        yield GaugeMetricFamily("jetstream_workers_alive", WORKER_METRICS["jetstream_workers_alive"],
                                value=sum(1 for handle in handles if handle.alive))
        per_worker = [
            ("jetstream_worker_restarts", lambda handle: handle.restarts),
            ("jetstream_worker_catch_ups", lambda handle: handle.counters.get("catch_ups", 0)),
            ("jetstream_worker_catch_up_seconds", lambda handle: handle.counters.get("catch_up_seconds", 0.0)),
            ("jetstream_worker_catch_up_cpu_seconds", lambda handle: handle.counters.get("catch_up_cpu_seconds", 0.0)),
            ("jetstream_worker_rows_fed", lambda handle: handle.counters.get("rows_fed", 0)),
            ("jetstream_worker_gaps_filled", lambda handle: handle.counters.get("gaps_filled", 0)),
        ]
        for name, value_of in per_worker:
            family = CounterMetricFamily(name, WORKER_METRICS[name], labels=["worker"])
            for handle in handles:
                family.add_metric([str(handle.index)], value_of(handle))
            yield family
        yield CounterMetricFamily("jetstream_worker_wakes_dropped", WORKER_METRICS["jetstream_worker_wakes_dropped"],
                                  value=self._supervisor.dropped_wakes)
