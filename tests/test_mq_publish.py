"""`pipers mq-publish` against a real RabbitMQ: persistent, confirmed, ids kept, nothing
lost while the broker is down, blocked or restarted."""

from __future__ import annotations

import os
import signal
import time

import orjson

from queues import Queue
from queues.names import split_attempts, split_owner
from tests import rabbitmq_fixture
from tests.helpers import files, wait_for

rabbitmq, mq_queue = rabbitmq_fixture.rabbitmq, rabbitmq_fixture.mq_queue  # fixtures


def fill(q: Queue, n: int, **extra) -> dict[str, bytes]:
    """n messages into q; {name: bytes}."""
    bodies = [orjson.dumps({"i": i, **extra}) for i in range(n)]
    return dict(zip(q.put_many(bodies), bodies, strict=True))


def publisher(daemons, q: Queue, url: str, queue: str, *extra: str):
    return daemons.start("mq-publish", "--queue-in-dir", q.path, "--mq-url", url,
                         "--mq-queue", queue, "--queue-in-wait", "0.5",
                         "--mq-backoff-max", "1", *extra)


def on_disk(q: Queue) -> int:
    return len(files(q.incoming)) + len(files(q.pending))


def ids_on_disk(q: Queue, expected: set[str], listings: int = 6) -> set[str]:
    """The message ids found in incoming/ or pending/, listed in turn until all of
    `expected` were seen (at most `listings` times). One listing of each cannot be
    exact while the publisher moves messages between the two (a claim, a release);
    a message that left the disk is never found in any listing."""
    seen: set[str] = set()
    for n in range(listings):
        for name in files(q.pending if n % 2 else q.incoming):
            seen.add(split_attempts(split_owner(name)[0])[0])
        if seen >= expected:
            break
    return seen


def test_each_message_is_published_persistent_under_its_id(tmp_path, daemons, rabbitmq,
                                                           mq_queue):
    q = Queue(tmp_path / "q")
    made = fill(q, 250)
    p = publisher(daemons, q, rabbitmq.url, mq_queue, "--once", "--batch-size", "40")
    assert p.wait(60) == 0, daemons.log(p)
    assert on_disk(q) == 0 and files(q.errors) == []
    durable = rabbitmq.ctl("list_queues", "-q", "--no-table-headers", "name", "durable")
    assert f"{mq_queue}\ttrue" in durable.splitlines()
    got = rabbitmq.get_all(mq_queue)
    assert len(got) == 250
    for props, body in got:
        assert props.delivery_mode == 2  # persistent
        assert props.content_type == "application/json"
        assert props.headers["pipers-id"] == props.message_id
        assert made[props.message_id] == body  # the file's bytes, under the file's name
    assert {props.message_id for props, _ in got} == set(made)
    assert "published 250 messages" in daemons.log(p)


def test_invalid_json_goes_to_errors_and_is_not_published(tmp_path, daemons, rabbitmq,
                                                          mq_queue):
    q = Queue(tmp_path / "q")
    q.put(b'{"ok": 1}', name="good")
    q.put(b"{not json", name="bad")
    p = publisher(daemons, q, rabbitmq.url, mq_queue, "--once")
    assert p.wait(60) == 0, daemons.log(p)
    assert files(q.errors) == ["bad"]
    sidecar = orjson.loads(open(os.path.join(q.errors, "bad.error.json"), "rb").read())
    assert sidecar["reason"] == "invalid-json" and sidecar["daemon"] == "mq-publish"
    assert [props.message_id for props, _ in rabbitmq.get_all(mq_queue)] == ["good"]


def test_broker_down_keeps_messages_on_disk_and_publishing_resumes_by_itself(
        tmp_path, daemons, rabbitmq, mq_queue):
    q = Queue(tmp_path / "q")
    rabbitmq.stop()
    made = fill(q, 300)
    p = publisher(daemons, q, rabbitmq.url, mq_queue)
    wait_for(lambda: "broker unreachable" in daemons.log(p), what="the first failed try")
    # a few more tries with back-off (logged at debug, so count the state instead)
    wait_for(lambda: "waiting" in str(q.states()), what="state 'waiting' for status")
    assert files(q.incoming) == sorted(made)  # nothing claimed, nothing lost
    assert files(q.pending) == []
    rabbitmq.start()
    wait_for(lambda: on_disk(q) == 0, timeout=60, what="publishing after the broker came back")
    assert p.poll() is None  # it resumed on its own, still running
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == 0
    got = rabbitmq.get_all(mq_queue)
    assert sorted(props.message_id for props, _ in got) == sorted(made)


def test_a_message_leaves_pending_only_once_the_broker_confirmed_it(tmp_path, daemons,
                                                                   rabbitmq, mq_queue):
    """A broker that blocks publishers (memory alarm) never confirms: every message
    stays on disk however long it lasts; once the alarm clears, all get through."""
    q = Queue(tmp_path / "q")
    made = fill(q, 200)
    rabbitmq.ctl("set_vm_memory_high_watermark", "0.000001")
    try:
        p = publisher(daemons, q, rabbitmq.url, mq_queue, "--mq-confirm-timeout", "1",
                      "--batch-size", "50", "--log-level", "DEBUG")
        wait_for(lambda: daemons.log(p).count("no confirm within") >= 1, timeout=60,
                 what="a batch that was never confirmed")
        for _ in range(40):  # whatever it is doing, nothing has left the disk
            assert ids_on_disk(q, set(made)) == set(made)
            time.sleep(0.05)
    finally:
        rabbitmq.ctl("set_vm_memory_high_watermark", "0.4")
    wait_for(lambda: on_disk(q) == 0, timeout=60, what="publishing once unblocked")
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == 0
    ids = [props.message_id for props, _ in rabbitmq.get_all(mq_queue)]
    # a batch the broker took while we had given up waiting is sent again: same ids
    assert set(ids) == set(made) and len(ids) >= 200


def test_broker_restart_mid_run_loses_nothing(tmp_path, daemons, rabbitmq, mq_queue):
    q = Queue(tmp_path / "q")
    made = fill(q, 3000)
    p = publisher(daemons, q, rabbitmq.url, mq_queue, "--batch-size", "20")
    wait_for(lambda: on_disk(q) < 2700, timeout=60, what="publishing under way")
    rabbitmq.stop()
    assert on_disk(q) > 0, "the broker stopped too late to prove anything"
    rabbitmq.start()
    wait_for(lambda: on_disk(q) == 0, timeout=120, what="all published after the restart")
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == 0
    assert "broker unreachable" in daemons.log(p)
    ids = [props.message_id for props, _ in rabbitmq.get_all(mq_queue)]
    assert set(ids) == set(made)


def test_several_brokers_are_tried_in_turn(tmp_path, daemons, rabbitmq, mq_queue):
    q = Queue(tmp_path / "q")
    made = fill(q, 20)
    dead = f"amqp://guest:guest@127.0.0.1:{rabbitmq_fixture.free_ports(1)[0]}/%2F"
    p = publisher(daemons, q, dead, mq_queue, "--mq-url", rabbitmq.url, "--once")
    assert p.wait(60) == 0, daemons.log(p)  # --once gives up only when all brokers failed
    log = daemons.log(p)
    assert log.index(f"broker unreachable: {dead.replace(':guest@', ':***@')}: "
                     "ConnectionRefusedError") < log.index(f"connected to amqp://guest:***@"
                                                           f"127.0.0.1:{rabbitmq.port}/")
    assert sorted(props.message_id for props, _ in rabbitmq.get_all(mq_queue)) == sorted(made)
