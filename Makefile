# Entry points: `make repro` (the pipeline), `make test` (the whole suite, as CI runs it),
# `make test-fast` (the edit loop: the unit tier, neither `slow` (integration: a server, the sandbox, the
# CLI in a subprocess, training) nor `e2e` (dvc repro, accelerate launch, services)) and `make lint`.
# Both run the tests on every core (pytest-xdist): most of a test's time is subprocesses and I/O.
# Each creates .venv/ from requirements.lock when it is missing or out of date.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Stage commands in dvc.yaml call `python` and `accelerate`: the venv's, without activating it.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: venv repro test test-fast lint bench clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

repro: $(STAMP)
	$(VENV)/bin/dvc repro

test: $(STAMP)
	$(VENV)/bin/pytest -q -n auto $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(VENV)/bin/pytest -q -n auto -m "not slow and not e2e" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src stages tests benchmarks
	$(VENV)/bin/ruff format --check src stages tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/segment.py data/raw

clean-venv:
	rm -rf $(VENV)
