"""Message names: unique across hosts, processes and restarts; sorted by time.

A name is ``<microseconds since epoch, 16 digits>.<pid>_<counter>.<host>``
(as Maildir and Mentat do). The name is the message's id for its whole life:
a transform that forwards one message keeps it, so a resend after a crash
lands on the same name and the shipper derives the same document ``_id``.
A retried message carries its attempt count after ``,`` (``ID,2``); a claimed
one carries its owner after ``@`` in ``pending/``.
"""

from __future__ import annotations

import itertools
import os
import time

from .owner import Owner, host_name
from .states import ATTEMPTS_SEP, OWNER_SEP

_counter = itertools.count()
_last = 0  # microseconds of this process's last name: each new one is later, so names
#            made in one microsecond still sort in creation order (the counter is decimal)


def new_name(now_ns: int | None = None) -> str:
    """A fresh, unique message name that sorts by creation time."""
    global _last
    if now_ns is None:
        t = _last = max(time.time_ns() // 1000, _last + 1)
    else:
        t = now_ns // 1000
    return f"{t:016d}.{os.getpid()}_{next(_counter)}.{host_name()}"


def name_time(name: str) -> float | None:
    """Creation time (epoch seconds) encoded in a name made by `new_name`."""
    head = name[:16]
    if len(head) == 16 and head.isdigit():
        return int(head) / 1e6
    return None


def split_attempts(name: str) -> tuple[str, int]:
    """``ID,3`` -> (``ID``, 3); a name without a count is on its first try."""
    if ATTEMPTS_SEP not in name:  # most names: no partition (a hop calls this per message)
        return name, 0
    base, sep, count = name.rpartition(ATTEMPTS_SEP)
    if sep and count.isdigit():
        return base, int(count)
    return name, 0


def with_attempts(base: str, attempts: int) -> str:
    return f"{base}{ATTEMPTS_SEP}{attempts}" if attempts else base


def split_owner(pending_name: str) -> tuple[str, Owner | None]:
    """``NAME@host:pid:start`` -> (``NAME``, Owner); no valid tag -> (name, None)."""
    name, sep, tag = pending_name.rpartition(OWNER_SEP)
    if sep:
        owner = Owner.parse(tag)
        if owner is not None:
            return name, owner
    return pending_name, None


def child_name(base: str, index: int) -> str:
    """Name of the index-th of several messages made from one input."""
    return f"{base}.{index}"
