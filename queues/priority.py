"""Priority: a waiting message made the next one claimed, here and in the queues after.

A queue may hold ``priority/`` next to ``incoming/``: complete messages that
every claimer takes before anything in ``incoming/``. The directory exists only
while it holds something (the claimer that empties it removes it), so the
cost of the check on the claim path is one failed ``open(2)`` per claim call -
one syscall per batch, nothing per message - and the cached, sorted chunk of
``incoming/`` names (``Queue._candidates``) is neither rescanned nor touched.

- `promote` moves a message from ``incoming/`` to ``priority/`` (one rename:
  a sibling that already claimed it wins, nothing is copied);
- `take` is called first by `Queue.claim`: the prioritized messages become
  claims marked ``urgent``;
- a daemon forwarding an urgent claim stages its output ``urgent`` too
  (`Batch.add(..., urgent=True)`), so the message lands in the next queue's
  ``priority/`` and stays first in line through the whole pipeline; a released
  urgent claim goes back to ``priority/``;
- every arrival in ``priority/`` creates and removes a hidden file in
  ``incoming/``: the inotify watch of an idle consumer wakes it at once.

A message returned from ``pending/`` after a crash goes to ``incoming/`` and
loses its priority.
"""

from __future__ import annotations

import errno
import itertools
import os
from typing import TYPE_CHECKING

from . import names
from .states import ERRORS, INCOMING, PENDING, PRIORITY, SIDECAR_SUFFIX
from .sync import fsync_dir

if TYPE_CHECKING:  # pragma: no cover
    from .queue import Claim, Queue

_pokes = itertools.count()
_RETRIES = 8  # a claimer may remove an empty priority/ between our mkdir and rename


def directory(queue: Queue) -> str:
    return os.path.join(queue.path, PRIORITY)


def take(queue: Queue, limit: int, tag: str) -> list[Claim]:
    """Claim up to `limit` prioritized messages (oldest first); [] at once if none."""
    pdir = os.path.join(queue.path, PRIORITY)
    try:
        with os.scandir(pdir) as it:
            found = sorted(
                (e.name, e.is_file(follow_symlinks=False)) for e in it if e.name[0] != "."
            )
    except (FileNotFoundError, NotADirectoryError):
        return []
    from .queue import Claim

    claims: list[Claim] = []
    for name, regular in found[:limit]:
        src = os.path.join(pdir, name)
        dst = os.path.join(queue.pending, name + tag)
        try:
            os.rename(src, dst)
        except FileNotFoundError:
            continue  # a sibling won
        except OSError as e:
            if e.errno != errno.ENAMETOOLONG:
                raise
            _back_to_incoming(queue, src, name)  # the normal claim gives it a shorter name
            continue
        claims.append(Claim(name, dst, regular, urgent=True))
    if len(found) <= limit:
        try:
            os.rmdir(pdir)  # emptied: the next claims pay one failed open() again
        except OSError:
            pass  # a new arrival (ENOTEMPTY) or a sibling removed it first
    return claims


def place(queue: Queue, src: str, name: str) -> None:
    """Rename `src` to ``priority/NAME``, creating ``priority/`` when needed.

    Raises FileNotFoundError when `src` is gone (a sibling took it).
    """
    pdir = os.path.join(queue.path, PRIORITY)
    dst = os.path.join(pdir, name)
    for _ in range(_RETRIES):
        try:
            os.rename(src, dst)
            return
        except FileNotFoundError:
            if not os.path.lexists(src):
                raise
        try:
            os.mkdir(pdir, queue.dir_mode)
            os.chmod(pdir, queue.dir_mode)  # not reduced by the umask
        except FileExistsError:
            pass
    os.rename(src, dst)


def commit(queue: Queue, staged: list[tuple[str, str]]) -> None:
    """The urgent part of a `Batch` commit: files already synced, renamed into priority/."""
    for src, name in staged:
        place(queue, src, name)
    if queue.fsync:
        fsync_dir(directory(queue))
    poke(queue)


def poke(queue: Queue) -> None:
    """Wake idle consumers: a hidden file appears in incoming/ (inotify) and goes."""
    path = os.path.join(queue.incoming, f".priority.{os.getpid()}_{next(_pokes)}")
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        os.unlink(path)
    except OSError:
        pass  # waking is a courtesy; the consumer's periodic rescan finds it anyway


def release(queue: Queue, claim: Claim, name: str) -> str:
    """Put an urgent claim back where it came from (priority/)."""
    place(queue, claim.path, name)
    poke(queue)
    return name


def _back_to_incoming(queue: Queue, src: str, name: str) -> None:
    try:
        os.rename(src, os.path.join(queue.incoming, name))
    except FileNotFoundError:
        pass


def _matches(entry: str, message_id: str) -> bool:
    """`entry` (a name in some queue directory) is message `message_id` (any attempt)."""
    name, _ = names.split_owner(entry)
    return names.split_attempts(name)[0] == message_id


def promote(queue: Queue, message_id: str) -> str | None:
    """Make message `message_id` the next one claimed; say where it was found.

    Returns ``"incoming"`` (moved to priority/: it is next), ``"priority"`` (it
    already was), ``"pending"`` (being processed right now), ``"errors"`` (it
    failed; replay it to retry) or None (not in this queue).
    """
    try:  # the usual case costs one rename: the id is the name in incoming/
        place(queue, os.path.join(queue.incoming, message_id), message_id)
    except FileNotFoundError:
        pass
    else:
        poke(queue)
        return INCOMING
    # a retried message carries its attempt count (ID,2): look for it
    for name in _listing(queue.incoming):
        if _matches(name, message_id):
            try:
                place(queue, os.path.join(queue.incoming, name), name)
            except FileNotFoundError:
                break  # claimed meanwhile: look where it went
            poke(queue)
            return INCOMING
    for where, path in ((PRIORITY, directory(queue)), (PENDING, queue.pending),
                        (ERRORS, queue.errors)):
        for name in _listing(path):
            if not name.endswith(SIDECAR_SUFFIX) and _matches(name, message_id):
                return where
    return None


def count(queue: Queue) -> int:
    """Messages waiting in priority/."""
    return sum(1 for name in _listing(directory(queue)) if name[0] != ".")


def _listing(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except (FileNotFoundError, NotADirectoryError):
        return []
