# Two commands do everything on a fresh machine:
#   make demo   install, then simulate and replay a small night (SQLite, 3 ranks)
#   make test   install, then run the whole test suite (MPI and PostgreSQL included)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install demo test lint bench clean

$(STAMP): setup.cfg pyproject.toml
	@echo "make: installing nightpipe into $(VENV) (about a minute; the numba kernels compile last)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	@# MPI: use the machine's if it has one, else the MPICH wheel from PyPI.
	@if ! command -v mpiexec >/dev/null 2>&1; then $(BIN)/pip install -q mpich; fi
	@# PostgreSQL binaries for the throwaway test server.
	@if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	    (apt-get update -q && apt-get install -y -q postgresql) || echo "warning: could not install PostgreSQL"; fi
	@# The numba kernels, compiled once here rather than by every rank on first start.
	$(BIN)/python -m association.warmup
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/nightpipe demo

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: $(STAMP)
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b; done

clean:
	rm -rf $(VENV) build *.egg-info
