# Pipers — the two commands a newcomer needs are `make demo` and `make test`.
# Each area keeps its own targets in mk/*.mk (search node, benchmarks, ...).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIPERS := $(VENV)/bin/pipers
BUILD  ?= build

.PHONY: all venv test lint bench demo clean
all: test

venv: $(VENV)/.installed
$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -U pip
	$(VENV)/bin/pip install -q -e '.[test,bench]'
	touch $@

lint: venv
	$(VENV)/bin/ruff check queues pipers tests bench search

clean:
	rm -rf $(BUILD) .pytest_cache .ruff_cache

include mk/*.mk
