"""The perf gate's own logic (bench/bench_gates.py, bench/check.py), without running a benchmark."""
from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"


def _bench_module(name: str):
    if str(BENCH_DIR) not in sys.path:
        sys.path.insert(0, str(BENCH_DIR))
    return importlib.import_module(name)


def test_every_threshold_floor_is_claimed_by_exactly_one_stage():
    gates = _bench_module("bench_gates")
    claims = [key for stage in gates.GATED_PREFIXES for key in gates.floors_of(stage)]
    assert sorted(claims) == sorted(gates.THRESHOLDS) and len(claims) == len(set(claims))


def test_a_ratio_under_its_floor_or_missing_fails_the_gate():
    gates = _bench_module("bench_gates")
    rows = [{"ratio_key": "filter_unfiltered", "ratio": 9.0}, {"ratio_key": "filter_1_collection", "ratio": 2.0},
            {"ratio_key": "", "ratio": None}]
    floors = {"filter_unfiltered": 5, "filter_1_collection": 5, "filter_10000_DIDs": 3}
    assert gates.below_floor(rows, floors) == ["filter_1_collection: ratio 2.00 < floor 5",
                                               "filter_10000_DIDs: not measured"]


def test_the_one_table_is_rebuilt_from_a_saved_pytest_benchmark_run():
    check = _bench_module("check")
    row = {"stage": "filter", "metric": "ring scan, unfiltered", "ours": 20.0, "unit": "ns/event", "baseline": 400.0,
           "baseline_name": "pure-Python twin", "ratio": 20.0, "ratio_key": "filter_unfiltered", "target": ""}
    saved = {"benchmarks": [{"stats": {"min": 3.5},
                             "extra_info": {"rows": [row], "errors": {}, "machine": {"nproc": 2}, "quick": True}}]}
    results = check.table_from(json.loads(json.dumps(saved)))
    assert results["rows"] == [row] and results["quick"] is True and results["seconds"] == 3.5
    assert "| filter | ring scan, unfiltered | 20.00 ns/event | 400.0 (pure-Python twin) | 20.00x |" in results["markdown"]
