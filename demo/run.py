"""`make demo`: the main job end to end against a real local search node.

1. start a private OpenSearch node (the project's search launcher, search/node.py)
2. start `pipers enrich` and `pipers ship` as separate processes, chained only by
   their queue directories (--queue-in-dir / --queue-out-dir)
3. feed sample records with `pipers put` (demo/sample.ndjson plus generated ones)
4. show `pipers status` of both queues, the document counts per index and one
   document as the index holds it
5. stop the daemons and the node

Everything lives under build/demo/ (removed at the next run). DEMO_DOCS sets how many
generated records are added to the sample file (default 5000).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from search.node import SEARCH_BUILD, SearchNode, find_free_port_base  # noqa: E402

DEMO = SEARCH_BUILD.parent / "demo"
PIPERS = [sys.executable, "-m", "pipers"]
INDEX_PREFIX = "pipers-demo"
SAMPLE = ROOT / "demo" / "sample.ndjson"
SITES = ["LCG.CERN.cern", "LCG.CNAF.it", "LCG.GRIDKA.de", "LCG.RAL.uk", "LCG.IN2P3.fr"]
STATUSES = ["Waiting", "Running", "Done", "Failed"]


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def generated(n: int) -> bytes:
    """`n` WMSHistory-like records, one JSON object per line."""
    base = time.time()
    lines = []
    for i in range(n):
        lines.append(json.dumps({
            "monitoringType": "WMSHistory",
            "timestamp": int((base - (n - i)) * 1000),
            "Site": SITES[i % len(SITES)],
            "Status": STATUSES[i % len(STATUSES)],
            "Jobs": (i * 37) % 500,
            "User": f"user{i % 17:02d}",
            "seq": i,
        }))
    return ("\n".join(lines) + "\n").encode()


def get(url: str):
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def pipers(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*PIPERS, *args], cwd=ROOT, check=True, **kw)


def main() -> int:
    extra = int(os.environ.get("DEMO_DOCS", "5000"))
    shutil.rmtree(DEMO, ignore_errors=True)
    queues = DEMO / "queues"
    q_enrich, q_ship, logs = queues / "enrich", queues / "ship", DEMO / "logs"
    logs.mkdir(parents=True)
    queues.mkdir()

    say("starting a local OpenSearch node (search/node.py, jars from Maven Central)")
    node = SearchNode(DEMO / "search", find_free_port_base(1), cluster_name="pipers-demo",
                      heap="512m")
    node.start(timeout=180)
    print(f"   {node.url} up in {node.last_start_seconds:.1f}s")
    daemons: list[subprocess.Popen] = []
    try:
        say("starting the chain: put -> [enrich] -> [ship] -> OpenSearch")
        chain = [
            ("enrich", "--queue-in-dir", str(q_enrich), "--queue-out-dir", str(q_ship),
             "--host-field", "shipper_host", "--time-field", "received", "--set",
             "pipeline=demo"),
            ("ship", "--queue-in-dir", str(q_ship), "--es-url", node.url,
             "--index-template", INDEX_PREFIX + "-{monitoringType}-{date:%Y.%m}",
             "--time-field", "timestamp", "--default-index", INDEX_PREFIX + "-other",
             "--flush-interval", "0.5"),
        ]
        for args in chain:
            log = open(logs / f"{args[0]}.log", "wb")
            daemons.append(subprocess.Popen([*PIPERS, *args], cwd=ROOT, stdout=log,
                                            stderr=subprocess.STDOUT))
            log.close()
            print("   pipers " + " ".join(args))
        sample = SAMPLE.read_bytes()
        feed = sample + generated(extra)
        records = feed.count(b"\n")
        say(f"feeding {records} records with `pipers put` ({SAMPLE.name} + {extra} generated)")
        pipers("put", "--queue-out-dir", str(q_enrich), input=feed)
        expected = records - 1  # one sample record breaks the mapping on purpose
        deadline = time.monotonic() + 120
        indexed = 0
        while time.monotonic() < deadline:
            get_refresh(node.url)
            indexed = get(f"{node.url}/{INDEX_PREFIX}-*/_count")["count"]
            waiting = any(os.listdir(q / d) for q in (q_enrich, q_ship)
                          for d in ("incoming", "pending"))
            if indexed >= expected and not waiting:
                break
            time.sleep(0.5)
        print(f"   {indexed} of {expected} documents indexed")

        say("pipers status (queues; the shipper's state; errors by reason)")
        pipers("status", str(q_enrich), str(q_ship))

        say("documents per index (_cat/indices)")
        for row in sorted(get(f"{node.url}/_cat/indices/{INDEX_PREFIX}-*?format=json"),
                          key=lambda r: r["index"]):
            print(f"   {row['index']:<48} {row['docs.count']:>6} docs")
        print(f"   total: {indexed}")

        say("one document as the index holds it (_id = the message's name)")
        hit = get(f"{node.url}/{INDEX_PREFIX}-datao*/_search?size=1&q=TransferOK:1")
        hit = hit["hits"]["hits"][0]
        print(json.dumps({k: hit[k] for k in ("_index", "_id", "_source")}, indent=2))

        errors = sorted(n for n in os.listdir(q_ship / "errors") if n.endswith(".error.json"))
        if errors:
            say("the record the index refused, with the engine's reason (fix it, then "
                "`pipers replay`)")
            sidecar = json.loads((q_ship / "errors" / errors[0]).read_text())
            print(f"   {q_ship / 'errors' / errors[0][: -len('.error.json')]}")
            print(f"   reason: {sidecar['reason']}: {sidecar['message'][:160]}")
        ok = indexed == expected and len(errors) == 1
    finally:
        say("stopping the daemons and the node")
        for p in daemons:
            p.send_signal(signal.SIGTERM)
        for p in daemons:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        node.stop()
        print(f"   stopped; queues and logs are in {DEMO}")
    print("\ndemo " + ("OK" if ok else "FAILED: not every document arrived"))
    return 0 if ok else 1


def get_refresh(url: str) -> None:
    req = urllib.request.Request(f"{url}/{INDEX_PREFIX}-*/_refresh?allow_no_indices=true",
                                 method="POST")
    with urllib.request.urlopen(req, timeout=30):
        pass


if __name__ == "__main__":
    sys.exit(main())
