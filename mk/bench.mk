# Benchmarks (issue 5): every figure beside its baseline measured in the same run.
# See docs/bench.md. Needs root for the loop-mounted ext4 it measures on (else it
# measures in $(BUILD)/bench as it is and says so).
#
#   make bench          everything (~15 min): throughput, backlog of 1,000,000,
#                       latency, idle CPU, shipper (when bench/ship_bench.py exists)
#   make bench-quick    smaller sizes and fewer rounds (~4 min)
#   make bench-profile  pyinstrument and py-spy profiles of one pass hop
#
# Results: printed, and as JSON in bench/results.json.

BENCH_ARGS ?=

.PHONY: bench bench-quick bench-profile

bench: venv
	PYTHONPATH=. BUILD=$(BUILD) $(PY) -m bench.run $(BENCH_ARGS)

bench-quick: venv
	PYTHONPATH=. BUILD=$(BUILD) $(PY) -m bench.run --quick $(BENCH_ARGS)

bench-profile: venv
	PATH=$(abspath $(VENV))/bin:$$PATH PYTHONPATH=. $(PY) -m bench.profile --tool pyinstrument
	PATH=$(abspath $(VENV))/bin:$$PATH PYTHONPATH=. $(PY) -m bench.profile --tool py-spy
	PATH=$(abspath $(VENV))/bin:$$PATH PYTHONPATH=. $(PY) -m bench.profile --tool pyinstrument --durability fsync
