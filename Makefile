# Two commands do everything on a fresh machine:
#   make demo   install, then simulate and replay a small night (SQLite, 3 ranks)
#   make test   install, then run the whole test suite (MPI, PostgreSQL, Prometheus and a
#               headless browser included)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SERVERS := $(VENV)/.test-servers

export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install demo test lint bench clean

$(STAMP): setup.cfg pyproject.toml
	@echo "make: installing nightpipe into $(VENV) (about a minute; the numba kernels compile last)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@# Rubin's alert schemas: only the .avsc files are used, so not its heavy dependencies.
	$(BIN)/pip install -q --no-deps 'lsst-alert-packet>=30.2026.2700'
	@# MPI: the machine's if mpi4py loads it, else the MPICH wheel from PyPI (an mpiexec
	@# on the PATH is not enough: it may be another environment's).
	@if ! $(BIN)/python -c 'from mpi4py import MPI' >/dev/null 2>&1; then $(BIN)/pip install -q mpich; fi
	@# The numba kernels, compiled once here rather than by every rank on first start.
	$(BIN)/python -m association.warmup
	touch $@

# What only the tests need: throwaway servers and tools, from Debian's packages.
$(SERVERS): $(STAMP)
	@echo "make: installing the test servers (PostgreSQL, Prometheus, Chromium) if missing"
	@# PostgreSQL binaries for the throwaway test server.
	@if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	    (apt-get update -q && apt-get install -y -q postgresql) || echo "warning: could not install PostgreSQL"; fi
	@# Prometheus, for the test that has a real one scrape the metrics endpoint.
	@if ! command -v prometheus >/dev/null 2>&1; then \
	    (apt-get update -q && apt-get install -y -q prometheus) || echo "warning: could not install Prometheus"; fi
	@# Headless Chromium, for the test that opens the live night page in a browser.
	@if ! command -v chromium-headless-shell >/dev/null 2>&1 && ! command -v chromium >/dev/null 2>&1; then \
	    (apt-get update -q && apt-get install -y -q chromium chromium-headless-shell) || echo "warning: could not install Chromium"; fi
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/nightpipe demo

test: $(STAMP) $(SERVERS)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q --durations=15

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

# bench_survey.py (five full-density nights, hours) is run on its own.
bench: $(STAMP)
	@for b in $(filter-out benchmarks/bench_survey.py,$(wildcard benchmarks/bench_*.py)); do \
		echo "== $$b"; $(BIN)/python $$b; done

clean:
	rm -rf $(VENV) build *.egg-info
