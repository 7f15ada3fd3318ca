# Two entry points: `make repro` (the pipeline) and `make test` (the test suite).
# Both create .venv/ from requirements.lock when it is missing or out of date.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Stage commands in dvc.yaml call `python` and `accelerate`: the venv's, without activating it.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: venv repro test bench clean-venv

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
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/segment.py data/raw

clean-venv:
	rm -rf $(VENV)
