# ml-metrics-bridge: the two commands a fresh machine needs are `make demo` and `make test`.
# Everything Python lives in .venv (created on first use); Debian packages that tests run
# for real (Prometheus) are installed by `make system-deps` when missing.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUNTIME := $(VENV)/.runtime-installed

.PHONY: demo test lint typecheck install system-deps bench bench-smoke validate-mappings \
	constraints

demo: $(RUNTIME)  ## run the bridge against a simulated training job, printing metrics
	$(BIN)/python -m translator demo

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

# Everything: the package (editable, so .venv/bin/ml-metrics-bridge exists) with the test
# tool chain. `python -m venv` on an existing .venv adds pip if `make demo` made it without.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP) $(RUNTIME)

# `make demo` needs the runtime only: the dependencies listed in pyproject.toml at the
# versions of constraints.txt, and it runs from the source tree (python -m translator), so
# nothing is built. The slow parts of a first install are skipped: $(PYTHON)'s own pip
# installs into the venv when it can (pip >= 22.3 has --python), so the venv gets no pip of
# its own, pip is not upgraded, and nothing is byte-compiled ahead (the demo compiles what it
# imports). The time to first metrics is in README.md.
RUNTIME_DEPS = $(PYTHON) -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"], sep="\n")'
$(RUNTIME): pyproject.toml constraints.txt
	@echo "make demo: installing the runtime only into $(VENV) (make test adds the test tool chain):"
	@echo "  $$($(RUNTIME_DEPS) | sed 's/[<>=~!;, ].*//' | tr '\n' ' ')"
	@if $(PYTHON) -m pip --help 2>/dev/null | grep -q -- '--python <python>'; then \
	    [ -x $(BIN)/python ] || $(PYTHON) -m venv --without-pip $(VENV); \
	    pip="$(PYTHON) -m pip --python $(BIN)/python"; \
	else \
	    [ -x $(BIN)/python ] && $(BIN)/python -m pip --version >/dev/null 2>&1 || $(PYTHON) -m venv $(VENV); \
	    pip="$(BIN)/python -m pip"; \
	fi; \
	$(RUNTIME_DEPS) > $(VENV)/runtime-requirements.txt && \
	$$pip install --quiet --disable-pip-version-check --no-compile \
	    -r $(VENV)/runtime-requirements.txt -c constraints.txt
	@touch $(RUNTIME)

system-deps:
	@bash .ci/system-deps

bench: $(STAMP)  ## performance suite; writes bench/results.md
	$(BIN)/python -m bench

bench-smoke: $(STAMP)
	$(BIN)/python -m bench --smoke

-include deploy.mk
