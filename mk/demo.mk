# `make demo`: the main job end to end - a local OpenSearch node, `pipers enrich` and
# `pipers ship` as separate processes chained by queue directories, sample data fed with
# `pipers put`, then queue status, document counts and a sample document. See
# docs/shipper.md. Knob: DEMO_DOCS (generated records on top of demo/sample.ndjson).
DEMO_DOCS ?= 5000

.PHONY: demo
demo: venv search-deps
	DEMO_DOCS=$(DEMO_DOCS) PIPERS_BUILD=$(abspath $(BUILD)) $(PY) demo/run.py
