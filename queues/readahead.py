"""Reading ahead of a worker on a big backlog that is no longer in memory.

A backlog that waited a while is often not in the page cache any more (the
kernel, or a host short of memory, drops what nobody touched). Each message
then costs its worker two waits for the disk, one after the other: open(2)
for the inode, read(2) for the data. When a listing fills a whole chunk (a
big backlog), a thread walks the listing up to AHEAD messages ahead of the
worker, opens each and asks the kernel for its data (posix_fadvise
WILLNEED, which starts the reads and returns), so the worker finds inode and
data in memory and the disk works while the worker does.

It costs little where nothing waits: it reads one byte of each message
with preadv(2) RWF_NOWAIT, which succeeds only if the data is in memory (and
otherwise starts reading it in). No thread starts when the first PROBE
messages of a listing are in memory, and a thread stops for the rest of its
listing after HOT_RUN messages in a row already in memory. It never follows a symlink
(O_NOFOLLOW), never opens what the listing did not call a regular file, and
changes no atime where the kernel lets it (O_NOATIME). It holds no claim and
takes nothing: a message it looks at may be claimed by anyone meanwhile.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence, Sized

AHEAD = 256  # messages opened ahead of the worker at most
HOT_RUN = 64  # this many in memory in a row: the rest of the listing is too
PROBE = 8  # the first messages of a listing looked at before a thread is started (0: none)
STALLED = 1.0  # seconds without the worker moving: stop (it is paused or stuck)
_PAUSE = 0.001  # seconds: the worker moves 10-20 messages meanwhile


class ReadAhead:
    """One per queue directory; `follow` each full listing the worker works through.

    The thread lives while it has a listing to walk: it ends at the end of the
    listing, after HOT_RUN messages in memory, or when the worker has not moved
    for STALLED seconds (a paused daemon); the next full listing starts another.
    """

    def __init__(self, directory: str, open_message: Callable[[str], int]):
        """`open_message`: the queue's own (O_NOFOLLOW, O_NONBLOCK, O_NOATIME, ...)."""
        self.prefix = directory + os.sep
        self.open_message = open_message
        self.fetched = self.in_memory = 0  # what the thread found (tests, curiosity)
        self._job: tuple[Sequence[tuple[str, bool]], Sized] | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def follow(self, listing: Sequence[tuple[str, bool]], left: Sized) -> None:
        """Read ahead along `listing` ((name, regular) in the worker's order); `left`
        (the worker's own deque of what it has not taken yet) says where it is.

        Unless a thread is walking already, the first PROBE messages are looked at
        here first: when they are all in memory (the usual case) no thread starts."""
        if self._thread is None and PROBE and self._in_memory(listing[:PROBE]):
            return
        with self._lock:
            self._job = (listing, left)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="read-ahead",
                                                daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                job = self._job
                if job is None:
                    self._thread = None
                    return
            self._walk(job)
            with self._lock:
                if self._job is job:  # no newer listing meanwhile
                    self._job = None

    def _walk(self, job: tuple[Sequence[tuple[str, bool]], Sized]) -> None:
        listing, left = job
        total, i, hot, still = len(listing), 0, 0, 0.0
        while i < total and self._job is job and hot < HOT_RUN:
            if not left:  # all taken, or the listing was dropped (forget)
                return
            worker_at = total - len(left)
            if i < worker_at:  # the worker got past us
                i = worker_at
                continue
            if i >= worker_at + AHEAD:
                if still >= STALLED:
                    return
                pause = min(max(still, _PAUSE), 0.1)  # a worker that stops: look less often
                time.sleep(pause)
                still = still + pause if total - len(left) == worker_at else 0.0
                continue
            name, regular = listing[i]
            i += 1
            if not regular:
                continue
            cached = self._fetch(self.prefix + name)
            if cached:
                self.in_memory += 1
                hot += 1
            elif cached is not None:  # (None: a sibling took it, which says nothing)
                self.fetched += 1
                hot = 0

    def _in_memory(self, listing: Sequence[tuple[str, bool]]) -> bool:
        return all(self._fetch(self.prefix + name) is not False
                   for name, regular in listing if regular)

    def _fetch(self, path: str) -> bool | None:
        """Start reading one message's data; True if it was in memory already."""
        try:
            fd = self.open_message(path)
        except OSError:
            return None  # taken meanwhile, or not ours to read: the worker will say
        try:
            try:
                os.preadv(fd, [bytearray(1)], 0, os.RWF_NOWAIT)
                return True
            except BlockingIOError:  # not in memory (being read in now): the whole of it
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
                return False
            except OSError:
                return None
        finally:
            os.close(fd)
