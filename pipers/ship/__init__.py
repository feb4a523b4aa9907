"""The shipper: bundles of queued messages committed to an Elasticsearch-API `_bulk`.

- `bundle`: a message's bytes -> one ``create`` action plus its source line (NDJSON)
- `index`: the index a message goes to (template over message fields and its time)
- `bulk`: HTTP through elastic-transport and the reading of a bulk answer, per item
- `backoff`: jittered exponential waits with a cap
- `shipper`: the `Ship` daemon (claim, bundle, send, finish each message by its answer)
- `command`: ``pipers ship``
"""
