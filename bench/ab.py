"""A/B: the same pass-hop figures for two checkouts, interleaved in one run.

    python -m bench.ab --before DIR [--after DIR] [--rounds 5] [--what none fsync two]

DIR is a tree holding `pipers/` and `queues/` (e.g. a `git worktree` or an
exported commit). Used to measure what one change to the hot path gave; the
results are in docs/bench.md.
"""

from __future__ import annotations

import argparse
import os

from . import hop
from .common import ROOT, median
from .fs import BenchFS

CASES = {
    "none": dict(n=30_000, durability="none", instances=1),
    "fsync": dict(n=12_000, durability="fsync", instances=1),
    "two": dict(n=30_000, durability="none", instances=2),
    "big": dict(n=150_000, durability="none", instances=1),  # a backlog over SCAN_CHUNK
    "cold": dict(n=150_000, durability="none", instances=1, cold=True),  # and on disk only
    "pipeline": dict(n=30_000, hops=3),  # three hops in a row: arrivals while busy
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", default=str(ROOT))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--what", nargs="+", choices=list(CASES), default=list(CASES))
    ap.add_argument("--extra", default="", help="extra flags for both, space-separated")
    ap.add_argument("--work-dir", default="build/bench")
    args = ap.parse_args()
    extra = tuple(args.extra.split())
    trees = {"before": os.path.abspath(args.before), "after": os.path.abspath(args.after)}
    res: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    with BenchFS(args.work_dir) as fs:
        w = fs.fresh("ab")
        hop.pass_hop(w, 2000)
        for r in range(args.rounds):
            for what in args.what:
                order = ("before", "after") if r % 2 == 0 else ("after", "before")
                for label in order:
                    info: dict = {}
                    if what == "pipeline":
                        rate = hop.pipeline(w, **CASES[what], tree=trees[label], info=info)
                    else:
                        rate = hop.pass_hop(w, **CASES[what], tree=trees[label], extra=extra,
                                            info=info)
                    res.setdefault((what, label), []).append(rate)
                    cpu.setdefault((what, label), []).append(info["cpu_us_per_msg"])
            print(f"round {r + 1}: " + "  ".join(
                f"{k[0]}/{k[1]} {v[-1]:.0f}" for k, v in sorted(res.items())), flush=True)
    for what in args.what:
        b, a = median(res[(what, "before")]), median(res[(what, "after")])
        print(f"{what:6} before {b:8.0f} msg/s  after {a:8.0f} msg/s  = {a / b:.2f}x")
        cb, ca = median(cpu[(what, "before")]), median(cpu[(what, "after")])
        print(f"{'':6} CPU   {cb:8.1f} us/msg after {ca:8.1f} us/msg  = {ca / cb:.2f}x")


if __name__ == "__main__":
    main()
