# jetstream-py developer entry points. Everything runs from ./.venv, created on demand.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run demo cluster-demo test build bench bench-check fuzz soak clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# (Re)install when the packaging or any Cython source changes; the editable
# install compiles jetstream/_core/*.pyx in place.
$(STAMP): $(PY) pyproject.toml setup.py $(wildcard jetstream/_core/*.pyx jetstream/_core/*.pxd)
	$(PY) -m pip install --quiet 'cython>=3.0' 'setuptools>=68' wheel 'picows>=2.3'  # the build cimports picows.pxd
	$(PY) -m pip install --quiet --no-build-isolation -e '.[test]'
	$(PY) setup.py --quiet build_ext --inplace
	touch $(STAMP)

build: $(STAMP)

run: build
	$(VENV)/bin/jetstream serve

demo: build
	$(VENV)/bin/jetstream demo

# 3 NATS servers + 3 `jetstream serve --cluster` nodes + relay-sim on loopback; prints each
# node's URL and a status line per node every 5 s; Ctrl-C stops them all.
cluster-demo: build
	$(PY) -m jetstream.cluster.demo

test: build
	$(PY) -m pytest

# The whole suite (~5-10 min on 2 cores): one table, bench/results/latest.json.
bench: build
	$(PY) bench/suite.py

# The perf gates under pytest-benchmark (bench/bench_gates.py, one test per stage): same-run
# ratios (Cython vs Python, ours vs raw broadcast, ...) against bench/thresholds.json, and the
# stage times against this machine's last saved run (--benchmark-compare-fail); one table at
# the end, from the saved JSON. Not part of `make test`. BENCH_ARGS="--quick" etc.
BENCH_ARGS ?=
bench-check: build
	$(PY) bench/check.py $(BENCH_ARGS)

# Long atheris runs (fuzz/README.md): FUZZ_SECONDS per target; not part of `make test`,
# which runs bounded hypothesis versions of the same properties (tests/fuzz/).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= decode_frame car record_json params http_upgrade signatures
fuzz: build
	$(PY) -m pip install --quiet atheris || { echo "atheris did not install (it needs a wheel or clang with libFuzzer)"; exit 1; }
	$(PY) fuzz/seeds.py build/fuzz
	@for target in $(FUZZ_TARGETS); do \
	  echo "== fuzz $$target ($(FUZZ_SECONDS) s)"; \
	  $(PY) fuzz/fuzz_$$target.py -max_total_time=$(FUZZ_SECONDS) -timeout=30 -rss_limit_mb=2048 \
	    -artifact_prefix=build/fuzz/$$target/ build/fuzz/$$target/corpus build/fuzz/$$target/seeds \
	    > build/fuzz/$$target/last-run.log 2>&1; status=$$?; \
	  grep -E "^Done|ERROR: libFuzzer|Uncaught Python exception|Traceback|crash-" build/fuzz/$$target/last-run.log; \
	  [ $$status -eq 0 ] || { echo "fuzz $$target failed: see build/fuzz/$$target/last-run.log"; exit $$status; }; \
	done

# 10 minutes of relay-sim at 2,000 events/s into `jetstream serve` with 200 mixed subscribers
# (soak/soak.py); prints an RSS/CPU/delivery table and exits non-zero on any invariant
# violation or unexpected disconnect. Not part of `make test`. SOAK_ARGS="--duration 180" etc.
SOAK_ARGS ?=
soak: build
	$(PY) soak/soak.py $(SOAK_ARGS)

clean:
	rm -rf build $(VENV) jetstream/_core/*.c jetstream/_core/*.so *.egg-info
