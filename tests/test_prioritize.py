"""`pipers prioritize`: a job deep in a backlog, or not yet collected, becomes next."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import orjson

from queues import Queue, priority
from tests.helpers import files, wait_for

RECORDER = '''
import os, time

def record(message):
    """Note the order of processing; hold everything until the test says go."""
    while not os.path.exists(os.environ["GO_FILE"]):
        time.sleep(0.01)
    fd = os.open(os.environ["ORDER_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(fd, b"%d\\n" % message["n"])
    os.close(fd)
    return message
'''


def order(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def start_recorder(daemons, tmp_path: Path, q: Path, *extra: str):
    (tmp_path / "recorder.py").write_text(RECORDER)
    return daemons.start(
        "run", "--queue-in-dir", str(q), "--queue-out-dir", str(tmp_path / "q2"),
        "--function", f"{tmp_path / 'recorder.py'}:record", *extra,
        env={"GO_FILE": str(tmp_path / "go"), "ORDER_LOG": str(tmp_path / "order")})


def test_a_job_deep_in_a_10000_message_backlog_is_processed_next(daemons, tmp_path):
    q = Queue(tmp_path / "q")
    names = q.put_many(orjson.dumps({"n": i}) for i in range(10_000))
    p = start_recorder(daemons, tmp_path, tmp_path / "q", "--batch-size", "10")
    wait_for(lambda: len(files(tmp_path / "q" / "pending")) == 10,
             what="the first batch in hand")  # held until go: a running daemon mid-batch

    r = daemons.run("prioritize", names[9000], "--queue-dir", str(tmp_path / "q"))
    assert r.returncode == 0, r.stderr
    assert b"it is the next one processed" in r.stdout
    assert os.listdir(tmp_path / "q" / "priority") == [names[9000]]

    (tmp_path / "go").touch()
    done = wait_for(lambda: len(o := order(tmp_path / "order")) >= 30 and o, what="30 done")
    assert done[:10] == list(range(10))  # the batch in hand when it was prioritized
    assert done[10] == 9000  # then the prioritized job, ahead of 8,990 older ones
    assert done[11:30] == list(range(10, 29))
    # its output stays first in line in the next queue
    assert os.listdir(tmp_path / "q2" / "priority") == [names[9000]]
    assert not os.path.exists(tmp_path / "q" / "priority")  # removed once emptied
    assert p.poll() is None


def test_an_idle_daemon_wakes_for_a_prioritized_arrival(daemons, tmp_path):
    (tmp_path / "go").touch()
    q = Queue(tmp_path / "q")
    p = start_recorder(daemons, tmp_path, tmp_path / "q", "--queue-in-wait", "600")
    wait_for(lambda: q.states() and q.states()[0]["state"] == "idle", what="an idle daemon")
    with q.batch() as b:
        b.add(b'{"n": 7}', urgent=True)
    # well before its 600 s rescan: the hidden file poked into incoming/ woke it
    wait_for(lambda: order(tmp_path / "order") == [7], timeout=30, what="the urgent message")
    assert p.poll() is None


def test_where_a_message_is_found_is_reported(daemons, tmp_path):
    q = Queue(tmp_path / "q")
    waiting, busy, failed = q.put_many([b"{}", b"{}", b"{}"])
    q.claim(1)  # `waiting` is now pending
    (c_busy, c_failed) = q.claim(2)
    q.release(c_busy, count_attempt=True)  # back in incoming/ as busy,1
    q.fail(c_failed, "exception", "broken")
    qd = str(tmp_path / "q")

    r = daemons.run("prioritize", busy, "--queue-dir", qd)  # found under its retry name
    assert r.returncode == 0 and b"moved to" in r.stdout
    assert os.listdir(tmp_path / "q" / "priority") == [f"{busy},1"]
    r = daemons.run("prioritize", busy, "--queue-dir", qd)
    assert r.returncode == 0 and b"already first in line" in r.stdout
    r = daemons.run("prioritize", waiting, "--queue-dir", qd)
    assert r.returncode == 0 and b"being processed now" in r.stdout
    r = daemons.run("prioritize", failed, "--queue-dir", qd)
    assert r.returncode == 0 and b"failed, in" in r.stdout
    r = daemons.run("prioritize", "1700000000000000.1_1.nowhere", "--queue-dir", qd)
    assert r.returncode == 1 and b"unknown" in r.stdout
    assert priority.count(q) == 1


def test_submissions_not_yet_collected_are_taken_first(daemons, tmp_path):
    drop, deferred, q1 = tmp_path / "drop", tmp_path / "deferred", tmp_path / "q1"
    for d in (drop, deferred):
        d.mkdir()
    for i in range(20):
        (drop / f"sub-{i:02d}.json").write_bytes(orjson.dumps({"i": i}))
    (deferred / "held.json").write_bytes(b'{"i": 99}')
    (deferred / "held.dump").write_bytes(b"core")
    collect = daemons.start(
        "collect", "--storage-root", str(drop), "--deferred-storage-root", str(deferred),
        "--queue-out-dir", str(q1), "--queue-out-limit", "5", "--queue-out-wait", "1",
        "--settle-time", "0.2", "--priority-delay", "00:01:00")
    wait_for(lambda: len(files(q1 / "incoming")) == 5, what="a full first queue")
    assert len(files(drop)) == 15  # the others wait (backpressure)

    def prioritize(job_id: str):
        return daemons.run("prioritize", job_id, "--queue-dir", str(q1),
                           "--storage-root", str(drop), "--deferred-storage-root",
                           str(deferred))

    r = prioritize("sub-17")
    assert r.returncode == 0 and b"found in the storage root" in r.stdout, r.stdout
    r = prioritize("held")
    assert r.returncode == 0 and b"found in the deferred storage root" in r.stdout

    def urgent() -> list[dict]:
        pdir = q1 / "priority"
        return [orjson.loads((pdir / n).read_bytes()) for n in files(pdir)]

    got = wait_for(lambda: len(u := urgent()) == 2 and u, timeout=30,
                   what="both taken ahead of the backlog")
    assert sorted(m["collect"]["job"] for m in got) == ["held", "sub-17"]
    held = next(m for m in got if m["collect"]["job"] == "held")
    assert held["collect"]["dump"]["size"] == 4
    assert not (drop / "sub-17.json").exists() and files(deferred) == []
    assert len(files(q1 / "incoming")) == 5  # the backlog did not move

    # once collected, the same id is found through the jobs index
    r = prioritize("sub-17")
    assert r.returncode == 0 and b"already first in line" in r.stdout
    r = prioritize("sub-03")  # one of the five collected normally
    assert r.returncode == 0 and b"it is the next one processed" in r.stdout
    assert len(files(q1 / "priority")) == 3
    r = prioritize("nobody")
    assert r.returncode == 1 and b"unknown" in r.stdout
    assert collect.poll() is None


# -- the queue mechanism, in-process ------------------------------------------------------


def test_claim_takes_priority_first_and_removes_the_emptied_directory(tmp_path):
    q = Queue(tmp_path / "q")
    names = q.put_many(orjson.dumps({"n": i}) for i in range(5))
    assert q.claim(1)[0].name == names[0]  # the sorted listing of the rest is now cached
    assert priority.promote(q, names[3]) == "incoming"
    got = q.claim(2)
    assert [(c.name, c.urgent) for c in got] == [(names[3], True), (names[1], False)]
    assert not (tmp_path / "q" / "priority").exists()  # emptied: removed, one failed open()
    q.release(got[0])  # an urgent claim given back keeps its place
    assert os.listdir(tmp_path / "q" / "priority") == [names[3]]
    again = q.claim(1)
    assert again[0].urgent and again[0].name == names[3]
    assert [c.name for c in q.claim(5)] == [names[2], names[4]]
    assert priority.promote(q, names[2]) == "pending"


def test_urgent_messages_stay_urgent_across_filesystems(tmp_path):
    shm = Path("/dev/shm")  # a tmpfs: the forward is a copy, not a rename
    cross = shm.is_dir() and os.stat(shm).st_dev != os.stat(tmp_path).st_dev
    other = shm / f"pipers-test-{os.getpid()}" if cross else tmp_path / "other"
    other.mkdir()
    try:
        src, dst = Queue(tmp_path / "src"), Queue(other / "dst")
        src.put(b'{"x": 1}', "1700000000000000.1_1.h")
        priority.promote(src, "1700000000000000.1_1.h")
        (claim,) = src.claim(1)
        with dst.batch() as b:
            b.add_move(claim.path, claim.id, src.dev, urgent=claim.urgent)
        assert os.listdir(other / "dst" / "priority") == ["1700000000000000.1_1.h"]
        assert files(other / "dst" / "incoming") == []
        assert not os.path.exists(claim.path)  # the copy's source is gone after the commit
    finally:
        shutil.rmtree(other, ignore_errors=True)
