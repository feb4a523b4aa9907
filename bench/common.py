"""What every benchmark shares: messages, pre-filled queues, daemons, statistics."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from queues import names
from queues.states import INCOMING, RUN

ROOT = Path(__file__).resolve().parent.parent
PIPERS = [sys.executable, "-m", "pipers"]
TICKS = os.sysconf("SC_CLK_TCK")


def message(i: int) -> bytes:
    """A monitoring-style record of about 330 bytes (the size the design has in mind)."""
    return orjson.dumps({
        "monitoringType": "bench",
        "timestamp": 1_700_000_000_000 + i,
        "host": f"node-{i % 1000:04d}.example.org",
        "service": "pipers-bench",
        "seq": i,
        "status": "ok" if i % 7 else "warning",
        "metrics": {"cpu": (i % 100) / 100, "mem_mb": 1024 + i % 512, "load": [0.5, 0.7, 0.9]},
        "message": f"synthetic record for throughput measurement, number {i}",
        "tags": ["bench", "synthetic", "hop"],
    })


def make_queue_dirs(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    for d in ("", INCOMING, "pending", "tmp", "errors"):
        os.makedirs(os.path.join(path, d), 0o700, exist_ok=True)
    return path


def prefill(incoming: str, n: int, start: int = 0) -> list[str]:
    """Write `n` messages straight into a directory (nobody consumes it yet)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    made = []
    for i in range(start, start + n):
        name = names.new_name()
        fd = os.open(os.path.join(incoming, name), flags, 0o600)
        os.write(fd, message(i))
        os.close(fd)
        made.append(name)
    return made


def remove(path: str | os.PathLike) -> None:
    shutil.rmtree(path, ignore_errors=True)


def count(directory: str) -> int:
    try:
        with os.scandir(directory) as it:
            return sum(1 for _ in it)
    except FileNotFoundError:
        return 0


def nonempty(directory: str) -> bool:
    try:
        with os.scandir(directory) as it:
            return next(it, None) is not None
    except FileNotFoundError:
        return False


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.01,
             what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# -- daemons ------------------------------------------------------------------------------

def start_daemon(*args: str, log: str | os.PathLike,
                 tree: str | os.PathLike | None = None) -> subprocess.Popen:
    """`python -m pipers ARGS` from this checkout (or another `tree`, for A/B runs)."""
    tree = os.fspath(tree or os.environ.get("BENCH_PIPERS_TREE") or ROOT)
    env = dict(os.environ, PYTHONPATH=tree)
    with open(log, "ab") as f:
        return subprocess.Popen([*PIPERS, *args], stdout=f, stderr=subprocess.STDOUT,
                                cwd=tree, env=env)


def start_pass(qin: str, qout: str, *, log: str | os.PathLike, durability: str = "none",
               extra: tuple[str, ...] = (), tree: str | None = None) -> subprocess.Popen:
    return start_daemon(
        "pass", "--queue-in-dir", qin, "--queue-out-dir", qout, "--durability", durability,
        "--log-level", "WARNING", *extra, log=log, tree=tree,
    )


def stop(procs: list[subprocess.Popen], timeout: float = 20) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def states(queue: str) -> dict[int, dict]:
    """The state files of the daemons on `queue`, by pid (written atomically)."""
    found = {}
    for path in glob.glob(os.path.join(queue, RUN, "*.json")):
        try:
            with open(path, "rb") as f:
                body = orjson.loads(f.read())
        except (OSError, orjson.JSONDecodeError):
            continue
        found[body.get("pid")] = body
    return found


def state_of(queue: str, pid: int) -> dict | None:
    return states(queue).get(pid)


def rss_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0])
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (its threads included)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


# -- statistics ------------------------------------------------------------------------------

def median(values: list[float]) -> float:
    s = sorted(values)
    n = len(s)
    if not n:
        return float("nan")
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))
    return s[k]


def drop_page_cache() -> None:
    """Write everything out, then drop the page cache machine-wide (root only): what a
    backlog that waited through a long outage, or a machine short of memory, reads from."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("1\n")


def dirty_mb() -> float:
    """Data waiting to be written back, machine-wide (Dirty + Writeback), in MB."""
    total = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(("Dirty:", "Writeback:")):
                total += int(line.split()[1])
    return total / 1024


def settle(max_wait: float = 30.0, below_mb: float = 64.0) -> None:
    """Push earlier runs' dirty data to disk so one run does not pay for another.

    The benchmark filesystem sits on a loop device: its data reaches the disk
    through the page cache of the image file, which one sync may leave dirty.
    So sync until little is left to write (bounded: neighbours write too).
    """
    deadline = time.monotonic() + max_wait
    os.sync()
    while dirty_mb() > below_mb and time.monotonic() < deadline:
        os.sync()
        time.sleep(0.2)
    time.sleep(0.2)


def append_record(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON record (a line) to a results file, making its directory."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(orjson.dumps(record).decode() + "\n")
