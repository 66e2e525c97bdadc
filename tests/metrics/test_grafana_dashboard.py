"""contrib/grafana-dashboard.json only queries series the daemon really exports."""
from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry

import jetstream.cluster.metrics  # noqa: F401 - registers the cluster metrics on the default registry
import jetstream.metrics  # noqa: F401 - registers the ingest metrics on the default registry
from jetstream.implementation import LiveRing
from jetstream.log.store import EventLog
from jetstream.server.app import SubscribeServer
from jetstream.server.metrics import SERVER_METRICS, register_server

DASHBOARD = Path(__file__).resolve().parents[2] / "contrib" / "grafana-dashboard.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
PROMQL_WORDS = {"sum", "by", "rate", "increase", "topk", "max", "histogram_quantile", "le", "instance",
                "label_values", "time", "reason", "kind", "event_type", "op_path", "outcome", "ip_address",
                "result", "method", "change", "where", "wire"}


def exported_series(tmp_path) -> set[str]:
    event_log = EventLog(str(tmp_path / "data"))
    try:
        registry = CollectorRegistry()
        register_server(SubscribeServer(event_log, LiveRing(16, floor_time_us=0)), registry)
        families = list(REGISTRY.collect()) + list(registry.collect())
    finally:
        event_log.close()
    return {family.name + suffix for family in families for suffix in SUFFIXES.get(family.type, ("",))}


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"]]
    return exprs


def test_every_series_the_dashboard_queries_is_exported(tmp_path):
    exported = exported_series(tmp_path)
    assert {"consumer_events_processed_total", "jetstream_events_delivered_total"} <= exported
    for expr in dashboard_expressions():
        names = set(re.findall(r"(?<![0-9.])[a-z_][a-z0-9_]*(?=[{\[(,)]|$)", re.sub(r'"[^"]*"', "", expr))) - PROMQL_WORDS
        assert names and names <= exported, (expr, names - exported)


def test_the_dashboard_shows_every_server_metric_and_every_ingest_metric(tmp_path):
    text = " ".join(dashboard_expressions())
    ingest_names = [name for name in dir(jetstream.metrics) if name.isupper()]
    families = {getattr(jetstream.metrics, name)._name for name in ingest_names
                if hasattr(getattr(jetstream.metrics, name), "_name")}
    cluster = {family.name for family in REGISTRY.collect() if family.name.startswith("jetstream_cluster_")}
    assert cluster, "the cluster metrics are registered"
    missing = [name for name in sorted(families | set(SERVER_METRICS) | cluster) if name not in text]
    assert missing == [], missing
