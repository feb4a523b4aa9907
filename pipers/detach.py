"""Running detached: python-daemon's DaemonContext plus a pid file.

The pid file is refused when it names a live process, written after the
fork (so it holds the daemon's pid) and removed at exit.
"""

from __future__ import annotations

import atexit
import os
import sys

import daemon


class PidFileBusy(Exception):
    pass


def read_pid(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip() or 0) or None
    except (FileNotFoundError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_pid_file(path: str) -> None:
    pid = read_pid(path)
    if pid and pid != os.getpid() and pid_alive(pid):
        raise PidFileBusy(f"pid file {path} names running process {pid}")


def write_pid_file(path: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()}\n")
    os.rename(tmp, path)
    mine = os.getpid()

    def remove() -> None:
        if read_pid(path) == mine:
            os.unlink(path)

    atexit.register(remove)


def detach(pid_file: str | None, keep: list) -> daemon.DaemonContext:
    """Fork into the background; `keep` are streams/handlers whose files stay open."""
    files = []
    for item in keep:
        stream = getattr(item, "stream", item)
        if hasattr(stream, "fileno"):
            try:
                files.append(stream.fileno())
            except (ValueError, OSError):
                pass
    ctx = daemon.DaemonContext(
        working_directory="/",
        umask=0o027,
        files_preserve=files,
        signal_map={},  # the daemon installs its own handlers after open()
        stdout=None,
        stderr=None,
        detach_process=True,
    )
    ctx.open()
    if pid_file:
        write_pid_file(pid_file)
    sys.stdin = open(os.devnull)
    return ctx
