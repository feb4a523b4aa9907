"""Metrics: real daemons' Prometheus endpoint, textfile and state-file counters.

filter (drops some, fails an invalid file) -> enrich -> ship into the real search
node (which refuses one document for its mapping); every counter must equal
what was sent, dropped, failed and delivered.
"""

from __future__ import annotations

import signal
import socket
import urllib.error
import urllib.request

import orjson
from prometheus_client.parser import text_string_to_metric_families

from pipers.metrics import HISTORY_BASE, HISTORY_SPAN, SAMPLE_EVERY, Metrics
from queues import Queue
from tests.helpers import files, indexed, unique_index, wait_for

KEPT, DROPPED = 40, 15


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse(text: str) -> dict[str, float]:
    """``{"received": n, ..., "latency_count": n}`` from Prometheus text (one daemon)."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name
            if name.startswith("pipers_") and name.endswith("_total"):
                kind = name[len("pipers_"):-len("_total")]
                kind = {"message_bytes": "bytes"}.get(kind, kind.replace("_messages", ""))
                found[kind] = sample.value
                assert sample.labels["daemon"] and sample.labels["queue"]
            elif name == "pipers_latency_seconds_count":
                found["latency_count"] = sample.value
            elif name.startswith("process_"):
                found["process"] = 1
    return found


def scrape(port: int) -> dict[str, float]:
    """The daemon's metrics; {} while it is still starting (nothing listens yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            return parse(r.read().decode())
    except urllib.error.URLError as e:
        if isinstance(e.reason, ConnectionRefusedError):
            return {}
        raise


def state_of(queue: Queue, daemon: str) -> dict | None:
    for state in queue.states():
        if state["daemon"] == daemon:
            return state
    return None


def test_counters_match_the_messages_through_filter_enrich_and_ship(
        tmp_path, daemons, search_node):
    index = unique_index("metrics")
    search_node.request("PUT", f"/{index}",
                        {"mappings": {"properties": {"i": {"type": "long"}}}})
    qf, qe, qs = (Queue(tmp_path / n) for n in ("filter", "enrich", "ship"))
    sent = [orjson.dumps({"i": i, "keep": True}) for i in range(KEPT - 1)]
    sent += [orjson.dumps({"i": i}) for i in range(DROPPED)]  # no "keep": the filter drops
    sent += [b"{not json", orjson.dumps({"i": "not a number", "keep": True})]
    qf.put_many(sent)  # the last one passes filter and enrich; the cluster refuses it
    textfile = tmp_path / "filter.prom"
    ports = {"enrich": free_port(), "ship": free_port()}
    common = ("--queue-in-wait", "1")
    filt = daemons.start("filter", "--queue-in-dir", qf.path, "--queue-out-dir", qe.path,
                         "--where", "keep", "--metrics-textfile", str(textfile), *common)
    enrich = daemons.start("enrich", "--queue-in-dir", qe.path, "--queue-out-dir", qs.path,
                           "--set", "site=cern", "--metrics-port", str(ports["enrich"]),
                           *common)
    ship = daemons.start("ship", "--queue-in-dir", qs.path, "--es-url", search_node.urls[0],
                         "--default-index", index, "--metrics-port", str(ports["ship"]),
                         *common)
    wait_for(lambda: indexed(search_node, index) == KEPT - 1 and files(qs.errors),
             timeout=60, what="the kept documents and one refusal")

    want = {
        "enrich": {"received": KEPT, "forwarded": KEPT, "dropped": 0, "failed": 0,
                   "retried": 0, "bundles": 0},
        "ship": {"received": KEPT, "forwarded": KEPT - 1, "dropped": 0, "failed": 1,
                 "retried": 0},
    }
    for daemon, port in ports.items():
        got = wait_for(lambda p=port, d=daemon: (
            lambda m: m if m.get("failed", 0) + m.get("forwarded", 0) >= KEPT else None
        )(scrape(p)), what=f"{daemon}'s counters")
        assert {k: got[k] for k in want[daemon]} == want[daemon], daemon
        assert got["latency_count"] == KEPT  # one observation per finished message
        assert got["bytes"] > 0 and got["process"] == 1
    assert scrape(ports["ship"])["bundles"] >= 1
    enrich_bytes = scrape(ports["enrich"])["bytes"]
    assert enrich_bytes == sum(len(m) for m in sent if b"keep" in m)  # filter moves them

    # The state file of each daemon (for `pipers status`): the same totals and a history
    # whose last sample is everything processed, written when the daemon went idle.
    for queue, daemon, processed in ((qf, "filter", len(sent)), (qe, "enrich", KEPT),
                                     (qs, "ship", KEPT)):
        state = wait_for(lambda q=queue, d=daemon, n=processed: (
            lambda s: s if s and s["state"] == "idle" and s["history"][-1][1] == n else None
        )(state_of(q, d)), what=f"{daemon}'s idle state")
        c = state["counters"]
        assert set(c) == {"received", "forwarded", "dropped", "failed", "retried", "bundles",
                          "bytes"}
        assert c["forwarded"] + c["dropped"] + c["failed"] == processed
        times = [t for t, _ in state["history"]]
        assert times == sorted(times) and state["history"][0][1] <= processed
    filter_state = state_of(qf, "filter")["counters"]
    assert filter_state["dropped"] == DROPPED and filter_state["failed"] == 1
    assert filter_state["forwarded"] == KEPT and filter_state["bytes"] == sum(map(len, sent))
    assert state_of(qs, "ship")["counters"]["bundles"] >= 1

    # The textfile: written while running and at exit, parsed by prometheus_client.
    wait_for(lambda: textfile.exists(), what="the textfile")
    for p in (filt, enrich, ship):
        p.send_signal(signal.SIGTERM)
    assert [p.wait(30) for p in (filt, enrich, ship)] == [0, 0, 0]
    final = parse(textfile.read_text())
    assert "_created" not in textfile.read_text()  # one series per counter
    assert {k: final[k] for k in ("received", "forwarded", "dropped", "failed", "retried")} \
        == {"received": len(sent), "forwarded": KEPT, "dropped": DROPPED, "failed": 1,
            "retried": 0}
    assert final["latency_count"] == len(sent) and "process" not in final
    assert files(qf.errors) and files(qs.errors)
    assert not list(tmp_path.glob("filter.prom.*"))  # no temporary file left behind


def test_documents_refused_for_now_count_as_retried_then_forwarded(
        tmp_path, daemons, search_node):
    index = unique_index("metrics-block")
    search_node.request("PUT", f"/{index}")
    search_node.request("PUT", f"/{index}/_settings", {"index.blocks.write": True})
    q = Queue(tmp_path / "ship")
    q.put_many([orjson.dumps({"i": i}) for i in range(10)])
    port = free_port()
    daemons.start("ship", "--queue-in-dir", q.path, "--es-url", search_node.urls[0],
                  "--default-index", index, "--retry-initial-wait", "0.2",
                  "--retry-max-wait", "0.5", "--metrics-port", str(port))
    held = wait_for(lambda: (lambda m: m if m.get("retried", 0) >= 20 else None)(scrape(port)),
                    what="two refused rounds")
    assert held["forwarded"] == held["failed"] == 0 and held["received"] == 10
    assert held["bundles"] >= 2 and held["latency_count"] == 0  # nothing finished yet
    search_node.request("PUT", f"/{index}/_settings", {"index.blocks.write": False})
    done = wait_for(lambda: (lambda m: m if m.get("forwarded") == 10 else None)(scrape(port)),
                    what="delivery after the block")
    assert done["received"] == 10 and done["failed"] == 0 and done["latency_count"] == 10
    assert done["retried"] % 10 == 0  # each refused round kept all ten
    assert indexed(search_node, index) == 10 and not files(q.pending)


def test_a_busy_port_stops_the_daemon_with_a_clear_error(tmp_path, daemons):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = daemons.run("pass", "--queue-in-dir", str(tmp_path / "a"),
                        "--queue-out-dir", str(tmp_path / "b"), "--metrics-port", str(port),
                        timeout=60)
    assert r.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}" in r.stderr.decode()


def test_a_second_daemon_on_the_same_textfile_refuses_to_start(tmp_path, daemons):
    textfile = tmp_path / "prom" / "pass.prom"
    textfile.parent.mkdir()
    args = ("pass", "--queue-in-dir", str(tmp_path / "a"), "--queue-out-dir",
            str(tmp_path / "b"), "--metrics-textfile", str(textfile))
    first = daemons.start(*args)
    wait_for(textfile.exists, what="the first daemon's textfile")
    first.send_signal(signal.SIGSTOP)  # no write of its own meanwhile; it keeps the lock
    ino = textfile.stat().st_ino  # each write replaces the file: a new inode
    second = daemons.run(*args, timeout=60)
    assert textfile.stat().st_ino == ino, "the refused daemon wrote the textfile"
    first.send_signal(signal.SIGCONT)
    assert second.returncode == 1
    err = second.stderr.decode()
    assert f"--metrics-textfile {textfile} is written by another running daemon" in err
    assert first.poll() is None  # the first one goes on, its file untouched by the second
    Queue(tmp_path / "a").put(b'{"n": 1}')
    wait_for(lambda: parse(textfile.read_text()).get("forwarded") == 1, timeout=30,
             what="the first daemon's count in the textfile")
    first.send_signal(signal.SIGTERM)
    assert first.wait(30) == 0
    third = daemons.run(*args, "--once", timeout=60)  # the lock went with its holder
    assert third.returncode == 0, third.stderr.decode()
    assert sorted(p.name for p in textfile.parent.iterdir()) == [".pass.prom.lock", "pass.prom"]


def test_metrics_off_by_default_and_every_daemon_has_the_options(daemons):
    for command in ("pass", "enrich", "filter", "print", "run", "ship", "probe", "collect"):
        r = daemons.run(command, "--help")
        out = " ".join(r.stdout.decode().split())
        assert r.returncode == 0, command
        for flag in ("--metrics-port INTEGER RANGE Serve Prometheus metrics",
                     "--metrics-address TEXT", "--metrics-textfile FILE", "--trace ",
                     "--trace-field FIELD", "[default: 0;", "[default: pipers_trace]"):
            assert flag in out, (command, flag)


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def spaced(history: list[list[float]]) -> bool:
    """Samples SAMPLE_EVERY apart, but for the newest (moved forward until it is)."""
    return all(b[0] - a[0] >= SAMPLE_EVERY for a, b in zip(history[:-2], history[1:-1],
                                                          strict=True))


def test_history_samples_every_few_seconds_and_keeps_a_minute_and_more():
    clock = Clock()
    m = Metrics("enrich", "/q", clock=clock)
    assert m.state(clock.t)["history"] == [[1000.0, 0]]
    for _ in range(30):  # a daemon whose state is written every second (busy, or idle between
        clock.t += 1     # bursts): a sample every 5 s, the newest always the figure of now
        m.add(received=10, forwarded=9, dropped=1)
        state = m.state(clock.t)
        assert state["history"][-1] == [clock.t, state["counters"]["received"]]
        assert spaced(state["history"]) and len(state["history"]) <= 2 + (clock.t - 1000) / 5
    history = state["history"]
    assert state["counters"]["received"] == 300
    assert [t for t, _ in history] == [1000.0, 1005.0, 1010.0, 1015.0, 1020.0, 1025.0, 1030.0]
    clock.t += 2
    m.add(forwarded=5)
    assert m.state(clock.t)["history"][-2:] == [[1030.0, 300], [1032.0, 305]]
    clock.t += 1
    m.add(failed=1)
    assert m.state(clock.t)["history"][-2:] == [[1030.0, 300], [1033.0, 306]]  # moved
    for _ in range(20):  # a long busy spell: old samples go, one at or before now-60 stays
        clock.t += SAMPLE_EVERY
        m.add(forwarded=1)
        history = m.state(clock.t)["history"]
        assert history[0][0] <= clock.t - HISTORY_BASE or history[0][0] == 1000.0
        assert history[1][0] > clock.t - HISTORY_SPAN and spaced(history)
    assert history[0][0] > 1000.0  # the start is long gone
    clock.t += 300  # idle: no change, no sample; the base stays
    assert not m.changed() and m.state(clock.t)["history"][-1] == history[-1]


def test_latency_is_observed_only_when_exported(tmp_path):
    quiet = Metrics("pass", "/q")
    exported = Metrics("pass", "/q", textfile=str(tmp_path / "x.prom"))
    for m in (quiet, exported):  # a message named 1.5 s before now; a name without a time
        m.finished(["1700000000000000.1_0.host", "not-a-time"], 1700000001.5)
    assert exported.write_textfile() is None
    text = (tmp_path / "x.prom").read_text()
    assert parse(text)["latency_count"] == 1
    assert 'pipers_latency_seconds_bucket{daemon="pass",le="1.0",queue="/q"} 0.0' in text
    assert 'pipers_latency_seconds_bucket{daemon="pass",le="2.5",queue="/q"} 1.0' in text
    assert quiet.registry is None  # nothing exported: no prometheus_client objects at all
    quiet.add(received=2)
    assert quiet.totals["received"] == 2  # the state file's totals still count
