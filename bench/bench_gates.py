"""The perf gates as pytest-benchmark tests: one per stage of bench/suite.py.

Owns: `make bench-check`. Each stage runs in its own process (suite.run_stage_in_child, as
`make bench` does), timed by pytest-benchmark; its table rows go into the run's saved JSON
(`extra_info`), and each same-run ratio the stage measures is asserted against its floor in
bench/thresholds.json (a floor whose ratio the stage did not produce fails too: the gate
must never go quiet). bench/check.py runs this file with --benchmark-autosave and, when an
earlier run of the same machine is saved, --benchmark-compare/--benchmark-compare-fail, then
prints the one-table report from the saved JSON.
It must never be part of `make test` (pytest's testpaths is tests/) and never gate absolute
speeds: the machine is shared, only ratios measured in one run are compared with floors.

Run: `make bench-check`, or `.venv/bin/python bench/check.py [--quick] [-k replay]`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import suite

THRESHOLDS = json.loads((Path(__file__).resolve().parent / "thresholds.json").read_text())["min_ratio"]
QUICK = os.environ.get("JETSTREAM_BENCH_QUICK", "") == "1"
# Which floors of thresholds.json each stage answers for.
GATED_PREFIXES = {"ingest": ("ingest_", "record_json_"), "filter": ("filter_",), "fanout": ("fanout_",),
                  "replay": ("replay_",), "latency": (), "memory": (),
                  "workers": ("workers_",), "live": ("live_",),  # --workers 2 vs 1 (bench_workers.py)
                  "archive": ("archive_",)}  # getSegment vs a raw read (bench_archive_serve.py)


def floors_of(stage: str) -> dict[str, float]:
    prefixes = GATED_PREFIXES[stage]
    return {key: floor for key, floor in THRESHOLDS.items() if prefixes and key.startswith(prefixes)}


def below_floor(rows: list[dict], floors: dict[str, float]) -> list[str]:
    """Every floor whose ratio is missing or under it, as a readable line."""
    ratios = {row["ratio_key"]: row["ratio"] for row in rows if row["ratio_key"]}
    failures = []
    for key, floor in floors.items():
        ratio = ratios.get(key)
        if ratio is None:
            failures.append(f"{key}: not measured")
        elif ratio < floor:
            failures.append(f"{key}: ratio {ratio:.2f} < floor {floor}")
    return failures


def test_every_floor_belongs_to_a_stage():
    claimed = {key for stage in GATED_PREFIXES for key in floors_of(stage)}
    assert claimed == set(THRESHOLDS)


@pytest.mark.parametrize("stage", list(GATED_PREFIXES))
def test_stage(benchmark, stage):
    suite.raise_nofile_limit()
    suite.RESULTS_DIR.mkdir(exist_ok=True)
    table, errors = suite.Table(), {}
    benchmark.pedantic(suite.run_stage_in_child, args=(stage, QUICK, table, errors), rounds=1, iterations=1)
    benchmark.extra_info.update(stage=stage, quick=QUICK, machine=suite.machine(), rows=table.rows, errors=errors)
    assert not errors, errors
    assert table.rows, f"stage {stage} measured nothing"
    failures = below_floor(table.rows, floors_of(stage))
    assert not failures, "\n".join(failures)
