"""`make demo`: the sample configuration's full pipeline against a real local search node.

    probe (etc/checks.example.py) ──┐
    collect (JSON files dropped)  ──┼─► enrich ─► ship ─► OpenSearch
    pipers put (demo/sample.ndjson) ┘

1. start a private OpenSearch node (the project's search launcher, search/node.py)
2. copy etc/pipers.toml to build/demo/pipers.toml with only its paths moved under
   build/demo/spool (and es-url pointed at the node): every daemon runs with
   `--config build/demo/pipers.toml` plus its own --log-file, as the systemd units do
3. start probe, collect, enrich and ship as separate processes, chained only by the
   queue directories of the config
4. drop a few JSON files for collect, feed records with `pipers put`; the probe runs
   its checks on its own
5. show `pipers status --config`, the documents per index, one document as the index
   holds it, and the record the index refused (errors/ with its sidecar)
6. stop the daemons and the node

Everything lives under build/demo/ (removed at the next run). DEMO_DOCS sets how many
generated records are added to the sample file (default 5000).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from search.node import SEARCH_BUILD, SearchNode, find_free_port_base  # noqa: E402

DEMO = SEARCH_BUILD.parent / "demo"
PIPERS = [sys.executable, "-m", "pipers"]
CONFIG = ROOT / "etc" / "pipers.toml"
CHECKS = ROOT / "etc" / "checks.example.py"
SAMPLE = ROOT / "demo" / "sample.ndjson"
INDICES = "monitoring-*"  # the sample config's index-template and default-index
SITES = ["LCG.CERN.cern", "LCG.CNAF.it", "LCG.GRIDKA.de", "LCG.RAL.uk", "LCG.IN2P3.fr"]
STATUSES = ["Waiting", "Running", "Done", "Failed"]
DROPPED = 3  # JSON files dropped for collect


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


def demo_config(spool: Path, es_url: str) -> str:
    """etc/pipers.toml with its paths under `spool`, the probe's checks from
    etc/checks.example.py and es-url at the demo node; nothing else changes."""
    text = CONFIG.read_text()
    text = text.replace("/var/spool/pipers", str(spool))
    text = re.sub(r'(?m)^checks = "[^"]*"', f'checks = "{CHECKS}"', text)
    text, n = re.subn(r"(?m)^es-url = .*$", f'es-url = ["{es_url}"]', text)
    assert n == 1, "etc/pipers.toml: one es-url line expected"
    return text


def get(url: str):
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.loads(resp.read())


def count(url: str, query: str = "") -> int:
    try:
        return get(f"{url}/{INDICES}/_count" + (f"?q={query}" if query else ""))["count"]
    except urllib.error.HTTPError as e:  # 503 while a new index's shard starts
        if e.code == 503:
            return -1
        raise


def refresh(url: str) -> None:
    req = urllib.request.Request(f"{url}/{INDICES}/_refresh?allow_no_indices=true",
                                 method="POST")
    with urllib.request.urlopen(req, timeout=30):
        pass


def pipers(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*PIPERS, *args], cwd=ROOT, check=True, **kw)


def drop(directory: Path, stem: str, record: dict) -> None:
    """Write a submission under a name collect ignores, then rename it in."""
    hidden = directory / f".{stem}.json"
    hidden.write_text(json.dumps(record))
    os.rename(hidden, directory / f"{stem}.json")


def main() -> int:
    extra = int(os.environ.get("DEMO_DOCS", "5000"))
    shutil.rmtree(DEMO, ignore_errors=True)
    spool, logs = DEMO / "spool", DEMO / "logs"
    for d in (logs, spool / "drop", spool / "done", spool / "failed"):
        d.mkdir(parents=True)
    q_enrich, q_ship = spool / "enrich", spool / "ship"

    say("starting a local OpenSearch node (search/node.py, jars from Maven Central)")
    node = SearchNode(DEMO / "search", find_free_port_base(1), cluster_name="pipers-demo",
                      heap="512m")
    node.start(timeout=180)
    print(f"   {node.url} up in {node.last_start_seconds:.1f}s")
    config = DEMO / "pipers.toml"
    config.write_text(demo_config(spool, node.url))
    print(f"   {config.relative_to(ROOT)}: etc/pipers.toml with its paths under "
          f"{spool.relative_to(ROOT)}")
    daemons: list[subprocess.Popen] = []
    ok = False
    try:
        say("starting the pipeline: probe + collect + put -> [enrich] -> [ship] -> OpenSearch")
        for name in ("probe", "collect", "enrich", "ship"):
            args = [name, "--config", str(config.relative_to(ROOT)),
                    "--log-file", str((logs / f"{name}.log").relative_to(ROOT))]
            err = open(logs / f"{name}.stderr", "wb")  # warnings (the journal under systemd)
            daemons.append(subprocess.Popen([*PIPERS, *args], cwd=ROOT, stdout=err,
                                            stderr=subprocess.STDOUT))
            err.close()
            print("   pipers " + " ".join(args))

        say(f"dropping {DROPPED} JSON files into {(spool / 'drop').relative_to(ROOT)} "
            "for collect")
        for i in range(DROPPED):
            drop(spool / "drop", f"job-{i}", {
                "monitoringType": "JobReport", "timestamp": int(time.time() * 1000),
                "job": 1000 + i, "Site": SITES[i], "Status": "Done"})
        sample = SAMPLE.read_bytes()
        feed = sample + generated(extra)
        records = feed.count(b"\n")
        say(f"feeding {records} records with `pipers put` ({SAMPLE.name} + {extra} generated)")
        pipers("put", "--queue-out-dir", str(q_enrich), input=feed)
        expected = records - 1  # one sample record breaks the mapping on purpose
        deadline = time.monotonic() + 180
        by_put = by_collect = by_probe = 0
        while time.monotonic() < deadline:
            refresh(node.url)
            by_collect = count(node.url, "_exists_:collect.job")
            by_probe = count(node.url, "_exists_:check")
            by_put = count(node.url) - by_collect - by_probe
            waiting = any(os.listdir(q / d) for q in (q_enrich, q_ship)
                          for d in ("incoming", "pending"))
            if by_put >= expected and by_collect >= DROPPED and by_probe > 0 and not waiting:
                break
            time.sleep(0.5)
        print(f"   from put: {by_put} of {expected}; from collect: {by_collect} of {DROPPED}; "
              f"from the probe's checks: {by_probe}")

        say(f"pipers status --config {config.relative_to(ROOT)}")
        pipers("status", "--config", str(config))

        say("documents per index (_cat/indices)")
        for row in sorted(get(f"{node.url}/_cat/indices/{INDICES}?format=json"),
                          key=lambda r: r["index"]):
            print(f"   {row['index']:<48} {row['docs.count']:>6} docs")

        say("documents as the index holds them (_id = the message's name)")
        for query in ("TransferOK:1", "_exists_:collect.job", "check:load"):
            hits = get(f"{node.url}/{INDICES}/_search?size=1&q={query}")["hits"]["hits"]
            if hits:
                print(json.dumps({k: hits[0][k] for k in ("_index", "_id", "_source")},
                                 indent=2))

        errors = sorted(n for n in os.listdir(q_ship / "errors") if n.endswith(".error.json"))
        if errors:
            say("the record the index refused: errors/ NAME and its sidecar NAME.error.json "
                "(fix it, then `pipers replay` or mv it back to incoming/)")
            sidecar = json.loads((q_ship / "errors" / errors[0]).read_text())
            print(f"   {(q_ship / 'errors' / errors[0][: -len('.error.json')]).relative_to(ROOT)}")
            print(f"   reason: {sidecar['reason']}: {sidecar['message'][:160]}")
        ok = (by_put == expected and by_collect == DROPPED and by_probe > 0
              and len(errors) == 1)
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
        print(f"   stopped; queues and logs are in {DEMO.relative_to(ROOT)}")
    print("\ndemo " + ("OK" if ok else "FAILED: not every document arrived"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
