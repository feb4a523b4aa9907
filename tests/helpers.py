"""Shared test helpers: real daemons as subprocesses, waiting on real directories."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from search.node import SearchError

ROOT = Path(__file__).resolve().parent.parent
PIPERS = [sys.executable, "-m", "pipers"]


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.02,
             what: str = "condition"):
    """Poll `predicate` until it returns a truthy value; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def files(directory: Path | str) -> list[str]:
    """Message files in a queue subdirectory (hidden files and sidecars left out)."""
    try:
        return sorted(n for n in os.listdir(directory)
                      if not n.startswith(".") and not n.endswith(".error.json"))
    except FileNotFoundError:
        return []


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def unique_index(tag: str) -> str:
    """An index name (or prefix) no other test uses, even on a shared cluster."""
    return f"pipers-test-{tag}-{uuid.uuid4().hex[:8]}"


def indexed(node, pattern: str, timeout: float = 60.0) -> int:
    """Documents searchable in `pattern` now (refreshes first).

    A count that races the creation of an index by the shipper's first bulk
    answers 503 (its shard is not started yet), and a node just back from an
    outage may not answer at all: asked again until the timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            node.refresh(pattern)
            return node.count(pattern)
        except SearchError as e:
            if e.status not in (503, None) or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class Daemons:
    """Starts `pipers` subcommands as real processes; kills leftovers at teardown."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen] = []

    def start(self, *args: str, env: dict | None = None, **kw) -> subprocess.Popen:
        n = len(self.procs)
        log = open(self.log_dir / f"daemon-{n}-{args[0]}.log", "wb")
        full_env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
        p = subprocess.Popen([*PIPERS, *args], stdout=log, stderr=subprocess.STDOUT,
                             cwd=ROOT, env=full_env, **kw)
        p.log_path = log.name  # type: ignore[attr-defined]
        log.close()
        self.procs.append(p)
        return p

    def run(self, *args: str, input: bytes | None = None, timeout: float = 120,
            env: dict | None = None) -> subprocess.CompletedProcess:
        full_env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
        return subprocess.run([*PIPERS, *args], input=input, capture_output=True,
                              timeout=timeout, cwd=ROOT, env=full_env)

    def log(self, p: subprocess.Popen) -> str:
        with open(p.log_path, errors="replace") as f:  # type: ignore[attr-defined]
            return f.read()

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait(10)
