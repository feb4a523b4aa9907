# `make demo`: the sample configuration's full pipeline end to end - a local OpenSearch
# node; `pipers probe` (etc/checks.example.py), `pipers collect` (a few dropped JSON files)
# and `pipers put` (demo/sample.ndjson) feeding `pipers enrich` and `pipers ship`, each a
# separate process started with etc/pipers.toml (its paths moved under build/demo/); then
# `pipers status`, document counts and sample documents. See demo/run.py.
# Knob: DEMO_DOCS (generated records on top of demo/sample.ndjson).
DEMO_DOCS ?= 5000

.PHONY: demo
demo: venv search-deps
	DEMO_DOCS=$(DEMO_DOCS) PIPERS_BUILD=$(abspath $(BUILD)) $(PY) demo/run.py
