"""The shipper against the real local search node: exactly once, errors/, replay, blocks.

Every test writes into its own indices (unique names) of the session's node;
tests that stop or pause a node are in test_ship_outage.py.
"""

from __future__ import annotations

import os
import random
import re
import signal
import time

import orjson
import pytest

from queues import Queue, journal
from tests.helpers import files, wait_for
from tests.ship_helpers import indexed, messages, ship_states, unique_index, waiting_because


def ship_args(node, queue: Queue, *extra: str) -> tuple[str, ...]:
    return ("ship", "--queue-in-dir", queue.path, "--es-url", ",".join(node.urls),
            "--queue-in-wait", "1", *extra)


def sidecar(queue: Queue, name: str) -> dict:
    with open(os.path.join(queue.errors, name + ".error.json"), "rb") as f:
        return orjson.loads(f.read())


def test_10000_messages_through_enrich_and_ship_arrive_exactly_once(
        tmp_path, daemons, search_node):
    prefix = unique_index("once")
    qe, qs = Queue(tmp_path / "enrich"), Queue(tmp_path / "ship")
    made = qe.put_many(messages(10_000))
    enrich = daemons.start("enrich", "--queue-in-dir", qe.path, "--queue-out-dir", qs.path,
                           "--set", "site=cern", "--host-field", "host")
    ship = daemons.start(*ship_args(search_node, qs, "--flush-interval", "0.2",
                                    "--index-template", prefix + "-{kind}-{date:%Y.%m.%d}"))
    wait_for(lambda: indexed(search_node, prefix + "-*") >= 10_000, timeout=240, interval=0.5,
             what="10,000 documents")
    wait_for(lambda: not files(qs.pending) and not files(qs.incoming), what="an empty queue")
    for p in (enrich, ship):
        p.send_signal(signal.SIGTERM)
    assert [enrich.wait(30), ship.wait(30)] == [0, 0]
    ids = search_node.search_ids(prefix + "-*")
    assert len(ids) == 10_000 and set(ids) == set(made)  # every message once, under its name
    assert indexed(search_node, prefix + "-job-*") == 5000  # the index comes from the message
    assert files(qe.errors) == files(qs.errors) == []
    doc = search_node.request("GET", f"/{prefix}-*/_search?q=i:7")["hits"]["hits"][0]
    assert doc["_id"] == made[7] and doc["_index"].startswith(prefix + "-probe-")
    assert doc["_source"]["site"] == "cern" and doc["_source"]["host"]
    assert "10000 documents delivered, 0 refused" in daemons.log(ship)


def test_sigkill_repeatedly_during_the_run_still_gives_exactly_10000(
        tmp_path, daemons, search_node):
    prefix = unique_index("kill")
    qe, qs = Queue(tmp_path / "enrich"), Queue(tmp_path / "ship")
    enrich = daemons.start("enrich", "--queue-in-dir", qe.path, "--queue-out-dir", qs.path,
                           "--set", "hop=1")
    args = ship_args(search_node, qs, "--bundle-size", "200", "--flush-interval", "0.05",
                     "--index-template", prefix + "-{kind}-{date:%Y.%m.%d}")
    rng = random.Random(1)
    data, made, held, seen = messages(10_000), [], [], [0]
    # Eight rounds, each feeding 1,250 messages and killing its shipper: the number of
    # kills does not depend on how fast the shipper is.
    for start in range(0, len(data), 1250):
        made += qe.put_many(data[start:start + 1250])
        p = daemons.start(*args)
        wait_for(lambda: indexed(search_node, prefix + "-*") > seen[-1], timeout=60,
                 interval=0.05, what="the shipper to deliver something")
        time.sleep(rng.uniform(0, 0.2))  # somewhere in the middle of a bundle, or between two
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        held.append(len(files(qs.pending)))
        seen.append(indexed(search_node, prefix + "-*"))
    assert any(held), "no kill hit the shipper with messages in hand"
    wait_for(lambda: not files(qe.incoming) and not files(qe.pending), what="enrich to finish")
    enrich.send_signal(signal.SIGTERM)
    assert enrich.wait(30) == 0
    final = daemons.run(*args, "--once", timeout=300)
    assert final.returncode == 0, final.stderr
    logs = final.stderr.decode() + "".join(daemons.log(p) for p in daemons.procs)
    assert "recovered" in logs  # what a dead shipper held came back through recovery
    assert indexed(search_node, prefix + "-*") == 10_000  # refreshed: all are searchable
    ids = search_node.search_ids(prefix + "-*")
    assert len(ids) == 10_000 and set(ids) == set(made), "lost or duplicated documents"
    assert files(qs.incoming) == files(qs.pending) == files(qs.errors) == []


def test_a_document_that_breaks_the_mapping_goes_to_errors_and_replays_after_a_fix(
        tmp_path, daemons, search_node):
    index = unique_index("mapping")
    search_node.request("PUT", f"/{index}",
                        {"mappings": {"properties": {"value": {"type": "long"}}}})
    q = Queue(tmp_path / "ship")
    good = q.put_many([orjson.dumps({"value": i}) for i in range(30)])
    (bad,) = q.put_many([b'{"value": "not a number", "note": "bad"}'])
    (bad_index,) = q.put_many([b'{"value": 5, "target": "Has,Comma"}'])
    more = q.put_many([orjson.dumps({"value": i}) for i in range(30, 40)])
    args = ship_args(search_node, q, "--index-template", "{target}", "--default-index", index)
    journal_dir = tmp_path / "journal"
    r = daemons.run(*args, "--once", "--journal-dir", str(journal_dir))
    assert r.returncode == 0, r.stderr
    assert indexed(search_node, index) == 40  # the others of the same bundle are indexed
    notes = {name: st for _, ns in journal.read(journal_dir) for st, name in ns}  # for collect
    assert notes == {**{name: "ok" for name in good + more}, bad: "failed", bad_index: "failed"}
    assert set(search_node.search_ids(index)) == set(good + more)
    assert files(q.errors) == sorted([bad, bad_index])
    mapping = sidecar(q, bad)
    assert mapping["reason"] == "rejected" and mapping["daemon"] == "ship"
    assert mapping["detail"]["status"] == 400 and mapping["detail"]["_id"] == bad
    assert mapping["detail"]["error"]["type"] == "mapper_parsing_exception"
    assert "mapper_parsing_exception" in mapping["message"]
    naming = sidecar(q, bad_index)["detail"]
    assert naming["error"]["type"] == "invalid_index_name_exception"
    assert naming["index"] == "has,comma"
    # never retried by itself
    r = daemons.run(*args, "--once")
    assert r.returncode == 0 and files(q.errors) == sorted([bad, bad_index])
    # an operator fixes both by hand, then replays
    with open(os.path.join(q.errors, bad), "wb") as f:
        f.write(b'{"value": 42, "note": "fixed by hand"}\n')
    with open(os.path.join(q.errors, bad_index), "wb") as f:
        f.write(b'{"value": 5}')
    replay = daemons.run("replay", q.path)
    assert replay.returncode == 0 and files(q.incoming) == sorted([bad, bad_index])
    r = daemons.run(*args, "--once")
    assert r.returncode == 0, r.stderr
    assert files(q.errors) == [] and files(q.incoming) == files(q.pending) == []
    assert indexed(search_node, index) == 42
    assert search_node.get_doc(index, bad) == {"value": 42, "note": "fixed by hand"}


def test_a_closed_index_sends_its_documents_to_errors_never_loses_them(
        tmp_path, daemons, search_node):
    index = unique_index("closed")
    search_node.request("PUT", f"/{index}")
    search_node.request("POST", f"/{index}/_close")
    q = Queue(tmp_path / "ship")
    made = q.put_many(messages(20))
    args = ship_args(search_node, q, "--default-index", index)
    r = daemons.run(*args, "--once")
    assert r.returncode == 0, r.stderr
    assert files(q.errors) == sorted(made)
    for name in made:
        side = sidecar(q, name)
        assert side["detail"]["status"] == 400
        assert side["detail"]["error"]["type"] == "index_closed_exception"
    search_node.request("POST", f"/{index}/_open")
    assert daemons.run("replay", "--reason", "rejected", q.path).returncode == 0
    assert daemons.run(*args, "--once").returncode == 0
    assert files(q.errors) == [] and indexed(search_node, index) == 20


def test_a_read_only_index_holds_its_documents_until_the_block_is_lifted(
        tmp_path, daemons, search_node):
    index = unique_index("readonly")
    search_node.request("PUT", f"/{index}")
    search_node.request("PUT", f"/{index}/_settings", {"index.blocks.write": True})
    q = Queue(tmp_path / "ship")
    made = q.put_many(messages(20))
    daemons.start(*ship_args(search_node, q, "--default-index", index, "--flush-interval", "0.1",
                             "--retry-initial-wait", "0.2", "--retry-max-wait", "1"))
    why = wait_for(lambda: waiting_because(daemons, q, "cluster_block_exception"),
                   what="the shipper to wait on the block")
    assert "20 documents refused for now" in why
    assert [s.get("on") for s in ship_states(daemons, q) if s["state"] == "waiting"] == ["cluster"]
    assert files(q.errors) == [] and len(files(q.pending)) == 20  # kept, not failed
    assert indexed(search_node, index) == 0
    search_node.request("PUT", f"/{index}/_settings", {"index.blocks.write": False})
    wait_for(lambda: indexed(search_node, index) == 20, interval=0.2, what="delivery")
    wait_for(lambda: not files(q.pending), what="an empty pending/")
    assert set(search_node.search_ids(index)) == set(made) and files(q.errors) == []


def test_a_resend_of_a_delivered_message_is_no_duplicate_and_archive_keeps_it(
        tmp_path, daemons, search_node):
    index = unique_index("resend")
    q = Queue(tmp_path / "ship")
    archive = tmp_path / "archive"
    (name,) = q.put_many([b'{"v": 1}'])
    args = ship_args(search_node, q, "--default-index", index, "--archive-dir", str(archive))
    assert daemons.run(*args, "--once").returncode == 0
    assert os.listdir(archive) == [name] and (archive / name).read_bytes() == b'{"v": 1}'
    # the same message again, e.g. resent after a crash between the answer and the unlink
    q.put(b'{"v": 2}', name=name)
    r = daemons.run(*args, "--once")
    assert r.returncode == 0 and "1 documents delivered" in r.stderr.decode()  # 409 = delivered
    assert indexed(search_node, index) == 1
    assert search_node.get_doc(index, name) == {"v": 1}
    assert files(q.errors) == files(q.incoming) == files(q.pending) == []


def test_sigterm_returns_an_unsent_bundle_to_incoming(tmp_path, daemons, search_node):
    index = unique_index("term")
    q = Queue(tmp_path / "ship")
    p = daemons.start(*ship_args(search_node, q, "--default-index", index,
                                 "--flush-interval", "600"))
    made = q.put_many(messages(10))
    wait_for(lambda: len(files(q.pending)) == 10, what="the bundle in hand")
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == 0
    assert files(q.pending) == [] and files(q.incoming) == sorted(made)
    assert "returned 10 unsent messages to incoming/" in daemons.log(p)
    assert indexed(search_node, index) == 0


@pytest.mark.parametrize("raw", [b"{broken", b"[1, 2, 3]"])
def test_a_message_that_is_no_json_object_fails_without_a_request(
        tmp_path, daemons, search_node, raw):
    index = unique_index("bad")
    q = Queue(tmp_path / "ship")
    (bad,) = q.put_many([raw])
    ok = q.put_many(messages(3))
    r = daemons.run(*ship_args(search_node, q, "--default-index", index, "--once"))
    assert r.returncode == 0, r.stderr
    assert files(q.errors) == [bad] and sidecar(q, bad)["reason"] in ("invalid-json",
                                                                      "invalid-message")
    assert indexed(search_node, index) == 3 and set(search_node.search_ids(index)) == set(ok)


def test_gzip_request_bodies(tmp_path, daemons, search_node):
    index = unique_index("gzip")
    q = Queue(tmp_path / "ship")
    made = q.put_many(messages(300))
    r = daemons.run(*ship_args(search_node, q, "--default-index", index, "--http-compress",
                               "--bundle-size", "100", "--once"))
    assert r.returncode == 0, r.stderr
    assert indexed(search_node, index) == 300 and set(search_node.search_ids(index)) == set(made)


def test_two_shippers_on_one_queue_deliver_each_message_once(tmp_path, daemons, search_node):
    index = unique_index("pair")
    q = Queue(tmp_path / "ship")
    made = q.put_many(messages(20_000))
    args = ship_args(search_node, q, "--default-index", index, "--bundle-size", "300",
                     "--once")
    procs = [daemons.start(*args) for _ in range(2)]
    assert [p.wait(120) for p in procs] == [0, 0]
    delivered = [int(re.search(r"(\d+) documents delivered", daemons.log(p)).group(1))
                 for p in procs]
    assert sum(delivered) == 20_000 and min(delivered) > 0  # both worked, none twice
    assert indexed(search_node, index) == 20_000
    assert set(search_node.search_ids(index)) == set(made)
    assert files(q.pending) == files(q.incoming) == files(q.errors) == []
