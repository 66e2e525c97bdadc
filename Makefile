# jetstream-py developer entry points. Everything runs from ./.venv, created on demand:
# `make build` = the package (editable) and its compiled core; `make dev` adds the test tools
# (the `test` extra) that test, bench*, fuzz, soak and cluster-demo need. Neither is for a
# server: `make install` makes the production venv (no test tools, a system Python, /opt).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
# Build output is kept to errors: -qq hides pip's warnings (the machine's index settings among
# them), and the setuptools banners are gone with the SPDX license string (pyproject.toml).
PIP = -m pip install -qq --disable-pip-version-check
# What compiling the Cython core needs (setuptools >= 77 reads the SPDX `license` string).
BUILD_REQUIRES := 'cython>=3.0' 'setuptools>=77' wheel 'picows>=2.3'

.PHONY: run demo cluster-demo test build dev install bench bench-check fuzz soak clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) $(PIP) --upgrade pip

# (Re)install when the packaging or any Cython source changes; the editable
# install compiles jetstream/_core/*.pyx in place.
$(STAMP): $(PY) pyproject.toml setup.py $(wildcard jetstream/_core/*.pyx jetstream/_core/*.pxd)
	$(PY) $(PIP) $(BUILD_REQUIRES)  # the build cimports picows.pxd
	$(PY) $(PIP) --no-build-isolation -e .
	$(PY) setup.py --quiet build_ext --inplace
	touch $(STAMP)

build: $(STAMP)

# The test extra's requirements, read from pyproject.toml (installing '.[test]' would build
# the package again).
$(DEV_STAMP): $(STAMP)
	$(PY) -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["test"]))' > $(VENV)/test-requirements.txt
	$(PY) $(PIP) -r $(VENV)/test-requirements.txt
	touch $(DEV_STAMP)

dev: $(DEV_STAMP)

# The production venv, $(PREFIX)/.venv (systemd/jetstream.service runs /opt/jetstream/.venv/bin/jetstream):
# a regular (not editable) install, so it needs nothing of this checkout once made; without the
# test extra; made afresh (--clear: stop the service first) from INSTALL_PYTHON, which must be a
# system Python 3.11+ (with its venv module and headers): the unit's ProtectHome=yes hides /root
# and /home, so a venv made from a pyenv/conda Python there cannot start under it
# (systemd/check_install_python.py refuses one before anything is made). The docs go beside it
# for the unit's Documentation= lines. INSTALL_EXTRAS=cluster adds the NATS client (--cluster).
PREFIX ?= /opt/jetstream
INSTALL_PYTHON ?= /usr/bin/python3
INSTALL_EXTRAS ?=
install:
	@$(INSTALL_PYTHON) systemd/check_install_python.py $(PREFIX)
	$(INSTALL_PYTHON) -m venv --clear $(PREFIX)/.venv
	$(PREFIX)/.venv/bin/python $(PIP) --upgrade pip
	$(PREFIX)/.venv/bin/python $(PIP) '.$(if $(INSTALL_EXTRAS),[$(INSTALL_EXTRAS)])'
	@if [ "$$(realpath $(PREFIX))" != "$$(realpath .)" ]; then \
	  mkdir -p $(PREFIX)/docs && cp -R docs/. $(PREFIX)/docs/ && cp README.md $(PREFIX)/; fi
	@echo "install: $(PREFIX)/.venv/bin/jetstream ($$($(PREFIX)/.venv/bin/python -c 'import sys; print(sys.version.split()[0])'), no test extras)"

run: build
	$(VENV)/bin/jetstream serve

demo: build
	$(VENV)/bin/jetstream demo

# 3 NATS servers + 3 `jetstream serve --cluster` nodes + relay-sim on loopback; prints each
# node's URL and a status line per node every 5 s; Ctrl-C stops them all and removes their
# state dir (CLUSTER_DEMO_ARGS=--keep keeps it; its path is printed first).
CLUSTER_DEMO_ARGS ?=
cluster-demo: dev
	$(PY) -m jetstream.cluster.demo $(CLUSTER_DEMO_ARGS)

test: dev
	$(PY) -m pytest

# The whole suite (~5-10 min on 2 cores): one table, bench/results/latest.json.
bench: dev
	$(PY) bench/suite.py

# The perf gates under pytest-benchmark (bench/bench_gates.py, one test per stage): same-run
# ratios (Cython vs Python, ours vs raw broadcast, ...) against bench/thresholds.json, and the
# stage times against this machine's last saved run (--benchmark-compare-fail); one table at
# the end, from the saved JSON. Not part of `make test`. BENCH_ARGS="--quick" etc.
BENCH_ARGS ?=
bench-check: dev
	$(PY) bench/check.py $(BENCH_ARGS)

# Long atheris runs (fuzz/README.md): FUZZ_SECONDS per target; not part of `make test`,
# which runs bounded hypothesis versions of the same properties (tests/fuzz/).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?= decode_frame car record_json params http_upgrade signatures
fuzz: dev
	$(PY) $(PIP) atheris || { echo "atheris did not install (it needs a wheel or clang with libFuzzer)"; exit 1; }
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
soak: dev
	$(PY) soak/soak.py $(SOAK_ARGS)

clean:
	rm -rf build $(VENV) jetstream/_core/*.c jetstream/_core/*.so *.egg-info
