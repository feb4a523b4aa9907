"""Acceptance: host A's pipeline -> mq-publish -> RabbitMQ -> mq-consume -> ship on host B,
with the broker restarted and the consumer SIGKILLed twice mid-run: the index holds
exactly the 20,000 documents, each once, under its original id."""

from __future__ import annotations

import re
import signal
import threading
import time
import uuid

import orjson

from queues import Queue
from search.node import SearchError
from tests import rabbitmq_fixture
from tests.helpers import files, wait_for

rabbitmq, mq_queue = rabbitmq_fixture.rabbitmq, rabbitmq_fixture.mq_queue  # fixtures

TOTAL = 20_000


class Feeder(threading.Thread):
    """Host A's application: puts messages in steady slices, so the run lasts a while.

    At each count in `holds` it waits for `release(count)`: an event planned there
    then happens mid-run, however long the ones before it took.
    """

    def __init__(self, queue: Queue, total: int, chunk: int = 250, pause: float = 0.2,
                 holds: tuple[int, ...] = ()):
        super().__init__(name="test-feeder", daemon=True)
        self.queue, self.total, self.chunk, self.pause = queue, total, chunk, pause
        self.holds = {at: threading.Event() for at in holds}
        self.names: list[str] = []

    def release(self, at: int) -> None:
        self.holds[at].set()

    def run(self) -> None:
        for start in range(0, self.total, self.chunk):
            if start in self.holds:
                self.holds[start].wait(300)
            end = min(self.total, start + self.chunk)
            self.names += self.queue.put_many(
                [orjson.dumps({"i": i, "kind": "probe"}) for i in range(start, end)]
            )
            time.sleep(self.pause)


def indexed(node, index: str) -> int:
    for _ in range(100):
        try:
            node.refresh(index)
            return node.count(index)
        except SearchError as e:  # the index is being created: its shard not started yet
            if e.status != 503:
                raise
            time.sleep(0.1)
    raise AssertionError(f"{index} never became searchable")


def test_20000_through_the_broker_with_restart_and_two_consumer_kills_arrive_exactly_once(
        tmp_path, daemons, rabbitmq, mq_queue, search_node):
    index = f"pipers-test-mq-{uuid.uuid4().hex[:8]}"
    a_in, a_out = Queue(tmp_path / "hostA-in"), Queue(tmp_path / "hostA-mq")
    b_ship = Queue(tmp_path / "hostB-ship")
    mq = ("--mq-url", rabbitmq.url, "--mq-queue", mq_queue, "--mq-backoff-max", "1")
    consume = ("mq-consume", "--queue-out-dir", b_ship.path, *mq, "--queue-out-limit", "0")

    # host B: the shipper, and the consumer that feeds it
    ship = daemons.start("ship", "--queue-in-dir", b_ship.path, "--es-url", search_node.url,
                         "--default-index", index, "--queue-in-wait", "0.5",
                         "--flush-interval", "0.2", "--retry-max-wait", "2")
    consumer = daemons.start(*consume)
    # host A: a transform, and the publisher at the end of its pipeline
    enrich = daemons.start("enrich", "--queue-in-dir", a_in.path, "--queue-out-dir",
                           a_out.path, "--set", "host=A", "--queue-in-wait", "0.5")
    publisher = daemons.start("mq-publish", "--queue-in-dir", a_out.path, *mq,
                              "--queue-in-wait", "0.5")

    def held_and_behind() -> bool:  # the stopped consumer holds deliveries, more wait
        ready, unacked = rabbitmq.queue_counts(mq_queue)
        return ready >= 200 and unacked > 0

    feeder = Feeder(a_in, TOTAL, holds=(4_000, 15_000))  # it waits there for the kills
    feeder.start()
    try:
        for at, event in ((4_000, "kill"), (10_000, "restart"), (15_000, "kill")):
            wait_for(lambda at=at: len(feeder.names) >= at, timeout=120, what=f"{at} fed")
            assert feeder.is_alive(), "the run ended before the event: it would prove nothing"
            if event == "kill":  # with a full prefetch window in hand, unacknowledged
                # subscribed (again, after the broker's restart), so deliveries reach it
                wait_for(lambda: rabbitmq.consumer_count(mq_queue) >= 1, timeout=60,
                         interval=0.2, what="the consumer subscribed")
                consumer.send_signal(signal.SIGSTOP)
                feeder.release(at)
                wait_for(held_and_behind, timeout=60, interval=0.5,
                         what="deliveries held by the stopped consumer and a backlog behind it")
                consumer.send_signal(signal.SIGKILL)
                consumer.wait(10)
                consumer = daemons.start(*consume)
            else:
                rabbitmq.restart()
    finally:
        for at in feeder.holds:  # after a failure too, so the join does not wait on a hold
            feeder.release(at)
        feeder.join()
    assert len(feeder.names) == TOTAL
    wait_for(lambda: indexed(search_node, index) >= TOTAL, timeout=300, interval=1.0,
             what="20,000 documents indexed")
    wait_for(lambda: rabbitmq.ready_count(mq_queue) == 0, timeout=60, what="broker drained")
    wait_for(lambda: not any(files(q.incoming) or files(q.pending)
                             for q in (a_in, a_out, b_ship)), timeout=60, what="queues empty")
    for p in (enrich, publisher, consumer, ship):
        p.send_signal(signal.SIGTERM)
    assert [p.wait(30) for p in (enrich, publisher, consumer, ship)] == [0, 0, 0, 0]
    assert all(files(q.errors) == [] for q in (a_in, a_out, b_ship))

    assert indexed(search_node, index) == TOTAL  # nothing lost, nothing twice
    ids = search_node.search_ids(index)
    assert len(ids) == TOTAL and set(ids) == set(feeder.names)  # under their original ids
    assert "broker unreachable" in daemons.log(publisher)
    # what the killed consumer held came again (and landed on the same names)
    redelivered = re.search(r"consumed \d+ messages \((\d+) redelivered\)", daemons.log(consumer))
    assert redelivered and int(redelivered.group(1)) > 0
    hits = search_node.request("POST", f"/{index}/_search",
                               {"size": 3, "query": {"term": {"i": 12345}}})["hits"]["hits"]
    assert len(hits) == 1 and hits[0]["_source"]["host"] == "A"
    search_node.delete_index(index)
