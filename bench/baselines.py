"""Baselines measured beside every Pipers figure, in the same run.

* the bare-Python hop: claim (rename), read, write a new file, rename it into the
  next directory, unlink - nothing around it; once without and once with an
  ``fsync`` per message;
* python-dirq ``QueueSimple`` and persist-queue's file ``Queue`` and
  ``SQLiteAckQueue``: put, a hop (get + put into a second queue + remove/ack),
  and get + remove/ack, each with the library's defaults;
* the system calls of a ``pass`` hop alone (open, fstat, read, close, rename into
  the next ``incoming/``), in one process and in two over halves of the same
  messages: what the kernel allows two instances on one filesystem.

``python -m bench.baselines --work-dir DIR`` prints them once.
"""

from __future__ import annotations

import argparse
import os
import time

from .common import make_queue_dirs, message, prefill, remove, settle

_RD = os.O_RDONLY | os.O_CLOEXEC
_WR = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


def bare_hop(work: str, n: int, fsync: bool = False, info: dict | None = None) -> float:
    """Messages per second of the bare hop loop over `n` pre-filled messages.

    `info` gets its CPU time per message in microseconds (user + system).
    """
    src, dst = make_queue_dirs(os.path.join(work, "bare-in")), make_queue_dirs(
        os.path.join(work, "bare-out"))
    try:
        inc, pend = src + "/incoming/", src + "/pending/"
        tmp, out = dst + "/tmp/", dst + "/incoming/"
        prefill(inc, n)
        settle()
        c0 = time.process_time()
        t0 = time.perf_counter()
        for name in sorted(os.listdir(inc)):
            p = pend + name
            os.rename(inc + name, p)
            fd = os.open(p, _RD)
            data = os.read(fd, os.fstat(fd).st_size)  # as pass reads (not a 1 MB buffer)
            os.close(fd)
            t = tmp + name
            fd = os.open(t, _WR, 0o600)
            os.write(fd, data)
            if fsync:
                os.fsync(fd)
            os.close(fd)
            os.rename(t, out + name)
            os.unlink(p)
        elapsed = time.perf_counter() - t0
        if info is not None:
            info["cpu_us_per_msg"] = (time.process_time() - c0) / n * 1e6
        assert len(os.listdir(out)) == n
        return n / elapsed
    finally:
        remove(src)
        remove(dst)


def _pass_calls(src: str, dst: str, names: list[str], cpu) -> None:
    sfd = os.open(src, _RD | os.O_DIRECTORY)
    dfd = os.open(dst, _RD | os.O_DIRECTORY)
    c0 = time.process_time()
    for name in names:
        fd = os.open(name, _RD | os.O_NOFOLLOW, dir_fd=sfd)
        os.read(fd, os.fstat(fd).st_size)
        os.close(fd)
        os.rename(name, name, src_dir_fd=sfd, dst_dir_fd=dfd)
    cpu.value = time.process_time() - c0


def pass_calls(work: str, n: int, processes: int = 1, info: dict | None = None) -> float:
    """Messages per second of the calls `pipers pass` makes per message and nothing else,
    in `processes` processes, each over its own share of `n` pre-filled messages.

    No two processes touch one message, so two processes against one shows the
    kernel's own limit for two instances: every rename(2) between two directories
    takes the filesystem's rename mutex (lock_rename), whoever's directories they are.
    `info` gets the CPU time per message in microseconds (all processes).
    """
    import multiprocessing

    src, dst = make_queue_dirs(os.path.join(work, "calls-in")), make_queue_dirs(
        os.path.join(work, "calls-out"))
    try:
        inc, out = src + "/incoming", dst + "/incoming"
        names = sorted(prefill(inc, n))
        settle()
        ctx = multiprocessing.get_context("fork")
        cpus = [ctx.Value("d", 0.0) for _ in range(processes)]
        procs = [ctx.Process(target=_pass_calls, args=(inc, out, names[i::processes], cpus[i]))
                 for i in range(processes)]
        t0 = time.perf_counter()
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        elapsed = time.perf_counter() - t0
        if any(p.exitcode for p in procs):
            raise RuntimeError("a pass_calls process failed")
        if info is not None:
            info["cpu_us_per_msg"] = sum(c.value for c in cpus) / n * 1e6
        assert len(os.listdir(out)) == n
        return n / elapsed
    finally:
        remove(src)
        remove(dst)


def dirq(work: str, n: int) -> dict[str, float]:
    """python-dirq QueueSimple: put, hop (lock, get, add to the next, remove), get+remove."""
    from dirq.QueueSimple import QueueSimple

    a, b = os.path.join(work, "dirq-a"), os.path.join(work, "dirq-b")
    try:
        qa, qb = QueueSimple(a), QueueSimple(b)
        data = [message(i) for i in range(n)]
        settle()
        t0 = time.perf_counter()
        for d in data:
            qa.add(d)
        t1, c1 = time.perf_counter(), time.process_time()
        for name in qa:
            if qa.lock(name):
                qb.add(qa.get(name))
                qa.remove(name)
        t2, c2 = time.perf_counter(), time.process_time()
        got = 0
        for name in qb:
            if qb.lock(name):
                qb.get(name)
                qb.remove(name)
                got += 1
        t3 = time.perf_counter()
        assert got == n
        return {"put": n / (t1 - t0), "hop": n / (t2 - t1), "get": n / (t3 - t2),
                "hop_cpu_us_per_msg": (c2 - c1) / n * 1e6}
    finally:
        remove(a)
        remove(b)


def persist_file(work: str, n: int) -> dict[str, float]:
    """persist-queue's file Queue: put, hop (get, put into the next, task_done), get+ack."""
    import persistqueue

    a, b, tmp = (os.path.join(work, x) for x in ("pq-a", "pq-b", "pq-tmp"))
    os.makedirs(tmp, exist_ok=True)
    try:
        qa = persistqueue.Queue(a, tempdir=tmp)
        qb = persistqueue.Queue(b, tempdir=tmp)
        data = [message(i) for i in range(n)]
        settle()
        t0 = time.perf_counter()
        for d in data:
            qa.put(d)
        t1 = time.perf_counter()
        for _ in range(n):
            qb.put(qa.get())
            qa.task_done()
        t2 = time.perf_counter()
        for _ in range(n):
            qb.get()
            qb.task_done()
        t3 = time.perf_counter()
        return {"put": n / (t1 - t0), "hop": n / (t2 - t1), "get": n / (t3 - t2)}
    finally:
        remove(a)
        remove(b)
        remove(tmp)


def persist_sqlite(work: str, n: int) -> dict[str, float]:
    """persist-queue's SQLiteAckQueue: put, hop (get, put into the next, ack), get+ack."""
    import persistqueue

    a, b = os.path.join(work, "pqs-a"), os.path.join(work, "pqs-b")
    try:
        qa = persistqueue.SQLiteAckQueue(a)
        qb = persistqueue.SQLiteAckQueue(b)
        data = [message(i) for i in range(n)]
        settle()
        t0 = time.perf_counter()
        for d in data:
            qa.put(d)
        t1 = time.perf_counter()
        for _ in range(n):
            item = qa.get()
            qb.put(item)
            qa.ack(item)
        t2 = time.perf_counter()
        for _ in range(n):
            qb.ack(qb.get())
        t3 = time.perf_counter()
        return {"put": n / (t1 - t0), "hop": n / (t2 - t1), "get": n / (t3 - t2)}
    finally:
        remove(a)
        remove(b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work-dir", default="build/bench")
    ap.add_argument("-n", type=int, default=20_000)
    args = ap.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)
    print(f"bare hop, no fsync:  {bare_hop(args.work_dir, args.n):10.0f} msg/s")
    print(f"bare hop, fsync:     {bare_hop(args.work_dir, 1000, fsync=True):10.0f} msg/s")
    for k in (1, 2):
        print(f"pass calls, {k} proc:  {pass_calls(args.work_dir, args.n, k):10.0f} msg/s")
    for name, f, n in (("dirq", dirq, args.n // 2), ("persist-queue file", persist_file, 1000),
                       ("persist-queue sqlite-ack", persist_sqlite, 1000)):
        r = f(args.work_dir, n)
        print(f"{name:25} " + "  ".join(f"{k} {v:8.0f}" for k, v in r.items()) + " msg/s")


if __name__ == "__main__":
    main()
