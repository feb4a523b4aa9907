"""`pipers mq-consume` against a real RabbitMQ: acked only once written, original ids
as file names (so redeliveries land on the same name), bounded prefetch."""

from __future__ import annotations

import hashlib
import os
import signal

import orjson
import pika

from queues import Queue
from queues.names import name_time
from tests import rabbitmq_fixture
from tests.helpers import files, wait_for

rabbitmq, mq_queue = rabbitmq_fixture.rabbitmq, rabbitmq_fixture.mq_queue  # fixtures


def consumer(daemons, q: Queue, url: str, queue: str, *extra: str):
    return daemons.start("mq-consume", "--queue-out-dir", q.path, "--mq-url", url,
                         "--mq-queue", queue, "--mq-backoff-max", "1", *extra)


def read(q: Queue, name: str) -> bytes:
    with open(os.path.join(q.incoming, name), "rb") as f:
        return f.read()


def test_messages_land_in_incoming_under_their_ids_and_are_acked(tmp_path, daemons, rabbitmq,
                                                                 mq_queue):
    ids = [f"1700000000{i:06d}.42_{i}.hostA" for i in range(300)]
    bodies = [orjson.dumps({"i": i}) for i in range(300)]
    rabbitmq.publish(mq_queue, bodies, ids)
    q = Queue(tmp_path / "out")
    p = consumer(daemons, q, rabbitmq.url, mq_queue, "--once", "--batch-size", "64")
    assert p.wait(60) == 0, daemons.log(p)
    assert files(q.incoming) == sorted(ids)
    assert all(read(q, i) == b for i, b in zip(ids, bodies, strict=True))
    assert files(q.tmp) == [] and files(q.errors) == []
    # acked: nothing is ready again now that the consumer's connection is gone
    assert rabbitmq.ready_count(mq_queue) == 0
    assert "consumed 300 messages" in daemons.log(p)


def test_a_redelivered_message_lands_on_its_original_name(tmp_path, daemons, rabbitmq,
                                                          mq_queue):
    rabbitmq.publish(mq_queue, [b'{"n": 1}', b'{"n": 2}'], ["first-id", "second-id"])
    # another consumer takes both and dies without acking: the broker redelivers them
    conn = pika.BlockingConnection(pika.URLParameters(rabbitmq.url))
    ch = conn.channel()
    assert ch.basic_get(mq_queue, auto_ack=False)[0] is not None
    assert ch.basic_get(mq_queue, auto_ack=False)[0] is not None
    conn.close()
    # and a publisher that resent one (no confirm seen) made a copy with the same id
    rabbitmq.publish(mq_queue, [b'{"n": 1}'], ["first-id"])
    q = Queue(tmp_path / "out")
    p = consumer(daemons, q, rabbitmq.url, mq_queue, "--once")
    assert p.wait(60) == 0, daemons.log(p)
    assert files(q.incoming) == ["first-id", "second-id"]
    assert read(q, "first-id") == b'{"n": 1}'
    assert "consumed 3 messages (2 redelivered)" in daemons.log(p)
    assert rabbitmq.ready_count(mq_queue) == 0


def test_foreign_messages_get_safe_names(tmp_path, daemons, rabbitmq, mq_queue):
    """Other applications' ids that are no safe file name become a digest of the id
    (the same on every redelivery); a message without any id gets a fresh name."""
    rabbitmq.publish(
        mq_queue, [b'{"a": 1}', b'{"a": 1}', b'{"b": 2}', b'{"c": 3}'],
        ["../../etc/passwd", "../../etc/passwd", None, None],
        [None, None, {"pipers-id": "from-header"}, None],
    )
    q = Queue(tmp_path / "out")
    p = consumer(daemons, q, rabbitmq.url, mq_queue, "--once")
    assert p.wait(60) == 0, daemons.log(p)
    names = files(q.incoming)
    digest = "mq-" + hashlib.sha256(b"../../etc/passwd").hexdigest()[:40]
    assert digest in names and "from-header" in names and len(names) == 3
    fresh = [n for n in names if n not in (digest, "from-header")]
    assert name_time(fresh[0]) is not None and read(q, fresh[0]) == b'{"c": 3}'
    assert sorted(os.listdir(tmp_path)) == ["daemon-0-mq-consume.log", "out"]  # no escape


def test_prefetch_is_bounded_and_a_full_output_queue_holds_the_rest(tmp_path, daemons,
                                                                    rabbitmq, mq_queue):
    rabbitmq.publish(mq_queue, [orjson.dumps({"i": i}) for i in range(300)],
                     [f"m{i:04d}" for i in range(300)])
    q = Queue(tmp_path / "out")
    p = consumer(daemons, q, rabbitmq.url, mq_queue, "--queue-out-limit", "20",
                 "--queue-out-wait", "0.5", "--mq-prefetch", "30", "--batch-size", "8")
    wait_for(lambda: "waiting" in str(q.states()), timeout=60, what="backpressure")
    written = len(files(q.incoming))
    ready, unacked = rabbitmq.queue_counts(mq_queue)
    assert written == 20  # never past the limit
    assert 0 < unacked <= 30  # what the broker handed over, bounded by the prefetch
    assert ready + unacked + written == 300
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == 0, daemons.log(p)
    wait_for(lambda: rabbitmq.queue_counts(mq_queue) == (280, 0), timeout=30,
             what="unwritten deliveries back in the queue")
    # the next daemon catches up: the consumer, started again, brings the rest
    for name in files(q.incoming):
        os.unlink(os.path.join(q.incoming, name))
    p = consumer(daemons, q, rabbitmq.url, mq_queue, "--once")
    assert p.wait(60) == 0, daemons.log(p)
    assert len(files(q.incoming)) == 280


def test_consumer_reconnects_by_itself_after_a_broker_restart(tmp_path, daemons, rabbitmq,
                                                              mq_queue):
    q = Queue(tmp_path / "out")
    rabbitmq.publish(mq_queue, [b'{"before": 1}'] * 50, [f"b{i}" for i in range(50)])
    p = consumer(daemons, q, rabbitmq.url, mq_queue)
    wait_for(lambda: len(files(q.incoming)) == 50, timeout=60, what="first 50")
    rabbitmq.restart()
    rabbitmq.publish(mq_queue, [b'{"after": 1}'] * 50, [f"a{i}" for i in range(50)])
    wait_for(lambda: len(files(q.incoming)) == 100, timeout=60, what="50 more after restart")
    assert p.poll() is None
    log = daemons.log(p)
    assert "lost amqp://guest:***@127.0.0.1" in log  # and the password never in the log
    assert "guest:guest" not in log
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == 0


def test_consumer_waits_for_an_absent_broker_and_once_gives_up(tmp_path, daemons, rabbitmq,
                                                               mq_queue):
    q = Queue(tmp_path / "out")
    rabbitmq.stop()
    try:
        r = daemons.run("mq-consume", "--queue-out-dir", q.path, "--mq-url", rabbitmq.url,
                        "--mq-queue", mq_queue, "--once", timeout=60)
        assert r.returncode == 1
        assert b"broker unreachable" in r.stderr and b"giving up" in r.stderr
    finally:
        rabbitmq.start()
