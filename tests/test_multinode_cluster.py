"""Acceptance: the shipper against a real three-node cluster, one node SIGKILLed mid-run:
every document indexed, none twice."""

from __future__ import annotations

import signal
import threading
import time
import uuid

import orjson

from queues import Queue
from search.node import SearchError
from tests.helpers import files, wait_for

TOTAL = 10_000


def indexed(node, index: str) -> int:
    for _ in range(100):
        try:
            node.refresh(index)
            return node.count(index)
        except SearchError as e:  # shards moving after a node died: ask again
            if e.status not in (503, 500) and e.status is not None:
                raise
            time.sleep(0.2)
    raise AssertionError(f"{index} never became searchable")


def test_three_node_cluster_one_node_killed_mid_run_every_document_once(
        tmp_path, daemons, search_node_factory):
    cluster = search_node_factory(nodes=3, heap="512m")
    index = f"pipers-test-multi-{uuid.uuid4().hex[:8]}"
    # shards and replicas on every node: whichever node dies held primaries
    cluster.request("PUT", f"/{index}",
                    {"settings": {"number_of_shards": 3, "number_of_replicas": 1}})
    cluster.request("GET", "/_cluster/health?wait_for_status=green&timeout=60s", timeout=70)
    q = Queue(tmp_path / "ship")
    ship = daemons.start(
        "ship", "--queue-in-dir", q.path, *[a for u in cluster.urls for a in ("--es-url", u)],
        "--default-index", index, "--queue-in-wait", "0.5", "--flush-interval", "0.2",
        "--bundle-size", "500", "--retry-max-wait", "2", "--request-timeout", "30",
    )
    names: list[str] = []

    def feed() -> None:
        for start in range(0, TOTAL, 250):
            names.extend(q.put_many([orjson.dumps({"i": i})
                                     for i in range(start, start + 250)]))
            time.sleep(0.1)

    feeder = threading.Thread(target=feed, name="test-feeder", daemon=True)
    feeder.start()
    try:
        wait_for(lambda: len(names) >= 3_000, timeout=60, what="3,000 fed")
        wait_for(lambda: indexed(cluster, index) > 0, timeout=60, what="shipping under way")
        assert feeder.is_alive(), "the run ended before the kill: it would prove nothing"
        cluster.kill(node=1)  # the first --es-url, and likely the cluster manager
    finally:
        feeder.join()
    assert not cluster.alive(node=1) and len(names) == TOTAL
    cluster.request("GET", "/_cluster/health?wait_for_nodes=2&wait_for_status=yellow"
                    "&timeout=90s", url=cluster.urls[1], timeout=100)
    wait_for(lambda: indexed(cluster, index) >= TOTAL, timeout=300, interval=1.0,
             what=f"{TOTAL} documents on the two survivors")
    wait_for(lambda: not files(q.incoming) and not files(q.pending), timeout=60,
             what="the ship queue drained")
    ship.send_signal(signal.SIGTERM)
    assert ship.wait(30) == 0, daemons.log(ship)
    assert files(q.errors) == []
    assert indexed(cluster, index) == TOTAL  # nothing lost, nothing twice
    ids = cluster.search_ids(index)
    assert len(ids) == TOTAL and set(ids) == set(names)
