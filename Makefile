# jetstream-py developer entry points. Everything runs from ./.venv, created on demand.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run demo test build bench bench-check clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# (Re)install when the packaging or any Cython source changes; the editable
# install compiles jetstream/_core/*.pyx in place.
$(STAMP): $(PY) pyproject.toml setup.py $(wildcard jetstream/_core/*.pyx jetstream/_core/*.pxd)
	$(PY) -m pip install --quiet 'cython>=3.0' 'setuptools>=68' wheel
	$(PY) -m pip install --quiet --no-build-isolation -e '.[test]'
	$(PY) setup.py --quiet build_ext --inplace
	touch $(STAMP)

build: $(STAMP)

run: build
	$(VENV)/bin/jetstream serve

demo: build
	$(VENV)/bin/jetstream demo

test: build
	$(PY) -m pytest

# The whole suite (~5-10 min on 2 cores): one table, bench/results/latest.json.
bench: build
	$(PY) bench/suite.py

# Same-run ratios (Cython vs Python, ours vs raw broadcast, ...) against bench/thresholds.json;
# fails on a regression. Not part of `make test`.
bench-check: build
	$(PY) bench/suite.py --check

clean:
	rm -rf build $(VENV) jetstream/_core/*.c jetstream/_core/*.so *.egg-info
