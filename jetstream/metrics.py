"""Prometheus metrics of ingest and the log (v1's names plus the ones v1 lacked), and the listener.

Owns: the ingest and log metric definitions (the server's families are built at scrape
time by jetstream/server/metrics.py), the batched histogram the ingest hot path observes
through, and the one HTTP listener that serves the process registry at /metrics
(`--metrics-listen-addr`). Other modules import the metric objects from here.
It must never use prometheus_client's private attributes: batching is done with public
collector API (a HistogramMetricFamily built per scrape).
"""
from __future__ import annotations

import logging
import math
import threading
from bisect import bisect_left
from http.server import HTTPServer

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from jetstream.config import parse_listen_addr

log = logging.getLogger(__name__)


class BatchedHistogram:
    """A labelled histogram observed a batch of values at a time, published at scrape time.

    prometheus_client's Histogram takes a lock per observe(), ~1.3 µs of a ~20 µs frame; the
    ingest loop instead adds a batch's values to plain per-bucket counts (one thread writes
    them), and Prometheus reads them through `collect()` as an ordinary histogram.
    """

    def __init__(self, name: str, documentation: str, labelnames: list[str], buckets,
                 registry: CollectorRegistry | None = REGISTRY) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.upper_bounds = [float(bound) for bound in buckets if float(bound) != math.inf] + [math.inf]
        self._series: dict[tuple[str, ...], BatchedHistogramSeries] = {}
        if registry is not None:
            registry.register(self)

    def labels(self, *values: str, **by_name: str) -> BatchedHistogramSeries:
        key = tuple(str(by_name[name]) for name in self.labelnames) if by_name else tuple(map(str, values))
        if len(key) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}")
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = BatchedHistogramSeries(self.upper_bounds)
        return series

    def describe(self):
        return [HistogramMetricFamily(self.name, self.documentation, labels=list(self.labelnames))]

    def collect(self):
        family = HistogramMetricFamily(self.name, self.documentation, labels=list(self.labelnames))
        for key, series in list(self._series.items()):
            cumulative, buckets = 0, []
            for bound, count in zip(self.upper_bounds, list(series.counts)):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))
            family.add_metric(list(key), buckets, series.sum)
        yield family


class BatchedHistogramSeries:
    """One label set of a BatchedHistogram."""

    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, upper_bounds: list[float]) -> None:
        self._bounds = upper_bounds
        self.counts = [0] * len(upper_bounds)
        self.sum = 0.0

    def observe_many(self, amounts: list[float]) -> None:
        bounds, counts = self._bounds, self.counts
        for amount in amounts:
            counts[bisect_left(bounds, amount)] += 1  # as observe(): the first bound >= amount
        self.sum += sum(amounts)

    def observe(self, amount: float) -> None:
        self.observe_many([amount])


class MetricsListener:
    """`GET /metrics` on its own address (v1's --metrics-listen-addr), in a daemon thread."""

    def __init__(self, listen_addr: str, registry: CollectorRegistry = REGISTRY) -> None:
        host, port = parse_listen_addr(listen_addr)
        self._httpd: HTTPServer
        self._thread: threading.Thread
        self._httpd, self._thread = start_http_server(port, addr=host, registry=registry)
        self.host = host
        self.port = self._httpd.server_address[1]
        log.info("event=metrics_listening addr=%s:%d", host, self.port)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

# --- consumer (relay -> log), v1 names -------------------------------------------------------
EVENTS_PROCESSED = Counter(
    "consumer_events_processed", "Relay frames processed by type", ["event_type", "socket_url"]
)
OPS_PROCESSED = Counter(
    "consumer_ops_processed", "Commit ops processed (op_path is the collection, as in v1)",
    ["kind", "op_path", "socket_url"],
)
EVENT_PROCESSING_SECONDS = BatchedHistogram(
    "consumer_event_processing_duration_seconds", "Time to decode one commit frame",
    ["socket_url"], buckets=[0.0001 * 2**i for i in range(18)],
)
LAST_SEQ = Gauge("consumer_last_seq", "Last relay seq processed", ["socket_url"])
LAST_EVT_PROCESSED_AT = Gauge(
    "consumer_last_evt_processed_at", "Unix ns when the last event was processed", ["socket_url"]
)
LAST_EVT_CREATED_AT = Gauge(
    "consumer_last_evt_created_at", "Unix ns of the relay time of the last event", ["socket_url"]
)
LAST_EVT_GAP = Gauge(
    "consumer_last_evt_created_evt_processed_gap", "Seconds between relay time and processing",
    ["socket_url"],
)
EVENTS_SEQUENCED = Counter("consumer_events_sequenced", "Events given a time_us", ["socket_url"])
EVENTS_PERSISTED = Counter("consumer_events_persisted", "Events written to the log", ["socket_url"])
EVENTS_EMITTED = Counter("consumer_events_emitted", "Events made visible to subscribers", ["socket_url"])

# --- consumer, new in jetstream-py -----------------------------------------------------------
V2_FRAMELESS = Counter(
    "jetstream_v2_frameless_events", "Events stored without a v2 frame (a record Jetstream v2's decoder "
    "refuses): the v2 wire skips them, v1 sends them"
)
INGEST_DROPS = Counter(
    "jetstream_ingest_drops", "Frames, commits or ops skipped, by reason", ["reason"]
)
RELAY_CONNECTS = Counter(
    "jetstream_relay_connects", "Relay connection attempts by outcome", ["outcome"]
)
RELAY_CONNECTED = Gauge("jetstream_relay_connected", "1 while connected to the relay")
RELAY_DISCONNECTS = Counter(
    "jetstream_relay_disconnects", "Relay connections that ended, by why (each is followed by a re-dial)", ["reason"]
)
RELAY_LAG_SECONDS = Gauge(
    "jetstream_relay_lag_seconds", "Wall clock minus the relay `time` of the newest frame written"
)
LOG_WRITE_FAILURES = Counter(
    "jetstream_log_write_failures",
    "Write batches RocksDB refused (disk full, I/O error); nothing of them was published",
)
INGEST_PAUSED = Gauge(
    "jetstream_ingest_paused", "1 while ingest is paused because the log refuses writes (subscribers are still served)"
)
TTL_TRIMS = Counter("jetstream_log_ttl_trims", "TTL trim passes by outcome", ["outcome"])
BATCH_WRITE_SECONDS = Histogram(
    "jetstream_log_batch_write_seconds", "RocksDB write batch latency",
    buckets=[0.00005 * 2**i for i in range(16)],
)
BATCH_EVENTS = Histogram(
    "jetstream_log_batch_events", "Events per write batch", buckets=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
)


# --- commit signatures and DID resolution (--verify-signatures) --------------------------------
# Drops (bad_signature, did_mismatch, rev_mismatch, unresolved_did, stale_rev) are counted
# under jetstream_ingest_drops{reason}; these count the rest of the verification stage.
VERIFY_COMMITS = Counter(
    "jetstream_verify_commits", "Commits leaving the signature stage, by result (verified, unresolved_passed)",
    ["result"],
)
VERIFY_HELD_FRAMES = Gauge(
    "jetstream_verify_held_frames", "Frames held in relay order while an author's DID document is fetched"
)
VERIFY_OLDEST_HELD_SECONDS = Gauge(
    "jetstream_verify_oldest_held_seconds",
    "Age of the oldest frame the signature stage holds (0: none held); ingest is this far behind at least",
)
VERIFY_CHECKS = Counter(
    "jetstream_verify_checks",
    "Commit signature checks by where they ran: pool (a verify process) or loop (the ingest loop)", ["where"],
)
VERIFY_PROCESSES = Gauge(
    "jetstream_verify_processes",
    "Verify processes running (--verify-processes); 0 = signatures are checked in the ingest loop",
)
VERIFY_PROCESS_RESTARTS = Counter(
    "jetstream_verify_process_restarts",
    "Verify processes that died and were replaced (their unanswered commits sent again)",
)
DIDRES_CACHE = Counter(
    "jetstream_didres_cache", "DID key cache look-ups by result (hit, negative_hit, miss)", ["result"]
)
DIDRES_FETCHES = Counter("jetstream_didres_fetches", "DID documents fetched, by method (plc, web)", ["method"])
DIDRES_FAILURES = Counter(
    "jetstream_didres_failures", "DID resolutions that gave no key, by reason", ["reason"]
)
PLC_UNREACHABLE = Gauge(
    "jetstream_plc_unreachable", "1 while the did:plc directory (--plc-url) is unreachable (timeouts, refused, 5xx)"
)
DIDRES_FETCH_SECONDS = Histogram(
    "jetstream_didres_fetch_seconds", "DID document fetch latency", buckets=[0.005 * 2**i for i in range(12)],
)

# The archive scrub (jetstream/archive/scrub.py): segments of a directory archive read back and checked whole.
ARCHIVE_SCRUB_BYTES = Counter("jetstream_archive_scrub_bytes", "Segment bytes the archive scrub read back and checked")
ARCHIVE_SCRUB_SEGMENTS = Counter(
    "jetstream_archive_scrub_segments", "Segments the archive scrub finished, by outcome (ok, damaged, skipped)",
    ["outcome"],
)
ARCHIVE_SCRUB_PASSES = Counter("jetstream_archive_scrub_passes", "Archive scrub passes completed")
ARCHIVE_SCRUB_LAST_PASS = Gauge(
    "jetstream_archive_scrub_last_pass_timestamp_seconds", "When the last complete archive scrub pass ended (Unix time)"
)
