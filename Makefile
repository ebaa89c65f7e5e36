# ml-metrics-bridge: the two commands a fresh machine needs are `make demo` and `make test`.
# Everything Python lives in .venv (created on first use); Debian packages that tests run
# for real (Prometheus) are installed by `make system-deps` when missing.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck install system-deps bench bench-smoke validate-mappings \
	constraints

demo: $(STAMP)  ## run the bridge against a simulated training job, printing metrics
	$(BIN)/ml-metrics-bridge demo

test: $(STAMP) system-deps  ## the whole test suite, lint and type checks included
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

validate-mappings: $(STAMP)
	$(BIN)/ml-metrics-bridge validate mappings/

constraints: $(STAMP)  ## pin the image's dependencies (constraints.txt) to the versions in .venv
	$(BIN)/python deploy/constraints.py

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

system-deps:
	@bash .ci/system-deps

bench: $(STAMP)  ## performance suite; writes bench/results.md
	$(BIN)/python -m bench

bench-smoke: $(STAMP)
	$(BIN)/python -m bench --smoke

-include deploy.mk
