"""`make bench-check`: the pytest-benchmark gates, the comparison with this machine's last run, one table.

Owns: running bench/bench_gates.py under pytest-benchmark with --benchmark-autosave into
bench/results/benchmarks/<machine>/<quick|full>/ (so runs of different machines or sizes are
never compared),
adding --benchmark-compare and --benchmark-compare-fail when an earlier run of this machine
is saved, and printing the one-table report (and bench/results/latest.json, the shape
`bench/suite.py --check-only` reads) from the JSON pytest-benchmark saved.
It must never measure anything itself.

Run: `.venv/bin/python bench/check.py [--quick] [--compare-fail min:100%] [pytest args...]`
"""
from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
# Stage wall time of a fixed amount of work; on a shared 2-core machine it varies by tens of
# percent run to run, so only a doubling fails the comparison (the ratio floors are the fine gate).
DEFAULT_COMPARE_FAIL = "min:100%"


def machine_key() -> str:
    with open("/proc/cpuinfo") as cpuinfo:
        model = next((line.split(":", 1)[1] for line in cpuinfo if line.startswith("model name")), "cpu")
    return re.sub(r"[^A-Za-z0-9]+", "-", f"{socket.gethostname()}-{os.cpu_count()}x-{model}").strip("-")[:100]


def saved_runs(storage: Path) -> list[Path]:
    return sorted(storage.rglob("*.json"), key=lambda path: path.stat().st_mtime)


def table_from(saved: dict) -> dict:
    """bench/suite.py's results shape (rows, errors, markdown) from a pytest-benchmark JSON."""
    sys.path[:0] = [str(REPO_ROOT), str(BENCH_DIR)]
    import suite

    table, errors, machine, quick = suite.Table(), {}, {}, False
    for bench in saved["benchmarks"]:
        info = bench.get("extra_info", {})
        table.rows += info.get("rows", [])
        errors.update(info.get("errors", {}))
        machine = info.get("machine", machine)
        quick = info.get("quick", quick)
    seconds = sum(bench["stats"]["min"] for bench in saved["benchmarks"])
    return {"machine": machine, "quick": quick, "seconds": seconds, "rows": table.rows, "errors": errors,
            "markdown": table.markdown()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    parser.add_argument("--compare-fail", default=DEFAULT_COMPARE_FAIL,
                        help=f"pytest-benchmark --benchmark-compare-fail expression (default {DEFAULT_COMPARE_FAIL})")
    args, pytest_args = parser.parse_known_args()
    # Quick and full runs do different amounts of work: each is compared only with its own kind.
    storage = RESULTS_DIR / "benchmarks" / machine_key() / ("quick" if args.quick else "full")
    earlier = saved_runs(storage)
    command = [sys.executable, "-m", "pytest", str(BENCH_DIR / "bench_gates.py"), "-p", "no:cacheprovider", "-v",
               "--benchmark-enable", "--benchmark-autosave", f"--benchmark-storage=file://{storage}",
               "--benchmark-columns=min,rounds", "--timeout=3600"]
    if earlier:
        command += ["--benchmark-compare", f"--benchmark-compare-fail={args.compare_fail}"]
    else:
        print(f"bench-check: no earlier run saved under {storage}; this run becomes the reference", flush=True)
    environ = dict(os.environ, JETSTREAM_BENCH_QUICK="1" if args.quick else "0")
    status = subprocess.run(command + pytest_args, cwd=REPO_ROOT, env=environ).returncode
    runs = saved_runs(storage)
    if runs and runs[-1] not in earlier:
        results = table_from(json.loads(runs[-1].read_text()))
        (RESULTS_DIR / "latest.json").write_text(json.dumps(results, indent=1))
        print("\n" + results["markdown"])
        print(f"\nsaved {runs[-1].relative_to(REPO_ROOT)}; table in bench/results/latest.json; "
              f"machine {results['machine']}")
    print("bench-check OK" if status == 0 else f"bench-check FAILED (pytest exit {status})")
    return status


if __name__ == "__main__":
    sys.exit(main())
