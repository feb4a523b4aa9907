"""The search node gone for a whole minute in the middle of a run: crashed (SIGKILL, then
started again on its data) or frozen (SIGSTOP: connections hang, nothing answers).

Messages keep arriving meanwhile and the shipper itself is SIGKILLed once during the
outage; afterwards everything is in the index exactly once and nothing in errors/.
(The shipper's own tests cover 30 s clean stops and pauses; this is the long version.)
"""

from __future__ import annotations

import os
import signal
import threading
import time

import orjson
import pytest

from queues import Queue
from tests.faults.search import create_index, indexed, seqs, unique_index
from tests.helpers import files, wait_for

OUTAGE = float(os.environ.get("PIPERS_OUTAGE_SECONDS", "60"))
MESSAGES = 6000


def _why(daemons, q: Queue, word: str) -> str | None:
    """The shipper's reason for waiting, as `pipers status` shows it, if it says `word`."""
    r = daemons.run("status", "--json", q.path)
    for d in orjson.loads(r.stdout)["daemons"]:
        if d["daemon"] == "ship" and d["state"] == "waiting" and word in d.get("why", ""):
            return d["why"]
    return None


@pytest.mark.parametrize("how", ["killed", "sigstopped"])
def test_search_node_gone_a_minute_mid_run_then_everything_delivered_once(
        tmp_path, daemons, search_node_factory, how):
    node = search_node_factory()
    index = unique_index(f"outage-{how}")
    create_index(node, index)
    qe, qs = Queue(tmp_path / "enrich"), Queue(tmp_path / "ship")
    daemons.start("enrich", "--queue-in-dir", qe.path, "--queue-out-dir", qs.path,
                  "--set", f"outage={how}")
    ship_args = ("ship", "--queue-in-dir", qs.path, "--es-url", node.url,
                 "--default-index", index, "--bundle-size", "500", "--flush-interval", "0.2",
                 "--request-timeout", "5", "--retry-initial-wait", "0.5",
                 "--retry-max-wait", "5", "--queue-in-wait", "2")
    ship = daemons.start(*ship_args)

    names: list[str] = []

    def feed() -> None:  # arrivals before, during and after the node goes away
        for start in range(0, MESSAGES, 100):
            names.extend(qe.put_many(
                [orjson.dumps({"seq": i, "value": i}) for i in range(start, start + 100)]))
            time.sleep(OUTAGE / 60)

    feeder = threading.Thread(target=feed, name="outage-feeder")
    feeder.start()
    try:
        wait_for(lambda: indexed(node, index) >= 500, timeout=120, interval=0.1,
                 what="the run to be under way")
        node.kill() if how == "killed" else node.pause()
        down = time.monotonic()
        why = wait_for(lambda: _why(daemons, qs, "unavailable"), timeout=OUTAGE / 2,
                       interval=0.2, what="the shipper to report the outage")
        assert "dequeuing paused" in why, why
        # The shipper itself dies while it waits: what it held comes back at its restart.
        held = len(files(qs.pending))
        assert held > 0, "the waiting shipper keeps its bundle in pending/"
        ship.send_signal(signal.SIGKILL)
        ship.wait(10)
        ship = daemons.start(*ship_args)
        time.sleep(max(0.0, down + OUTAGE - time.monotonic()))
        assert ship.poll() is None and files(qs.errors) == [] and files(qe.errors) == []
        waiting = len(files(qs.incoming)) + len(files(qs.pending))
        assert waiting > held, "messages that arrived during the outage wait on disk"
    finally:
        if how == "killed":
            node.start()
        else:
            node.resume()
        feeder.join()
    wait_for(lambda: indexed(node, index) >= MESSAGES and not files(qs.incoming)
             and not files(qs.pending) and not files(qe.incoming), timeout=240, interval=0.5,
             what="every message delivered after the outage")
    docs = seqs(node, index)
    assert len(docs) == MESSAGES
    assert {i for i, _ in docs} == set(names)  # each under its own name, none twice
    assert sorted(s for _, s in docs) == list(range(MESSAGES))
    assert files(qe.errors) == files(qs.errors) == []
    logs = "".join(daemons.log(p) for p in daemons.procs)
    assert "search cluster unavailable" in logs and "recovered" in logs
    assert ship.poll() is None
