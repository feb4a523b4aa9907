"""Acceptance: with the search node stopped, the shipper fails over to RabbitMQ after the
threshold; once the node is back every record is indexed exactly once, in its own index."""

from __future__ import annotations

import signal
import time
import uuid
from collections import Counter

import orjson

from queues import Queue
from search.node import SearchError
from tests import rabbitmq_fixture
from tests.helpers import files, wait_for

rabbitmq, mq_queue = rabbitmq_fixture.rabbitmq, rabbitmq_fixture.mq_queue  # fixtures

KINDS = ("probe", "job", "alert")


def indexed(node, pattern: str) -> int:
    for _ in range(100):
        try:
            node.refresh(pattern)
            return node.count(pattern)
        except SearchError as e:  # an index being created: its shard not started yet
            if e.status != 503:
                raise
            time.sleep(0.1)
    raise AssertionError(f"{pattern} never became searchable")


def fill(q: Queue, start: int, n: int) -> list[str]:
    return q.put_many([orjson.dumps({"i": i, "kind": KINDS[i % 3]})
                       for i in range(start, start + n)])


def test_outage_fails_over_to_rabbitmq_and_every_record_comes_back_to_its_own_index(
        tmp_path, daemons, rabbitmq, mq_queue, search_node_factory):
    node = search_node_factory()
    prefix = f"pipers-test-fo-{uuid.uuid4().hex[:8]}"
    q = Queue(tmp_path / "ship")
    ship = daemons.start(
        "ship", "--queue-in-dir", q.path, "--es-url", node.url,
        "--index-template", prefix + "-{kind}", "--queue-in-wait", "0.5",
        "--flush-interval", "0.2", "--bundle-size", "500", "--retry-max-wait", "1",
        "--request-timeout", "5",
        "--failover-mq-url", rabbitmq.url, "--failover-mq-queue", mq_queue,
        "--failover-after", "2",
    )
    before = fill(q, 0, 1500)
    wait_for(lambda: indexed(node, prefix + "-*") == 1500, timeout=120, interval=0.5,
             what="1,500 documents shipped while the node is up")

    node.stop()
    during = fill(q, 1500, 4500)
    wait_for(lambda: not files(q.incoming) and not files(q.pending), timeout=120,
             what="every bundle diverted to RabbitMQ")
    log = daemons.log(ship)
    assert "search cluster unavailable" in log
    assert f"bundles go to RabbitMQ queue '{mq_queue}'" in log
    assert rabbitmq.ready_count(mq_queue) >= 4500  # all waiting in the broker, none lost

    node.start()
    wait_for(lambda: indexed(node, prefix + "-*") >= 6000, timeout=180, interval=1.0,
             what="6,000 documents after the node returned")
    wait_for(lambda: rabbitmq.ready_count(mq_queue) == 0, timeout=60, what="failover drained")
    wait_for(lambda: not files(q.incoming) and not files(q.pending), timeout=60,
             what="the ship queue drained")
    ship.send_signal(signal.SIGTERM)
    assert ship.wait(30) == 0, daemons.log(ship)
    log = daemons.log(ship)
    assert "search cluster back" in log and "brought" in log
    assert files(q.errors) == []

    assert indexed(node, prefix + "-*") == 6000  # exactly once
    expected = Counter(KINDS[i % 3] for i in range(6000))
    for kind in KINDS:  # each record in the index its own fields name
        assert indexed(node, f"{prefix}-{kind}") == expected[kind]
        ids = node.search_ids(f"{prefix}-{kind}")
        assert len(ids) == expected[kind]
    all_ids = node.search_ids(prefix + "-*")
    assert sorted(all_ids) == sorted(before + during)  # under their original ids
