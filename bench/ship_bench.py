"""Shipper throughput: `pipers ship --once` over N pre-queued documents beside `helpers.bulk`.

    python bench/ship_bench.py --es-url URL --docs N --rounds R --results FILE

Both sides index the same N documents (same bytes, same `_id`s, op_type
create) into two fresh indices of the same node, R times; the order of the
two sides alternates from round to round, and the figure is the ratio of the
two sides' median rates (a single round of each swung from 0.83x to 1.17x
between runs):

- ship: N messages are written into a queue as an upstream daemon with the
  default ``--durability none`` writes them (``--sync-queue``: synced to disk
  first, a backlog as an outage leaves it; unlinking written-back files costs
  more on some filesystems), then ``pipers ship --once`` runs as its own
  process until the queue is empty; the time is the whole command, start-up
  included;
- helpers.bulk: opensearch-py's ``helpers.bulk`` over the same documents,
  in chunks of the same size, also as its own process: it reads the documents
  from one file (id and JSON per line), parses them and indexes them; the time
  is the whole command, start-up and client set-up included, as for ship.

Before either side, one throw-away ``_bulk`` of 2,000 documents warms the
node up, so the side that runs first does not pay for its first requests.

Prints each round, the medians and the ratio ship / helpers.bulk (with the
ratio of each round), and appends one JSON record (a line) to FILE.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from bench.common import append_record, median, message  # noqa: E402
from queues import Queue  # noqa: E402


def document(i: int) -> bytes:
    """The records every benchmark uses (about 330 bytes, bench.common.message)."""
    return message(i)


def http(method: str, url: str, body: dict | None = None, timeout: float = 60.0):
    data = orjson.dumps(body) if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return orjson.loads(resp.read() or b"null")


def make_index(url: str, index: str) -> None:
    http("PUT", f"{url}/{index}", {"settings": {"number_of_shards": 1,
                                                "number_of_replicas": 0}})


def count(url: str, index: str) -> int:
    http("POST", f"{url}/{index}/_refresh")
    return int(http("GET", f"{url}/{index}/_count")["count"])


def node_cpu_seconds(url: str) -> float:
    """CPU time the search node's process has used so far (its _nodes stats)."""
    stats = http("GET", f"{url}/_nodes/_local/stats/process")
    (node,) = stats["nodes"].values()
    return node["process"]["cpu"]["total_in_millis"] / 1000


def fill_queue(path: Path, docs: list[bytes], sync: bool) -> tuple[Queue, list[str]]:
    """A queue holding the documents as an upstream daemon with --durability none leaves them."""
    queue = Queue(path)
    with queue.batch() as batch:
        ids = [batch.add(data) for data in docs]
    if sync:
        os.sync()  # a backlog on disk, as a shipper that was down for a while finds it
    return queue, ids


def run_ship(url: str, index: str, queue: Queue, bundle_size: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("PIPERS_ES_URL", None)
    cmd = [sys.executable, "-m", "pipers", "ship", "--queue-in-dir", queue.path,
           "--es-url", url, "--default-index", index, "--bundle-size", str(bundle_size),
           "--once", "--log-level", "WARNING"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=3600)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"pipers ship failed ({done.returncode}):\n{done.stderr.decode()}")
    left = queue.counts()
    if left["incoming"] or left["pending"] or left["errors"]:
        raise SystemExit(f"pipers ship left messages behind: {left}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"seconds": seconds, "cpu_seconds": cpu}


def helpers_child(argv: list[str]) -> int:
    """The helpers.bulk side as its own process: load the documents, index them, exit."""
    path, url, index, bundle_size = argv[0], argv[1], argv[2], int(argv[3])
    from opensearchpy import OpenSearch, helpers

    with open(path, "rb") as f:
        lines = f.read().splitlines()
    actions = ({"_op_type": "create", "_index": index, "_id": _id.decode(),
                "_source": orjson.loads(source)}
               for _id, _, source in (line.partition(b"\t") for line in lines))
    client = OpenSearch(hosts=[url], timeout=120)
    ok, errors = helpers.bulk(client, actions, chunk_size=bundle_size,
                              max_chunk_bytes=10 * 1024 * 1024, stats_only=True)
    client.close()
    if errors or ok != len(lines):
        print(f"helpers.bulk: {ok} indexed, {errors} errors", file=sys.stderr)
        return 1
    return 0


def run_helpers(url: str, index: str, docs: list[bytes], ids: list[str],
                bundle_size: int, work: Path) -> dict:
    """helpers.bulk as its own process over the same documents, read from one file.

    Timed like the ship side: the whole command, interpreter start-up, imports,
    client set-up and reading its input included.
    """
    path = work / "helpers-input.tsv"
    with open(path, "wb") as f:
        f.writelines(_id.encode() + b"\t" + doc + b"\n" for _id, doc in zip(ids, docs,
                                                                        strict=True))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--helpers-child", str(path), url,
           index, str(bundle_size)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=3600)
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"helpers.bulk failed ({done.returncode}):\n{done.stderr.decode()}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"seconds": seconds, "cpu_seconds": cpu}


def warm_up(url: str, index: str, docs: list[bytes]) -> None:
    """One throw-away `_bulk` so that neither side pays for the node's first requests."""
    body = b"".join(b'{"create":{}}\n' + doc + b"\n" for doc in docs)
    req = urllib.request.Request(f"{url}/{index}/_bulk", data=body, method="POST",
                                 headers={"content-type": "application/x-ndjson"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        resp.read()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--helpers-child"]:
        return helpers_child(argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--es-url", required=True, help="the search node, e.g. http://127.0.0.1:9201")
    p.add_argument("--docs", type=int, default=20_000, help="documents per side and round")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds, the sides' order alternating (ratio of the medians)")
    p.add_argument("--results", required=True, help="append one JSON record (a line) here")
    p.add_argument("--bundle-size", type=int, default=5000, help="documents per bulk request")
    p.add_argument("--keep", action="store_true", help="keep the two indices afterwards")
    p.add_argument("--sync-queue", action="store_true",
                   help="sync the pre-filled queue to disk first (a backlog after an outage)")
    args = p.parse_args(argv)
    url = args.es_url.rstrip("/")
    engine = http("GET", url + "/").get("version", {})
    stamp = f"{int(time.time())}-{os.getpid()}"
    docs = [document(i) for i in range(args.docs)]
    doc_bytes = round(sum(map(len, docs)) / len(docs))
    work = Path(tempfile.mkdtemp(prefix="ship-bench-", dir=os.environ.get("PIPERS_BENCH_TMP")))
    rounds: list[dict] = []
    try:
        warm_index = f"bench-warm-{stamp}"
        make_index(url, warm_index)
        warm_up(url, warm_index, docs[:2000])
        http("DELETE", f"{url}/{warm_index}")
        for r in range(1, args.rounds + 1):
            # the same documents under the same ids (the names the queue gave them)
            queue, ids = fill_queue(work / f"queue-{r}", docs, args.sync_queue)
            got: dict = {}
            for side in ("ship", "helpers") if r % 2 else ("helpers", "ship"):
                index = f"bench-{side}-{stamp}-{r}"
                make_index(url, index)
                node0 = node_cpu_seconds(url)
                try:
                    got[side] = (run_ship(url, index, queue, args.bundle_size)
                                 if side == "ship" else
                                 run_helpers(url, index, docs, ids, args.bundle_size, work))
                    got[side]["node_cpu_seconds"] = node_cpu_seconds(url) - node0
                    got[side]["count"] = count(url, index)
                finally:
                    if not args.keep:
                        http("DELETE", f"{url}/{index}")
                if got[side]["count"] != args.docs:
                    raise SystemExit(f"{side} indexed {got[side]['count']} of {args.docs}")
            shutil.rmtree(queue.path, ignore_errors=True)
            rounds.append(got)
            print(f"round {r}: ship {args.docs / got['ship']['seconds']:,.0f} docs/s "
                  f"(CPU {got['ship']['cpu_seconds']:.2f} s, node "
                  f"{got['ship']['node_cpu_seconds']:.2f} s), helpers.bulk "
                  f"{args.docs / got['helpers']['seconds']:,.0f} docs/s (CPU "
                  f"{got['helpers']['cpu_seconds']:.2f} s, node "
                  f"{got['helpers']['node_cpu_seconds']:.2f} s)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def med(side: str, key: str) -> float:
        return median([g[side][key] for g in rounds])

    rates = {side: [args.docs / g[side]["seconds"] for g in rounds] for side in ("ship", "helpers")}
    ship_rate, helpers_rate = median(rates["ship"]), median(rates["helpers"])
    per_round = [round(a / b, 3) for a, b in zip(rates["ship"], rates["helpers"], strict=True)]
    us = {side: (med(side, "cpu_seconds") / args.docs * 1e6,
                 med(side, "node_cpu_seconds") / args.docs * 1e6) for side in ("ship", "helpers")}
    record = {
        "bench": "ship",
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "docs": args.docs,
        "rounds": args.rounds,
        "doc_bytes": doc_bytes,
        "bundle_size": args.bundle_size,
        "queue_synced": args.sync_queue,
        "engine": f"{engine.get('distribution', 'elasticsearch')} {engine.get('number', '?')}",
        "ship_seconds": round(med("ship", "seconds"), 3),
        "ship_cpu_seconds": round(med("ship", "cpu_seconds"), 3),
        "ship_docs_per_s": round(ship_rate, 1),
        "helpers_bulk_seconds": round(med("helpers", "seconds"), 3),
        "helpers_bulk_cpu_seconds": round(med("helpers", "cpu_seconds"), 3),
        "helpers_bulk_docs_per_s": round(helpers_rate, 1),
        "ratio_ship_to_helpers_bulk": round(ship_rate / helpers_rate, 3),
        "ratio_per_round": per_round,
        "rounds_detail": [{side: {k: round(v, 3) for k, v in g[side].items()} for side in g}
                          for g in rounds],
        # the figure as bench/run.py reads it
        "name": "pipers ship --once vs helpers.bulk"
                + (" (queue synced to disk)" if args.sync_queue else ""),
        "value": round(ship_rate, 1),
        "baseline": round(helpers_rate, 1),
        "baseline_name": "opensearch-py helpers.bulk",
        "unit": "docs/s",
        "ratio": round(ship_rate / helpers_rate, 3),
        "note": f"{args.docs} docs of ~{doc_bytes} B, bundles of {args.bundle_size}, each "
                f"side its own process, start-up included, node warmed up first; median of "
                f"{args.rounds} interleaved rounds (ratio per round "
                + ", ".join(f"{x:.2f}" for x in per_round) + "); CPU per doc (process / "
                f"node): ship {us['ship'][0]:.0f} / {us['ship'][1]:.0f} us, helpers.bulk "
                f"{us['helpers'][0]:.0f} / {us['helpers'][1]:.0f} us",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    print(f"pipers ship --once: {ship_rate:,.0f} docs/s (median of {args.rounds}; process CPU "
          f"{us['ship'][0]:.0f} us/doc, start-up included)")
    print(f"helpers.bulk:       {helpers_rate:,.0f} docs/s (median of {args.rounds}; process "
          f"CPU {us['helpers'][0]:.0f} us/doc, start-up included)")
    print(f"ratio ship / helpers.bulk = {ship_rate / helpers_rate:.2f} (per round: "
          + ", ".join(f"{x:.2f}" for x in per_round) + ")")
    append_record(args.results, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
