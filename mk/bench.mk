# Benchmarks (issue 5): every figure beside its baseline measured in the same run.
# See docs/bench.md. Needs root for the loop-mounted ext4 it measures on (else it
# measures in $(BUILD)/bench as it is and says so).
#
#   make bench          everything (~15 min): throughput, backlog of 1,000,000,
#                       latency, idle CPU, shipper vs helpers.bulk and vs rsyslog,
#                       both killed with SIGKILL mid-run
#   make bench-quick    smaller sizes and fewer rounds (~4 min)
#   make bench-profile  pyinstrument and py-spy profiles of one pass hop
#   make bench-chart    the chart of the last results again
#   make bench-deps     rsyslog + rsyslog-elasticsearch from Debian (apt-get, only when
#                       rsyslogd or omelasticsearch is missing)
#
# Results: printed, as JSON in $(BENCH_RESULTS) and as a PNG chart beside it.
# Every run takes $(BENCH_LOCK) (flock) so two benchmarks never share the 2 cores;
# BENCH_LOCK= runs without it (e.g. when already run under `flock $(BENCH_LOCK)`).

BENCH_ARGS    ?=
BENCH_RESULTS ?= bench/results.json
BENCH_CHART   ?= $(basename $(BENCH_RESULTS)).png
BENCH_LOCK    ?= /tmp/bench.lock
BENCH_FLOCK    = $(if $(BENCH_LOCK),flock $(BENCH_LOCK))
RSYSLOG_MODDIR = $(firstword $(wildcard /usr/lib/*/rsyslog) /usr/lib/rsyslog)

.PHONY: bench bench-quick bench-profile bench-chart bench-deps

bench: venv bench-deps
	PYTHONPATH=. BUILD=$(BUILD) $(BENCH_FLOCK) $(PY) -m bench.run --results $(BENCH_RESULTS) \
	    $(BENCH_ARGS)
	$(PY) -m bench.chart $(BENCH_RESULTS) $(BENCH_CHART)

bench-quick: venv bench-deps
	PYTHONPATH=. BUILD=$(BUILD) $(BENCH_FLOCK) $(PY) -m bench.run --quick \
	    --results $(BENCH_RESULTS) $(BENCH_ARGS)
	$(PY) -m bench.chart $(BENCH_RESULTS) $(BENCH_CHART)

bench-chart: venv
	$(PY) -m bench.chart $(BENCH_RESULTS) $(BENCH_CHART)

bench-deps:
	@if [ -x /usr/sbin/rsyslogd ] && [ -e $(RSYSLOG_MODDIR)/omelasticsearch.so ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
	        rsyslog rsyslog-elasticsearch; \
	else echo "bench-deps: rsyslog/rsyslog-elasticsearch missing and not root;" \
	    "the rsyslog baseline will say so"; fi

bench-profile: venv
	PATH=$(abspath $(VENV))/bin:$$PATH PYTHONPATH=. $(BENCH_FLOCK) $(PY) -m bench.profile --tool pyinstrument
	PATH=$(abspath $(VENV))/bin:$$PATH PYTHONPATH=. $(BENCH_FLOCK) $(PY) -m bench.profile --tool py-spy
	PATH=$(abspath $(VENV))/bin:$$PATH PYTHONPATH=. $(BENCH_FLOCK) $(PY) -m bench.profile --tool pyinstrument --durability fsync
