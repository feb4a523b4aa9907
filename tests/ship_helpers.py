"""Helpers of the shipper tests: indexed counts, daemon states, a steady feeder."""

from __future__ import annotations

import threading
import time

import orjson

from queues import Queue
from tests.helpers import cpu_seconds, indexed, unique_index  # noqa: F401 (used by tests)


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
