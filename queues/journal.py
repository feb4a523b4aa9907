"""A journal of messages that finished for good, for a tracker such as `pipers collect`.

A daemon started with ``--journal-dir DIR`` notes every message whose life
ends in it: ``ok NAME`` when it consumed the message on purpose (a sink, a
filter dropping it) and ``failed NAME`` when it moved it to ``errors/``. A
forwarded message is not noted: its life goes on in the next queue.

The notes of one batch go into one small file, written under a hidden name and
renamed into ``DIR`` after the batch is committed - a few syscalls per batch,
none per message, and nothing at all without ``--journal-dir``. The one
consumer of the directory (`collect`) reads the files in name order (names sort
by time) and removes them, so it learns which jobs finished without ever
listing a queue.

A note is advisory: it is written after the message's fate is on disk and is
not synced, so a crash of the daemon (or of the machine) in between loses the
note, never a message. Lines it does not understand are skipped.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator

from . import names

OK = "ok"
FAILED = "failed"
STATUSES = (OK, FAILED)
MAX_KEPT = 100_000  # notes kept in memory while the directory cannot be written

_log = logging.getLogger("pipers.journal")
_tmp = itertools.count()


class Journal:
    """Notes of one daemon, flushed once per batch."""

    def __init__(self, path: str | os.PathLike, *, file_mode: int = 0o600,
                 dir_mode: int = 0o700):
        self.path = os.path.abspath(os.fspath(path))
        self.file_mode = file_mode
        os.makedirs(self.path, dir_mode, exist_ok=True)
        self._lines: list[str] = []

    def __len__(self) -> int:
        return len(self._lines)

    def ok(self, name: str) -> None:
        self._lines.append(f"{OK} {name}\n")

    def failed(self, name: str) -> None:
        self._lines.append(f"{FAILED} {name}\n")

    def discard(self, status: str = OK) -> None:
        """Forget staged notes of `status` (their batch was not committed)."""
        prefix = status + " "
        self._lines = [line for line in self._lines if not line.startswith(prefix)]

    def flush(self) -> None:
        """Write the staged notes as one file; on failure keep them for the next flush."""
        if not self._lines:
            return
        name = names.new_name()
        tmp = os.path.join(self.path, f".{name}.{next(_tmp)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                         self.file_mode)
            try:
                os.write(fd, "".join(self._lines).encode("utf-8", "surrogateescape"))
            finally:
                os.close(fd)
            os.rename(tmp, os.path.join(self.path, name))
        except OSError as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if len(self._lines) > MAX_KEPT:
                _log.error("journal %s: dropping %d notes: %s", self.path,
                           len(self._lines) - MAX_KEPT, e)
                del self._lines[: len(self._lines) - MAX_KEPT]
            else:
                _log.warning("journal %s: cannot write (kept for later): %s", self.path, e)
            return
        self._lines = []


def read(path: str | os.PathLike) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """(file, [(status, name), ...]) for every complete journal file, oldest first.

    The consumer removes each file once it has acted on its notes.
    """
    path = os.fspath(path)
    try:
        listed = sorted(n for n in os.listdir(path) if n[0] != ".")
    except FileNotFoundError:
        return
    for entry in listed:
        file = os.path.join(path, entry)
        try:
            with open(file, "rb") as f:
                text = f.read().decode("utf-8", "surrogateescape")
        except (FileNotFoundError, IsADirectoryError):
            continue
        notes = []
        for line in text.splitlines():
            status, sep, name = line.partition(" ")
            if sep and name and status in STATUSES:
                notes.append((status, name))
        yield file, notes
