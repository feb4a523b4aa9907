"""The shipper when its cluster goes away: nothing lost, nothing in errors/, resumes by itself.

Each test has a private node (search_node_factory) that it stops or pauses.
"""

from __future__ import annotations

import os
import signal
import time

import orjson
import pytest

from queues import Queue
from tests.helpers import files, wait_for
from tests.ship_helpers import (
    Feeder,
    cpu_seconds,
    indexed,
    messages,
    unique_index,
    waiting_because,
)

OUTAGE = 30.0


@pytest.mark.parametrize("how", ["stopped", "sigstopped"])
def test_node_gone_30s_mid_run_all_documents_arrive_after_it_returns(
        tmp_path, daemons, search_node_factory, how):
    node = search_node_factory()
    index = unique_index(how)
    qe, qs = Queue(tmp_path / "enrich"), Queue(tmp_path / "ship")
    daemons.start("enrich", "--queue-in-dir", qe.path, "--queue-out-dir", qs.path,
                  "--set", "outage=" + how)
    ship = daemons.start(
        "ship", "--queue-in-dir", qs.path, "--es-url", node.url, "--default-index", index,
        "--bundle-size", "500", "--flush-interval", "0.2", "--request-timeout", "5",
        "--retry-initial-wait", "0.5", "--retry-max-wait", "4", "--queue-in-wait", "2",
    )
    feeder = Feeder(qe, messages(10_000), chunk=250, pause=0.25)  # about 10 s of arrivals
    feeder.start()
    try:
        before = wait_for(lambda: indexed(node, index) >= 1000 and indexed(node, index),
                          timeout=120, interval=0.1, what="the run to be under way")
        node.stop() if how == "stopped" else node.pause()
        down = time.monotonic()
        assert before < 10_000, "the node went away after the run, not during it"
        why = wait_for(lambda: waiting_because(daemons, qs, "unavailable", "dequeuing paused"),
                       timeout=OUTAGE, interval=0.2, what="status to show the shipper waiting")
        assert "messages kept in pending/" in why
        cpu_before = cpu_seconds(ship.pid)
        feeder.join()
        time.sleep(max(0.0, down + OUTAGE - time.monotonic()))
        idle_cpu = cpu_seconds(ship.pid) - cpu_before
        assert files(qs.errors) == [] and ship.poll() is None
        assert len(files(qs.incoming)) + len(files(qs.pending)) > 0  # kept on disk meanwhile
    finally:
        feeder.join()
        if how == "stopped":
            node.start()
        else:
            node.resume()
    wait_for(lambda: indexed(node, index) >= 10_000, timeout=180, interval=0.5,
             what="all documents after the outage")
    wait_for(lambda: not files(qs.pending) and not files(qs.incoming), what="an empty queue")
    ids = node.search_ids(index)
    assert len(ids) == 10_000 and set(ids) == set(feeder.names)
    assert files(qe.errors) == files(qs.errors) == []
    assert idle_cpu < 3.0, f"the waiting shipper used {idle_cpu:.1f}s of CPU in {OUTAGE:.0f}s"
    log = daemons.log(ship)
    assert "search cluster unavailable" in log and "search cluster answers again" in log
    ship.send_signal(signal.SIGTERM)
    assert ship.wait(30) == 0


def test_413_splits_the_bundle_and_a_document_too_large_alone_goes_to_errors(
        tmp_path, daemons, search_node_factory):
    node = search_node_factory(settings={"http.max_content_length": "1mb"}, heap="512m")
    index = unique_index("split")
    q = Queue(tmp_path / "ship")
    pad = "x" * 20_000
    small = q.put_many([orjson.dumps({"i": i, "pad": pad}) for i in range(150)])  # ~3 MB
    (huge,) = q.put_many([orjson.dumps({"i": -1, "pad": "y" * 1_500_000})])
    r = daemons.run("ship", "--queue-in-dir", q.path, "--es-url", node.url,
                    "--default-index", index, "--once")
    assert r.returncode == 0, r.stderr
    err = r.stderr.decode()
    assert "(413)" in err and "bundles now stay under" in err
    assert indexed(node, index) == 150 and set(node.search_ids(index)) == set(small)
    assert files(q.errors) == [huge]
    with open(os.path.join(q.errors, huge + ".error.json"), "rb") as f:
        side = orjson.loads(f.read())
    assert side["reason"] == "too-large" and side["detail"]["status"] == 413
    assert files(q.incoming) == files(q.pending) == []


def test_one_node_of_three_killed_mid_run_the_others_take_the_bundles(
        tmp_path, daemons, search_node_factory):
    cluster = search_node_factory(nodes=3, heap="512m")
    index = unique_index("failover")
    cluster.request("PUT", f"/{index}", {"settings": {"number_of_shards": 3,
                                                      "number_of_replicas": 1}})
    cluster.request("GET", f"/_cluster/health/{index}?wait_for_status=green&timeout=60s")
    q = Queue(tmp_path / "ship")
    ship = daemons.start(
        "ship", "--queue-in-dir", q.path, "--es-url", ",".join(cluster.urls),
        "--default-index", index, "--bundle-size", "500", "--flush-interval", "0.2",
        "--request-timeout", "10", "--retry-max-wait", "2",
    )
    feeder = Feeder(q, messages(5000), chunk=250, pause=0.25)
    feeder.start()
    try:
        before = wait_for(lambda: indexed(cluster, index) >= 500 and indexed(cluster, index),
                          timeout=120, interval=0.1, what="the run to be under way")
        cluster.kill(node=3)  # a crash: its primaries' replicas take over
        assert before < 5000 and not feeder.names[4999:], "the kill came after the run"
    finally:
        feeder.join()
    # helpers talk to node 1, which lives on
    wait_for(lambda: indexed(cluster, index) >= 5000, timeout=180, interval=0.5,
             what="all documents through the surviving nodes")
    wait_for(lambda: not files(q.pending) and not files(q.incoming), what="an empty queue")
    ids = cluster.search_ids(index)
    assert len(ids) == 5000 and set(ids) == set(feeder.names)
    assert files(q.errors) == []
    ship.send_signal(signal.SIGTERM)
    assert ship.wait(30) == 0


def test_sigterm_waits_for_the_answer_to_the_bundle_in_flight(
        tmp_path, daemons, search_node_factory):
    node = search_node_factory(heap="512m")
    index = unique_index("inflight")
    node.request("PUT", f"/{index}")
    q = Queue(tmp_path / "ship")
    node.pause()  # the request will hang until the node runs again
    try:
        made = q.put_many(messages(100))
        ship = daemons.start("ship", "--queue-in-dir", q.path, "--es-url", node.url,
                             "--default-index", index, "--flush-interval", "0.1",
                             "--request-timeout", "120")
        wait_for(lambda: len(files(q.pending)) == 100, what="the bundle in hand")
        time.sleep(1.0)  # sent: nothing answers
        ship.send_signal(signal.SIGTERM)
        time.sleep(2.0)
        assert ship.poll() is None, "the shipper left before the answer to its bundle"
    finally:
        node.resume()
    assert ship.wait(60) == 0
    assert indexed(node, index) == 100 and set(node.search_ids(index)) == set(made)
    assert files(q.pending) == files(q.incoming) == files(q.errors) == []
    assert "returned" not in daemons.log(ship)  # finished, not handed back
