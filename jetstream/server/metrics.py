"""The server's Prometheus metrics: v1's names (docs/protocol.md §2.7) plus what v1 lacked.

Owns: turning a SubscribeServer's plain counters into metric families at scrape time
(a custom collector) and registering it; the HTTP listener is jetstream/metrics.py's. v1's names and labels are kept:
`jetstream_subscribers_connected{ip_address}`, `jetstream_events_emitted_total`,
`jetstream_bytes_emitted_total`, `jetstream_events_delivered_total{ip_address}`,
`jetstream_bytes_delivered_total{ip_address}`. New: disconnects the server initiated
and requests it refused, by reason, the number of connected clients, and history replay from
the sealed archive (`jetstream_history_*`: blocks read and skipped, reads in flight, archive
steps and events sent per wire; `history_families`, shared with the --workers collector).
It must never be touched on the delivery path: the server counts in plain ints and
this module reads them only when Prometheus scrapes, so a send costs no metric call.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from jetstream.server.app import SubscribeServer

log = logging.getLogger(__name__)

# (name without _total, help) of every family this collector yields; tests and docs/operations.md list them.
SERVER_METRICS = {
    "jetstream_subscribers_connected": "Connected subscribers per client IP (v1)",
    "jetstream_events_emitted": "Events made visible to subscribers, once per event (v1)",
    "jetstream_bytes_emitted": "Uncompressed JSON bytes of emitted events (v1)",
    "jetstream_events_delivered": "Events sent to subscribers per client IP, replay and live (v1)",
    "jetstream_bytes_delivered": "Bytes sent per client IP, compressed size for zstd clients (v1)",
    "jetstream_server_connected_clients": "Websocket subscribers connected now",
    "jetstream_server_disconnects": "Connections the server closed, by reason",
    "jetstream_server_refused_requests": "/subscribe requests refused before the upgrade, by reason",
    "jetstream_server_options_updates": "Valid options_update messages applied",
}
# History on the live wire (server/history.py): readers below the log replaying sealed segments.
HISTORY_METRICS = {
    "jetstream_history_blocks_read": "Archive blocks read and decoded for subscribers replaying history",
    "jetstream_history_blocks_skipped":
        "Archive blocks after a replaying reader's position passed over unread: blooms or the collection index "
        "rule its filter out",
    "jetstream_history_reads_in_flight": "Archive block reads under way now (at most --archive-replay-concurrency)",
    "jetstream_history_steps": "Reader steps served from sealed segments, by wire (v1, v2)",
    "jetstream_history_events_sent": "Events sent to subscribers from sealed segments, by wire (v1, v2)",
}
SERVER_METRICS.update(HISTORY_METRICS)


class ServerMetricsCollector:
    """Reads one SubscribeServer's counters at scrape time."""

    def __init__(self, server: SubscribeServer) -> None:
        self._server = server

    def describe(self):
        return []  # families are built per scrape; nothing to pre-register

    def collect(self):
        server = self._server
        yield _labelled(GaugeMetricFamily, "jetstream_subscribers_connected", "ip_address",
                        server.connected_by_ip())
        yield CounterMetricFamily("jetstream_events_emitted", SERVER_METRICS["jetstream_events_emitted"],
                                  value=server.events_emitted)
        yield CounterMetricFamily("jetstream_bytes_emitted", SERVER_METRICS["jetstream_bytes_emitted"],
                                  value=server.bytes_emitted)
        delivered = server.delivered_by_ip()
        yield _labelled(CounterMetricFamily, "jetstream_events_delivered", "ip_address",
                        {ip: totals[0] for ip, totals in delivered.items()})
        yield _labelled(CounterMetricFamily, "jetstream_bytes_delivered", "ip_address",
                        {ip: totals[1] for ip, totals in delivered.items()})
        yield GaugeMetricFamily("jetstream_server_connected_clients",
                                SERVER_METRICS["jetstream_server_connected_clients"], value=server.connected_count)
        yield _labelled(CounterMetricFamily, "jetstream_server_disconnects", "reason", server.disconnects)
        yield _labelled(CounterMetricFamily, "jetstream_server_refused_requests", "reason", server.refused_requests)
        yield CounterMetricFamily("jetstream_server_options_updates",
                                  SERVER_METRICS["jetstream_server_options_updates"], value=server.options_updates)
        yield from history_families(server.history_counters())


def history_families(counters: dict):
    """The jetstream_history_* families from SubscribeServer.history_counters() (or the workers' sum of them)."""
    yield CounterMetricFamily("jetstream_history_blocks_read", HISTORY_METRICS["jetstream_history_blocks_read"],
                              value=counters.get("history_blocks_read", 0))
    yield CounterMetricFamily("jetstream_history_blocks_skipped", HISTORY_METRICS["jetstream_history_blocks_skipped"],
                              value=counters.get("history_blocks_skipped", 0))
    yield GaugeMetricFamily("jetstream_history_reads_in_flight", HISTORY_METRICS["jetstream_history_reads_in_flight"],
                            value=counters.get("history_reads_in_flight", 0))
    for name in ("jetstream_history_steps", "jetstream_history_events_sent"):
        by_wire = {"v1": 0, "v2": 0}
        by_wire.update(counters.get(name.removeprefix("jetstream_"), {}))
        yield _labelled(CounterMetricFamily, name, "wire", by_wire)


def _labelled(family_type, name: str, label: str, values: dict):
    family = family_type(name, SERVER_METRICS[name], labels=[label])
    for label_value, value in sorted(values.items()):
        family.add_metric([str(label_value)], value)
    return family


def register_server(server: SubscribeServer, registry: CollectorRegistry = REGISTRY) -> ServerMetricsCollector:
    collector = ServerMetricsCollector(server)
    registry.register(collector)
    return collector


def unregister_server(collector: ServerMetricsCollector, registry: CollectorRegistry = REGISTRY) -> None:
    registry.unregister(collector)
