# jetstream-py developer entry points. Everything runs from ./.venv, created on demand.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run demo test build bench clean

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

bench: build
	$(PY) -m pytest bench --benchmark-enable --benchmark-json=bench/results.json

clean:
	rm -rf build $(VENV) jetstream/_core/*.c jetstream/_core/*.so *.egg-info
