# The fault suite (tests/faults/, see docs/guarantees.md): chaos kills, a search node gone
# for a minute, 1,000 bad inputs, a full disk, security, durability ordering. `make test`
# runs it with the rest of tests/; these targets run it alone. Needs root (the disk-full
# tests mount a tmpfs), strace, socat and openssl (.ci/apt-packages).
#
#   make test-faults         as CI runs it: chaos with 100,000 messages (~9 min in all)
#   make test-faults-quick   chaos with 20,000 messages and 20 s outages, while editing
#
# Knobs: PIPERS_CHAOS_MESSAGES, PIPERS_CHAOS_SEED (replay a failed chaos run),
# PIPERS_OUTAGE_SECONDS (60), PYTEST_ARGS.
PYTEST_ARGS ?=

.PHONY: test-faults test-faults-quick
test-faults: venv search-deps
	$(PY) -m pytest tests/faults -q $(PYTEST_ARGS)

test-faults-quick: venv search-deps
	PIPERS_CHAOS_MESSAGES=20000 PIPERS_OUTAGE_SECONDS=20 $(PY) -m pytest tests/faults -q \
	    $(PYTEST_ARGS)
