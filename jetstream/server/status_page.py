"""`GET /status` and `GET /stats/collections`: what the daemon shows about itself.

Owns: the bytes of the status page (jetstream/server/static/status.html: one
self-contained HTML file whose inline script polls `/healthz` and `/stats/collections`
and draws the rates; no build step, nothing fetched from elsewhere, works offline) and
the JSON document of `/stats/collections` (ingest's CollectionStats report).
It must never compute figures itself: ingest counts, the daemon reports health.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def page_bytes() -> bytes:
    return resources.files("jetstream.server").joinpath("static", "status.html").read_bytes()


def collection_stats_report(collection_stats) -> dict:
    """The `/stats/collections` document; an empty one when nothing counts (a server without ingest)."""
    if collection_stats is None:
        return {"collections": {}, "total_events": 0, "totals": {}}
    return collection_stats.report()
