"""Power loss cannot be staged here; what makes it survivable can be watched. strace shows
the order of the system calls that the --durability guarantees rest on:

- fsync: a message's bytes are flushed (syncfs) before its link (or rename) makes it visible, the
  directory is flushed (fsync) after, and only then is the input removed or the writer
  told "done". A power cut at any point leaves the message either not yet visible (its
  writer was never told it is safe) or durable.
- none: no flush at all (page cache only: kill -9 is survived, power loss is not).
- ship: a message is removed only after the cluster answered for it; the index itself
  writes its translog durably before it answers (translog.durability=request).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import orjson
import pytest

from queues import Queue
from tests.faults.search import create_index, indexed, unique_index
from tests.helpers import PIPERS, ROOT, files

SYSCALLS = ("openat,write,rename,renameat,renameat2,link,linkat,syncfs,fsync,fdatasync,unlink,"
            "unlinkat")
_LINE = re.compile(r"^(\d+)\s+(\w+)\((.*)$")
_RESUMED = re.compile(r"^(\d+)\s+<\.\.\. (\w+) resumed>(.*)$")  # a call split by another thread
_UNFINISHED = " <unfinished ...>"


def trace(tmp_path, *args: str, calls: str = SYSCALLS, input: bytes | None = None,
          size: int = 200) -> list[tuple[str, str]]:
    """Run `pipers ARGS` under strace; [(syscall, its arguments with fd paths)]."""
    strace = shutil.which("strace")
    assert strace, "the durability tests need strace (apt-get install strace)"
    out = tmp_path / f"trace-{len(os.listdir(tmp_path))}"
    r = subprocess.run([strace, "-f", "-qq", "-yy", "-s", str(size), "-e", f"trace={calls}",
                        "-o", str(out), *PIPERS, *args], input=input, capture_output=True,
                       cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=300)
    assert r.returncode == 0, r.stderr.decode()
    calls_made = []
    split: dict[str, tuple[str, str]] = {}  # pid -> (call, arguments before the split)
    for line in out.read_text(errors="replace").splitlines():
        resumed = _RESUMED.match(line)
        if resumed and resumed.group(1) in split:  # one entry per call, where it returned
            call, head = split.pop(resumed.group(1))
            line = f"{resumed.group(1)} {call}({head}{resumed.group(3)}"
        elif line.endswith(_UNFINISHED) and (u := _LINE.match(line)):
            split[u.group(1)] = (u.group(2), u.group(3)[: -len(_UNFINISHED)])
            continue
        m = _LINE.match(line)
        if m and "= -1" not in line.rsplit(")", 1)[-1]:
            calls_made.append((m.group(2), m.group(3)))
    return calls_made


def _first(calls, pred, start=0) -> int:
    return next((i for i in range(start, len(calls)) if pred(*calls[i])), -1)


def _named(call: str, args: str, path: str) -> bool:
    """Whether a rename or a link gives a name starting with `path`."""
    if not call.startswith(("rename", "link")):
        return False
    new = args.split(", ")[1 if call in ("rename", "link") else 3]  # *at: (dirfd, old, dirfd, new
    return new.startswith(f'"{path}')


def _arrivals_into(calls, directory: str) -> list[int]:
    return [i for i, (c, a) in enumerate(calls) if _named(c, a, f"{directory}/")]


def test_put_with_fsync_flushes_before_it_shows_and_before_it_says_done(tmp_path):
    q = Queue(tmp_path / "q")
    calls = trace(tmp_path, "put", "--queue-out-dir", q.path, "--durability", "fsync",
                  input=b"".join(b'{"i": %d}\n' % i for i in range(50)))
    named = _arrivals_into(calls, q.incoming)
    assert len(named) == 50
    writes = [i for i, (c, a) in enumerate(calls) if c == "write" and f"<{q.tmp}/" in a]
    sync = _first(calls, lambda c, a: c == "syncfs")
    dir_sync = _first(calls, lambda c, a: c == "fsync" and f"<{q.incoming}>" in a)
    told = _first(calls, lambda c, a: c == "write" and "enqueued 50 messages" in a)
    assert len(writes) == 50 and max(writes) < sync < min(named)  # bytes first, then names
    assert max(named) < dir_sync < told  # "enqueued" only once the names are durable
    assert len(files(q.incoming)) == 50


def test_put_with_none_never_flushes(tmp_path):
    q = Queue(tmp_path / "q")
    calls = trace(tmp_path, "put", "--queue-out-dir", q.path, "--durability", "none",
                  input=b'{"i": 1}\n{"i": 2}\n')
    assert len(_arrivals_into(calls, q.incoming)) == 2
    assert [c for c, _ in calls if c in ("syncfs", "fsync", "fdatasync")] == []


@pytest.mark.parametrize("daemon", ["enrich", "pass"])
def test_a_hop_with_fsync_removes_its_input_only_after_its_output_is_durable(
        tmp_path, daemon):
    qin, qout = Queue(tmp_path / "in"), Queue(tmp_path / "out")
    made = qin.put_many([orjson.dumps({"i": i}) for i in range(250)])
    extra = ("--set", "hop=1") if daemon == "enrich" else ()
    calls = trace(tmp_path, daemon, "--queue-in-dir", qin.path, "--queue-out-dir", qout.path,
                  "--durability", "fsync", "--batch-size", "100", "--once", *extra)
    assert sorted(files(qout.incoming)) == sorted(made)
    checked = 0
    for name in made:
        out = _first(calls, lambda c, a, n=name: _named(c, a, f"{qout.incoming}/{n}\""))
        assert out >= 0, name
        dir_sync = _first(calls, lambda c, a: c == "fsync" and f"<{qout.incoming}>" in a, out)
        gone = _first(calls, lambda c, a, n=name: c in ("unlink", "rename")
                      and a.startswith(f'"{qin.pending}/{n}@'))
        assert out < dir_sync, name  # the new name is flushed...
        if daemon == "enrich":  # new bytes: flushed before they get their name
            sync = max(i for i, (c, _) in enumerate(calls[:out]) if c == "syncfs")
            wrote = max(i for i, (c, a) in enumerate(calls[:out])
                        if c == "write" and f"<{qout.tmp}/{name}." in a)
            assert wrote < sync < out, name
        else:  # zero copy: the claimed file itself is linked into the next queue
            assert calls[out][0].startswith("link"), calls[out]
        assert dir_sync < gone, name  # ...before the input goes
        checked += 1
    assert checked == 250


def test_the_shipper_removes_a_message_only_after_the_cluster_answered(
        tmp_path, search_node):
    index = unique_index("durable")
    create_index(search_node, index)
    settings = search_node.request("GET", f"/{index}/_settings?include_defaults=true&flat_settings"
                                          "=true")[index]
    durability = settings["settings"].get("index.translog.durability") or \
        settings["defaults"]["index.translog.durability"]
    assert durability.lower() == "request"  # the engine fsyncs its translog before it answers
    q = Queue(tmp_path / "q")
    made = q.put_many([orjson.dumps({"seq": i}) for i in range(300)])
    calls = trace(tmp_path, "ship", "--queue-in-dir", q.path, "--es-url", search_node.url,
                  "--default-index", index, "--bundle-size", "100", "--once",
                  calls="sendto,write,writev,recvfrom,read,unlink,unlinkat", size=1 << 20)
    assert indexed(search_node, index) == 300 and files(q.pending) == []
    sends = [i for i, (c, a) in enumerate(calls) if c in ("sendto", "write", "writev")
             and "POST /_bulk" in a]
    answers = [i for i, (c, a) in enumerate(calls) if c in ("recvfrom", "read")
               and "HTTP/1.1 200" in a]
    unlinks = {a.split('"')[1].rsplit("/", 1)[1].split("@")[0]: i
               for i, (c, a) in enumerate(calls) if c.startswith("unlink")
               and f"{q.pending}/" in a}
    assert len(sends) >= 3 and set(unlinks) == set(made)
    for name, i in unlinks.items():  # after an answer to a request that carried it
        carried = max(j for j, (c, a) in enumerate(calls[:i])
                      if c in ("sendto", "write", "writev") and name in a)
        assert any(carried < a < i for a in answers), name
