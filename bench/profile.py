"""Profile one `pipers pass` hop over a pre-filled queue.

    python -m bench.profile --tool pyinstrument   # in-process, main thread, call tree
    python -m bench.profile --tool py-spy         # the real daemon, every thread, sampled

Writes the report under the work directory and prints where it is.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from .common import make_queue_dirs, nonempty, prefill, remove, settle, start_pass, wait_for
from .fs import BenchFS


def _in_process(qin: str, qout: str, durability: str, out: str) -> None:
    from pyinstrument import Profiler

    from pipers.base import Options
    from pipers.transforms.passthrough import Passthrough

    class Draining(Passthrough):
        def loop(self, now: float) -> float:
            wait = super().loop(now)
            if self.drained:
                self.stop()
            return wait

    d = Draining(Options(queue_in_dir=qin, queue_out_dir=qout, durability=durability,
                         queue_out_limit=0))
    profiler = Profiler(interval=0.0002)
    t0 = time.perf_counter()
    with profiler:
        d.run()
    elapsed = time.perf_counter() - t0
    print(f"{d.processed} messages in {elapsed:.2f}s: {d.processed / elapsed:.0f} msg/s "
          "(under the profiler)")
    with open(out + ".txt", "w") as f:
        f.write(profiler.output_text(unicode=False, color=False, show_all=False))
    with open(out + ".html", "w") as f:
        f.write(profiler.output_html())
    print(f"profile: {out}.txt / .html")


def _py_spy(qin: str, qout: str, durability: str, out: str, log: str) -> None:
    proc = start_pass(qin, qout, log=log, durability=durability,
                      extra=("--queue-out-limit", "0"))
    spy = subprocess.Popen(["py-spy", "record", "--threads", "--idle", "--rate", "500",
                            "--format", "speedscope", "-o", out + ".json", "--pid",
                            str(proc.pid)], stdout=subprocess.DEVNULL)
    spy_raw = subprocess.Popen(["py-spy", "record", "--threads", "--rate", "500",
                                "--format", "raw", "-o", out + ".raw", "--pid",
                                str(proc.pid)], stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: not nonempty(os.path.join(qin, "incoming"))
                 and not nonempty(os.path.join(qin, "pending")), 600, 0.05, "drained")
        time.sleep(0.3)
    finally:
        proc.terminate()
        proc.wait(20)
        spy.wait(30)
        spy_raw.wait(30)
    print(f"profile: {out}.json (speedscope), {out}.raw (collapsed stacks)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tool", choices=["pyinstrument", "py-spy"], default="pyinstrument")
    ap.add_argument("--durability", choices=["none", "fsync"], default="none")
    ap.add_argument("-n", type=int, default=30_000)
    ap.add_argument("--work-dir", default="build/bench")
    args = ap.parse_args()
    out = os.path.abspath(os.path.join(args.work_dir, f"profile-{args.tool}-{args.durability}"))
    with BenchFS(args.work_dir) as fs:
        qin = make_queue_dirs(os.path.join(fs.path, "prof-in"))
        qout = make_queue_dirs(os.path.join(fs.path, "prof-out"))
        prefill(os.path.join(qin, "incoming"), args.n)
        settle()
        try:
            if args.tool == "pyinstrument":
                _in_process(qin, qout, args.durability, out)
            else:
                _py_spy(qin, qout, args.durability, out, os.path.join(args.work_dir, "prof.log"))
        finally:
            remove(qin)
            remove(qout)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
