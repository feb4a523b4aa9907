"""Lineage (--trace): each daemon appends itself to the message; `cat` and the index show it."""

from __future__ import annotations

import os
import signal
import socket
import time
from datetime import datetime

import orjson

from pipers.base import Options
from pipers.sources import Reporter
from pipers.sources import checks as ck
from pipers.sources.collect import Collect
from pipers.sources.probe import Probe
from queues import Queue
from tests.helpers import files, indexed, unique_index, wait_for


def read(path) -> dict:
    with open(path, "rb") as f:
        return orjson.loads(f.read())


def test_put_enrich_ship_with_trace_index_the_trail_in_order(tmp_path, daemons, search_node):
    index = unique_index("lineage")
    qe, qs = Queue(tmp_path / "enrich"), Queue(tmp_path / "ship")
    lines = b"".join(orjson.dumps({"i": i}) + b"\n" for i in range(5))
    r = daemons.run("put", "--queue-out-dir", qe.path, "--trace", input=lines)
    assert r.returncode == 0, r.stderr
    enrich = daemons.start("enrich", "--queue-in-dir", qe.path, "--queue-out-dir", qs.path,
                           "--set", "site=cern", "--trace", "--queue-in-wait", "1")
    wait_for(lambda: len(files(qs.incoming)) == 5, what="enriched messages")
    on_disk = read(os.path.join(qs.incoming, files(qs.incoming)[0]))  # what `cat` shows
    assert [e["daemon"] for e in on_disk["pipers_trace"]] == ["put", "enrich"]
    ship = daemons.start("ship", "--queue-in-dir", qs.path, "--es-url", search_node.urls[0],
                         "--default-index", index, "--trace", "--queue-in-wait", "1")
    wait_for(lambda: indexed(search_node, index) == 5, what="5 documents")
    for p in (enrich, ship):
        p.send_signal(signal.SIGTERM)
    assert [enrich.wait(30), ship.wait(30)] == [0, 0]
    hits = search_node.request("GET", f"/{index}/_search?size=10")["hits"]["hits"]
    assert len(hits) == 5
    for hit in hits:
        doc = hit["_source"]
        trail = doc["pipers_trace"]
        assert [e["daemon"] for e in trail] == ["put", "enrich", "ship"]
        assert all(e["host"] and e["at"].endswith("Z") and len(e["at"]) == 24 for e in trail)
        times = [datetime.fromisoformat(e["at"]) for e in trail]
        assert times == sorted(times)  # each hop after the one before
        assert doc["site"] == "cern" and set(doc) == {"i", "site", "pipers_trace"}
    # The trace is indexed as data: it can be searched.
    found = search_node.request(
        "GET", f"/{index}/_search?q=pipers_trace.daemon:enrich&size=0")["hits"]["total"]
    assert found["value"] == 5


def test_without_trace_no_field_appears_and_a_hop_still_moves_the_file(
        tmp_path, daemons, search_node):
    index = unique_index("notrace")
    q1, q2, qs = Queue(tmp_path / "a"), Queue(tmp_path / "b"), Queue(tmp_path / "ship")
    [name] = q1.put_many([orjson.dumps({"i": 1})])
    inode = os.stat(os.path.join(q1.incoming, name)).st_ino
    hop = daemons.start("pass", "--queue-in-dir", q1.path, "--queue-out-dir", q2.path,
                        "--queue-in-wait", "1")
    wait_for(lambda: files(q2.incoming) == [name], what="the forwarded message")
    assert os.stat(os.path.join(q2.incoming, name)).st_ino == inode  # renamed, not copied
    assert read(os.path.join(q2.incoming, name)) == {"i": 1}
    hop.send_signal(signal.SIGTERM)
    assert hop.wait(30) == 0
    os.rename(os.path.join(q2.incoming, name), os.path.join(qs.incoming, name))
    ship = daemons.start("ship", "--queue-in-dir", qs.path, "--es-url", search_node.urls[0],
                         "--default-index", index, "--queue-in-wait", "1")
    wait_for(lambda: indexed(search_node, index) == 1, what="the document")
    ship.send_signal(signal.SIGTERM)
    assert ship.wait(30) == 0
    [hit] = search_node.request("GET", f"/{index}/_search")["hits"]["hits"]
    assert hit["_source"] == {"i": 1}


def test_a_traced_hop_copies_objects_and_leaves_other_messages_untouched(tmp_path, daemons):
    q1, q2 = Queue(tmp_path / "a"), Queue(tmp_path / "b")
    odd = [b"[1, 2, 3]", b'{"pipers_trace": "mine"}', b'{"x": 1, "hops": []}']
    names = q1.put_many(odd)
    r = daemons.run("pass", "--queue-in-dir", q1.path, "--queue-out-dir", q2.path, "--once",
                    "--trace", "--trace-field", "hops")
    assert r.returncode == 0, r.stderr
    assert files(q2.incoming) == sorted(names)
    out = []
    for n in names:
        with open(os.path.join(q2.incoming, n), "rb") as f:
            out.append(f.read())
    assert out[0] == b"[1, 2, 3]"  # not an object: the very same bytes
    other = orjson.loads(out[1])  # the field is --trace-field's; pipers_trace is just data
    assert other["pipers_trace"] == "mine" and other["hops"][0]["daemon"] == "pass"
    hops = orjson.loads(out[2])["hops"]
    assert [h["daemon"] for h in hops] == ["pass"] and orjson.loads(out[2])["x"] == 1
    assert files(q1.errors) == []


def test_a_trace_field_that_is_not_a_list_is_left_alone(tmp_path, daemons):
    q1, q2 = Queue(tmp_path / "a"), Queue(tmp_path / "b")
    [name] = q1.put_many([b'{"pipers_trace": {"mine": 1}}'])
    r = daemons.run("enrich", "--queue-in-dir", q1.path, "--queue-out-dir", q2.path, "--once",
                    "--set", "k=v", "--trace")
    assert r.returncode == 0, r.stderr
    assert read(os.path.join(q2.incoming, name)) == {"pipers_trace": {"mine": 1}, "k": "v"}


def test_the_reporter_starts_the_trace(tmp_path):
    reporter = Reporter(tmp_path / "q", monitoring_type="jobs", trace=True)
    reporter.add_record({"job": 1})
    assert reporter.commit() == 1
    q = Queue(tmp_path / "q")
    doc = read(os.path.join(q.incoming, files(q.incoming)[0]))
    assert doc["job"] == 1 and doc["monitoringType"] == "jobs"
    assert [e["daemon"] for e in doc["pipers_trace"]] == ["reporter"]
    untraced = Reporter(tmp_path / "r", monitoring_type="jobs")
    untraced.add_record({"job": 2})
    untraced.commit()
    r = Queue(tmp_path / "r")
    assert "pipers_trace" not in read(os.path.join(r.incoming, files(r.incoming)[0]))


class Pair(ck.Check):
    def run(self):
        return [{"part": 1}, {"part": 2}]


def test_the_probe_starts_the_trace_and_counts_what_it_writes(tmp_path):
    t0 = 1_800_000_000.0
    probe = Probe(Options(queue_out_dir=str(tmp_path / "q"), trace=True), checks=[Pair(30)],
                  clock=lambda: t0)
    probe.loop(t0)
    q = Queue(tmp_path / "q")
    written = [read(os.path.join(q.incoming, n)) for n in files(q.incoming)]
    assert sorted(m["part"] for m in written) == [1, 2]
    for m in written:
        assert m["pipers_trace"] == [{"daemon": "probe", "host": socket.gethostname(),
                                      "at": "2027-01-15T08:00:00.000Z"}]
    totals = probe.metrics.totals
    assert totals["received"] == totals["forwarded"] == 2 and totals["bytes"] > 0


def test_collect_starts_the_trace_and_counts_jobs_and_refusals(tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "good.json").write_bytes(b'{"job": "good"}')
    (drop / "bad.json").write_bytes(b"[1, 2]")  # not an object: refused
    c = Collect(Options(queue_out_dir=str(tmp_path / "q"), trace=True),
                storage_root=str(drop), settle_time=0.0)
    c.loop(time.time() + 60)
    q = Queue(tmp_path / "q")
    [job] = [read(os.path.join(q.incoming, n)) for n in files(q.incoming)]
    assert job["job"] == "good" and [e["daemon"] for e in job["pipers_trace"]] == ["collect"]
    totals = c.metrics.totals
    assert (totals["received"], totals["forwarded"], totals["failed"]) == (1, 1, 1)
