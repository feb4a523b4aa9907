"""`Reporter`: thread-safe records, durable group commits, nothing dropped on failure."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from pathlib import Path

import orjson
import pytest

from pipers.sources import CommitError, Reporter
from tests.helpers import files


def queued(q: Path) -> list[dict]:
    return [orjson.loads((q / "incoming" / n).read_bytes()) for n in files(q / "incoming")]


@contextlib.contextmanager
def unwritable(queue_dir: Path):
    """Make a queue really unwritable, root or not.

    A read-only bind mount of the queue onto itself (EROFS, as after a remount)
    where mounting is allowed; otherwise its tmp/ replaced by a regular file, so
    no message file can be created (ENOTDIR) - chmod would not stop root.
    """
    path = str(queue_dir)
    try:
        mounted = subprocess.run(["mount", "--bind", path, path],
                                 capture_output=True).returncode == 0
    except OSError:  # no mount(8) here
        mounted = False
    if mounted:
        if subprocess.run(["mount", "-o", "remount,bind,ro", path],
                          capture_output=True).returncode != 0:
            subprocess.run(["umount", path], check=True)
            mounted = False
    if mounted:
        try:
            yield "read-only mount"
        finally:
            if subprocess.run(["umount", path]).returncode != 0:
                subprocess.run(["umount", "-l", path], check=True)
        return
    tmp = queue_dir / "tmp"
    os.rename(tmp, queue_dir / ".tmp-aside")
    tmp.write_bytes(b"")
    try:
        yield "tmp/ is a file"
    finally:
        tmp.unlink()
        os.rename(queue_dir / ".tmp-aside", tmp)


def test_eight_threads_lose_no_record(tmp_path):
    reporter = Reporter(tmp_path / "q", monitoring_type="jobs")
    per_thread = 500
    written = []
    start = threading.Barrier(8)

    def work(t: int) -> None:
        start.wait()
        for i in range(per_thread):
            reporter.add_record({"thread": t, "i": i})
        written.append(reporter.commit())

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(written) == 8 * per_thread and len(reporter) == 0
    got = queued(tmp_path / "q")
    assert sorted((m["thread"], m["i"]) for m in got) == [
        (t, i) for t in range(8) for i in range(per_thread)]
    assert {m["monitoringType"] for m in got} == {"jobs"}
    assert reporter.commit() == 0  # nothing left


def test_a_commit_to_an_unwritable_queue_raises_and_a_later_one_delivers_all(tmp_path):
    q = tmp_path / "q"
    q.mkdir()
    reporter = Reporter(q, monitoring_type="accounting")
    reporter.add_record({"n": 0})
    assert reporter.commit() == 1
    for n in range(1, 51):
        reporter.add_record({"n": n})
    with unwritable(q) as how:
        with pytest.raises(CommitError) as e:
            reporter.commit()
        assert isinstance(e.value, OSError), how
        assert "cannot write 50 records into the queue" in str(e.value)
        assert "the next commit() retries them" in str(e.value)
        assert e.value.kept == 50 and len(reporter) == 50
        reporter.add_record({"n": 51})  # added while the queue is down
        with pytest.raises(CommitError):
            reporter.commit()
        assert len(reporter) == 51
    assert files(q / "tmp") == []  # nothing half-written left behind
    assert reporter.commit() == 51
    got = queued(q)
    assert [m["n"] for m in got] == list(range(52))  # all of them, in the order added
    assert len(reporter) == 0


def test_records_carry_the_monitoring_type_and_must_be_json(tmp_path):
    reporter = Reporter(tmp_path / "q", monitoring_type="pilots", type_field="kind")
    reporter.add_record({"site": "x", "kind": "ignored"})
    with pytest.raises(TypeError):
        reporter.add_record({"when": {1, 2}})  # a set is not JSON: refused at once
    with pytest.raises(TypeError):
        reporter.add_record([("a", 1)])
    assert reporter.commit() == 1
    assert queued(tmp_path / "q") == [{"site": "x", "kind": "pilots"}]
    with pytest.raises(ValueError):
        Reporter(tmp_path / "q", monitoring_type="")


def test_commit_is_durable_by_default_and_needs_no_daemon(tmp_path):
    reporter = Reporter(tmp_path / "q", monitoring_type="t")
    assert reporter.durability == "fsync"
    reporter.add_record({"a": 1})
    assert reporter.commit() == 1
    assert files(tmp_path / "q" / "tmp") == [] and len(queued(tmp_path / "q")) == 1
