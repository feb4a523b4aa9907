"""`pipers replay`: move messages from errors/ back to incoming/.

Many errors show a progress bar on a terminal; piped, the output is the moved names.
"""

from __future__ import annotations

import os
import time

import click

from queues import Queue
from queues.states import ERRORS

from ..options import DURATION
from . import progress


def selector(reasons: tuple[str, ...], older_than: float | None, newer_than: float | None,
             now: float):
    def select(name: str, sidecar: dict) -> bool:
        if reasons and sidecar.get("reason") not in reasons:
            return False
        when = sidecar.get("unix_time")
        if not isinstance(when, (int, float)):
            when = now
        if older_than is not None and now - when < older_than:
            return False
        if newer_than is not None and now - when > newer_than:
            return False
        return True

    return select


@click.command("replay")
@click.option("--reason", "reasons", multiple=True, help="Only errors with this reason.")
@click.option("--older-than", type=DURATION, help="Only errors at least this old.")
@click.option("--newer-than", type=DURATION, help="Only errors at most this old.")
@click.option("--dry-run", is_flag=True, help="Say what would move; move nothing.")
@click.argument("queue_dir", type=click.Path(file_okay=False))
def command(reasons, older_than, newer_than, dry_run, queue_dir):
    """Give failed messages of QUEUE_DIR another try (sidecars are removed)."""
    try:
        queue = Queue(queue_dir, create=False)
    except FileNotFoundError:
        raise click.UsageError(f"{queue_dir} is not a queue directory") from None
    select = selector(reasons, older_than, newer_than, time.time())
    with progress.bar(queue.count(ERRORS), "replaying" if not dry_run else "reading") as bar:

        def examined(name: str, sidecar: dict) -> bool:
            bar.update(1)
            return select(name, sidecar)

        if dry_run:
            chosen = [n for n, s in queue.error_entries() if examined(n, s)]
        else:
            moved = queue.replay(examined)
    if dry_run:
        for name in chosen:
            click.echo(f"would replay {name}")
        return
    for name in moved:
        click.echo(f"replayed {os.path.join(queue.incoming, name)}")
    click.echo(f"{len(moved)} messages back in {queue.incoming}", err=True)
