"""Disk full: queues on a real 2 MiB tmpfs that fills up.

Writers get a clear error, incoming/ never holds a partial file (the consumer
validates every message it reads: a torn one would land in its errors/), and the
pipeline goes on by itself once there is room again.
"""

from __future__ import annotations

import os
import signal
import time

import orjson
import pytest

from pipers.sources.reporter import CommitError, Reporter
from queues import Queue
from queues.names import split_owner
from tests.faults.conftest import fill, free_bytes
from tests.helpers import cpu_seconds, files, wait_for


def _parsed(q: Queue, directory: str = "incoming") -> dict[str, dict]:
    d = os.path.join(q.path, directory)
    out = {}
    for n in files(d):
        with open(os.path.join(d, n), "rb") as f:
            out[n] = orjson.loads(f.read())  # a torn file would raise here
    return out


def _state(daemons, q: Queue) -> dict:
    ds = orjson.loads(daemons.run("status", "--json", q.path).stdout)["daemons"]
    return ds[0] if ds else {}


def test_put_into_a_full_filesystem_fails_clearly_and_leaves_no_partial_file(
        tmp_path, small_fs, daemons):
    root = small_fs()
    q = Queue(root / "q")
    before = q.put_many([orjson.dumps({"before": i}) for i in range(10)])
    filler = fill(root, leave=64 * 1024)
    lines = [orjson.dumps({"big": "x" * 1_000_000})]  # first: torn at 64 KiB by ENOSPC
    lines += [orjson.dumps({"small": i}) for i in range(50)]
    src = tmp_path / "batch.ndjson"
    src.write_bytes(b"\n".join(lines) + b"\n")
    free = free_bytes(root)
    r = daemons.run("put", "--queue-out-dir", q.path, str(src))
    err = r.stderr.decode()
    assert r.returncode == 1, err
    assert err.startswith("pipers put: nothing enqueued: No space left on device")
    assert q.tmp in err and len(err.strip().splitlines()) == 1
    assert sorted(_parsed(q)) == sorted(before)  # nothing of the batch, no torn file
    assert os.listdir(q.tmp) == []
    assert free_bytes(root) == free  # the torn staging file was removed
    os.unlink(filler)
    r = daemons.run("put", "--queue-out-dir", q.path, str(src))
    assert r.returncode == 0, r.stderr
    assert len(_parsed(q)) == 61


def test_reporter_on_a_full_filesystem_keeps_its_records_and_commits_them_later(small_fs):
    root = small_fs()
    q = Queue(root / "q")
    filler = fill(root, leave=16 * 1024)
    reporter = Reporter(q.path, monitoring_type="faults")
    for i in range(20):
        reporter.add_record({"i": i})
    with pytest.raises(CommitError) as e:
        reporter.commit()
    assert "No space left on device" in str(e.value) and q.path in str(e.value)
    assert "20 records" in str(e.value) and len(reporter) == 20
    assert files(q.incoming) == [] and os.listdir(q.tmp) == []
    reporter.add_record({"i": 20})
    with pytest.raises(CommitError):  # still full: still nothing half-done
        reporter.commit()
    assert files(q.incoming) == [] and os.listdir(q.tmp) == []
    os.unlink(filler)
    assert reporter.commit() == 21 and len(reporter) == 0
    got = _parsed(q)
    assert sorted(m["i"] for m in got.values()) == list(range(21))
    assert all(m["monitoringType"] == "faults" for m in got.values())


@pytest.mark.parametrize("durability", ["none", "fsync"])
def test_a_daemon_whose_output_fills_the_disk_waits_and_resumes_by_itself(
        tmp_path, small_fs, daemons, durability):
    """in (disk) -> enrich -> mid (2 MiB tmpfs, ~500 messages) -> pass -> out (disk)."""
    root = small_fs()
    qin, qmid, qout = Queue(tmp_path / "in"), Queue(root / "mid"), Queue(tmp_path / "out")
    made = qin.put_many([orjson.dumps({"i": i}) for i in range(1500)])
    p = daemons.start("enrich", "--queue-in-dir", qin.path, "--queue-out-dir", qmid.path,
                      "--set", "hop=1", "--queue-out-wait", "0.5", "--queue-out-limit", "0",
                      "--durability", durability)
    wait_for(lambda: "No space left on device" in _state(daemons, qin).get("why", ""),
             timeout=60, interval=0.2, what="the daemon to report the full disk")
    state = _state(daemons, qin)
    assert state["state"] == "waiting" and qmid.path in state["why"], state

    # Frozen for a moment, every message is somewhere, whole, exactly once.
    p.send_signal(signal.SIGSTOP)
    try:
        mid = _parsed(qmid)
        held = files(qin.incoming) + [split_owner(n)[0] for n in files(qin.pending)]
    finally:
        p.send_signal(signal.SIGCONT)
    assert 300 < len(mid) < 1500
    assert all(m["hop"] == 1 for m in mid.values())
    assert sorted(list(mid) + held) == sorted(made)
    assert os.listdir(qmid.tmp) == [] and files(qin.errors) == []

    # Waiting is quiet: no busy loop on its own released claims, one log line.
    cpu = cpu_seconds(p.pid)
    time.sleep(3)  # six rounds of --queue-out-wait
    assert cpu_seconds(p.pid) - cpu < 0.5, "a daemon waiting for disk space must not spin"
    assert daemons.log(p).count("No space left on device") == 1
    assert p.poll() is None

    # A consumer frees the space; the first daemon goes on without being touched.
    p2 = daemons.start("pass", "--queue-in-dir", qmid.path, "--queue-out-dir", qout.path,
                       "--durability", durability)
    wait_for(lambda: len(files(qout.incoming)) == 1500, timeout=180, interval=0.2,
             what="all messages through once space was freed")
    out = _parsed(qout)
    assert sorted(out) == sorted(made)
    assert all(m["hop"] == 1 for m in out.values())
    assert files(qmid.errors) == [] and files(qin.errors) == []  # no torn file was ever seen
    # enrich unlinks its claims after its batch is committed, which the pass daemon
    # may overtake: once enrich is idle again, nothing is left behind.
    wait_for(lambda: _state(daemons, qin).get("state") == "idle", what="enrich idle again")
    assert files(qin.incoming) == [] and files(qin.pending) == []
    assert p.poll() is None and p2.poll() is None


def test_a_bad_message_on_a_full_filesystem_waits_for_room_for_its_reason(
        small_fs, daemons):
    """No room for the sidecar: the message stays in incoming/, not lost, not spinning."""
    root = small_fs()
    qa, qb = Queue(root / "a"), Queue(root / "b")
    bad = qa.put_many([b'{"broken": %d' % i for i in range(40)])
    filler = fill(root)
    p = daemons.start("pass", "--queue-in-dir", qa.path, "--queue-out-dir", qb.path,
                      "--queue-out-wait", "0.5", "--queue-in-wait", "0.5")
    wait_for(lambda: "cannot write to errors/" in daemons.log(p), what="the full disk noticed")
    time.sleep(1)
    p.send_signal(signal.SIGSTOP)
    try:
        held = files(qa.incoming) + [split_owner(n)[0] for n in files(qa.pending)]
    finally:
        p.send_signal(signal.SIGCONT)
    assert sorted(held) == sorted(bad) and files(qa.errors) == []
    cpu = cpu_seconds(p.pid)
    time.sleep(2)
    assert cpu_seconds(p.pid) - cpu < 0.5, "a daemon waiting for disk space must not spin"
    os.unlink(filler)
    wait_for(lambda: len(files(qa.errors)) == 40, timeout=60, what="bad messages to errors/")
    assert sorted(files(qa.errors)) == sorted(bad)
    assert {s["reason"] for _, s in qa.error_entries()} == {"invalid-json"}
    assert files(qa.incoming) == [] and files(qb.incoming) == []
    assert p.poll() is None
