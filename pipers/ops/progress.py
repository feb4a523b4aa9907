"""Progress of long operator actions: a bar on a terminal, nothing at all when piped."""

from __future__ import annotations

import os
import sys
from typing import IO

import click

MIN_ITEMS = 1000  # fewer items are done before a bar would be worth looking at
STEPS = 200  # redraws per bar at most: a million items do not mean a million writes


def on_terminal(stream: IO | None = None) -> bool:
    """Whether `stream` (stderr by default) is a terminal someone looks at."""
    stream = sys.stderr if stream is None else stream
    try:
        return os.isatty(stream.fileno())
    except (AttributeError, OSError, ValueError):  # closed, or no descriptor (CliRunner)
        return False


def bar(length: int, label: str, stream: IO | None = None):
    """A click progress bar on stderr, hidden when stderr is not a terminal or the
    job is small. Use as a context manager and call ``update(n)``."""
    stream = sys.stderr if stream is None else stream
    return click.progressbar(
        length=length, label=label, file=stream, show_pos=True,
        hidden=length < MIN_ITEMS or not on_terminal(stream),
        update_min_steps=max(1, length // STEPS),
    )
