"""Daemons as real processes on real directories: started, signalled, killed -9."""

from __future__ import annotations

import os
import signal
import statistics
import time

import orjson
import pytest

from pipers.base import COUNT_SHARE, Gate
from queues import Queue
from tests.helpers import cpu_seconds, files, wait_for


def fill(q: Queue, n: int, **extra) -> list[str]:
    return q.put_many([orjson.dumps({"i": i, **extra}) for i in range(n)])


def test_kill_9_mid_stream_loses_nothing_and_restart_recovers_pending(tmp_path, daemons):
    qin, qout = Queue(tmp_path / "in"), Queue(tmp_path / "out")
    made = fill(qin, 5000)
    args = ("enrich", "--queue-in-dir", qin.path, "--queue-out-dir", qout.path,
            "--set", "hop=1", "--batch-size", "50", "--queue-in-wait", "0.5")
    p = daemons.start(*args)
    wait_for(lambda: len(files(qout.incoming)) >= 500, what="first outputs")
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    assert len(files(qout.incoming)) < 5000, "the kill came too late to prove anything"
    stranded = files(qin.pending)
    p2 = daemons.start(*args, "--once")
    assert p2.wait(120) == 0
    assert files(qin.pending) == [] and files(qin.incoming) == []
    assert files(qin.errors) == []
    out = files(qout.incoming)
    assert sorted(out) == sorted(made)  # every message exactly once, under its own name
    for name in out[:50] + out[-50:]:
        body = orjson.loads(open(os.path.join(qout.incoming, name), "rb").read())
        assert body["hop"] == 1
    if stranded:  # what the dead worker held came back through recovery
        assert "recovered" in daemons.log(p2)


def test_four_instances_process_20000_messages_exactly_once(tmp_path, daemons):
    qin, qout = Queue(tmp_path / "in"), Queue(tmp_path / "out")
    fill(qin, 20_000)
    log = tmp_path / "handled.log"
    env = {"PIPERS_TEST_LOG": str(log)}
    procs = [daemons.start("run", "--queue-in-dir", qin.path, "--queue-out-dir", qout.path,
                           "--function", "tests.userfuncs:tag", "--queue-out-limit", "0",
                           "--batch-size", "20", env=env) for _ in range(4)]
    wait_for(lambda: len(files(qout.incoming)) == 20_000, timeout=300, interval=0.2,
             what="20,000 outputs")
    for p in procs:
        p.send_signal(signal.SIGTERM)
    assert [p.wait(30) for p in procs] == [0, 0, 0, 0]
    lines = log.read_text().splitlines()
    handled = [line.split()[0] for line in lines]
    assert len(handled) == 20_000, "some message was processed twice (or not at all)"
    assert len(set(handled)) == 20_000
    workers = {line.split()[1] for line in lines}
    assert len(workers) >= 2, "the instances did not share the work"
    assert files(qin.pending) == [] and files(qin.incoming) == []


def test_four_pass_instances_forward_each_message_once_while_it_is_consumed(tmp_path, daemons):
    """`pass` moves without claiming (Queue.pass_on): a message forwarded twice would be
    seen twice by the consumer downstream, which takes them as they arrive."""
    qin, qmid, qout = Queue(tmp_path / "in"), Queue(tmp_path / "mid"), Queue(tmp_path / "out")
    fill(qin, 20_000)
    log = tmp_path / "handled.log"
    hops = [daemons.start("pass", "--queue-in-dir", qin.path, "--queue-out-dir", qmid.path,
                          "--queue-out-limit", "0", "--batch-size", "20",
                          "--metrics-textfile", str(tmp_path / f"pass{i}.prom"))
            for i in range(4)]
    sink = daemons.start("run", "--queue-in-dir", qmid.path, "--queue-out-dir", qout.path,
                         "--function", "tests.userfuncs:tag", "--queue-out-limit", "0",
                         env={"PIPERS_TEST_LOG": str(log)})
    wait_for(lambda: len(files(qout.incoming)) == 20_000, timeout=300, interval=0.2,
             what="20,000 outputs")
    for p in hops + [sink]:
        p.send_signal(signal.SIGTERM)
    assert [p.wait(30) for p in hops + [sink]] == [0] * 5
    handled = [line.split()[0] for line in log.read_text().splitlines()]
    assert len(handled) == 20_000 and len(set(handled)) == 20_000
    forwarded = []
    for i in range(4):
        text = (tmp_path / f"pass{i}.prom").read_text()
        forwarded += [float(line.split()[-1]) for line in text.splitlines()
                      if line.startswith("pipers_forwarded_messages_total")]
    assert sum(forwarded) == 20_000, "an instance counted a message a sibling had moved"
    assert sum(1 for f in forwarded if f > 0) >= 2, "the instances did not share the work"
    assert files(qin.pending) == [] and files(qin.incoming) == [] and files(qmid.pending) == []


def _kill_9_repeatedly(daemons, args, qout: Queue, until: int, step: int, check) -> int:
    """Start the daemon, let `step` more messages reach `qout`, SIGKILL it, `check()`;
    again until `qout` holds `until`. Returns how many kills."""
    kills = 0
    while len(files(qout.incoming)) < until:
        p = daemons.start(*args)
        seen = len(files(qout.incoming))
        wait_for(lambda seen=seen: len(files(qout.incoming)) >= seen + step, what="progress")
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        kills += 1
        check()
    return kills


def test_kill_9_of_pass_leaves_each_message_in_one_queue_and_nothing_pending(tmp_path, daemons):
    qin, qout = Queue(tmp_path / "in"), Queue(tmp_path / "out")
    made = fill(qin, 20_000)
    args = ("pass", "--queue-in-dir", qin.path, "--queue-out-dir", qout.path,
            "--queue-out-limit", "0", "--batch-size", "50")
    def check():
        assert files(qin.pending) == []  # pass holds nothing: no claim to recover
        assert sorted(files(qin.incoming) + files(qout.incoming)) == sorted(made)

    assert _kill_9_repeatedly(daemons, args, qout, 15_000, 1000, check) >= 3, \
        "the hop finished too fast to be killed mid-run"
    assert daemons.run(*args, "--once").returncode == 0
    assert sorted(files(qout.incoming)) == sorted(made) and files(qin.incoming) == []


def test_exception_in_user_code_goes_to_errors_and_replay_delivers_it(tmp_path, daemons):
    qin, qout = Queue(tmp_path / "in"), Queue(tmp_path / "out")
    good = fill(qin, 20)
    (bad,) = qin.put_many([b'{"i": 99, "bad": true}'])
    more = fill(qin, 20)
    p = daemons.start("run", "--queue-in-dir", qin.path, "--queue-out-dir", qout.path,
                      "--function", "tests.userfuncs:explode", "--queue-in-wait", "0.2")
    wait_for(lambda: len(files(qout.incoming)) == 40, what="good messages through")
    assert files(qin.errors) == [bad]
    side = orjson.loads(open(os.path.join(qin.errors, bad + ".error.json"), "rb").read())
    assert side["reason"] == "exception"
    assert "ZeroDivisionError" in side["message"]
    assert "Traceback" in side["traceback"] and "explode" in side["traceback"]
    assert side["daemon"] == "run"
    assert p.poll() is None, "the daemon must keep going"
    # Fix the message by hand, then replay it: the running daemon delivers it.
    with open(os.path.join(qin.errors, bad), "wb") as f:
        f.write(b'{"i": 99, "bad": false}')
    r = daemons.run("replay", qin.path)
    assert r.returncode == 0 and bad in r.stdout.decode()
    wait_for(lambda: len(files(qout.incoming)) == 41, what="replayed message delivered")
    assert sorted(files(qout.incoming)) == sorted(good + more + [bad])
    assert files(qin.errors) == []


def test_invalid_json_goes_to_errors_with_its_reason(tmp_path, daemons):
    qin, qout = Queue(tmp_path / "in"), Queue(tmp_path / "out")
    qin.put(b'{"ok": 1}', name="a-good")
    qin.put(b'{"broken": ', name="b-broken")
    qin.put(b"\xff\xfe not utf-8", name="c-binary")
    qin.put(b"", name="d-empty")
    p = daemons.start("pass", "--queue-in-dir", qin.path, "--queue-out-dir", qout.path,
                      "--once")
    assert p.wait(30) == 0
    assert files(qout.incoming) == ["a-good"]
    assert files(qin.errors) == ["b-broken", "c-binary", "d-empty"]
    for name in files(qin.errors):
        side = orjson.loads(open(os.path.join(qin.errors, name + ".error.json"), "rb").read())
        assert side["reason"] == "invalid-json", name


def test_backpressure_limit_holds_and_the_daemon_resumes(tmp_path, daemons):
    qin, qout = Queue(tmp_path / "in"), Queue(tmp_path / "out")
    fill(qin, 1000)
    p = daemons.start("pass", "--queue-in-dir", qin.path, "--queue-out-dir", qout.path,
                      "--queue-out-limit", "100", "--queue-out-wait", "0.3",
                      "--batch-size", "7")
    wait_for(lambda: len(files(qout.incoming)) >= 100, what="output filled to the limit")
    peak = 0
    for _ in range(20):  # the limit holds while nobody drains the next queue
        peak = max(peak, len(files(qout.incoming)))
        time.sleep(0.05)
    assert peak == 100
    r = daemons.run("status", "--json", qin.path)
    state = orjson.loads(r.stdout)["daemons"][0]
    assert state["state"] == "waiting" and "limit 100" in state["why"]
    drained = 0  # a downstream consumer takes messages away; the daemon resumes by itself
    while drained < 1000:
        for c in qout.claim(50):
            qout.done(c)
            drained += 1
        assert len(files(qout.incoming)) <= 100
        if drained < 1000:
            wait_for(lambda: files(qout.incoming) or not files(qin.incoming), timeout=30,
                     what="the daemon to resume")
    assert files(qin.incoming) == [] and files(qin.pending) == []
    assert p.poll() is None


def test_the_gate_counts_a_slow_listing_less_often_and_recounts_at_the_limit(tmp_path):
    class SlowListing:  # the real queue's count, taking 50 ms like a very long queue
        def __init__(self, queue: Queue):
            self.queue, self.calls = queue, []

        def count(self, upto=None):
            self.calls.append(upto)
            time.sleep(0.05)
            return self.queue.count(upto=upto)

    q = Queue(tmp_path / "out")
    fill(q, 3)
    listing = SlowListing(q)
    gate = Gate(listing, limit=10, recount=1.0)
    assert gate.room(0.0) == 7 and listing.calls == [10]  # counted, stopping at the limit
    assert 0.05 / COUNT_SHARE > 1.5  # so the next count waits longer than `recount`
    assert gate.room(1.5) == 7 and len(listing.calls) == 1  # not yet: the last one was slow
    gate.added(7)  # our own writes reach the limit: counted again at once
    assert gate.room(1.6) == 7 and len(listing.calls) == 2
    fill(q, 5)
    assert gate.room(1.6 + 1.0 / COUNT_SHARE) == 2 and len(listing.calls) == 3  # took < 1 s
    fill(q, 5)  # 13 messages now: the count stops at the limit
    assert gate.room(99.0) == 0 and q.count() == 13 and len(listing.calls) == 4


def test_sigterm_finishes_the_message_in_hand_then_exits_0(tmp_path, daemons):
    qin, qout = Queue(tmp_path / "in"), Queue(tmp_path / "out")
    qin.put(b'{"i": 0, "slow": true}', name="0-slow")
    rest = [qin.put(b'{"i": %d}' % i, name=f"{i}-rest") for i in range(1, 30)]
    log = tmp_path / "slow.log"
    p = daemons.start("run", "--queue-in-dir", qin.path, "--queue-out-dir", qout.path,
                      "--function", "tests.userfuncs:slow", "--batch-size", "100",
                      env={"PIPERS_TEST_LOG": str(log)})
    wait_for(lambda: log.exists() and "started 0" in log.read_text(), what="slow message")
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == 0
    assert "finished 0" in log.read_text()
    assert files(qout.incoming) == ["0-slow"]  # the message in hand was finished...
    assert sorted(files(qin.incoming)) == sorted(rest)  # ...the rest handed back
    assert files(qin.pending) == []


def test_second_sigterm_stops_at_once(tmp_path, daemons):
    qin, qout = Queue(tmp_path / "in"), Queue(tmp_path / "out")
    qin.put(b'{"i": 0, "slow": true}', name="0-slow")
    log = tmp_path / "slow.log"
    p = daemons.start("run", "--queue-in-dir", qin.path, "--queue-out-dir", qout.path,
                      "--function", "tests.userfuncs:slow", env={"PIPERS_TEST_LOG": str(log)})
    wait_for(lambda: log.exists() and "started 0" in log.read_text(), what="slow message")
    p.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    assert p.wait(5) != 0
    assert "finished 0" not in log.read_text()
    assert len(files(qin.pending)) == 1  # recovered by the next start
    p2 = daemons.start("run", "--queue-in-dir", qin.path, "--queue-out-dir", qout.path,
                       "--function", "tests.userfuncs:slow", "--once",
                       env={"PIPERS_TEST_LOG": str(log)})
    assert p2.wait(30) == 0
    assert files(qout.incoming) == ["0-slow"]


def test_idle_daemon_wakes_on_arrival_without_polling(tmp_path, daemons):
    qin, qout = Queue(tmp_path / "in"), Queue(tmp_path / "out")
    p = daemons.start("pass", "--queue-in-dir", qin.path, "--queue-out-dir", qout.path,
                      "--queue-in-wait", "60")
    wait_for(lambda: "started on" in daemons.log(p), what="daemon start")
    time.sleep(0.3)
    latencies = []
    for i in range(7):
        t0 = time.monotonic()
        name = qin.put(b'{"i": %d}' % i)
        wait_for(lambda n=name: os.path.exists(os.path.join(qout.incoming, n)), timeout=10,
                 interval=0.001, what="wake-up")
        latencies.append(time.monotonic() - t0)
        time.sleep(0.2)
    # with a 60 s rescan interval only the inotify wake-up can explain these
    assert max(latencies) < 5, latencies
    assert statistics.median(latencies) < 0.1, latencies
    cpu = cpu_seconds(p.pid)
    time.sleep(2)
    assert cpu_seconds(p.pid) - cpu < 0.05, "an idle daemon must not spin"


def test_several_outputs_get_derived_names_and_a_sink_consumes(tmp_path, daemons):
    qin, qout = Queue(tmp_path / "in"), Queue(tmp_path / "out")
    qin.put(b'{"parts": 3}', name="m")
    r = daemons.run("run", "--queue-in-dir", qin.path, "--queue-out-dir", qout.path,
                    "--function", "tests.userfuncs:split", "--once")
    assert r.returncode == 0, r.stderr
    assert files(qout.incoming) == ["m.0", "m.1", "m.2"]
    r = daemons.run("print", "--queue-in-dir", qout.path, "--once")
    assert r.returncode == 0 and r.stderr.decode().count('"part"') == 3
    assert qout.counts()["incoming"] == 0


def test_filter_drops_or_routes(tmp_path, daemons):
    qin, qout, other = (Queue(tmp_path / n) for n in ("in", "out", "other"))
    qin.put(b'{"level": "error", "n": 1}', name="1")
    qin.put(b'{"level": "info", "n": 2}', name="2")
    qin.put(b'{"n": 3}', name="3")
    r = daemons.run("filter", "--queue-in-dir", qin.path, "--queue-out-dir", qout.path,
                    "--where", "level=error", "--route-to", other.path, "--once")
    assert r.returncode == 0, r.stderr
    assert files(qout.incoming) == ["1"]
    assert files(other.incoming) == ["2", "3"]


def _counter(textfile, name: str) -> float:
    return sum(float(line.split()[-1]) for line in textfile.read_text().splitlines()
               if line.startswith(name))


def test_filter_instances_keep_route_and_drop_each_message_once_without_claiming(
        tmp_path, daemons):
    """`filter` moves (keep, route) or unlinks (drop) where a message lies (Queue.pass_on):
    two instances on each of two filters in a row, the second consuming what the first
    routes while it routes; each message ends in exactly one place, counted once."""
    qin, rest, errors_out, info_out = (Queue(tmp_path / n) for n in ("in", "rest", "e", "i"))
    levels = ("error", "info", "debug")
    made = {name: levels[i % 3] for i, name in enumerate(
        qin.put_many([orjson.dumps({"i": i, "level": levels[i % 3]}) for i in range(6000)]))}
    bad = qin.put(b'{"level": "error", ')  # not JSON: errors/ with its reason, as ever
    inode = {n: os.stat(os.path.join(qin.incoming, n)).st_ino for n in list(made)[:30]}
    common = ("--queue-out-limit", "0", "--batch-size", "20")
    procs = [daemons.start("filter", "--queue-in-dir", qin.path, "--queue-out-dir",
                           errors_out.path, "--where", "level=error", "--route-to", rest.path,
                           "--metrics-textfile", str(tmp_path / f"f1-{k}.prom"), *common)
             for k in range(2)]
    procs += [daemons.start("filter", "--queue-in-dir", rest.path, "--queue-out-dir",
                            info_out.path, "--where", "level=info",
                            "--metrics-textfile", str(tmp_path / f"f2-{k}.prom"), *common)
              for k in range(2)]
    wait_for(lambda: len(files(errors_out.incoming)) == 2000
             and len(files(info_out.incoming)) == 2000 and not files(rest.incoming)
             and files(qin.errors), timeout=120, interval=0.2, what="all 6,001 settled")
    for p in procs:
        p.send_signal(signal.SIGTERM)
    assert [p.wait(30) for p in procs] == [0] * 4
    assert files(errors_out.incoming) == sorted(n for n, lv in made.items() if lv == "error")
    assert files(info_out.incoming) == sorted(n for n, lv in made.items() if lv == "info")
    for n, ino in inode.items():  # kept or routed: the same file, moved, not copied
        for q in (errors_out, info_out):
            if os.path.exists(os.path.join(q.incoming, n)):
                assert os.stat(os.path.join(q.incoming, n)).st_ino == ino
    assert files(qin.errors) == [bad]  # and its sidecar beside it:
    assert orjson.loads(open(os.path.join(qin.errors, bad + ".error.json"), "rb").read())[
        "reason"] == "invalid-json"
    for q in (qin, rest):
        assert files(q.incoming) == files(q.pending) == []
    f1 = [tmp_path / f"f1-{k}.prom" for k in range(2)]
    f2 = [tmp_path / f"f2-{k}.prom" for k in range(2)]
    forwarded = "pipers_forwarded_messages_total"
    assert sum(_counter(f, forwarded) for f in f1) == 6000  # kept or routed, once each
    assert sum(_counter(f, forwarded) for f in f2) == 2000
    assert sum(_counter(f, "pipers_dropped_messages_total") for f in f2) == 2000
    assert sum(_counter(f, "pipers_failed_messages_total") for f in f1) == 1


def test_kill_9_of_filter_leaves_each_message_kept_or_dropped_once_and_nothing_pending(
        tmp_path, daemons):
    qin, qout = Queue(tmp_path / "in"), Queue(tmp_path / "out")
    debug = set()
    made = []
    for i, name in enumerate(qin.put_many(
            [orjson.dumps({"i": i, "level": "debug" if i % 4 == 0 else "info"})
             for i in range(20_000)])):
        (debug.add if i % 4 == 0 else made.append)(name)
    args = ("filter", "--queue-in-dir", qin.path, "--queue-out-dir", qout.path,
            "--where", "level!=debug", "--queue-out-limit", "0", "--batch-size", "50")
    def check():
        assert files(qin.pending) == []  # filter holds nothing: no claim to recover
        left, out = set(files(qin.incoming)), files(qout.incoming)
        assert not left & set(out) and not debug & set(out)
        assert sorted((left - debug) | set(out)) == sorted(made)  # each kept one: in or out
        assert len(left & debug) < len(debug)  # and some debug ones already dropped

    assert _kill_9_repeatedly(daemons, args, qout, 11_000, 750, check) >= 3, \
        "the hop finished too fast to be killed mid-run"
    assert daemons.run(*args, "--once").returncode == 0
    assert files(qout.incoming) == sorted(made) and files(qin.incoming) == []


def test_enrich_adds_host_time_and_constants(tmp_path, daemons):
    qin, qout = Queue(tmp_path / "in"), Queue(tmp_path / "out")
    qin.put(b'{"a": 1, "env": "keep"}', name="m")
    r = daemons.run("enrich", "--queue-in-dir", qin.path, "--queue-out-dir", qout.path,
                    "--set", "env=prod", "--set", "n=5", "--host-field", "host",
                    "--time-field", "received", "--once")
    assert r.returncode == 0, r.stderr
    body = orjson.loads(open(os.path.join(qout.incoming, "m"), "rb").read())
    assert body["a"] == 1 and body["env"] == "keep" and body["n"] == 5
    assert body["host"] == os.uname().nodename and body["received"].startswith("20")


def test_bad_files_in_incoming_do_not_stop_a_running_daemon(tmp_path, daemons):
    qin, qout = Queue(tmp_path / "in"), Queue(tmp_path / "out")
    p = daemons.start("pass", "--queue-in-dir", qin.path, "--queue-out-dir", qout.path,
                      "--queue-in-wait", "0.5")
    outside = tmp_path / "outside.json"
    outside.write_bytes(b'{"outside": 1}')
    os.symlink(outside, os.path.join(qin.incoming, "link"))
    os.mkfifo(os.path.join(qin.incoming, "fifo"))
    os.mkdir(os.path.join(qin.incoming, "a dir"))
    for name in ("with space", "new\nline", "ünïcödé", "-leading-dash"):
        qin.put(b'{"odd": true}', name=name)
    qin.put(b'{"good": 1}', name="good")
    wait_for(lambda: len(files(qin.errors)) == 3 and len(files(qout.incoming)) == 5,
             what="bad files sorted out")
    assert sorted(files(qout.incoming)) == sorted(
        ["with space", "new\nline", "ünïcödé", "-leading-dash", "good"])
    assert sorted(files(qin.errors)) == ["a dir", "fifo", "link"]
    assert outside.read_bytes() == b'{"outside": 1}'
    assert p.poll() is None


def test_daemon_mode_writes_and_removes_its_pid_file(tmp_path, daemons):
    qin = Queue(tmp_path / "in")
    pid_file, log_file = tmp_path / "print.pid", tmp_path / "print.log"
    args = ("print", "--queue-in-dir", qin.path, "--daemon", "--pid-file", str(pid_file),
            "--log-file", str(log_file))
    r = daemons.run(*args)
    assert r.returncode == 0, r.stderr
    pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text().strip(),
                       what="pid file"))
    try:
        assert os.path.exists(f"/proc/{pid}")
        again = daemons.run(*args)
        assert again.returncode == 2
        assert f"names running process {pid}" in again.stderr.decode()
        assert len(again.stderr.decode().strip().splitlines()) == 1
        qin.put(b'{"hello": "daemon"}')
        wait_for(lambda: "hello" in log_file.read_text(), what="logged message")
        # HUP reopens the log file after an external rotation
        os.rename(log_file, str(log_file) + ".1")
        os.kill(pid, signal.SIGHUP)
        wait_for(lambda: log_file.exists(), what="reopened log")
        qin.put(b'{"after": "rotation"}')
        wait_for(lambda: "rotation" in log_file.read_text(), what="log after rotation")
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not pid_file.exists(), what="pid file removed")
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), what="daemon exit")


@pytest.mark.parametrize("durability", ["none", "fsync"])
def test_chain_of_two_daemons_by_queue_dirs_only(tmp_path, daemons, durability):
    a, b, c = (Queue(tmp_path / n) for n in "abc")
    made = fill(a, 300)
    p1 = daemons.start("enrich", "--queue-in-dir", a.path, "--queue-out-dir", b.path,
                       "--set", "stage=1", "--durability", durability)
    p2 = daemons.start("filter", "--queue-in-dir", b.path, "--queue-out-dir", c.path,
                       "--where", "stage=1", "--durability", durability)
    wait_for(lambda: len(files(c.incoming)) == 300, what="messages through two hops")
    for p in (p1, p2):
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0
    assert sorted(files(c.incoming)) == sorted(made)
