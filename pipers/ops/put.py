"""`pipers put`: JSON or NDJSON from stdin or files into a queue, all or nothing.

A big input shows progress bars on a terminal (reading many files, writing, committing);
piped, the only output is the closing line.
"""

from __future__ import annotations

import sys

import click
import orjson

from queues import Queue

from ..lineage import Tracer
from ..options import trace_field_option, trace_option
from . import progress


class InvalidInput(Exception):
    pass


def parse(data: bytes, source: str) -> list[bytes]:
    """Messages in `data`: one JSON object, or one object per line (NDJSON).

    Returns each message's own bytes; raises InvalidInput naming every bad line.
    """
    try:
        whole = orjson.loads(data)
    except orjson.JSONDecodeError:
        whole = None
    else:
        if isinstance(whole, dict):
            return [data.strip()]
    out, problems = [], []
    for number, line in enumerate(data.split(b"\n"), 1):
        line = line.strip()
        if not line:
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            problems.append(f"{source}:{number}: invalid JSON: {e}")
            continue
        if not isinstance(value, dict):
            problems.append(f"{source}:{number}: not a JSON object ({type(value).__name__})")
            continue
        out.append(line)
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise InvalidInput("\n".join(problems[:10]) + more)
    return out


@click.command("put")
@click.option("--queue-out-dir", required=True, type=click.Path(file_okay=False),
              help="The queue to put the messages into (created if missing).")
@click.option("--durability", type=click.Choice(["none", "fsync"]), default="fsync",
              show_default=True,
              help="fsync: the messages survive power loss once put returns.")
@click.option("--group-access", is_flag=True,
              help="Queue directories 0770 and files 0660 (default 0700/0600).")
@trace_option()
@trace_field_option()
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False, allow_dash=True))
def command(queue_out_dir, durability, group_access, trace, trace_field, files):
    """Enqueue JSON messages from FILES (or stdin): nothing is enqueued if any is invalid."""
    messages: list[bytes] = []
    sources = files or ("-",)
    try:
        with progress.bar(len(sources), "reading   ") as bar:  # many files
            for path in sources:
                if path == "-":
                    data, source = sys.stdin.buffer.read(), "<stdin>"
                else:
                    with open(path, "rb") as f:
                        data, source = f.read(), path
                messages += parse(data, source)
                bar.update(1)
    except InvalidInput as e:
        click.echo(f"pipers put: nothing enqueued:\n{e}", err=True)
        raise SystemExit(1) from None
    except OSError as e:
        raise click.UsageError(f"cannot read {e.filename}: {e.strerror}") from None
    if trace:  # lineage (pipers/lineage.py): the trace starts here
        try:
            tracer = Tracer("put", trace_field)
        except ValueError as e:
            raise click.UsageError(str(e)) from None
        messages = [tracer.stamp_bytes(m) for m in messages]
    try:
        queue = Queue(queue_out_dir, durability=durability, group_access=group_access)
        with queue.batch() as batch:  # all or nothing: visible together at the end
            with progress.bar(len(messages), "writing   ") as bar:
                for data in messages:
                    batch.add(data)
                    bar.update(1)
            with progress.bar(len(messages), "committing") as bar:
                batch.commit(progress=bar.update)
    except OSError as e:
        click.echo(f"pipers put: nothing enqueued: {e.strerror} ({e.filename})", err=True)
        raise SystemExit(1) from None
    click.echo(f"enqueued {len(messages)} messages into {queue.incoming}", err=True)
