"""Chaos: messages go put -> enrich -> ship -> index while every daemon is SIGKILLed at
random moments and restarted. At the end: index + errors/ = input, no duplicates.

The size is ``PIPERS_CHAOS_MESSAGES`` (100,000: about 3.5 minutes on the 2-core test
machine; ``make test-faults-quick`` runs 20,000); the random schedule is
``PIPERS_CHAOS_SEED`` (printed on failure, to replay a run).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import orjson

from queues import Queue
from tests.faults.search import create_index, indexed, seqs, unique_index
from tests.helpers import files, wait_for

MESSAGES = int(os.environ.get("PIPERS_CHAOS_MESSAGES", "100000"))
SEED = int(os.environ.get("PIPERS_CHAOS_SEED") or random.SystemRandom().randrange(1 << 32))
BAD_EVERY = 97  # these carry text where the index wants a number: refused, errors/
CHUNK = 5000  # messages per `pipers put`


@dataclass
class Slot:
    kind: str
    args: tuple[str, ...]
    proc: object = None
    kills: int = 0
    held: list[int] = field(default_factory=list)  # messages in pending/ when it died


def _message(seq: int) -> bytes:
    value = "not a number" if seq % BAD_EVERY == 0 else seq
    return orjson.dumps({"seq": seq, "value": value, "kind": "chaos"})


def _error_seqs(q: Queue) -> dict[int, str]:
    out = {}
    for name, side in q.error_entries():
        with open(os.path.join(q.errors, name), "rb") as f:
            out[orjson.loads(f.read())["seq"]] = side.get("reason", "?")
    return out


def test_every_daemon_sigkilled_at_random_loses_and_duplicates_nothing(
        tmp_path, daemons, search_node):
    what = f"seed {SEED}, {MESSAGES} messages"
    index = unique_index("chaos")
    create_index(search_node, index)
    qe, qs = Queue(tmp_path / "enrich"), Queue(tmp_path / "ship")
    enrich = ("enrich", "--queue-in-dir", qe.path, "--queue-out-dir", qs.path,
              "--set", "hop=1", "--queue-in-wait", "1", "--max-attempts", "1000")
    ship = ("ship", "--queue-in-dir", qs.path, "--es-url", ",".join(search_node.urls),
            "--default-index", index, "--bundle-size", "1000", "--flush-interval", "0.2",
            "--queue-in-wait", "1", "--retry-max-wait", "2")
    slots = [Slot("enrich", enrich), Slot("enrich", enrich), Slot("ship", ship),
             Slot("ship", ship)]
    for s in slots:
        s.proc = daemons.start(*s.args)

    chunks = []
    for n, start in enumerate(range(0, MESSAGES, CHUNK)):
        path = tmp_path / f"input-{n}.ndjson"
        path.write_bytes(b"\n".join(_message(i) for i in range(start,
                                                                min(start + CHUNK, MESSAGES))))
        chunks.append(path)
    put_errors: list[str] = []

    def feed() -> None:
        for path in chunks:
            r = daemons.run("put", "--queue-out-dir", qe.path, "--durability", "none",
                            str(path))
            if r.returncode != 0:
                put_errors.append(r.stderr.decode())

    feeder = threading.Thread(target=feed, name="chaos-feeder")
    feeder.start()

    def accounted() -> int:
        return indexed(search_node, index) + qe.count("errors") + qs.count("errors")

    rng = random.Random(SEED)
    deadline = time.monotonic() + 1800
    try:
        while feeder.is_alive() or accounted() < MESSAGES * 0.9:
            assert time.monotonic() < deadline, f"the pipeline stalled under chaos ({what})"
            time.sleep(rng.uniform(0.05, 1.0))
            slot = rng.choice(slots)
            slot.proc.send_signal(signal.SIGKILL)
            slot.proc.wait(10)
            slot.kills += 1
            slot.held.append(len(files((qe if slot.kind == "enrich" else qs).pending)))
            if rng.random() < 0.3:
                time.sleep(rng.uniform(0, 0.5))  # stays dead a moment
            slot.proc = daemons.start(*slot.args)
    finally:
        feeder.join()
    assert put_errors == [], put_errors
    kills = Counter()
    for s in slots:
        kills[s.kind] += s.kills
    assert kills["enrich"] >= 3 and kills["ship"] >= 3, (kills, what)
    assert any(h for s in slots for h in s.held), f"no kill hit work in hand ({what})"

    wait_for(lambda: accounted() >= MESSAGES and not files(qe.incoming) and
             not files(qe.pending) and not files(qs.incoming) and not files(qs.pending),
             timeout=600, interval=1, what=f"every message accounted for ({what})")
    # A daemon restarted a moment ago may still be starting Python: SIGTERM before its
    # handlers exist would kill it outright. Stop them once each is in its loop.
    wait_for(lambda: all("started on" in daemons.log(s.proc) for s in slots), timeout=60,
             what="every restarted daemon in its loop")
    for s in slots:
        s.proc.send_signal(signal.SIGTERM)
    assert [s.proc.wait(60) for s in slots] == [0] * len(slots), what
    logs = "".join(daemons.log(p) for p in daemons.procs)
    assert "recovered" in logs  # claims of killed daemons came back through recovery

    docs = seqs(search_node, index)
    ids = [i for i, _ in docs]
    in_index = [s for _, s in docs]
    assert len(set(ids)) == len(ids) and len(set(in_index)) == len(in_index), \
        f"duplicated documents ({what})"
    errors = {**_error_seqs(qe), **_error_seqs(qs)}
    assert len(errors) == qe.count("errors") + qs.count("errors")
    assert len(docs) + len(errors) == MESSAGES, what  # index + errors/ = input
    assert set(in_index) | set(errors) == set(range(MESSAGES)), f"lost messages ({what})"
    assert not set(in_index) & set(errors)
    bad = {i for i in range(MESSAGES) if i % BAD_EVERY == 0}
    assert {s for s, why in errors.items() if why == "rejected"} == bad, what
    assert not bad & set(in_index)
    assert set(errors.values()) == {"rejected"}, Counter(errors.values())
    assert all(i[:16].isdigit() for i in ids)  # each _id is its message's name


def test_a_message_failed_twice_after_a_crash_has_one_entry_in_errors(tmp_path, daemons):
    """What chaos found: a daemon killed between forwarding a message and removing its
    input forwards it again; if the next daemon's recovery had meanwhile counted an
    attempt (ID,1), both copies failed into errors/ as two entries of one message."""
    q, out = Queue(tmp_path / "q"), Queue(tmp_path / "out")
    q.put(b'{"value": "first copy"', name="m")
    q.put(b'{"value": "second copy"', name="m,1")
    r = daemons.run("pass", "--queue-in-dir", q.path, "--queue-out-dir", out.path, "--once")
    assert r.returncode == 0, r.stderr
    ((name, side),) = list(q.error_entries())
    assert name == "m" and files(q.errors) == ["m"]
    assert side["reason"] == "invalid-json" and side["id"] == "m"
    assert daemons.run("replay", q.path).returncode == 0 and files(q.incoming) == ["m"]
