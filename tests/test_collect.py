"""`pipers collect`: a drop directory becomes jobs exactly once; originals cleaned up."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import orjson
import pytest

from pipers.base import Options
from pipers.sources.collect import QUEUED, Collect, being_written
from queues import Queue
from tests.helpers import files, wait_for

SINK = '''
import hashlib, json, os

def sink(message):
    """Check the dump a job references, note the job, refuse every tenth (n % 10 == 3)."""
    c = message["collect"]
    ok = None
    if "dump" in c:
        with open(c["dump"]["path"], "rb") as f:
            data = f.read()
        ok = len(data) == c["dump"]["size"] and \\
            hashlib.sha256(data).hexdigest() == c["dump"]["sha256"]
    fail = message["n"] % 10 == 3
    line = json.dumps({"n": message["n"], "job": c["job"], "dump_ok": ok,
                       "pad": len(message["pad"]), "failed": fail}) + "\\n"
    fd = os.open(os.environ["SINK_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(fd, line.encode())
    os.close(fd)
    if fail:
        raise ValueError("refused on purpose")
    return message
'''


def dump_bytes(n: int) -> bytes:
    """A deterministic dump of a few KiB for submission n."""
    seed = hashlib.sha256(str(n).encode()).digest()
    return (seed * (1 + (n * 37) % 400))[: 256 + (n * 53) % 12000]


def json_bytes(n: int) -> bytes:
    return orjson.dumps({"n": n, "pad": "x" * ((n * 31) % 3000)})


def has_dump(n: int) -> bool:
    return n % 7 != 0  # every seventh submission is a JSON file alone


def write(path: Path, data: bytes, pause: float = 0.0) -> None:
    """Write straight to the final name; a slow writer pauses with the file open."""
    with open(path, "wb") as f:
        if pause:
            f.write(data[: len(data) // 2])
            f.flush()
            time.sleep(pause)
            f.write(data[len(data) // 2 :])
        else:
            f.write(data)


def submit(root: Path, n: int, pause: float = 0.0) -> None:
    if has_dump(n):
        write(root / f"crash-{n:05d}.dump", dump_bytes(n), pause)  # the dump first
    write(root / f"crash-{n:05d}.json", json_bytes(n), pause)


def sink_results(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def job_dirs(jobs: Path) -> list[str]:
    return [e for e in os.listdir(jobs) if not e.startswith(".")] if jobs.exists() else []


@pytest.fixture
def pipeline(tmp_path, daemons):
    """collect -> q1 -> pass -> q2 -> run(sink that refuses n % 10 == 3), one journal."""

    def start(*collect_flags: str, settle: str = "0.5") -> dict:
        p = {name: tmp_path / name for name in
             ("drop", "q1", "q2", "journal", "ok", "bad", "sink.out")}
        p["drop"].mkdir()
        (tmp_path / "sink.py").write_text(SINK)
        journal = ("--journal-dir", str(p["journal"]))
        p["collect"] = daemons.start(
            "collect", "--storage-root", str(p["drop"]), "--queue-out-dir", str(p["q1"]),
            *journal, "--settle-time", settle, "--cleanup-delay", "0.5",
            "--loop-delay", "00:00:05", *collect_flags)
        daemons.start("pass", "--queue-in-dir", str(p["q1"]), "--queue-out-dir", str(p["q2"]),
                      *journal, "--queue-in-wait", "1")
        daemons.start("run", "--queue-in-dir", str(p["q2"]), "--function",
                      f"{tmp_path / 'sink.py'}:sink", *journal, "--queue-in-wait", "1",
                      env={"SINK_OUT": str(p["sink.out"])})
        wait_for(lambda: (p["q1"] / "jobs").is_dir(), what="collect started")
        return p

    return start


@pytest.fixture
def sorted_pipeline(pipeline, tmp_path):
    return pipeline("--save-successful-to", str(tmp_path / "ok"),
                    "--save-failed-to", str(tmp_path / "bad"))


def test_1000_pairs_become_jobs_exactly_once_and_originals_are_sorted(sorted_pipeline, daemons):
    p = sorted_pipeline
    total = 1000
    slow = set(range(5, total, 50))  # 20 submissions written with pauses longer than settle
    fast = [n for n in range(total) if n not in slow]

    def writer(ns, pause):
        for n in ns:
            submit(p["drop"], n, pause)

    threads = [threading.Thread(target=writer, args=(fast[i::4], 0.0)) for i in range(4)]
    slow_list = sorted(slow)
    threads += [threading.Thread(target=writer, args=(slow_list[i::10], 0.8))
                for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    results = wait_for(lambda: (r := sink_results(p["sink.out"])) and len(r) >= total and r,
                       timeout=120, what="every job at the sink")
    time.sleep(1)  # anything extra (a duplicate) would show up now
    results = sink_results(p["sink.out"])
    assert sorted(r["n"] for r in results) == list(range(total))  # each exactly once
    for r in results:
        n = r["n"]
        assert r["job"] == f"crash-{n:05d}"
        assert r["pad"] == (n * 31) % 3000  # the whole JSON, never a prefix
        assert r["dump_ok"] is (True if has_dump(n) else None)  # the whole dump

    failed = {n for n in range(total) if n % 10 == 3}
    expect_ok = {f"crash-{n:05d}.json" for n in range(total) if n not in failed}
    expect_ok |= {f"crash-{n:05d}.dump" for n in range(total) if n not in failed and has_dump(n)}
    expect_bad = {f"crash-{n:05d}.json" for n in failed}
    expect_bad |= {f"crash-{n:05d}.dump" for n in failed if has_dump(n)}

    def cleaned():
        return (set(files(p["ok"])) == expect_ok and set(files(p["bad"])) == expect_bad
                and not job_dirs(p["q1"] / "jobs"))

    wait_for(cleaned, timeout=60, what="originals moved to the successful/failed directories")
    for name in files(p["ok"]):
        n = int(name[6:11])
        data = (p["ok"] / name).read_bytes()
        assert data == (dump_bytes(n) if name.endswith(".dump") else json_bytes(n))
    assert files(p["drop"]) == []
    assert len(files(p["q2"] / "errors")) == len(failed)
    assert files(p["q1"] / "incoming") == files(p["q2"] / "incoming") == []
    assert os.listdir(p["q1"] / "jobs" / ".by-id") == []
    assert p["collect"].poll() is None, daemons.log(p["collect"])


@pytest.mark.parametrize("save_ok,save_bad", [(False, False), (True, False), (False, True)])
def test_blank_save_flags_delete_the_originals(pipeline, tmp_path, save_ok, save_bad):
    flags = []
    if save_ok:
        flags += ["--save-successful-to", str(tmp_path / "ok")]
    if save_bad:
        flags += ["--save-failed-to", str(tmp_path / "bad")]
    p = pipeline(*flags)
    for n in range(30):
        submit(p["drop"], n)
    wait_for(lambda: len(sink_results(p["sink.out"])) >= 30, what="30 jobs at the sink")
    wait_for(lambda: not job_dirs(p["q1"] / "jobs"), what="cleanup of every job")
    ok = {f"crash-{n:05d}.json" for n in range(30) if n % 10 != 3}
    bad = {f"crash-{n:05d}.json" for n in range(30) if n % 10 == 3}
    assert {f for f in files(tmp_path / "ok") if f.endswith(".json")} == (ok if save_ok
                                                                         else set())
    assert {f for f in files(tmp_path / "bad") if f.endswith(".json")} == (bad if save_bad
                                                                          else set())
    assert files(p["drop"]) == []


# -- in-process: one loop at a time ----------------------------------------------------------


def make_collect(tmp_path: Path, **kw) -> Collect:
    options = Options(queue_out_dir=str(tmp_path / "q"), journal_dir=str(tmp_path / "j"))
    kw.setdefault("settle_time", 0.0)
    return Collect(options, storage_root=str(tmp_path / "drop"), **kw)


def queued(tmp_path: Path) -> list[dict]:
    inc = tmp_path / "q" / "incoming"
    return [orjson.loads((inc / n).read_bytes()) for n in files(inc)]


def test_a_file_open_for_writing_is_not_taken_even_when_settled(tmp_path):
    c = make_collect(tmp_path)
    drop = tmp_path / "drop"
    with open(drop / "held.json", "wb") as f:
        f.write(b'{"half": ')
        f.flush()
        assert being_written(str(drop / "held.json")) is True
        c.loop(time.time() + 60)  # long settled by its mtime, yet still open
        assert queued(tmp_path) == []
        f.write(b"true}")
    assert being_written(str(drop / "held.json")) is False
    c._next_rescan = 0  # the watchdog thread is not running in-process: rescan
    c.loop(time.time() + 60)
    assert [m["half"] for m in queued(tmp_path)] == [True]


def test_settle_time_holds_back_recent_files(tmp_path):
    c = make_collect(tmp_path, settle_time=30.0)
    (tmp_path / "drop" / "new.json").write_bytes(b"{}")
    now = time.time()
    wait = c.loop(now)
    assert queued(tmp_path) == [] and 25 < wait <= 30.5
    c.loop(now + 31)
    assert [m["collect"]["job"] for m in queued(tmp_path)] == ["new"]


def test_bad_submissions_go_straight_to_the_failed_originals(tmp_path):
    c = make_collect(tmp_path, save_failed_to=str(tmp_path / "bad"))
    drop = tmp_path / "drop"
    (drop / "broken.json").write_bytes(b'{"cut": ')
    (drop / "broken.dump").write_bytes(b"core")
    (drop / "list.json").write_bytes(b"[1, 2]")
    (drop / "good.json").write_bytes(b'{"fine": 1}')
    c.loop(time.time())
    assert [m["collect"]["job"] for m in queued(tmp_path)] == ["good"]
    assert files(tmp_path / "bad") == ["broken.dump", "broken.json", "list.json"]
    assert files(drop) == []


def test_a_job_whose_message_was_lost_in_a_crash_is_queued_again_once(tmp_path):
    c = make_collect(tmp_path)
    (tmp_path / "drop" / "a.json").write_bytes(b'{"k": "a"}')
    (tmp_path / "drop" / "b.json").write_bytes(b'{"k": "b"}')
    (tmp_path / "drop" / "b.dump").write_bytes(b"bbbb")
    c.loop(time.time())
    msgs = {m["k"]: m for m in queued(tmp_path)}
    names = {orjson.loads((tmp_path / "q" / "incoming" / n).read_bytes())["k"]: n
             for n in files(tmp_path / "q" / "incoming")}
    # a crash after moving b's originals in, before its message was committed:
    os.unlink(tmp_path / "q" / "incoming" / names["b"])
    os.unlink(tmp_path / "q" / "jobs" / names["b"] / QUEUED)
    # and one after a's commit, before its mark: the message is there, not queued twice
    os.unlink(tmp_path / "q" / "jobs" / names["a"] / QUEUED)
    again = make_collect(tmp_path)
    assert again.recover() == 1
    after = {orjson.loads((tmp_path / "q" / "incoming" / n).read_bytes())["k"]: n
             for n in files(tmp_path / "q" / "incoming")}
    assert after == names  # the same names: the shipper's _id stays the same
    assert queued(tmp_path)[1]["collect"]["dump"] == msgs["b"]["collect"]["dump"]
    assert all((tmp_path / "q" / "jobs" / n / QUEUED).exists() for n in names.values())


def test_cleanup_ignores_notes_of_other_messages(tmp_path):
    c = make_collect(tmp_path, save_successful_to=str(tmp_path / "ok"))
    (tmp_path / "drop" / "x.json").write_bytes(b"{}")
    c.loop(time.time())
    (name,) = files(tmp_path / "q" / "incoming")
    j = tmp_path / "j"
    (j / "0000000000000001.1_1.h").write_text(
        f"ok 1700000000000000.1_1.other\nfailed ../../etc\nbogus line\nok {name}.0\n")
    assert c.cleanup() == 1  # the child (NAME.0) of the job finished: the job did
    assert files(tmp_path / "ok") == ["x.json"] and os.listdir(j) == []


def test_queue_full_keeps_submissions_waiting(tmp_path):
    options = Options(queue_out_dir=str(tmp_path / "q"), queue_out_limit=2,
                      journal_dir=str(tmp_path / "j"))
    c = Collect(options, storage_root=str(tmp_path / "drop"), settle_time=0.0)
    for i in range(5):
        (tmp_path / "drop" / f"s{i}.json").write_bytes(b"{}")
    now = time.time()
    c.loop(now)
    assert len(queued(tmp_path)) == 2 and len(files(tmp_path / "drop")) == 3
    Queue(tmp_path / "q").claim(2)  # a consumer makes room
    c.loop(now + 1.5)
    c.loop(now + 1.6)
    assert len(queued(tmp_path)) == 2 and len(files(tmp_path / "drop")) == 1


def test_daemons_note_only_messages_whose_life_ends_there(tmp_path):
    from pipers.transforms.passthrough import Passthrough
    from pipers.transforms.run import Run
    from queues import journal

    def judge(message):
        if message["k"] == "refuse":
            raise ValueError("no")
        return None if message["k"] == "drop" else message

    j = str(tmp_path / "j")
    q1, q2 = Queue(tmp_path / "q1"), Queue(tmp_path / "q2")
    fwd = q1.put(b'{"k": "keep"}')
    bad = q1.put(b"not json")
    hop = Passthrough(Options(queue_in_dir=q1.path, queue_out_dir=q2.path, journal_dir=j))
    hop.loop(time.time())
    notes = [n for _, ns in journal.read(j) for n in ns]
    assert notes == [("failed", bad)]  # the forwarded one lives on in q2: no note
    for f, _ in journal.read(j):
        os.unlink(f)

    dropped, refused = q2.put(b'{"k": "drop"}'), q2.put(b'{"k": "refuse"}')
    sink = Run(Options(queue_in_dir=q2.path, journal_dir=j), function=judge)
    sink.loop(time.time())
    notes = sorted(n for _, ns in journal.read(j) for n in ns)
    assert notes == sorted([("ok", fwd), ("ok", dropped), ("failed", refused)])
    assert len(os.listdir(j)) == 1  # one small file for the whole batch
    sink.loop(time.time())  # nothing claimed: nothing written
    assert len(os.listdir(j)) == 1
