"""`pipers probe`: schedules driven by injected time, handles, ready-made checks."""

from __future__ import annotations

import http.server
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path

import orjson
import pytest

from pipers.base import Options
from pipers.sources import checks as ck
from pipers.sources.probe import Probe, RunQueue, load_checks
from queues.owner import host_name
from tests.helpers import ROOT, files, wait_for

T0 = 1_800_000_000.0  # a multiple of 10 and 30: aligned schedules start on it


def messages(queue_dir: Path) -> list[dict]:
    out = []
    for name in files(queue_dir / "incoming"):
        out.append(orjson.loads((queue_dir / "incoming" / name).read_bytes()))
    return out


def take(queue_dir: Path) -> list[tuple]:
    """Messages written since the last call as sorted (time, check, rest) tuples."""
    got = []
    for name in files(queue_dir / "incoming"):
        path = queue_dir / "incoming" / name
        m = orjson.loads(path.read_bytes())
        path.unlink()
        assert m.pop("host") == host_name()
        got.append((m.pop("time"), m.pop("check"), tuple(sorted(m.items()))))
    return sorted(got)


def at(t: float) -> str:
    return ck.iso(t)


def make_probe(tmp_path: Path, checks) -> Probe:
    options = Options(queue_out_dir=str(tmp_path / "q"))
    return Probe(options, checks=checks)


CHECKS_MODULE = '''
from pipers.sources.checks import Check, FileTail

class Counter(Check):
    def __init__(self, interval, **kw):
        super().__init__(interval, **kw)
        self.n = 0

    def run(self):
        self.n += 1
        return {"n": self.n}

class Pair(Check):
    def run(self):
        return [{"part": 1}, {"part": 2}]

CHECKS = [
    Counter(10, name="every10"),
    Pair(30),
    FileTail(%(path)r, reopen_delay=5),
]
'''


def test_two_checks_and_a_growing_file_at_injected_times(tmp_path):
    log = tmp_path / "app.log"
    log.write_bytes(b"first\nsec")  # a partial line waits for its end
    module = tmp_path / "my_checks.py"
    module.write_text(CHECKS_MODULE % {"path": str(log)})
    probe = make_probe(tmp_path, load_checks(str(module)))
    q = tmp_path / "q"
    tail = f"tail:{log}"

    assert probe.loop(T0) == 10.0  # every10 is next, at T0+10
    assert take(q) == sorted([
        (at(T0), "Pair[1]", (("part", 1),)),
        (at(T0), "Pair[1]", (("part", 2),)),
        (at(T0), "every10", (("n", 1),)),
        (at(T0), tail, (("line", "first"),)),
    ])

    probe.loop(T0 + 1)  # end of file: closed, reopened at T0+6
    assert take(q) == []
    with open(log, "ab") as f:
        f.write(b"ond\nthird\n")
    probe.loop(T0 + 3)
    assert take(q) == []  # still closed: nothing read before its reopening time
    probe.loop(T0 + 6)
    assert take(q) == [
        (at(T0 + 6), tail, (("line", "second"),)),
        (at(T0 + 6), tail, (("line", "third"),)),
    ]

    assert probe.loop(T0 + 10) == 5.0  # the handle met its end of file: reopened at T0+15
    assert take(q) == [(at(T0 + 10), "every10", (("n", 2),))]

    os.rename(log, str(log) + ".1")  # rotation: the path names a new file
    log.write_bytes(b"rotated\n")
    probe.loop(T0 + 15)
    assert take(q) == [(at(T0 + 15), tail, (("line", "rotated"),))]

    probe.loop(T0 + 20)
    probe.loop(T0 + 30)
    assert take(q) == sorted([
        (at(T0 + 20), "every10", (("n", 3),)),
        (at(T0 + 30), "Pair[1]", (("part", 1),)),
        (at(T0 + 30), "Pair[1]", (("part", 2),)),
        (at(T0 + 30), "every10", (("n", 4),)),
    ])
    probe.shutdown()


def test_a_late_probe_runs_each_check_once_and_realigns(tmp_path):
    counter = type("Counter", (ck.Check,), {"run": lambda self: {"ok": True}})(10)
    probe = make_probe(tmp_path, [counter])
    probe.loop(T0)
    assert probe.loop(T0 + 95) == 5.0  # ran once (not 9 times), next on the 10 s grid
    assert len(take(tmp_path / "q")) == 2


def test_none_and_exceptions_are_reported_by_name_and_rescheduled(tmp_path, caplog):
    runs = {"forgetful": 0, "broken": 0}

    class Forgetful(ck.Check):
        def run(self):
            runs["forgetful"] += 1
            {"never": "returned"}  # noqa: B018 - the forgotten return this test is about

    class Broken(ck.Check):
        def run(self):
            runs["broken"] += 1
            raise RuntimeError("sensor unplugged")

    class Quiet(ck.Check):
        def run(self):
            return []  # nothing this time: no message, no error

    class Fine(ck.Check):
        def run(self):
            return {"fine": True}

    probe = make_probe(tmp_path, [Forgetful(60), Broken(60, name="thermo"), Quiet(60),
                                  Fine(60)])
    with caplog.at_level(logging.INFO, logger="pipers"):
        probe.loop(T0)
        probe.loop(T0 + 60)
    assert runs == {"forgetful": 2, "broken": 2}
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert sum("check Forgetful[0] returned None" in e for e in errors) == 2
    assert sum("check thermo failed" in e and "sensor unplugged" in e for e in errors) == 2
    assert not any("Quiet" in e for e in errors)
    assert [c for _, c, _ in take(tmp_path / "q")] == ["Fine[3]", "Fine[3]"]


def test_a_handle_at_eof_is_reopened_and_picks_up_new_lines(tmp_path):
    path = tmp_path / "grow.log"
    path.write_text('{"level": "info", "n": 1}\n')
    handle = ck.FileTail(path, name="grow", reopen_delay=2)
    rq = RunQueue([handle])
    assert [m["n"] for m in rq.due(T0)] == [1]  # opened and read at once (JSON lines)
    assert rq.fds() == [handle.fileno()]
    assert rq.due(T0 + 0.5) == []  # end of file: closed
    assert rq.fds() == [] and rq.next_time() == T0 + 2.5
    with open(path, "a") as f:
        f.write('{"n": 2}\nplain text\n')
    assert rq.due(T0 + 1) == []
    got = rq.due(T0 + 2.5)
    assert [(m.get("n"), m.get("line"), m["time"]) for m in got] == [
        (2, None, at(T0 + 2.5)), (None, "plain text", at(T0 + 2.5))]
    path.write_text("")  # truncated: read from the start again
    rq.due(T0 + 3)  # EOF
    path.write_text("again\n")
    assert [m["line"] for m in rq.due(T0 + 5)] == ["again"]
    rq.close()


def test_a_missing_file_is_retried_until_it_appears(tmp_path, caplog):
    path = tmp_path / "later.log"
    rq = RunQueue([ck.FileTail(path, reopen_delay=1)])
    with caplog.at_level(logging.WARNING, logger="pipers"):
        assert rq.due(T0) == []
    assert "cannot open" in caplog.text and rq.next_time() == T0 + 1
    path.write_text("here\n")
    assert [m["line"] for m in rq.due(T0 + 1)] == ["here"]
    rq.close()


def test_command_stream_handle_restarts_the_command(tmp_path):
    stream = ck.CommandStream(["printf", '{"a": 1}\\nraw\\n'], name="s", reopen_delay=3)
    rq = RunQueue([stream])
    got = []
    deadline = time.monotonic() + 10
    t = T0
    while len(got) < 2 and time.monotonic() < deadline:  # the child writes when it runs
        got += rq.due(t)
        time.sleep(0.01)
    assert [(m.get("a"), m.get("line")) for m in got] == [(1, None), (None, "raw")]
    wait_for(lambda: not rq.due(t) and not rq.open_handles(), what="end of the command")
    assert rq.next_time() == t + 3
    got = []
    while len(got) < 2 and time.monotonic() < deadline + 10:
        got += rq.due(t + 3)
        time.sleep(0.01)
    assert len(got) == 2
    rq.close()


def test_an_object_with_run_next_is_called_repeatedly(tmp_path):
    class Container:
        def __init__(self):
            self.calls = 0

        def run_next(self):
            self.calls += 1
            return [{"call": self.calls}]

    c = Container()
    probe = make_probe(tmp_path, c)
    assert probe.loop(T0) == 0.0
    probe.loop(T0 + 1)
    assert sorted(m["call"] for m in messages(tmp_path / "q")) == [1, 2]


def test_bad_checks_are_refused_at_start(tmp_path):
    with pytest.raises(ValueError, match=r"CHECKS\[1\] \(int\) is neither"):
        make_probe(tmp_path, [ck.Load(60), 42])
    bad = tmp_path / "nochecks.py"
    bad.write_text("X = 1\n")
    with pytest.raises(ValueError, match="defines no CHECKS"):
        load_checks(str(bad))


# -- ready-made checks against real things ------------------------------------------------


def test_command_check_reports_exit_status_and_output():
    ok = ck.Command("echo hello; echo oops >&2", name="sh")
    m = ok.run()
    assert (m["exit_code"], m["output"], m["errors"], m["timed_out"]) == (0, "hello\n",
                                                                          "oops\n", False)
    assert ck.Command(["false"]).run()["exit_code"] == 1
    slow = ck.Command(["sleep", "5"], timeout=0.2).run()
    assert slow["timed_out"] is True and slow["exit_code"] is None
    js = ck.Command("echo '{\"v\": 3}'; echo not-json", json_output=True).run()
    assert js == [{"v": 3, "exit_code": 0}]
    assert "error" in ck.Command(["/nonexistent/tool"]).run()


def test_load_disk_memory_checks(tmp_path):
    load = ck.Load().run()
    assert load["cpus"] >= 1 and load["load1"] >= 0
    disk = ck.Disk(str(tmp_path)).run()
    assert disk["total_bytes"] >= disk["free_bytes"] > 0 and 0 <= disk["used_percent"] <= 100
    mem = ck.Memory().run()
    assert mem["total_bytes"] >= mem["available_bytes"] > 0


def test_tcp_connect_check():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        up = ck.TcpConnect("127.0.0.1", port, timeout=2).run()
    assert up["connected"] is True and up["target"] == f"127.0.0.1:{port}"
    down = ck.TcpConnect("127.0.0.1", port, timeout=2).run()  # nobody listens any more
    assert down["connected"] is False and "ECONNREFUSED" in down["error"]


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the stdlib's name
        self.send_response(503 if self.path == "/down" else 200)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_http_status_check(http_server):
    up = ck.HttpStatus(http_server + "/").run()
    assert (up["status_code"], up["ok"]) == (200, True)
    down = ck.HttpStatus(http_server + "/down").run()
    assert (down["status_code"], down["ok"]) == (503, False)
    assert ck.HttpStatus(http_server + "/down", expect=[503]).run()["ok"] is True
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    none = ck.HttpStatus(f"http://127.0.0.1:{closed}/", timeout=2).run()
    assert none["ok"] is False and none["status_code"] is None and "error" in none


# -- the daemon --------------------------------------------------------------------------------


def test_probe_daemon_runs_the_example_checks_and_stops_on_term(daemons, tmp_path):
    q = tmp_path / "q"
    p = daemons.start("probe", "--checks", str(ROOT / "etc" / "checks.example.py"),
                      "--queue-out-dir", str(q))
    names = {"load", "memory", "uptime", "df-root", "disk:/", "tcp:127.0.0.1:22",
             "http:http://127.0.0.1:9200/"}
    wait_for(lambda: names <= {m["check"] for m in messages(q)}, timeout=30,
             what="one message of every example check")
    df = next(m for m in messages(q) if m["check"] == "df-root")
    assert df["exit_code"] == 0 and "Filesystem" in df["output"] and df["host"] == host_name()
    p.send_signal(signal.SIGTERM)
    assert p.wait(20) == 0, daemons.log(p)


def test_a_handle_without_descriptor_is_polled(tmp_path):
    class Counter(ck.Handle):
        def __init__(self):
            super().__init__(name="polled")
            self.reads = 0

        def open(self):
            pass

        def close(self):
            pass

        def read_messages(self):
            self.reads += 1
            return [{"read": self.reads}]

    h = Counter()
    probe = make_probe(tmp_path, [h, ck.Load(3600)])
    assert probe.loop(T0) == 1.0  # not an hour: the handle has nothing to wait on
    probe.loop(T0 + 1)
    got = [m for _, c, m in take(tmp_path / "q") if c == "polled"]
    assert got == [(("read", 1),), (("read", 2),)]
