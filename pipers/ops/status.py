"""`pipers status`: per queue, counts per directory, oldest ages, errors by reason."""

from __future__ import annotations

import collections
import time

import click
import orjson

from queues import Queue
from queues.states import INCOMING, PENDING


def report(queue: Queue, now: float | None = None) -> dict:
    now = time.time() if now is None else now
    reasons = collections.Counter(s.get("reason", "unknown") for _, s in queue.error_entries())
    return {
        "queue": queue.path,
        "counts": queue.counts(),
        "oldest_incoming_seconds": queue.oldest_age(INCOMING, now),
        "oldest_pending_seconds": queue.oldest_age(PENDING, now),
        "errors_by_reason": dict(sorted(reasons.items())),
        "daemons": queue.states(),
    }


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def render(r: dict) -> str:
    c = r["counts"]
    lines = [
        r["queue"],
        f"  incoming {c['incoming']:>8}   oldest {_age(r['oldest_incoming_seconds'])}",
        f"  pending  {c['pending']:>8}   oldest {_age(r['oldest_pending_seconds'])}",
        f"  tmp      {c['tmp']:>8}",
        f"  errors   {c['errors']:>8}",
    ]
    for reason, n in r["errors_by_reason"].items():
        lines.append(f"    {n:>8}  {reason}")
    for d in r["daemons"]:
        why = f" ({d['why']})" if d.get("why") else ""
        lines.append(f"  daemon {d['daemon']} pid {d['pid']}: {d['state']}{why}")
    return "\n".join(lines)


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON document per queue.")
@click.argument("queues", nargs=-1, required=True, type=click.Path(file_okay=False))
def command(as_json, queues):
    """Show what waits where in each QUEUE directory."""
    for path in queues:
        try:
            r = report(Queue(path, create=False))
        except FileNotFoundError:
            raise click.UsageError(f"{path} is not a queue directory") from None
        click.echo(orjson.dumps(r).decode() if as_json else render(r))
