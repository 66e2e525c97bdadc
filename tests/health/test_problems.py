"""jetstream/health.py: one line per outage, a metric per kind, /healthz degraded while active."""
from __future__ import annotations

import logging

from prometheus_client import REGISTRY

from jetstream.health import Problems, apply_to_report


def _sample(name: str, kind: str) -> float:
    return REGISTRY.get_sample_value(name, {"kind": kind}) or 0.0


def test_a_problem_raised_many_times_logs_and_counts_once_per_outage(caplog):
    problems = Problems()
    before = _sample("jetstream_problems_total", "test_outage")
    with caplog.at_level(logging.INFO, logger="jetstream.health"):
        assert problems.raise_problem("test_outage", "down 1", "wait") is True
        assert problems.raise_problem("test_outage", "down 2", "wait") is False
        assert problems.raise_problem("test_outage", "down 3", "wait") is False
    degraded_lines = [r for r in caplog.records if "event=health_degraded" in r.getMessage()]
    assert len(degraded_lines) == 1 and degraded_lines[0].levelno == logging.ERROR
    assert _sample("jetstream_problems_total", "test_outage") == before + 1
    assert _sample("jetstream_problem_active", "test_outage") == 1
    [listed] = problems.describe()
    assert (listed["detail"], listed["count"], listed["action"]) == ("down 3", 3, "wait")

    with caplog.at_level(logging.INFO, logger="jetstream.health"):
        assert problems.clear("test_outage") is True
        assert problems.clear("test_outage") is False
    assert sum("event=health_recovered" in r.getMessage() for r in caplog.records) == 1
    assert _sample("jetstream_problem_active", "test_outage") == 0
    problems.raise_problem("test_outage", "down again", "wait")
    assert _sample("jetstream_problems_total", "test_outage") == before + 2


def test_healthz_is_503_degraded_with_the_problems_and_200_ok_without():
    problems = Problems()
    ready, report = apply_to_report(True, {"status": "ok"}, problems)
    assert (ready, report["status"], report["problems"]) == (True, "ok", [])
    problems.raise_problem("test_disk", "disk full", "free space")
    ready, report = apply_to_report(True, {"status": "ok"}, problems)
    assert ready is False and report["status"] == "degraded"
    assert [p["kind"] for p in report["problems"]] == ["test_disk"]
    # Starting or stopping stays what it is: degraded only describes a ready process.
    ready, report = apply_to_report(False, {"status": "starting"}, problems)
    assert (ready, report["status"]) == (False, "starting")


def test_a_worker_shows_its_main_process_problems_beside_its_own():
    worker = Problems()
    worker.show_remote([{"kind": "relay_stalled", "detail": "x", "action": "y", "since": 1.0, "count": 1}])
    assert worker.degraded
    worker.raise_problem("test_worker_own", "reader met damage", "repair")
    kinds = [p["kind"] for p in worker.describe()]
    assert kinds == ["relay_stalled", "test_worker_own"]
    worker.show_remote([])
    worker.clear("test_worker_own")
    assert not worker.degraded
