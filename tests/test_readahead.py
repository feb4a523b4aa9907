"""Reading ahead of a worker on a backlog that is on disk only (queues/readahead.py),
and reads that leave atime alone. Real files on a disk filesystem, the page cache
emptied of them with posix_fadvise(DONTNEED)."""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

import queues.queue
from queues import Queue
from queues.readahead import AHEAD, HOT_RUN, ReadAhead
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def disk_dir():
    """A directory on the disk the checkout is on (tmpfs, where /tmp may be, has no disk)."""
    d = ROOT / "build" / "test-readahead" / uuid.uuid4().hex
    d.mkdir(parents=True)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def resident(paths: list[str]) -> list[bool]:
    """Whether each file has pages in the page cache (util-linux fincore: mincore(2);
    a read, even one with RWF_NOWAIT, would start reading the file in)."""
    out = subprocess.run(["fincore", "--noheadings", "--bytes", "--raw", "--output", "RES",
                          *paths], capture_output=True, text=True, check=True).stdout
    return [int(x) > 0 for x in out.split()]


def evict(paths: list[str]) -> None:
    """Drop the files' pages from the page cache (clean ones only: sync first, retry)."""
    left = paths
    for _ in range(20):
        os.sync()
        for p in left:
            fd = os.open(p, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
        left = [p for p, r in zip(left, resident(left), strict=True) if r]
        if not left:
            return
        time.sleep(0.1)
    raise AssertionError(f"{len(left)} of {len(paths)} files stay in the page cache")


def message(i: int) -> bytes:
    """Too big to live in the inode (ext4 inline_data): its data has pages of its own."""
    return b'{"seq": %d, "pad": "%s"}' % (i, b"x" * 2000)


def backlog(q: Queue, n: int) -> list[str]:
    made = q.put_many(message(i) for i in range(n))
    return [os.path.join(q.incoming, name) for name in made]


def test_read_ahead_brings_messages_on_disk_into_memory_and_stays_ahead_of_the_worker(
        disk_dir, monkeypatch):
    monkeypatch.setattr("queues.readahead.STALLED", 60.0)  # this test's checks take time
    # a read from a fast disk may finish before RWF_NOWAIT looks: never "all in memory" here
    monkeypatch.setattr("queues.readahead.HOT_RUN", 10**9)
    monkeypatch.setattr("queues.readahead.PROBE", 0)
    q = Queue(disk_dir / "q")
    paths = backlog(q, 3 * AHEAD)
    evict(paths)
    listing = q.scan()
    left = collections.deque(listing)
    ra = ReadAhead(q.incoming, q._open_message)
    ra.follow(listing, left)

    looked = lambda: ra.fetched + ra.in_memory  # noqa: E731
    wait_for(lambda: looked() >= AHEAD, 10)
    time.sleep(0.3)  # the worker has not moved: neither does the read-ahead
    assert looked() == AHEAD
    assert ra.fetched > 0  # some were on disk (how many the disk answered at once: its own)
    first = [os.path.join(q.incoming, name) for name, _ in listing[:AHEAD]]
    wait_for(lambda: sum(resident(first)) >= AHEAD * 0.9, 10)  # the reads it started
    later = [os.path.join(q.incoming, name) for name, _ in listing[AHEAD + 1:]]
    assert sum(resident(later)) <= len(later) * 0.1  # nothing beyond AHEAD

    for _ in range(AHEAD):  # the worker takes as many: the read-ahead follows
        left.popleft()
    wait_for(lambda: looked() == 2 * AHEAD, 10)
    left.clear()  # the worker is done with this listing: the thread ends
    wait_for(lambda: ra._thread is None, 10)
    assert looked() == 2 * AHEAD


def test_no_read_ahead_starts_on_a_backlog_that_is_in_memory(disk_dir):
    q = Queue(disk_dir / "q")
    backlog(q, 3 * AHEAD)  # just written: in memory
    listing = q.scan()
    ra = ReadAhead(q.incoming, q._open_message)
    ra.follow(listing, collections.deque(listing))
    assert ra._thread is None  # the first PROBE were in memory: no thread
    assert (ra.fetched, ra.in_memory) == (0, 0)


def test_read_ahead_stops_where_the_backlog_is_in_memory_though_a_sibling_takes_some(
        disk_dir, monkeypatch):
    monkeypatch.setattr("queues.readahead.PROBE", 0)  # a thread starts whatever it finds
    q = Queue(disk_dir / "q")
    paths = backlog(q, 3 * AHEAD)  # just written: in memory
    listing = q.scan()
    for p in paths[1::2]:  # a sibling took every other one after we listed them
        os.unlink(p)
    ra = ReadAhead(q.incoming, q._open_message)
    ra.follow(listing, collections.deque(listing))
    wait_for(lambda: ra._thread is None, 10)  # gave up although the worker did not move
    assert ra.in_memory >= HOT_RUN  # the rest: in memory, and it stopped
    assert ra.in_memory + ra.fetched <= HOT_RUN + 3  # long before the end (of 384)


def test_read_ahead_stops_when_the_worker_stalls(disk_dir, monkeypatch):
    monkeypatch.setattr("queues.readahead.STALLED", 0.3)
    monkeypatch.setattr("queues.readahead.HOT_RUN", 10**9)  # (as above)
    monkeypatch.setattr("queues.readahead.PROBE", 0)
    q = Queue(disk_dir / "q")
    paths = backlog(q, 2 * AHEAD)
    evict(paths)
    listing = q.scan()
    ra = ReadAhead(q.incoming, q._open_message)
    ra.follow(listing, collections.deque(listing))  # nobody ever takes one
    wait_for(lambda: ra._thread is None, 10)
    assert ra.fetched + ra.in_memory == AHEAD


def test_a_worker_on_a_full_listing_reads_ahead_and_takes_every_message_once(
        disk_dir, monkeypatch):
    monkeypatch.setattr(queues.queue, "SCAN_CHUNK", 200)  # a "big" backlog without 10,000
    monkeypatch.setattr("queues.readahead.PROBE", 0)  # (a fast disk may answer a probe)
    q = Queue(disk_dir / "q")
    paths = backlog(q, 1000)
    evict(paths)
    seen = []
    while claims := q.claim(50):
        for c in claims:
            seen.append(q.read(c))
            q.done(c)
    assert sorted(seen) == sorted(message(i) for i in range(1000))
    assert q._readahead.fetched > 0
    wait_for(lambda: q._readahead._thread is None, 10)


def test_reading_a_message_leaves_its_atime_alone(disk_dir):
    q = Queue(disk_dir / "q")
    name = q.put(b'{"a": 1}')
    path = os.path.join(q.incoming, name)
    st = os.stat(path)
    os.utime(path, ns=(st.st_mtime_ns - 10**12, st.st_mtime_ns))  # relatime would update it
    [c] = q.claim(1)
    assert q.read(c) == b'{"a": 1}'
    assert os.stat(c.path).st_atime_ns == st.st_mtime_ns - 10**12


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_a_message_of_another_user_is_read_without_noatime():
    """O_NOATIME is refused (EPERM) on a file one does not own: the read goes on without it."""
    top = tempfile.mkdtemp(prefix="pipers-noatime-", dir="/tmp")
    try:
        os.chmod(top, 0o755)
        q = Queue(os.path.join(top, "q"))
        for d in (q.path, q.incoming, q.pending):
            os.chmod(d, 0o777)
        name = q.put(b'{"theirs": true}')
        os.chmod(os.path.join(q.incoming, name), 0o644)  # root's file, readable by all
        code = (  # imported as root first: nobody may not be allowed to read the modules
            "import os, sys; from queues import Queue;"
            "os.setgid(65534); os.setuid(65534); q = Queue(sys.argv[1], create=False);"
            "[c] = q.claim(1); sys.stdout.write(q.read(c).decode())"
        )
        r = subprocess.run([sys.executable, "-c", code, q.path], capture_output=True,
                           text=True, cwd=ROOT, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout == '{"theirs": true}'
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_read_ahead_never_follows_a_symlink_swapped_in_after_listing(
        disk_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("queues.readahead.PROBE", 0)
    monkeypatch.setattr("queues.readahead.HOT_RUN", 10**9)
    q = Queue(disk_dir / "q")
    backlog(q, 3)
    listing = q.scan()
    outside = tmp_path / "outside.json"
    outside.write_bytes(message(99))  # in memory, readable: it would count if opened
    middle = os.path.join(q.incoming, listing[1][0])
    os.unlink(middle)
    os.symlink(outside, middle)  # listed as a regular file, now a link
    left = collections.deque(listing)
    ra = ReadAhead(q.incoming, q._open_message)
    ra.follow(listing, left)
    wait_for(lambda: ra.in_memory + ra.fetched >= 2, 10)
    time.sleep(0.2)
    assert ra.in_memory + ra.fetched == 2  # the link was refused (O_NOFOLLOW: ELOOP)
    left.clear()
    wait_for(lambda: ra._thread is None, 10)
