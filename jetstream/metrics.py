"""Prometheus metrics: v1's names (V1-REFERENCE §7) plus the ones v1 lacked.

Owns: metric definitions and the metrics HTTP listener. Other modules import the
metric objects from here; nothing else registers metrics, so names stay in one place.
"""
from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from jetstream.config import parse_listen_addr

log = logging.getLogger(__name__)

# --- consumer (relay -> log), v1 names -------------------------------------------------------
EVENTS_PROCESSED = Counter(
    "consumer_events_processed", "Relay frames processed by type", ["event_type", "socket_url"]
)
OPS_PROCESSED = Counter(
    "consumer_ops_processed", "Commit ops processed (op_path is the collection, as in v1)",
    ["kind", "op_path", "socket_url"],
)
EVENT_PROCESSING_SECONDS = Histogram(
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
    "jetstream_log_write_failures", "Write batches RocksDB refused (disk full, I/O error); nothing of them was published"
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
DIDRES_CACHE = Counter(
    "jetstream_didres_cache", "DID key cache look-ups by result (hit, negative_hit, miss)", ["result"]
)
DIDRES_FETCHES = Counter("jetstream_didres_fetches", "DID documents fetched, by method (plc, web)", ["method"])
DIDRES_FAILURES = Counter(
    "jetstream_didres_failures", "DID resolutions that gave no key, by reason", ["reason"]
)
DIDRES_FETCH_SECONDS = Histogram(
    "jetstream_didres_fetch_seconds", "DID document fetch latency", buckets=[0.005 * 2**i for i in range(12)],
)

def start_metrics_listener(listen_addr: str) -> None:
    host, port = parse_listen_addr(listen_addr)
    start_http_server(port, addr=host)
    log.info("event=metrics_listening addr=%s:%d", host, port)
