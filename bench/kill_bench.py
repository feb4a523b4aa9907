"""kill -9 in the middle of a run: what the shipper and rsyslog lose or duplicate.

    python -m bench.kill_bench --es-url URL [--docs N] [--at 0.3] --results FILE

Each side ships the same N JSON documents into a fresh index of the node, set up
exactly as bench/rsyslog_bench.py sets it up for the throughput comparison (the
same rsyslog configuration: imfile, omelasticsearch in bulk mode behind a
disk-assisted LinkedList queue with ``queue.saveOnShutdown``; the same
``pipers ship --once`` over a pre-filled queue). When the index holds the
fraction ``--at`` of the documents, the process is killed with SIGKILL and
started again on the state it left (rsyslog: its work directory, with imfile's
state and the queue's spool; the shipper: its queue directory). Once the index
count has not moved for ``--settle`` seconds (or the shipper's ``--once`` run
has ended), the side is stopped and its index checked with a composite
aggregation over ``seq``: documents lost and documents indexed twice.

Sides: rsyslog with ids made by the node (its default), rsyslog with ``_id``
from the line and op_type create, and the shipper. Prints one line per side and
appends one JSON record to FILE; bench/run.py turns it into a figure (the
shipper must lose and duplicate nothing).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.common import ROOT, append_record, stop
from bench.rsyslog_bench import (
    RSYSLOGD,
    exactness,
    module_dir,
    rsyslog_command,
    rsyslog_version,
    ship_command,
)
from bench.ship_bench import count, document, http, make_index

POLL = 0.1


def wait_until(url: str, index: str, n: int, proc: subprocess.Popen, timeout: float) -> int:
    """Poll the count until it reaches n (or the process ends); the count."""
    deadline = time.monotonic() + timeout
    while True:
        got = count(url, index)
        if got >= n or proc.poll() is not None or time.monotonic() > deadline:
            return got
        time.sleep(POLL)


def wait_still(url: str, index: str, proc: subprocess.Popen, settle: float,
               timeout: float) -> int:
    """Poll the count until it has not moved for `settle` s (or the process ended)."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        got = count(url, index)
        if got != last:
            last, since = got, time.monotonic()
        elif proc.poll() is not None or time.monotonic() - since >= settle:
            return got
        time.sleep(0.5)
    return last


def rsyslog_side(url: str, index: str, lines: Path, n: int, work: Path, batch: int,
                 at: float, settle: float, timeout: float, ids: bool) -> dict:
    cmd = rsyslog_command(url, index, lines, work, batch, n + n // 10, ids)
    with open(work / "rsyslogd.log", "wb") as log:
        first = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)
        at_kill = wait_until(url, index, int(n * at), first, timeout)
        first.kill()
        first.wait()
        (work / "rsyslogd.pid").unlink(missing_ok=True)  # kill -9 leaves it behind
        spooled = sorted(p.name for p in (work / "spool").glob("es-queue*"))
        second = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)
        wait_still(url, index, second, settle, timeout)
        stop([second], timeout=60)
    return {"count_at_kill": at_kill, "spool_after_kill": spooled, "exit": second.returncode}


def ship_side(url: str, index: str, docs: list[bytes], n: int, work: Path, batch: int,
              at: float, timeout: float) -> dict:
    queue, cmd, env = ship_command(url, index, docs, work, batch)
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    at_kill = wait_until(url, index, int(n * at), first, timeout)
    first.kill()
    first.wait()
    held = queue.counts()["pending"]
    second = subprocess.run(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                            capture_output=True, timeout=timeout)  # --once: until drained
    left = {k: v for k, v in queue.counts().items() if v}
    return {"count_at_kill": at_kill, "pending_after_kill": held, "exit": second.returncode,
            "left_in_queue": left}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--es-url", required=True, help="the search node, e.g. http://127.0.0.1:9201")
    p.add_argument("--docs", type=int, default=50_000, help="documents per side")
    p.add_argument("--at", type=float, default=0.3,
                   help="kill when the index holds this fraction of the documents")
    p.add_argument("--bundle-size", type=int, default=5000,
                   help="documents per bulk request, both sides")
    p.add_argument("--settle", type=float, default=10.0,
                   help="a restarted side is done when its count is still this long (s)")
    p.add_argument("--timeout", type=float, default=600.0, help="per side")
    p.add_argument("--results", required=True, help="append one JSON record (a line) here")
    args = p.parse_args(argv)
    if not os.access(RSYSLOGD, os.X_OK) or not module_dir():
        print("kill_bench: rsyslogd or omelasticsearch is missing "
              "(make bench-deps installs rsyslog and rsyslog-elasticsearch)", file=sys.stderr)
        return 3
    url, n = args.es_url.rstrip("/"), args.docs
    docs = [document(i) for i in range(n)]
    work = Path(tempfile.mkdtemp(prefix="kill-bench-", dir=os.environ.get("PIPERS_BENCH_TMP")))
    lines = work / "documents.jsonl"
    lines.write_bytes(b"".join(d + b"\n" for d in docs))
    stamp = f"{int(time.time())}-{os.getpid()}"
    sides: dict[str, dict] = {}
    try:
        for side in ("ship", "rsyslog", "rsyslog-ids"):
            index = f"bench-kill-{side}-{stamp}"
            make_index(url, index)
            try:
                if side == "ship":
                    got = ship_side(url, index, docs, n, work / side, args.bundle_size,
                                    args.at, args.timeout)
                else:
                    got = rsyslog_side(url, index, lines, n, work / side, args.bundle_size,
                                       args.at, args.settle, args.timeout,
                                       ids=side == "rsyslog-ids")
                got.update(exactness(url, index, n))
            finally:
                http("DELETE", f"{url}/{index}")
            sides[side] = got
            print(f"{side:11s}: killed at {got['count_at_kill']:,} of {n:,} indexed; after the "
                  f"restart: count {got['count']:,}, lost {got['lost']:,}, duplicated "
                  f"{got['duplicated']:,}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    record = {"bench": "kill", "time": datetime.now(UTC).isoformat(timespec="seconds"),
              "docs": n, "at": args.at, "bundle_size": args.bundle_size,
              "rsyslog": rsyslog_version(), "sides": sides}
    append_record(args.results, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
