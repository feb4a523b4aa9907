# `make test`: the whole suite against real processes, real directories and a real
# search node (started by the tests' fixture from the jars resolved by search-deps).
PYTEST_ARGS ?=

.PHONY: test test-fast
test: venv search-deps
	$(PY) -m pytest tests -q $(PYTEST_ARGS)

# The queue and daemon tests only (no search node, no broker): a quick check while editing.
test-fast: venv
	$(PY) -m pytest -q tests/test_queue.py tests/test_daemons.py tests/test_cli.py $(PYTEST_ARGS)
