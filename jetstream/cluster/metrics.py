"""Prometheus metrics of cluster mode (all `jetstream_cluster_*`).

Owns: the names, help texts and labels of the cluster's metrics. Gauges are set by
the node from its own state; counters are advanced where things happen.
It must never be imported in single-node mode (the series would only confuse dashboards).
"""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ROLE_LEADER = Gauge("jetstream_cluster_leader", "1 while this node holds the ingest lease and ingests")
LEADER_CHANGES = Counter("jetstream_cluster_leadership_changes_total",
                         "times this node became leader or stepped down", ["change"])
APPLIED_SEQ = Gauge("jetstream_cluster_applied_stream_seq",
                    "stream sequence of the last message applied to the local log")
APPLIED_TIME_US = Gauge("jetstream_cluster_applied_time_us", "time_us of the newest event applied to the local log")
STREAM_LAST_SEQ = Gauge("jetstream_cluster_stream_last_seq", "last sequence of the stream, as last seen")
LAG_MESSAGES = Gauge("jetstream_cluster_replication_lag_messages", "stream messages not yet applied locally")
LAG_SECONDS = Gauge("jetstream_cluster_replication_lag_seconds",
                    "wall clock minus the time_us of the newest applied event, while messages are pending")
APPLIED_EVENTS = Counter("jetstream_cluster_applied_events_total", "events applied from the stream to the local log")
APPLY_ERRORS = Counter("jetstream_cluster_apply_errors_total", "stream messages that could not be applied", ["reason"])
PUBLISHED_EVENTS = Counter("jetstream_cluster_published_events_total", "events this node published as leader")
PUBLISH_FAILURES = Counter("jetstream_cluster_publish_failures_total",
                           "publishes that failed (fenced: another leader wrote first)", ["reason"])
PUBLISH_RETRIES = Counter("jetstream_cluster_publish_retries_total",
                          "publish attempts NATS did not answer in time, sent again under the same fence")
# Fine below 25 ms: the follower's latency target is p99 < 25 ms from sequencing to a client.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.035, 0.05, 0.075,
                   0.1, 0.15, 0.25, 0.5, 1.0, 5.0)
PUBLISH_SECONDS = Histogram("jetstream_cluster_publish_seconds", "time from publish to the stream's ack",
                            buckets=LATENCY_BUCKETS)
PUBLISH_WAIT_SECONDS = Histogram("jetstream_cluster_publish_wait_seconds",
                                 "time a batch waited in the publisher before its message was published",
                                 buckets=LATENCY_BUCKETS)
APPLY_DELAY_SECONDS = Histogram("jetstream_cluster_apply_delay_seconds",
                                "wall clock when a message is applied here minus the time_us of its first event",
                                buckets=LATENCY_BUCKETS)
CURSOR_WAITS = Counter("jetstream_cluster_cursor_waits_total",
                       "subscribers whose cursor was ahead of this node's log, by outcome", ["outcome"])
