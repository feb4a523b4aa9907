"""Who holds a claimed message: host, pid and the process start time.

The start time (from /proc) tells a live sibling from a dead one whose pid
was reused, so a restarting instance never steals a live sibling's work.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from functools import cache

_SAFE = re.compile(r"[^A-Za-z0-9_-]")


@cache
def host_name() -> str:
    """This host's name, reduced to characters safe in file names."""
    return _SAFE.sub("_", socket.gethostname().split(".")[0]) or "localhost"


def start_time(pid: int) -> int | None:
    """The start time of `pid` in clock ticks since boot, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])  # field 22 of stat(5), counting from 1 before comm
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    start: int

    @property
    def tag(self) -> str:
        return f"{self.host}:{self.pid}:{self.start}"

    @classmethod
    def parse(cls, tag: str) -> Owner | None:
        parts = tag.split(":")
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            return None
        return cls(parts[0], int(parts[1]), int(parts[2]))

    def is_local(self) -> bool:
        return self.host == host_name()

    def alive(self) -> bool:
        """True unless this owner is a process of this host that is gone."""
        if not self.is_local():
            return True  # cannot tell; never steal another host's work
        return start_time(self.pid) == self.start


_me: tuple[int, Owner] | None = None


def me() -> Owner:
    """The owner tag of the calling process (recomputed after fork)."""
    global _me
    pid = os.getpid()
    if _me is None or _me[0] != pid:
        _me = (pid, Owner(host_name(), pid, start_time(pid) or 0))
    return _me[1]
