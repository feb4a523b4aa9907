"""1,000 bad inputs dropped into incoming/ of a running daemon: it stays up, each bad
one lands in errors/ with its reason, every good one flows on, nothing is unaccounted."""

from __future__ import annotations

import os
import signal
import stat
from collections import Counter

import orjson
import pytest

from pipers.ship.bundle import doc_id
from queues import Queue
from tests.faults.inputs import (
    BIG,
    EXCEPTION,
    NOT_REGULAR,
    OUT,
    Drop,
    bad_inputs,
    drop,
    good_inputs,
    listing,
    write_file,
)
from tests.faults.search import create_index, indexed, unique_index
from tests.helpers import files, wait_for


def _read(path: bytes) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _sidecar(queue: Queue, name: bytes) -> dict:
    return orjson.loads(_read(os.fsencode(queue.errors) + b"/" + name + b".error.json"))


@pytest.mark.parametrize("daemon", ["enrich", "pass"])
def test_a_thousand_bad_inputs_leave_the_daemon_up_and_every_one_accounted(
        tmp_path, daemons, daemon):
    qin, qout = Queue(tmp_path / "in"), Queue(tmp_path / "out")
    stage = tmp_path / "stage"
    stage.mkdir()
    outside = tmp_path / "outside.json"
    outside.write_bytes(b'{"outside": "must never be read through a link"}')
    args = [daemon, "--queue-in-dir", qin.path, "--queue-out-dir", qout.path,
            "--queue-in-wait", "1", "--queue-out-limit", "0"]
    if daemon == "enrich":
        args += ["--set", "enriched=true"]
    p = daemons.start(*args)
    wait_for(lambda: "started on" in daemons.log(p), what="daemon start")
    # A writer's half-written dot-file is none of the daemon's business (Maildir's rule).
    hidden = os.path.join(qin.incoming, ".writer-temp")
    with open(hidden, "wb") as f:
        f.write(b'{"half": ')

    bad, good = bad_inputs(outside), good_inputs(500)
    assert len(bad) == 1000
    assert len({d.name for d in bad + good}) == 1500
    sequence = []
    for i, d in enumerate(bad):  # good messages keep coming between the bad ones
        sequence.append(d)
        if i % 2:
            sequence.append(good[i // 2])
    for d in sequence:
        drop(stage, qin.incoming, d)
    assert p.poll() is None
    late = qin.put_many([orjson.dumps({"late": i}) for i in range(100)])

    to_errors = [d for d in bad + good if d.outcome(daemon) != OUT]
    to_out = [d for d in bad + good if d.outcome(daemon) == OUT]
    wait_for(lambda: p.poll() is not None
             or (len(list(listing(qin.errors))) >= len(to_errors)
                 and len(list(listing(qout.incoming))) >= len(to_out) + len(late)),
             timeout=180, interval=0.2, what="every input sorted out")

    assert p.poll() is None, "the daemon must stay up"
    # stopped first: while it runs, tmp/ briefly holds the temporary of its status file
    p.send_signal(signal.SIGTERM)
    assert p.wait(30) == 0
    assert files(qin.incoming) == [] and files(qin.pending) == [] and files(qin.tmp) == []
    assert os.listdir(qin.incoming) == [".writer-temp"]
    assert open(hidden, "rb").read() == b'{"half": '
    errors, out = set(listing(qin.errors)), set(listing(qout.incoming))
    assert len(errors) == len(to_errors) and len(out) == len(to_out) + len(late)

    # Every good message arrived once, under its own name, with its bytes (or enriched).
    for d in to_out:
        assert d.name in out, d.name
        body = _read(os.fsencode(qout.incoming) + b"/" + d.name)
        if daemon == "pass":
            assert body == d.content, d.name
        else:
            assert orjson.loads(body) == dict(orjson.loads(d.content), enriched=True)
    assert {n.encode() for n in late} <= out

    # Every bad one is in errors/ as it was dropped, with a sidecar giving its reason.
    renamed = [d for d in to_errors if d.renamed]
    for d in to_errors:
        if d.renamed:
            continue
        assert d.name in errors, d.name
        side = _sidecar(qin, d.name)
        assert side["reason"] == d.outcome(daemon), (d.name, d.kind, side)
        assert side["daemon"] == daemon and side["message"]
        path = os.fsencode(qin.errors) + b"/" + d.name
        mode = os.lstat(path).st_mode
        if d.content is not None:
            assert stat.S_ISREG(mode) and _read(path) == d.content, d.name
        elif d.link_target is not None:
            assert stat.S_ISLNK(mode) and os.readlink(path) == d.link_target
        else:
            assert d.outcome(daemon) == NOT_REGULAR and not stat.S_ISREG(mode)
        if d.kind.startswith("directory"):
            assert os.listdir(path) == [b"message"]
    # Names the queue cannot keep (too long, sidecar-like) are there under fresh names.
    known = {d.name for d in to_errors}
    fresh = {_read(os.fsencode(qin.errors) + b"/" + n): n for n in errors - known}
    assert sorted(fresh) == sorted(d.content for d in renamed)
    for n in fresh.values():
        assert _sidecar(qin, n)["reason"] == "invalid-json"

    assert outside.read_bytes() == b'{"outside": "must never be read through a link"}'
    log = daemons.log(p)
    assert log.count("-> errors/:") == len(to_errors)
    assert "Traceback" not in log and "Logging error" not in log
    big = next(d for d in bad if d.kind == "50 MB file")
    assert f"{len(big.content)} bytes is over the limit" in _sidecar(qin, big.name)["message"]
    assert len(big.content) >= BIG - 20
    if daemon == "enrich":
        side = _sidecar(qin, next(d for d in bad if d.kind == "deep nesting (valid)").name)
        assert side["reason"] == EXCEPTION and side["traceback"]

    # The operator's view adds up the same way.
    r = daemons.run("status", "--json", qin.path)
    report = orjson.loads(r.stdout)
    assert report["counts"]["errors"] == len(to_errors)
    assert report["errors_by_reason"] == dict(Counter(d.outcome(daemon) for d in to_errors))


def test_a_name_that_is_not_utf8_with_bad_content_goes_to_errors(tmp_path, daemons):
    """The sidecar is JSON: a name's undecodable bytes are written escaped, not fatal."""
    qin, qout = Queue(tmp_path / "in"), Queue(tmp_path / "out")
    bad = os.fsencode(qin.incoming) + b"/bad-\xff\xfe"
    with open(bad, "wb") as f:
        f.write(b'{"broken": ')
    qin.put(b'{"fine": 1}', name="after")
    r = daemons.run("pass", "--queue-in-dir", qin.path, "--queue-out-dir", qout.path, "--once")
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert files(qout.incoming) == ["after"]
    assert list(listing(qin.errors)) == [b"bad-\xff\xfe"]
    side = _sidecar(qin, b"bad-\xff\xfe")
    assert side["reason"] == "invalid-json" and side["id"] == "bad-\\xff\\xfe"


@pytest.mark.parametrize("name,other", [("x.error.json", "y.error.json"), ("L" * 250, "M" * 250)])
def test_names_the_queue_cannot_keep_are_renamed_and_still_drained_by_once(
        tmp_path, daemons, name, other):
    """A sidecar-like name would vanish from counts and status; a 250-byte name cannot
    carry an owner tag. Both get a fresh name, and --once does not exit before them."""
    qin, qout = Queue(tmp_path / "in"), Queue(tmp_path / "out")
    with open(os.path.join(qin.incoming, name), "wb") as f:
        f.write(b'{"bad": ')
    with open(os.path.join(qin.incoming, other), "wb") as f:
        f.write(b'{"good": 1}')
    r = daemons.run("pass", "--queue-in-dir", qin.path, "--queue-out-dir", qout.path, "--once")
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    assert files(qin.incoming) == []
    assert len(files(qout.incoming)) == 1
    report = orjson.loads(daemons.run("status", "--json", qin.path).stdout)
    assert report["counts"]["errors"] == 1
    assert report["errors_by_reason"] == {"invalid-json": 1}


def test_the_same_directory_name_dropped_twice_keeps_both_and_the_daemon_up(tmp_path, daemons):
    """rename(2) cannot replace a non-empty directory in errors/: the second gets a new name."""
    qin, qout = Queue(tmp_path / "in"), Queue(tmp_path / "out")
    p = daemons.start("pass", "--queue-in-dir", qin.path, "--queue-out-dir", qout.path,
                      "--queue-in-wait", "0.5")
    for round_ in (1, 2):
        os.mkdir(tmp_path / "d")
        (tmp_path / "d" / "inside").write_text(str(round_))
        os.rename(tmp_path / "d", os.path.join(qin.incoming, "d"))
        wait_for(lambda n=round_: len(files(qin.errors)) == n, what=f"directory {round_}")
    qin.put(b'{"still": "flowing"}', name="after")
    wait_for(lambda: files(qout.incoming) == ["after"], what="a good message after them")
    assert p.poll() is None
    kept = sorted(open(os.path.join(qin.errors, n, "inside")).read() for n in files(qin.errors))
    assert kept == ["1", "2"]
    assert all(s["reason"] == "not-a-regular-file" for _, s in qin.error_entries())


def _refused_by_the_index() -> list[Drop]:
    """JSON objects the search engine refuses for good (400): mapping, metadata, limits."""
    out = []
    for i in range(40):
        out.append(_doc(f"mapping-{i}", {"value": f"not a number {i}"}))
        out.append(_doc(f"mixed-{i}", {"value": [i, f"text {i}"]}))
    for i in range(10):
        out.append(_doc(f"meta-id-{i}", {"_id": f"x{i}"}))
        out.append(_doc(f"meta-index-{i}", {"_index": f"elsewhere-{i}", "i": i}))
        out.append(_doc(f"empty-key-{i}", {"": i}))
    for i in range(5):
        deep: dict = {"leaf": i}
        for _ in range(30):  # over index.mapping.depth.limit (20)
            deep = {"d": deep}
        out.append(_doc(f"depth-{i}", deep))
        out.append(_doc(f"fields-{i}", {f"f{i}_{k}": k for k in range(1100)}))  # over 1000
    return out


def _doc(name: str, body: dict) -> Drop:
    data = orjson.dumps(body)
    return Drop(name.encode(), "refused by the index", write_file(data), data, "rejected")


def _ship_outcome(d: Drop) -> str:
    """Where a dropped input ends under the shipper (it needs JSON objects)."""
    if d.object_only:
        return "rejected" if isinstance(orjson.loads(d.content), dict) else "invalid-message"
    return d.expect


def test_a_thousand_bad_inputs_into_a_running_shipper(tmp_path, daemons, search_node):
    index = unique_index("bad-inputs")
    create_index(search_node, index)
    q = Queue(tmp_path / "ship")
    stage = tmp_path / "stage"
    stage.mkdir()
    outside = tmp_path / "outside.json"
    outside.write_bytes(b'{"outside": 1}')
    p = daemons.start("ship", "--queue-in-dir", q.path, "--es-url", search_node.url,
                      "--default-index", index, "--flush-interval", "0.2",
                      "--queue-in-wait", "1")
    wait_for(lambda: "started on" in daemons.log(p), what="shipper start")
    refused = _refused_by_the_index()
    bad = refused + bad_inputs(outside, n=1000 - len(refused))
    good = good_inputs(300, tag="shipped")
    assert len(bad) == 1000 and len({d.name for d in bad + good}) == 1300
    for i, d in enumerate(bad):
        drop(stage, q.incoming, d)
        if i % 3 == 0 and i // 3 < len(good):
            drop(stage, q.incoming, good[i // 3])
    to_errors = [d for d in bad if _ship_outcome(d) != OUT]
    wait_for(lambda: p.poll() is not None or (
        len(list(listing(q.errors))) >= len(to_errors)
        and indexed(search_node, index) >= len(good)),
        timeout=180, interval=0.5, what="every input sorted out by the shipper")
    assert p.poll() is None, "the shipper must stay up"
    wait_for(lambda: not files(q.incoming) and not files(q.pending), what="an empty queue")
    assert len(list(listing(q.errors))) == len(to_errors)
    ids = search_node.search_ids(index)
    assert len(ids) == len(good)
    assert set(ids) == {doc_id(os.fsdecode(d.name)) for d in good}
    for d in to_errors:
        if not d.renamed:
            side = _sidecar(q, d.name)
            assert side["reason"] == _ship_outcome(d), (d.name, d.kind, side)
            if side["reason"] == "rejected":
                assert side["detail"]["status"] == 400 and side["detail"]["error"]["type"]
    report = orjson.loads(daemons.run("status", "--json", q.path).stdout)
    assert report["errors_by_reason"] == dict(Counter(_ship_outcome(d) for d in to_errors))
    assert outside.read_bytes() == b'{"outside": 1}'
    assert "Traceback" not in daemons.log(p)
