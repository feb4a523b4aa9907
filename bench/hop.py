"""`pipers pass` as real processes: throughput, scaling, backlog, latency, idle CPU.

Every daemon is started with ``python -m pipers pass`` exactly as an operator
would. Times come from the daemon's own state file (``run/*.json``, written
atomically with the time of every change of state), so the measuring process
polls little and interferes little.
"""

from __future__ import annotations

import os
import subprocess
import time

from queues import Queue

from .common import (
    count,
    cpu_seconds,
    drop_page_cache,
    make_queue_dirs,
    median,
    nonempty,
    percentile,
    prefill,
    remove,
    rss_kb,
    settle,
    start_pass,
    state_of,
    states,
    stop,
    wait_for,
)


def _wait_state(queue: str, pid: int, state: str, after: float, timeout: float,
                proc: subprocess.Popen | None = None) -> dict:
    def ready():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"daemon {pid} exited with {proc.returncode}")
        s = state_of(queue, pid)
        return s if s and s["state"] == state and s["updated"] >= after else None

    return wait_for(ready, timeout, 0.01, f"daemon {pid} to be {state}")


def pass_hop(work: str, n: int, durability: str = "none", instances: int = 1,
             log: str = "/dev/null", extra: tuple[str, ...] = (),
             tree: str | None = None, info: dict | None = None, cold: bool = False) -> float:
    """Messages per second of `instances` pass daemons draining `n` pre-filled messages
    (`cold`: dropped from the page cache first, as after a long outage).

    From the first instance's start of work (state 'running', written before it
    opens its watch and lists the queue) to the last one's 'idle'. `info` gets
    the daemons' CPU time per message (start-up left out), in microseconds: a
    figure the neighbours on a shared machine disturb far less than wall time.
    """
    qin, qout = make_queue_dirs(os.path.join(work, "hop-in")), os.path.join(work, "hop-out")
    make_queue_dirs(qout)
    procs = []
    try:
        prefill(os.path.join(qin, "incoming"), n)
        settle()
        if cold:
            drop_page_cache()
        t_start = time.time()
        procs = [start_pass(qin, qout, log=log, durability=durability, tree=tree,
                            extra=("--queue-out-limit", str(2 * n + 1000), *extra))
                 for _ in range(instances)]
        running, cpu0 = {}, {}

        def all_started():
            for p in procs:
                s = state_of(qin, p.pid)
                if s and p.pid not in running:
                    running[p.pid] = s
                    cpu0[p.pid] = cpu_seconds(p.pid)
                if p.poll() is not None:
                    raise RuntimeError(f"pass exited with {p.returncode}")
            return len(running) == len(procs)

        wait_for(all_started, 60, 0.002, "the daemons to start")
        t0 = min(s["updated"] for s in running.values())

        def drained():
            if nonempty(os.path.join(qin, "incoming")) or nonempty(os.path.join(qin, "pending")):
                return None
            return None if any(
                (s := state_of(qin, p.pid)) is None or s["state"] != "idle" for p in procs
            ) else True

        if "--once" in extra:  # no state left behind: the time they exit
            wait_for(lambda: all(p.poll() is not None for p in procs), 600, 0.005, "exit")
            t1 = time.time()
        else:
            wait_for(drained, 600, 0.02, "the queue to drain")
            t1 = max(state_of(qin, p.pid)["updated"] for p in procs)
            if info is not None:
                used = sum(cpu_seconds(p.pid) - cpu0[p.pid] for p in procs)
                info["cpu_us_per_msg"] = used / n * 1e6
        got = len(os.listdir(os.path.join(qout, "incoming")))
        if got != n:
            raise RuntimeError(f"{got} of {n} messages arrived")
        assert t0 >= t_start - 1
        return n / (t1 - t0)
    finally:
        stop(procs)
        remove(qin)
        remove(qout)


def pipeline(work: str, n: int, hops: int = 3, log: str = "/dev/null",
             tree: str | None = None, info: dict | None = None) -> float:
    """Messages per second through `hops` pass daemons in a row, `n` pre-filled in the first
    queue: from the first daemon's start of work to the last arrival (its ctime)."""
    qs = [make_queue_dirs(os.path.join(work, f"pipe-{i}")) for i in range(hops + 1)]
    procs = []
    try:
        prefill(os.path.join(qs[0], "incoming"), n)
        settle()
        procs = [start_pass(qs[i], qs[i + 1], log=log, tree=tree,
                            extra=("--queue-out-limit", str(2 * n + 1000)))
                 for i in range(hops)]
        started, cpu0 = {}, {}

        def all_started():
            for p, q in zip(procs, qs, strict=False):
                if p.pid not in started and (s := state_of(q, p.pid)):
                    started[p.pid] = s["updated"]
                    cpu0[p.pid] = cpu_seconds(p.pid)
            return len(started) == len(procs)

        wait_for(all_started, 60, 0.002, "the daemons to start")
        last = os.path.join(qs[-1], "incoming")
        wait_for(lambda: count(last) >= n, 600, 0.1, "the last queue to fill")
        if info is not None:
            info["cpu_us_per_msg"] = sum(cpu_seconds(p.pid) - cpu0[p.pid] for p in procs) / n * 1e6
        with os.scandir(last) as it:
            t1 = max(e.stat(follow_symlinks=False).st_ctime for e in it)
        return n / (t1 - min(started.values()))
    finally:
        stop(procs)
        for q in qs:
            remove(q)


def backlog(work: str, small: int, big: int, window: int, repeats: int = 5,
            log: str = "/dev/null") -> dict[str, float]:
    """A daemon on a huge backlog against one on a small one.

    * small: `repeats` times, a stopped idle daemon (SIGSTOP) gets `small`
      messages and is continued; rate = small / (continue -> idle);
    * big: `big` messages pre-filled, a daemon started: start-up = spawn -> first
      message claimed; rate over the first `window` messages (it stops itself
      at --queue-out-limit `window`: state 'waiting'); resident memory (peak).
    """
    import signal

    out: dict[str, float] = {}
    qin, qout = make_queue_dirs(os.path.join(work, "bl-in")), os.path.join(work, "bl-out")
    make_queue_dirs(qout)
    proc = None
    try:
        proc = start_pass(qin, qout, log=log, extra=("--queue-out-limit", "0"))
        _wait_state(qin, proc.pid, "idle", 0, 60, proc)
        rates, cpus = [], []
        for i in range(repeats):
            proc.send_signal(signal.SIGSTOP)
            prefill(os.path.join(qin, "incoming"), small, start=i * small)
            settle()
            c0 = cpu_seconds(proc.pid)
            t0 = time.time()
            proc.send_signal(signal.SIGCONT)
            s = _wait_state(qin, proc.pid, "idle", t0, 60, proc)
            wait_for(lambda: not nonempty(os.path.join(qin, "incoming")), 60, 0.01)
            rates.append(small / (s["updated"] - t0))
            cpus.append((cpu_seconds(proc.pid) - c0) / small * 1e6)
        out["small_rate"] = median(rates)
        out["small_cpu_us_per_msg"] = median(cpus)
    finally:
        stop([proc] if proc else [])
        remove(qin)
        remove(qout)

    qin, qout = make_queue_dirs(os.path.join(work, "bl-in")), os.path.join(work, "bl-out")
    make_queue_dirs(qout)
    proc = None
    try:
        prefill(os.path.join(qin, "incoming"), big)
        settle()
        spawned = time.time()
        proc = start_pass(qin, qout, log=log, extra=("--queue-out-limit", str(window)))
        pending = os.path.join(qin, "pending")
        outgoing = os.path.join(qout, "incoming")
        wait_for(lambda: nonempty(pending) or nonempty(outgoing), 60, 0.001, "first message")
        first = time.time()
        c0 = cpu_seconds(proc.pid)
        out["startup_s"] = first - spawned
        s = _wait_state(qin, proc.pid, "waiting", spawned, 600, proc)
        out["big_cpu_us_per_msg"] = (cpu_seconds(proc.pid) - c0) / window * 1e6
        mem = rss_kb(proc.pid)
        out["big_rate"] = window / (s["updated"] - first)
        out["rss_mb"] = mem["VmRSS"] / 1024
        out["peak_rss_mb"] = mem["VmHWM"] / 1024
        out["big"] = big
    finally:
        stop([proc] if proc else [])
    remove(qin)
    remove(qout)
    return out


def latency(work: str, hops: int = 3, samples: int = 300, gap: float = 0.02,
            idle_seconds: float = 10.0, log: str = "/dev/null",
            ship_url: str | None = None, ship_args: tuple[str, ...] = ()) -> dict[str, float]:
    """Idle pipeline: put -> `hops` pass daemons -> (ship) ; then idle CPU.

    Without `ship_url` a message is done when it lands in the last hop's output
    queue; with it, a `pipers ship` (its default flags) consumes that queue and a
    message is done when it has left the ship queue (the shipper removes it only
    once the search node acknowledged it), checked by a real-time GET afterwards.
    """
    from .common import start_daemon

    qs = [make_queue_dirs(os.path.join(work, f"lat-{i}")) for i in range(hops + 1)]
    procs = []
    try:
        procs = [start_pass(qs[i], qs[i + 1], log=log) for i in range(hops)]
        if ship_url:
            procs.append(start_daemon("ship", "--queue-in-dir", qs[-1], "--es-url", ship_url,
                                      "--default-index", "bench-latency", "--log-level",
                                      "WARNING", *ship_args, log=log))
        for p, q in zip(procs, qs, strict=False):
            _wait_state(q, p.pid, "idle", 0, 120, p)
        time.sleep(0.5)
        put = Queue(qs[0])
        if ship_url:
            from pipers.ship.bundle import doc_id
            from search.node import SearchClient

            client = SearchClient(ship_url)
        last_in, last_pending = os.path.join(qs[-1], "incoming"), os.path.join(qs[-1], "pending")
        lat = []
        name = ""
        for i in range(samples):
            t0 = time.perf_counter()
            name = put.put(b'{"seq": %d, "latency": "probe"}' % i)
            target = os.path.join(last_in, name)
            if ship_url:
                # done when the message has left the ship queue; the shipper may take
                # it between two polls, so a message never seen there is done when a
                # real-time GET finds its document (at most every 5 ms)
                seen, asked = False, t0
                while True:
                    here = os.path.exists(target) or any(
                        n.startswith(name) for n in os.listdir(last_pending))
                    seen = seen or here
                    if seen and not here:
                        break
                    now = time.perf_counter()
                    if not here and not seen and now - asked > 0.005:
                        asked = now
                        if client.get_doc("bench-latency", doc_id(name)) is not None:
                            break
                    time.sleep(0.0005)
            else:
                while not os.path.exists(target):
                    time.sleep(0.0005)
            lat.append(time.perf_counter() - t0)
            if not ship_url:
                os.unlink(target)
            time.sleep(gap)
        out = {"p50_ms": percentile(lat, 50) * 1000, "p99_ms": percentile(lat, 99) * 1000,
               "max_ms": max(lat) * 1000, "samples": samples}
        if ship_url:
            out["last_doc_found"] = client.get_doc(
                "bench-latency", doc_id(name)) is not None
        if idle_seconds > 0:
            time.sleep(1.0)
            before = [cpu_seconds(p.pid) for p in procs]
            t0 = time.monotonic()
            time.sleep(idle_seconds)
            used = [cpu_seconds(p.pid) - b for p, b in zip(procs, before, strict=True)]
            elapsed = time.monotonic() - t0
            out["idle_cpu_pct"] = max(used) / elapsed * 100
            out["idle_seconds"] = elapsed
        return out
    finally:
        stop(procs)
        for q in qs:
            remove(q)


__all__ = ["pass_hop", "backlog", "latency", "states"]
