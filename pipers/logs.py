"""Logging to stderr and/or a rotating file, each with its own level and format."""

from __future__ import annotations

import logging
import logging.handlers
import sys
from dataclasses import dataclass

DEFAULT_FORMAT = "%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s"


@dataclass
class LogOptions:
    level: str = "INFO"  # stderr
    format: str = DEFAULT_FORMAT
    file: str | None = None
    file_level: str = "INFO"
    file_format: str = DEFAULT_FORMAT
    max_bytes: int = 10 * 1024 * 1024
    backup_count: int = 5
    stderr: bool = True


def setup(opts: LogOptions) -> list[logging.Handler]:
    """Configure the `pipers` logger tree; returns the handlers (streams to keep)."""
    root = logging.getLogger("pipers")
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    handlers: list[logging.Handler] = []
    if opts.stderr:
        h = logging.StreamHandler(sys.stderr)
        h.setLevel(opts.level.upper())
        h.setFormatter(logging.Formatter(opts.format))
        handlers.append(h)
    if opts.file:
        f = logging.handlers.RotatingFileHandler(
            opts.file, maxBytes=opts.max_bytes, backupCount=opts.backup_count, delay=False
        )
        f.setLevel(opts.file_level.upper())
        f.setFormatter(logging.Formatter(opts.file_format))
        handlers.append(f)
    for h in handlers:
        root.addHandler(h)
    levels = [h.level for h in handlers] or [logging.WARNING]
    root.setLevel(min(levels))
    root.propagate = False
    # watchdog's own chatter (e.g. at observer shutdown) is not the operator's business
    logging.getLogger("watchdog").addHandler(logging.NullHandler())
    logging.getLogger("watchdog").propagate = False
    return handlers


def reopen() -> None:
    """Reopen log files (SIGHUP after an external logrotate moved them)."""
    for h in logging.getLogger("pipers").handlers:
        if isinstance(h, logging.FileHandler):
            h.acquire()
            try:
                h.close()
                h.stream = h._open()
            finally:
                h.release()
