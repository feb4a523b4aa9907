"""Helpers of the shipper tests: indexed counts, daemon states, a steady feeder."""

from __future__ import annotations

import os
import threading
import time
import uuid

import orjson

from queues import Queue
from search.node import SearchError


def unique_index(tag: str) -> str:
    """An index name (or prefix) no other test uses, even on a shared cluster."""
    return f"pipers-test-{tag}-{uuid.uuid4().hex[:8]}"


def indexed(node, pattern: str, timeout: float = 30.0) -> int:
    """Documents searchable in `pattern` now (refreshes first).

    A count that races the creation of an index by the shipper's first bulk
    answers 503 (its shard is not started yet): asked again until it is.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            node.refresh(pattern)
            return node.count(pattern)
        except SearchError as e:
            if e.status != 503 or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def ship_states(daemons, queue: Queue) -> list[dict]:
    """The states `pipers status --json` shows for the shipper(s) of `queue`."""
    r = daemons.run("status", "--json", queue.path)
    assert r.returncode == 0, r.stderr
    return [d for d in orjson.loads(r.stdout)["daemons"] if d["daemon"] == "ship"]


def waiting_because(daemons, queue: Queue, *words: str) -> str | None:
    """The shipper's `why` when it is waiting and says all of `words`."""
    for state in ship_states(daemons, queue):
        why = state.get("why", "")
        if state["state"] == "waiting" and all(w in why for w in words):
            return why
    return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def messages(n: int, **extra) -> list[bytes]:
    return [orjson.dumps({"i": i, "kind": "probe" if i % 2 else "job", **extra})
            for i in range(n)]


class Feeder(threading.Thread):
    """Puts messages into a queue in steady slices, so a run lasts a while."""

    def __init__(self, queue: Queue, data: list[bytes], chunk: int = 250, pause: float = 0.25):
        super().__init__(name="test-feeder", daemon=True)
        self.queue, self.data, self.chunk, self.pause = queue, data, chunk, pause
        self.names: list[str] = []

    def run(self) -> None:
        for i in range(0, len(self.data), self.chunk):
            self.names += self.queue.put_many(self.data[i : i + self.chunk])
            time.sleep(self.pause)
