"""`make bench`: every figure of issue 5 beside its baseline, measured in the same run.

    python -m bench.run [--quick] [--work-dir DIR] [--results bench/results.json]

Throughput figures are interleaved rounds (baseline, Pipers, baseline, ...) and
the median of each is taken, because the machines here are shared and noisy.
Prints one line per figure (value, baseline, ratio, target) and writes the same
as JSON. See docs/bench.md for what each figure means.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

from . import baselines, hop
from .common import ROOT, median, remove
from .fs import BenchFS

FULL = dict(rounds=5, n=40_000, n_fsync=15_000, n_bare_fsync=1_500, n_dirq=10_000,
            n_pq_file=1_000, n_pq_sqlite=300, backlog_small=1_000, backlog_big=1_000_000,
            backlog_window=50_000, latency_samples=400, idle_seconds=10.0, ship_docs=100_000,
            rsyslog_rounds=5, ship_rounds=5, kill_docs=100_000)
QUICK = dict(rounds=3, n=15_000, n_fsync=6_000, n_bare_fsync=600, n_dirq=4_000,
             n_pq_file=400, n_pq_sqlite=150, backlog_small=1_000, backlog_big=100_000,
             backlog_window=20_000, latency_samples=150, idle_seconds=5.0, ship_docs=20_000,
            rsyslog_rounds=3, ship_rounds=3, kill_docs=20_000)


@dataclass
class Figure:
    name: str
    value: float | None
    unit: str
    baseline_name: str = ""
    baseline: float | None = None
    target: str = ""  # e.g. ">= 0.8x", "< 150 MB"
    ratio: float | None = None
    ok: bool | None = None
    note: str = ""
    samples: list[float] = field(default_factory=list)
    baseline_samples: list[float] = field(default_factory=list)


def ratio_figure(name, values, baseline_name, base_values, minimum, unit="msg/s", note=""):
    """A value against its baseline; `minimum` None: shown for reference, no verdict."""
    v, b = median(values), median(base_values)
    r = v / b if b else None
    target = "reference" if minimum is None else f">= {minimum}x"
    ok = None if r is None or minimum is None else r >= minimum
    return Figure(name, v, unit, baseline_name, b, target, r, ok, note, list(values),
                  list(base_values))


def limit_figure(name, value, unit, op, limit, note="", samples=()):
    ok = None if value is None else (value < limit if op == "<" else value >= limit)
    return Figure(name, value, unit, target=f"{op} {limit:g} {unit}", ok=ok, note=note,
                  samples=list(samples))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- phases ------------------------------------------------------------------------------------

def throughput(w: str, cfg: dict, logf: str, where: str = "",
               two: bool = True) -> tuple[list[Figure], dict]:
    s: dict[str, list[float]] = {k: [] for k in (
        "bare", "pass", "two", "bare_fsync", "pass_fsync", "dirq", "dirq_put", "dirq_get",
        "pq_file", "pq_sqlite", "cpu_bare", "cpu_pass", "cpu_two", "cpu_bare_fsync",
        "cpu_pass_fsync", "cpu_dirq", "calls1", "calls2", "cpu_calls1", "cpu_calls2")}

    def timed(key, fn, *a, **kw):
        info: dict = {}
        s[key].append(fn(*a, info=info, **kw))
        s["cpu_" + key].append(info.get("cpu_us_per_msg", float("nan")))

    baselines.bare_hop(w, 2_000)  # warm the filesystem and the page cache
    hop.pass_hop(w, 2_000, log=logf)
    for r in range(cfg["rounds"]):
        log(f"throughput round {r + 1}/{cfg['rounds']}")
        timed("bare", baselines.bare_hop, w, cfg["n"])
        timed("pass", hop.pass_hop, w, cfg["n"], log=logf)
        if two:
            timed("two", hop.pass_hop, w, cfg["n"], instances=2, log=logf)
            timed("calls1", baselines.pass_calls, w, cfg["n"], 1)
            timed("calls2", baselines.pass_calls, w, cfg["n"], 2)
        timed("bare_fsync", baselines.bare_hop, w, cfg["n_bare_fsync"], fsync=True)
        timed("pass_fsync", hop.pass_hop, w, cfg["n_fsync"], "fsync", log=logf)
        d = baselines.dirq(w, cfg["n_dirq"])
        s["dirq"].append(d["hop"])
        s["cpu_dirq"].append(d["hop_cpu_us_per_msg"])
        s["dirq_put"].append(d["put"])
        s["dirq_get"].append(d["get"])
        s["pq_file"].append(baselines.persist_file(w, cfg["n_pq_file"])["hop"])
        s["pq_sqlite"].append(baselines.persist_sqlite(w, cfg["n_pq_sqlite"])["hop"])
    pq_name, pq = max((("persist-queue file Queue hop", s["pq_file"]),
                       ("persist-queue SQLiteAckQueue hop", s["pq_sqlite"])),
                      key=lambda x: median(x[1]))
    cpu = {k[4:]: median(v) for k, v in s.items() if k.startswith("cpu_")}
    figs = [
        ratio_figure("pass hop, --durability none", s["pass"], "bare Python hop loop",
                     s["bare"], 0.8,
                     note=f"CPU per message: pass {cpu['pass']:.0f} us, "
                     f"bare loop {cpu['bare']:.0f} us"),
        ratio_figure("pass hop, --durability none", s["pass"],
                     "python-dirq QueueSimple hop (get+put+remove)", s["dirq"], 3,
                     note=f"dirq put {median(s['dirq_put']):.0f}/s, "
                     f"get+remove {median(s['dirq_get']):.0f}/s; "
                     f"CPU per message: dirq hop {cpu['dirq']:.0f} us"),
        ratio_figure("pass hop, --durability none", s["pass"], pq_name + " (the faster one)",
                     pq, 10, note=f"file Queue hop {median(s['pq_file']):.0f}/s, "
                     f"SQLiteAckQueue hop {median(s['pq_sqlite']):.0f}/s (both fsync per op)"),
        ratio_figure("pass hop, --durability fsync", s["pass_fsync"],
                     "bare hop loop, fsync per message", s["bare_fsync"], 9,
                     note="batch of 500 (the fsync default): one syncfs + one directory "
                     "fsync per batch"),
    ]
    if two:
        figs.append(ratio_figure(
            "two pass instances on one queue", s["two"], "one instance", s["pass"], 1.6,
            note=f"CPU per message: two {cpu['two']:.0f} us, one {cpu['pass']:.0f} us "
            f"(equal = no cost from sharing; the rest is free cores); "
            f"{per_round(s['two'], s['pass'])}"))
        figs.append(ratio_figure(
            "the system calls of a pass hop alone, two processes", s["calls2"],
            "one process", s["calls1"], None,
            note=f"CPU per message: two {cpu['calls2']:.0f} us, one {cpu['calls1']:.0f} us; "
            "the kernel's own limit for two instances (cross-directory rename(2) takes the "
            "filesystem's rename mutex): for reference, no target; "
            f"{per_round(s['calls2'], s['calls1'])}"))
    for f in figs:
        f.name += where
    return figs, s


def per_round(values: list[float], baselines: list[float]) -> str:
    """The ratio of each round's pair (measured minutes apart, so a neighbour's load hits
    both sides of a round alike), shown beside the figure, which stays the ratio of the
    medians."""
    ratios = [v / b for v, b in zip(values, baselines, strict=True) if b]
    if not ratios:
        return "no round to compare"
    return (f"ratio per round {', '.join(f'{r:.2f}' for r in ratios)} "
            f"(median {median(ratios):.2f})")


ROOTFS = dict(rounds=2, n=3_000, n_fsync=3_000, n_bare_fsync=500, n_dirq=2_000, n_pq_file=300,
              n_pq_sqlite=100)


def rootfs(work: str, cfg: dict, logf: str) -> tuple[list[Figure], dict]:
    """The same hop figures on the machine's own filesystem (small sizes: creating a file
    costs about 1 ms there). Shown for reference; the targets are judged on the main run."""
    w = os.path.join(os.path.abspath(work), "rootfs")
    os.makedirs(w, exist_ok=True)
    log("throughput on the machine's own filesystem (reference, small sizes)")
    try:
        figs, s = throughput(w, dict(cfg, **ROOTFS), logf, " [root filesystem]", two=False)
    finally:
        remove(w)
    for f in figs:
        f.ok = None  # reference only
    return figs, s


def pipeline(w: str, cfg: dict, logf: str) -> tuple[list[Figure], dict]:
    """Three pass hops in a row over one pre-filled queue (for sizing; no target)."""
    log(f"pipeline: {cfg['n']:,} messages through 3 pass hops")
    rates, cpus = [], []
    for _ in range(3):
        info: dict = {}
        rates.append(hop.pipeline(w, cfg["n"], 3, log=logf, info=info))
        cpus.append(info["cpu_us_per_msg"])
    f = Figure("3 pass hops in a row (end to end)", median(rates), "msg/s", target="none",
               note=f"CPU per message, all 3 daemons: {median(cpus):.0f} us; "
               "3 processes share 2 cores", samples=rates)
    return [f], {"rates": rates, "cpu_us_per_msg": cpus}


def backlog(w: str, cfg: dict, logf: str) -> tuple[list[Figure], dict]:
    log(f"backlog: {cfg['backlog_small']:,} vs {cfg['backlog_big']:,} messages")
    b = hop.backlog(w, cfg["backlog_small"], cfg["backlog_big"], cfg["backlog_window"],
                    log=logf)
    big = f"{cfg['backlog_big']:,}"
    figs = [
        limit_figure(f"resident memory with a {big} backlog (peak)", b["peak_rss_mb"], "MB",
                     "<", 150, note=f"RSS now {b['rss_mb']:.0f} MB"),
        Figure(f"throughput with a {big} backlog", b["big_rate"], "msg/s",
               f"with a {cfg['backlog_small']:,} backlog", b["small_rate"], ">= 0.8x",
               b["big_rate"] / b["small_rate"], b["big_rate"] / b["small_rate"] >= 0.8,
               f"first {cfg['backlog_window']:,} messages of the big backlog; CPU per "
               f"message {b['big_cpu_us_per_msg']:.0f} us vs {b['small_cpu_us_per_msg']:.0f} us"),
        limit_figure(f"start-up to first message, {big} backlog", b["startup_s"], "s", "<", 2,
                     note="process spawn -> first message claimed"),
    ]
    return figs, b


def latency(w: str, cfg: dict, logf: str) -> tuple[list[Figure], dict]:
    log("latency and idle CPU: put -> 3 pass hops")
    lat = hop.latency(w, 3, cfg["latency_samples"], idle_seconds=cfg["idle_seconds"], log=logf)
    note = "to the 3rd hop's output queue (no shipper in this pipeline)"
    figs = [
        limit_figure("idle pipeline latency p50, put -> 3 hops", lat["p50_ms"], "ms", "<", 50,
                     note=note),
        limit_figure("idle pipeline latency p99, put -> 3 hops", lat["p99_ms"], "ms", "<", 250,
                     note=note + f"; max {lat['max_ms']:.1f} ms"),
        limit_figure("idle CPU of a daemon (the busiest of 3)", lat["idle_cpu_pct"], "%", "<", 1,
                     note=f"over {lat['idle_seconds']:.0f} s"),
    ]
    return figs, lat


def shipper(w: str, cfg: dict, logf: str,
            parts: tuple[str, ...] = ("ship", "rsyslog")) -> tuple[list[Figure], dict]:
    """Against a local search node: bench/ship_bench.py's figures (shipper vs
    helpers.bulk) when that script exists, and the idle latency put -> 3 hops ->
    ship -> acknowledged ("ship"); the shipper against rsyslog's omelasticsearch
    (bench/rsyslog_bench.py, "rsyslog"); both killed with SIGKILL mid-run
    (bench/kill_bench.py, "kill")."""
    script = os.path.join(ROOT, "bench", "ship_bench.py")
    missing = Figure("shipper vs helpers.bulk", None, "docs/s", "helpers.bulk", None,
                     ">= 1.0x", note="missing: bench/ship_bench.py does not exist yet")
    try:
        from search.node import SearchNode, find_free_port_base
    except ImportError as e:
        missing.note = f"missing: search.node cannot be imported ({e})"
        return [missing], {"missing": missing.note}
    log("shipper: starting a local search node")
    node = SearchNode(os.path.join(w, "search-node"), port=find_free_port_base(1))
    out: dict = {}
    figs: list[Figure] = []
    try:
        node.start()
        if "rsyslog" in parts:
            figs += _rsyslog(node.url, w, cfg, out)
        if "kill" in parts:
            figs += _kill(node.url, w, cfg, out)
        if "ship" not in parts:
            return figs, out
        if os.path.exists(script):
            results = os.path.join(w, "ship-results.json")
            log(f"shipper: bench/ship_bench.py --docs {cfg['ship_docs']} "
                f"--rounds {cfg['ship_rounds']}")
            r = subprocess.run([sys.executable, script, "--es-url", node.url, "--docs",
                                str(cfg["ship_docs"]), "--rounds", str(cfg["ship_rounds"]),
                                "--results", results], cwd=ROOT,
                               env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=900)
            if r.returncode or not os.path.exists(results):
                missing.note = f"failed: bench/ship_bench.py exited with {r.returncode}"
                figs.append(missing)
            else:
                with open(results) as f:
                    out.update(json.load(f))
                figs += [_ship_figure(x) for x in (out.get("figures") or [out])]
        else:
            figs.append(missing)
        log("latency: put -> 3 pass hops -> ship -> acknowledged")
        lat = hop.latency(w, 3, cfg["latency_samples"] // 2, idle_seconds=0, log=logf,
                          ship_url=node.url)  # the shipper's defaults (--flush-interval 0)
        out["latency_with_ship"] = lat
        note = "pipers ship with its defaults (--flush-interval 0: send when no request is out)"
        if not lat.get("last_doc_found"):
            note += "; the last document was NOT found by a GET"
        figs += [
            limit_figure("idle pipeline latency p50, put -> 3 hops -> ship -> acknowledged",
                         lat["p50_ms"], "ms", "<", 50, note=note),
            limit_figure("idle pipeline latency p99, put -> 3 hops -> ship -> acknowledged",
                         lat["p99_ms"], "ms", "<", 250, note=f"max {lat['max_ms']:.1f} ms"),
        ]
        return figs, out
    except Exception as e:  # the shipper's figures must not lose the others
        why = f"{type(e).__name__}: {e}"
        missing.note = "failed: " + why
        return [*figs, missing], {"error": why, **out}
    finally:
        node.stop()
        remove(os.path.join(w, "search-node"))


def _rsyslog(url: str, w: str, cfg: dict, out: dict) -> list[Figure]:
    """bench/rsyslog_bench.py as its own process against the node; its figures."""
    missing = Figure("pipers ship --once vs rsyslog omelasticsearch", None, "docs/s",
                     "rsyslog omelasticsearch", None, ">= 1.0x")
    results = os.path.join(w, "rsyslog-results.json")
    log(f"shipper: bench/rsyslog_bench.py --docs {cfg['ship_docs']} "
        f"--rounds {cfg['rsyslog_rounds']}")
    try:
        r = subprocess.run([sys.executable, "-m", "bench.rsyslog_bench", "--es-url", url,
                            "--docs", str(cfg["ship_docs"]), "--rounds",
                            str(cfg["rsyslog_rounds"]), "--results", results], cwd=ROOT,
                           env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=1800)
    except subprocess.TimeoutExpired:
        missing.note = "failed: bench/rsyslog_bench.py timed out"
        return [missing]
    if r.returncode == 3:
        missing.note = "missing: rsyslogd or omelasticsearch (make bench-deps)"
        return [missing]
    if r.returncode or not os.path.exists(results):
        missing.note = f"failed: bench/rsyslog_bench.py exited with {r.returncode}"
        return [missing]
    with open(results) as f:
        out["rsyslog"] = json.loads(f.read().splitlines()[-1])
    figs = []
    for x in out["rsyslog"]["figures"]:
        f = _ship_figure(x)
        f.samples, f.baseline_samples = x.get("samples", []), x.get("baseline_samples", [])
        figs.append(f)
    return figs


def _kill(url: str, w: str, cfg: dict, out: dict) -> list[Figure]:
    """bench/kill_bench.py against the node: lost + duplicated documents after kill -9."""
    fig = Figure("kill -9 mid-run, restarted: documents lost + duplicated", None, "docs",
                 "rsyslog omelasticsearch, the same kill", None, "< 1 docs")
    results = os.path.join(w, "kill-results.json")
    log(f"shipper: bench/kill_bench.py --docs {cfg['kill_docs']}")
    try:
        r = subprocess.run([sys.executable, "-m", "bench.kill_bench", "--es-url", url,
                            "--docs", str(cfg["kill_docs"]), "--results", results], cwd=ROOT,
                           env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=3600)
    except subprocess.TimeoutExpired:
        fig.note = "failed: bench/kill_bench.py timed out"
        return [fig]
    if r.returncode or not os.path.exists(results):
        fig.note = ("missing: rsyslogd or omelasticsearch (make bench-deps)" if r.returncode == 3
                    else f"failed: bench/kill_bench.py exited with {r.returncode}")
        return [fig]
    with open(results) as f:
        out["kill"] = rec = json.loads(f.read().splitlines()[-1])
    sides = rec["sides"]
    fig.value = sides["ship"]["lost"] + sides["ship"]["duplicated"]
    fig.baseline = sides["rsyslog"]["lost"] + sides["rsyslog"]["duplicated"]
    fig.ok = fig.value < 1
    fig.note = "; ".join(f"{side}: killed at {s['count_at_kill']:,} of {rec['docs']:,}, "
                         f"{s['lost']:,} lost, {s['duplicated']:,} duplicated"
                         for side, s in sides.items())
    return [fig]


def _ship_figure(x: dict) -> Figure:
    """A figure as ship_bench.py reports it (same field names as ours, or value/baseline)."""
    value, base = x.get("value"), x.get("baseline")
    r = x.get("ratio") or (value / base if value and base else None)
    target = x.get("target", ">= 1.0x")
    return Figure(x.get("name", "shipper vs helpers.bulk"), value, x.get("unit", "docs/s"),
                  x.get("baseline_name", "helpers.bulk"), base, target, r,
                  x.get("ok", None if r is None else r >= 1.0), x.get("note", ""))


# -- output ------------------------------------------------------------------------------------

def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit in ("msg/s", "docs/s"):
        return f"{v:,.0f} {unit}"
    return f"{v:.3g} {unit}" if v < 10 else f"{v:,.1f} {unit}"


def report(figs: list[Figure]) -> str:
    lines = []
    for f in figs:
        mark = {True: "ok  ", False: "MISS", None: "----"}[f.ok]
        base = f"  vs {f.baseline_name} {_fmt(f.baseline, f.unit)}" if f.baseline_name else ""
        ratio = f"  = {f.ratio:.2f}x" if f.ratio is not None else ""
        lines.append(f"{mark} {f.name}: {_fmt(f.value, f.unit)}{base}{ratio}"
                     f"  (target {f.target})")
        if f.note:
            lines.append(f"       {f.note}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes, fewer rounds")
    ap.add_argument("--work-dir", default=os.path.join(os.environ.get("BUILD", "build"), "bench"))
    ap.add_argument("--results", default=os.path.join(ROOT, "bench", "results.json"))
    ap.add_argument("--only", action="append", choices=["throughput", "pipeline", "backlog",
                                                         "latency", "ship", "rsyslog",
                                                         "kill", "rootfs"],
                    help="run only these phases (repeatable)")
    args = ap.parse_args()
    cfg = QUICK if args.quick else FULL
    phases = args.only or ["throughput", "pipeline", "backlog", "latency", "ship", "rsyslog",
                           "kill", "rootfs"]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unmount on the way out
    started = time.time()
    figs: list[Figure] = []
    raw: dict = {}
    with BenchFS(args.work_dir) as fs:
        w = fs.fresh("run")
        logf = os.path.join(os.path.abspath(args.work_dir), "daemons.log")
        log(f"measuring on {fs.kind}; daemon logs in {logf}")
        for phase, fn in (("throughput", throughput), ("pipeline", pipeline),
                          ("backlog", backlog), ("latency", latency)):
            if phase in phases:
                f, raw[phase] = fn(w, cfg, logf)
                figs += f
        parts = tuple(p for p in ("ship", "rsyslog", "kill") if p in phases)
        if parts:  # one search node for both
            f, raw["ship"] = shipper(w, cfg, logf, parts)
            figs += f
        if fs.mounted and "rootfs" in phases:
            f, raw["rootfs"] = rootfs(args.work_dir, cfg, logf)
            figs += f
        fs_kind = fs.kind
        remove(w)
    text = report(figs)
    print(text)
    doc = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(time.time() - started, 1),
        "quick": args.quick,
        "config": cfg,
        "filesystem": fs_kind,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "kernel": platform.release(),
                    "load_avg_at_end": os.getloadavg()},
        "git": _git_rev(),
        "figures": [asdict(f) for f in figs],
        "raw": raw,
    }
    with open(args.results, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    log(f"done in {doc['seconds']:.0f} s; results in {args.results}")
    return 0


def _git_rev() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


if __name__ == "__main__":
    sys.exit(main())
