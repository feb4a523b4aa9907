"""`pipers status` on real pipelines, and progress of `put`/`replay` on a terminal only."""

from __future__ import annotations

import os
import pty
import select
import shutil
import signal
import subprocess
import time

import orjson
import pytest

from pipers.ops.status import Reasons, pipeline_queues, queue_throughput, throughput
from queues import Queue, Reason
from tests.helpers import PIPERS, ROOT, files, wait_for

DIRS = ("incoming", "pending", "tmp", "errors")
ENV = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONFAULTHANDLER="1")  # SIGABRT: stack on stderr


def exited(p: subprocess.Popen, timeout: float) -> tuple[bytes, bytes]:
    """(stdout, stderr) of p once it exited; if it has not within `timeout`, the test
    fails with the Python stack p was in (SIGABRT makes faulthandler print it)."""
    try:
        return p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGABRT)
        err = p.communicate(timeout=30)[1]
        pytest.fail(f"still running {timeout} s after SIGINT; where it was:\n"
                    f"{err.decode(errors='replace')[-4000:]}")


def status_json(daemons, *args: str) -> list[dict]:
    r = daemons.run("status", "--json", *args)
    assert r.returncode == 0, r.stderr
    return [orjson.loads(line) for line in r.stdout.splitlines()]


def table(text: str) -> dict[str, dict[str, str]]:
    """The rows of the status table by queue: {queue: {column: cell}} (DAEMONS left out)."""
    lines = text.splitlines()
    header = lines[0].split()[:-1]
    rows = {}
    for line in lines[1:]:
        if not line.strip():
            break
        cells = line.split()[: len(header)]
        rows[cells[0]] = dict(zip(header, cells, strict=True))
    return rows


def read_terminal(master: int, wait: float) -> bytes | None:
    """What the terminal shows within `wait` seconds (b"": nothing new); None once every
    holder of its other end is gone (EIO or end of file)."""
    if not select.select([master], [], [], wait)[0]:
        return b""
    try:
        return os.read(master, 65536) or None
    except OSError:  # EIO
        return None


def on_terminal(args: list[str], *, stdout_to: str | None = None, until: bytes | None = None,
                timeout: float = 60) -> tuple[int, bytes]:
    """Run `pipers ARGS` with stderr (and stdout unless `stdout_to`) on a pseudo-terminal;
    returns the exit code and what the terminal showed. With `until`, SIGINT is sent
    once the terminal has shown that text twice (a refreshing screen)."""
    master, slave = pty.openpty()
    out = open(stdout_to, "wb") if stdout_to else slave
    p = subprocess.Popen([*PIPERS, *args], stdin=subprocess.DEVNULL, stdout=out, stderr=slave,
                         cwd=ROOT, env=ENV)
    os.close(slave)
    if stdout_to:
        out.close()
    shown = bytearray()
    deadline = time.monotonic() + timeout
    interrupted = False
    try:
        while time.monotonic() < deadline:
            chunk = read_terminal(master, 0.5)
            if chunk is None:
                break
            shown += chunk
            if until is not None and not interrupted and shown.count(until) >= 2:
                p.send_signal(signal.SIGINT)
                interrupted = True
        try:
            rc = p.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:  # where was it? (faulthandler prints on SIGABRT)
            p.send_signal(signal.SIGABRT)
            p.wait(30)
            while chunk := read_terminal(master, 0.5):
                shown += chunk
            pytest.fail(f"no exit within {timeout} s (SIGINT sent: {interrupted}); the "
                        f"terminal showed last:\n{bytes(shown[-4000:]).decode(errors='replace')}")
    finally:
        os.close(master)
        if p.poll() is None:
            p.kill()
            p.wait()
    return rc, bytes(shown)


def make_errors(q: Queue, reasons: dict[Reason, int]) -> None:
    for reason, n in reasons.items():
        q.put_many([b"{}"] * n)
        for c in q.claim(n):
            q.fail(c, reason, "made by the test")


# -- throughput over the last minute ----------------------------------------------------------

@pytest.mark.parametrize("history, now, expected", [
    (None, 100.0, None),
    ([], 100.0, None),
    ("nonsense", 100.0, None),
    ([[1, "x"], [True, 3]], 100.0, None),
    ([[50.0, 7]], 100.0, 0.0),  # one sample: nothing measured yet
    ([[100.0, 0], [110.0, 50], [120.0, 100]], 120.0, 5.0),  # younger than a minute
    ([[100.0, 0], [110.0, 100]], 120.0, 5.0),  # idle for the last 10 s of its 20
    ([[0.0, 0], [50.0, 100], [65.0, 400], [70.0, 500]], 120.0, 400 / 60),  # base: 50
    ([[0.0, 0], [60.0, 100], [119.0, 700]], 120.0, 600 / 60),  # base exactly now - 60
    ([[0.0, 0], [10.0, 600]], 100.0, 0.0),  # busy long ago, idle for the last minute
    ([[10.0, 600], [0.0, 0]], 100.0, 0.0),  # order does not matter
    ([[0.0, 900], [100.0, 10]], 120.0, 0.0),  # a total that went down counts as nothing
    ([[120.0, 0], [120.0, 5]], 120.0, 0.0),  # no time covered yet
])
def test_throughput_of_one_daemon(history, now, expected):
    if expected is None:
        assert throughput(history, now) is None
    else:
        assert throughput(history, now) == pytest.approx(expected)


def test_throughput_of_a_queue_sums_its_daemons():
    a = {"history": [[0.0, 0], [60.0, 0], [120.0, 600]]}  # 10/s
    b = {"history": [[90.0, 0], [120.0, 90]]}  # 3/s, 30 s old
    assert queue_throughput([a, b, {"state": "idle"}], 120.0) == pytest.approx(13.0)
    assert queue_throughput([{"state": "idle"}], 120.0) is None
    assert queue_throughput([], 120.0) is None


def test_status_reads_throughput_from_state_files(tmp_path, daemons):
    """History written through Queue.write_state (as daemons do) gives the rates."""
    q = Queue(tmp_path / "q")
    t = time.time()
    q.write_state("enrich", {"state": "running", "counters": {"forwarded": 2200},
                             "history": [[t - 200, 0], [t - 100, 1000], [t - 30, 1600],
                                         [t - 10, 2200]]})  # 1200 in the last minute: 20/s
    q.write_state("filter", {"state": "idle", "history": [[t - 100, 0], [t - 5, 300]]})  # 5/s
    (r,) = status_json(daemons, q.path)
    assert r["throughput_per_second"] == pytest.approx(25.0)
    rates = {d["daemon"]: d["throughput_per_second"] for d in r["daemons"]}
    assert rates == {"enrich": pytest.approx(20.0), "filter": pytest.approx(5.0)}
    out = daemons.run("status", q.path).stdout.decode()
    assert table(out)[q.path]["MSG/S"] == "25.0"
    q.clear_state("enrich")
    q.clear_state("filter")
    (r,) = status_json(daemons, q.path)
    assert r["throughput_per_second"] is None and r["daemons"] == []
    assert table(daemons.run("status", q.path).stdout.decode())[q.path]["MSG/S"] == "-"


# -- counts on a running pipeline ---------------------------------------------------------------

def test_status_counts_match_ls_on_a_running_pipeline(tmp_path, daemons):
    """put -> enrich (output limited) -> pass: frozen with SIGSTOP at several moments
    of the flow, `status --json` and the table show what `ls` shows in every directory."""
    q1, q2, q3 = (Queue(tmp_path / n) for n in ("enrich", "pass", "out"))
    src = tmp_path / "in.ndjson"
    src.write_bytes(b"".join(b'{"n": %d}\n' % i for i in range(3000)))
    r = daemons.run("put", "--durability", "none", "--queue-out-dir", q1.path, str(src))
    assert r.returncode == 0, r.stderr
    for bad in (b"not json", b"[1, 2]", b"{"):
        q1.put(bad)
    common = ("--queue-out-wait", "0.1", "--batch-size", "20")
    enrich = daemons.start("enrich", "--queue-in-dir", q1.path, "--queue-out-dir", q2.path,
                           "--queue-out-limit", "200", *common)
    passer = daemons.start("pass", "--queue-in-dir", q2.path, "--queue-out-dir", q3.path,
                           "--queue-out-limit", "0", *common)
    pids = (enrich.pid, passer.pid)
    queues = (q1, q2, q3)
    compared = 0
    for target in (300, 1200, 2400, 3000):
        wait_for(lambda t=target: len(files(q3.incoming)) >= t, timeout=120,
                 what=f"{target} messages through the pipeline")
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            reports = status_json(daemons, *(q.path for q in queues))
            text = daemons.run("status", *(q.path for q in queues)).stdout.decode()
            listed = {q.path: {d: len(files(os.path.join(q.path, d))) for d in DIRS}
                      for q in queues}
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
        assert [r["queue"] for r in reports] == [q.path for q in queues]
        rows = table(text)
        for r in reports:
            assert r["counts"] == listed[r["queue"]]
            row = rows[r["queue"]]
            assert {d: int(row[d.upper()]) for d in DIRS} == listed[r["queue"]]
        compared += 1
        by_queue = {r["queue"]: r for r in reports}
        assert [d["daemon"] for d in by_queue[q1.path]["daemons"]] == ["enrich"]
        assert [d["daemon"] for d in by_queue[q2.path]["daemons"]] == ["pass"]
    assert compared == 4
    wait_for(lambda: len(files(q1.errors)) == 3 and not files(q1.incoming)
             and not files(q2.incoming), what="the invalid messages failed")
    (r1, _, r3) = status_json(daemons, q1.path, q2.path, q3.path)
    assert sum(r1["errors_by_reason"].values()) == 3
    assert r1["errors_by_reason"].get("invalid-json", 0) >= 2  # "not json" and "{"
    assert r3["counts"]["incoming"] == 3000 and r1["counts"]["errors"] == 3
    if any("history" in d for d in r1["daemons"]):  # the daemons report their history
        assert r1["throughput_per_second"] > 0


# -- the pipeline of a config file ----------------------------------------------------------------

CONFIG = {
    "toml": """
durability = "none"
queue-out-limit = 5000
[ship]
queue-in-dir = "{d}/ship"
[enrich]
queue-in-dir = "{d}/enrich"
queue-out-dir = "{d}/ship"
[filter]
queue-in-dir = "{d}/drop"
queue-out-dir = "{d}/enrich"
[collect]
storage-root = "{d}/spool"
queue-out-dir = "{d}/drop"
[printer]
queue-in-dir = "{d}/side"
""",
    "ini": """
[pipers]
durability = none
[ship]
queue_in_dir = {d}/ship
[enrich]
queue-in-dir = {d}/enrich
queue-out-dir = {d}/ship
[filter]
queue-in-dir = {d}/drop
queue-out-dir = {d}/enrich
[collect]
storage-root = {d}/spool
queue-out-dir = {d}/drop
[printer]
queue-in-dir = {d}/side
""",
}


@pytest.mark.parametrize("form", ["toml", "ini"])
def test_status_of_every_queue_of_a_config_file_in_pipeline_order(tmp_path, daemons, form):
    cfg = tmp_path / f"pipers.{form}"
    cfg.write_text(CONFIG[form].format(d=tmp_path))
    order = [str(tmp_path / n) for n in ("drop", "enrich", "ship", "side")]
    assert pipeline_queues(str(cfg)) == order
    drop, enrich = Queue(tmp_path / "drop"), Queue(tmp_path / "enrich")
    drop.put_many([b"{}"] * 4)
    make_errors(enrich, {Reason.EXCEPTION: 2})  # ship/ and side/ not created yet
    reports = status_json(daemons, "--config", str(cfg))
    assert [r["queue"] for r in reports] == order
    assert reports[0]["counts"] == {"incoming": 4, "pending": 0, "tmp": 0, "errors": 0}
    assert reports[1]["errors_by_reason"] == {"exception": 2}
    assert [r.get("missing", False) for r in reports] == [False, False, True, True]
    r = daemons.run("status", "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    rows = table(r.stdout.decode())
    assert list(rows) == order
    assert rows[order[0]]["INCOMING"] == "4" and rows[order[1]]["ERRORS"] == "2"
    assert "(no queue yet)" in r.stdout.decode().splitlines()[3]


def test_config_relative_paths_and_bad_files(tmp_path, daemons, monkeypatch):
    cfg = tmp_path / "rel.toml"
    cfg.write_text('[pass]\nqueue-in-dir = "a"\nqueue-out-dir = "b"\n')
    monkeypatch.chdir(tmp_path)
    assert pipeline_queues(str(cfg)) == [str(tmp_path / "a"), str(tmp_path / "b")]
    empty = tmp_path / "empty.toml"
    empty.write_text('durability = "fsync"\n')
    r = daemons.run("status", "--config", str(empty))
    assert r.returncode == 2 and b"names no queue" in r.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("[pass\n")
    r = daemons.run("status", "--config", str(broken))
    assert r.returncode == 2 and b"broken.toml" in r.stderr
    r = daemons.run("status")
    assert r.returncode == 2 and b"--config" in r.stderr


# -- errors by reason, who waits ---------------------------------------------------------------

def test_errors_by_reason_and_their_refresh(tmp_path, daemons):
    q = Queue(tmp_path / "q")
    make_errors(q, {Reason.INVALID_JSON: 3, Reason.REJECTED: 2, Reason.POISON: 1})
    (r,) = status_json(daemons, q.path)
    assert r["errors_by_reason"] == {"invalid-json": 3, "poison": 1, "rejected": 2}
    out = daemons.run("status", q.path).stdout.decode()
    assert "errors by reason" in out and "       3  invalid-json" in out
    reasons = Reasons()  # --watch reads the sidecars again only when errors/ changed
    now = time.time()
    assert reasons(q, now) == r["errors_by_reason"]
    make_errors(q, {Reason.TOO_LARGE: 1})
    assert reasons(q, now)["too-large"] == 1
    assert daemons.run("replay", "--reason", "invalid-json", q.path).returncode == 0
    assert reasons(q, now) == {"poison": 1, "rejected": 2, "too-large": 1}


def test_a_full_next_queue_is_a_wait_but_not_the_clusters(tmp_path, daemons):
    q1, q2 = Queue(tmp_path / "in"), Queue(tmp_path / "out")
    q1.put_many([b"{}"] * 40)
    daemons.start("pass", "--queue-in-dir", q1.path, "--queue-out-dir", q2.path,
                  "--queue-out-limit", "10", "--queue-out-wait", "0.2", "--batch-size", "5")
    (r,) = wait_for(lambda: [x for x in status_json(daemons, q1.path) if x["waiting"]],
                    what="the daemon waits for room")
    (w,) = r["waiting"]
    assert w["daemon"] == "pass" and "limit 10" in w["why"] and w["cluster"] is False
    assert r["cluster_waiting"] is False
    out = daemons.run("status", q1.path).stdout.decode()
    assert "waiting: pass" in out and "SEARCH CLUSTER" not in out


def test_shipper_waiting_on_the_cluster_is_said_clearly(tmp_path, daemons):
    q = Queue(tmp_path / "ship")
    q.put_many([b'{"n": 1}'] * 3)
    daemons.start("ship", "--queue-in-dir", q.path, "--es-url", "http://127.0.0.1:9",
                  "--retry-initial-wait", "0.2", "--retry-max-wait", "1")  # nobody listens
    (r,) = wait_for(lambda: [x for x in status_json(daemons, q.path) if x["cluster_waiting"]],
                    what="the shipper waits on the cluster")
    (w,) = r["waiting"]
    assert w["daemon"] == "ship" and w["cluster"] and "search cluster unavailable" in w["why"]
    out = daemons.run("status", q.path).stdout.decode()
    (line,) = [ln for ln in out.splitlines() if "SHIPPER WAITING ON THE SEARCH CLUSTER" in ln]
    assert "ship (pid" in line and q.path in line
    assert table(out)[q.path]["PENDING"] == str(r["counts"]["pending"])


# -- --watch ---------------------------------------------------------------------------------------

def test_watch_json_prints_a_document_per_refresh_and_ctrl_c_exits_0(tmp_path):
    q = Queue(tmp_path / "q")
    p = subprocess.Popen([*PIPERS, "status", "--watch", "--interval", "0.1", "--json", q.path],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=ENV)
    try:
        docs = [orjson.loads(p.stdout.readline()) for _ in range(2)]
        q.put_many([b"{}"] * 7)
        while True:  # the next refreshes see the new messages
            doc = orjson.loads(p.stdout.readline())
            docs.append(doc)
            if doc["queues"][0]["counts"]["incoming"] == 7:
                break
        shutil.rmtree(q.path)  # removed under --watch: shown as missing, no crash
        while not orjson.loads(p.stdout.readline())["queues"][0].get("missing"):
            pass
        p.send_signal(signal.SIGINT)
        rest, err = exited(p, 30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    assert docs[0]["queues"][0]["counts"]["incoming"] == 0
    assert all([x["queue"] for x in d["queues"]] == [q.path] for d in docs)
    assert [d["time"] for d in docs] == sorted(d["time"] for d in docs)
    for line in rest.splitlines():  # what it printed before the signal is whole
        assert orjson.loads(line)["queues"]


def test_watch_into_a_reader_that_leaves_ends_quietly(tmp_path):
    q = Queue(tmp_path / "q")
    r = subprocess.run(f"set -o pipefail; {' '.join(PIPERS)} status --watch --json "
                       f"--interval 0.05 {q.path} | head -n 3", shell=True,
                       executable="/bin/bash", capture_output=True, cwd=ROOT, env=ENV,
                       timeout=60)  # the exit code is status's own
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 3
    assert b"Error" not in r.stderr and b"Traceback" not in r.stderr


def test_watch_redraws_in_place_on_a_terminal_and_appends_when_piped(tmp_path, daemons):
    q = Queue(tmp_path / "q")
    q.put_many([b"{}"] * 2)
    rc, shown = on_terminal(["status", "--watch", "--interval", "0.1", q.path], until=b"QUEUE")
    assert rc == 0
    assert shown.count(b"\x1b[H") >= 2 and b"every 0.1s" in shown
    p = subprocess.Popen([*PIPERS, "status", "--watch", "--interval", "0.1", q.path],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=ENV)
    out = b""
    try:
        while out.count(b"QUEUE") < 2:
            out += p.stdout.readline()
        p.send_signal(signal.SIGINT)
        out += exited(p, 30)[0]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0
    assert b"\x1b" not in out and out.count(b"pipers status ") >= 2
    assert table(out.decode().split("\n", 1)[1])[q.path]["INCOMING"] == "2"


# -- progress of long operator actions -------------------------------------------------------------

def test_put_and_replay_are_quiet_when_piped(tmp_path, daemons):
    src = tmp_path / "big.ndjson"
    src.write_bytes(b"".join(b'{"n": %d}\n' % i for i in range(3000)))
    q = Queue(tmp_path / "q")
    r = daemons.run("put", "--durability", "none", "--queue-out-dir", q.path, str(src))
    assert r.returncode == 0
    assert r.stderr == f"enqueued 3000 messages into {q.incoming}\n".encode()
    assert r.stdout == b"" and len(files(q.incoming)) == 3000
    for c in q.claim(3000):
        q.fail(c, Reason.EXCEPTION, "made by the test")
    r = daemons.run("replay", q.path)
    assert r.returncode == 0
    assert r.stderr == f"3000 messages back in {q.incoming}\n".encode()
    assert len(r.stdout.splitlines()) == 3000 and b"\r" not in r.stdout


def test_put_and_replay_show_progress_on_a_terminal(tmp_path):
    src, small = tmp_path / "big.ndjson", tmp_path / "small.ndjson"
    src.write_bytes(b"".join(b'{"n": %d}\n' % i for i in range(3000)))
    small.write_bytes(b'{"n": 1}\n' * 10)
    q = Queue(tmp_path / "q")
    rc, shown = on_terminal(["put", "--durability", "none", "--queue-out-dir", q.path,
                             str(src)])
    assert rc == 0 and len(files(q.incoming)) == 3000
    assert b"writing" in shown and b"committing" in shown and b"3000/3000" in shown
    assert b"\r" in shown and b"enqueued 3000 messages" in shown
    rc, shown = on_terminal(["put", "--queue-out-dir", q.path, str(small)])
    assert rc == 0 and b"writing" not in shown  # too small to be worth a bar
    many = []
    for i in range(1200):
        one = tmp_path / f"m{i}.json"
        one.write_bytes(b'{"i": %d}' % i)
        many.append(str(one))
    rc, shown = on_terminal(["put", "--durability", "none", "--queue-out-dir", q.path, *many])
    assert rc == 0 and b"reading" in shown and b"1200/1200" in shown
    for c in q.claim(5000):
        q.fail(c, Reason.EXCEPTION, "made by the test")
    rc, shown = on_terminal(["replay", q.path], stdout_to=str(tmp_path / "replayed"))
    assert rc == 0 and b"replaying" in shown and b"4210/4210" in shown
    assert len((tmp_path / "replayed").read_bytes().splitlines()) == 4210
    assert len(files(q.incoming)) == 4210 and files(q.errors) == []
