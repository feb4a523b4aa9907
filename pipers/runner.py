"""Starting a daemon from its command: logs, pid file, detaching, run."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import click

from . import detach, logs
from .base import Daemon, Options
from .options import split


def start(factory: Callable[[Options, dict[str, Any]], Daemon], params: dict[str, Any]) -> int:
    """Build the daemon from its flags and run it; bad input is a UsageError."""
    options, log, det, own = split(params)
    if det["detach"] and not log.file:
        raise click.UsageError("--daemon needs --log-file (stderr is closed when detached)")
    if det["pid_file"]:
        try:
            detach.check_pid_file(det["pid_file"])
        except detach.PidFileBusy as e:
            raise click.UsageError(str(e)) from None
    if det["detach"]:
        log = dataclasses.replace(log, stderr=False)
    handlers = logs.setup(log)
    try:
        daemon = factory(options, own)
    except (ValueError, OSError) as e:
        raise click.UsageError(str(e)) from None
    if det["detach"]:
        detach.detach(det["pid_file"], handlers + daemon.waker.fds())
    elif det["pid_file"]:
        detach.write_pid_file(det["pid_file"])
    return daemon.run()
