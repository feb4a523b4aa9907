"""`pipers status`: what waits where in every queue of a pipeline.

One row per queue: messages in incoming/, pending/, tmp/ and errors/, the age of
the oldest message waiting in incoming/, throughput over the last minute and the
daemons working on it; then errors by reason, and a line for every daemon that is
waiting (the shipper on the search cluster, a daemon on a full next queue).

Counting stays cheap on huge queues: directory listings without a stat per file
(ages come from the message names), and errors/ sidecars are read again only
when errors/ changed (`--watch`).
"""

from __future__ import annotations

import collections
import os
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import click
import orjson

from queues import Queue
from queues.states import ERRORS, INCOMING, PENDING

from ..options import DURATION, read_config

WINDOW = 60.0  # seconds of history the throughput is computed over
REASONS_MAX_AGE = 60.0  # --watch: sidecars read again at least this often


# -- throughput --------------------------------------------------------------------------------

def throughput(history: object, now: float, window: float = WINDOW) -> float | None:
    """Messages per second one daemon processed over the last `window` seconds.

    `history` is the state file's ``[[unix_time, processed_total], ...]`` (oldest
    first). The base is the latest sample at or before ``now - window``, or the
    earliest one if the daemon is younger; the rate is the growth of the total from
    the base to the latest sample divided by the span covered, ``now - base``
    capped at `window`. None if there is no usable history.
    """
    samples = []
    if isinstance(history, list):
        for s in history:
            if (isinstance(s, (list, tuple)) and len(s) == 2
                    and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in s)):
                samples.append((float(s[0]), float(s[1])))
    if not samples:
        return None
    samples.sort()
    base = samples[0]
    for s in samples:
        if s[0] <= now - window:
            base = s
    span = min(window, now - base[0])
    if span <= 0:
        return 0.0
    return max(0.0, samples[-1][1] - base[1]) / span


def queue_throughput(daemons: Iterable[dict], now: float, window: float = WINDOW) -> float | None:
    """The sum of `throughput` over a queue's daemons; None if none reports history."""
    rates = [r for d in daemons if (r := throughput(d.get("history"), now, window)) is not None]
    return sum(rates) if rates else None


# -- waiting -----------------------------------------------------------------------------------

def on_cluster(state: dict) -> bool:
    """Whether a daemon state says it waits on the search cluster.

    The shipper (pipers/ship/shipper.py, pipers/mq/failover.py) marks those waits with
    `"on": "cluster"` in its state file: an outage, or documents refused for now (429/5xx,
    a write block). Its other waits (a full disk, errors/ unwritable) are not the cluster's.
    """
    return state.get("state") == "waiting" and state.get("on") == "cluster"


# -- one queue ---------------------------------------------------------------------------------

class Reasons:
    """Errors by reason per queue, read from the sidecars again only when errors/ changed."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[tuple, float, dict[str, int]]] = {}

    def __call__(self, queue: Queue, now: float) -> dict[str, int]:
        try:
            st = os.stat(queue.errors)
            key: tuple = (st.st_mtime_ns, st.st_ino, queue.count(ERRORS))
        except OSError:
            key = ()
        seen = self._seen.get(queue.path)
        if seen is not None and key and seen[0] == key and now - seen[1] < REASONS_MAX_AGE:
            return seen[2]
        counted = collections.Counter(
            s.get("reason", "unknown") for _, s in queue.error_entries()
        )
        reasons = dict(sorted(counted.items()))
        self._seen[queue.path] = (key, now, reasons)
        return reasons


def report(queue: Queue, now: float | None = None, reasons: Reasons | None = None) -> dict:
    """What `status --json` prints for one queue."""
    now = time.time() if now is None else now
    daemons = queue.states()
    for d in daemons:
        d["throughput_per_second"] = throughput(d.get("history"), now)
    return {
        "queue": queue.path,
        "time": now,
        "counts": queue.counts(),
        "oldest_incoming_seconds": queue.oldest_age(INCOMING, now),
        "oldest_pending_seconds": queue.oldest_age(PENDING, now),
        "errors_by_reason": (reasons or Reasons())(queue, now),
        "daemons": daemons,
        "throughput_per_second": queue_throughput(daemons, now),
        "waiting": [
            {"daemon": d.get("daemon"), "pid": d.get("pid"), "why": d.get("why", ""),
             "cluster": on_cluster(d)}
            for d in daemons if d.get("state") == "waiting"
        ],
        "cluster_waiting": any(on_cluster(d) for d in daemons),
    }


def missing(path: str, now: float) -> dict:
    """A queue named in the config that no daemon has created yet."""
    return {"queue": path, "time": now, "missing": True}


def snapshot(paths: Sequence[str], reasons: Reasons, now: float | None = None) -> list[dict]:
    now = time.time() if now is None else now
    out = []
    for path in paths:
        try:  # a queue not made yet, or removed (or half made) under --watch: missing
            out.append(report(Queue(path, create=False), now, reasons))
        except (FileNotFoundError, NotADirectoryError):
            out.append(missing(os.path.abspath(path), now))
    return out


# -- the pipeline of a config file ---------------------------------------------------------------

def pipeline_queues(path: str, commands: dict[str, click.Command] | None = None) -> list[str]:
    """Every queue-in-dir/queue-out-dir of a config file, in pipeline order.

    Sources' output queues first, then each queue's consumers' output queues, and so
    on; queues no source leads to come after, in the file's order. Top-level settings
    apply to every section whose command has the flag (all sections if `commands` is
    not known). Relative paths are taken from the current directory, as the daemons do.
    """
    common, sections = read_config(path)
    if not sections:
        sections = {"": {}}
    chain: list[tuple[str | None, str | None]] = []  # (in, out) of each section in file order
    for name, own in sections.items():
        settings = {k.replace("-", "_"): v for k, v in common.items()}
        command = (commands or {}).get(name)
        if command is not None:
            flags = {p.name for p in command.params}
            settings = {k: v for k, v in settings.items() if k in flags}
        settings.update({k.replace("-", "_"): v for k, v in own.items()})
        ends = []
        for key in ("queue_in_dir", "queue_out_dir"):
            value = settings.get(key)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{path}: [{name}] {key.replace('_', '-')} is not a path")
            ends.append(os.path.abspath(value) if value else None)
        chain.append((ends[0], ends[1]))

    order: list[str] = []

    def add(q: str | None) -> None:
        if q and q not in order:
            order.append(q)

    for qin, qout in chain:
        if qin is None:
            add(qout)
    done = 0
    while True:
        while done < len(order):
            q = order[done]
            done += 1
            for qin, qout in chain:
                if qin == q:
                    add(qout)
        rest = [qin for qin, _ in chain if qin and qin not in order]
        if not rest:
            return order
        add(rest[0])


# -- text ----------------------------------------------------------------------------------------

COLUMNS = ("QUEUE", "INCOMING", "PENDING", "TMP", "ERRORS", "OLDEST", "MSG/S", "DAEMONS")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _rate(rate: float | None) -> str:
    if rate is None:
        return "-"
    return f"{rate:.1f}" if rate < 100 else f"{rate:.0f}"


def _daemons(daemons: list[dict]) -> str:
    groups = collections.Counter((str(d.get("daemon", "?")), str(d.get("state", "?")))
                                 for d in daemons)
    return ", ".join(f"{name}{f' x{n}' if n > 1 else ''} {state}"
                     for (name, state), n in groups.items()) or "-"


def render(reports: list[dict]) -> str:
    """The table, errors by reason, and who waits on what."""
    rows = [COLUMNS]
    for r in reports:
        if r.get("missing"):
            rows.append((r["queue"], "-", "-", "-", "-", "-", "-", "(no queue yet)"))
            continue
        c = r["counts"]
        rows.append((r["queue"], *(str(c[k]) for k in ("incoming", "pending", "tmp", "errors")),
                     _age(r["oldest_incoming_seconds"]), _rate(r["throughput_per_second"]),
                     _daemons(r["daemons"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS) - 1)]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(w) for cell, w in zip(row[1:-1], widths[1:], strict=True)]
        lines.append("  ".join([*cells, row[-1]]))
    erring = [r for r in reports if r.get("errors_by_reason")]
    if erring:
        lines += ["", "errors by reason"]
        for r in erring:
            lines.append(f"  {r['queue']}")
            lines += [f"    {n:>8}  {reason}" for reason, n in r["errors_by_reason"].items()]
    waits = [(r, w) for r in reports for w in r.get("waiting", ())]
    if waits:
        lines.append("")
    for r, w in waits:
        what = "SHIPPER WAITING ON THE SEARCH CLUSTER" if w["cluster"] else "waiting"
        lines.append(f"{what}: {w['daemon']} (pid {w['pid']}) on {r['queue']}: {w['why']}")
    return "\n".join(lines)


# -- the command ---------------------------------------------------------------------------------

def _show_in_place(text: str) -> None:
    """Redraw the terminal from the top: each line cleared to its end, then the rest."""
    body = "".join(f"{line}\x1b[K\n" for line in text.split("\n"))
    click.echo(f"\x1b[H{body}\x1b[J", nl=False)


def _header(now: float, interval: float) -> str:
    when = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"pipers status  {when}  every {interval:g}s (Ctrl-C to stop)\n"


@click.command("status")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="Show every queue-in-dir/queue-out-dir of this TOML or INI file "
                   "(the daemons' --config), in pipeline order.")
@click.option("--json", "as_json", is_flag=True,
              help="JSON: one document per queue and line; with --watch, one document "
                   "{time, queues} per refresh and line.")
@click.option("--watch", is_flag=True, help="Refresh until Ctrl-C (in place on a terminal).")
@click.option("--interval", type=DURATION, default=2.0, show_default=True,
              help="Seconds between refreshes with --watch (or HHH:MM:SS).")
@click.argument("queues", nargs=-1, type=click.Path(file_okay=False))
def command(config_file, as_json, watch, interval, queues):
    """Show what waits where in each QUEUE directory (or every queue of --config).

    Columns: messages in incoming/, pending/, tmp/, errors/; age of the oldest
    message in incoming/; messages per second the queue's daemons finished over
    the last minute; the daemons on the queue and their state. Then errors by
    reason and every daemon that waits, with why.
    """
    paths: list[str] = []
    if config_file:
        ctx = click.get_current_context()
        root = ctx.find_root().command
        commands = getattr(root, "commands", None)
        try:
            paths = pipeline_queues(config_file, commands)
        except OSError as e:
            raise click.BadParameter(f"cannot read {config_file}: {e.strerror}",
                                     param_hint="'--config'") from None
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="'--config'") from None
        if not paths:
            raise click.UsageError(f"{config_file} names no queue-in-dir or queue-out-dir")
    elif not queues:
        raise click.UsageError("give QUEUE directories or --config FILE")
    for path in queues:
        try:
            Queue(path, create=False)
        except (FileNotFoundError, NotADirectoryError):
            raise click.UsageError(f"{path} is not a queue directory") from None
        if os.path.abspath(path) not in paths:
            paths.append(os.path.abspath(path))
    if interval <= 0:
        raise click.BadParameter("must be more than 0", param_hint="'--interval'")
    try:
        if watch:
            _watch(paths, as_json, interval)
        else:
            _print(snapshot(paths, Reasons()), as_json)
    except BrokenPipeError:  # `pipers status --watch --json | head -3`: the reader is gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit


def _watch(paths: list[str], as_json: bool, interval: float) -> None:
    """Refresh until Ctrl-C (which ends it normally)."""
    reasons = Reasons()
    terminal = not as_json and sys.stdout.isatty()
    try:
        while True:
            started = time.monotonic()
            now = time.time()
            reports = snapshot(paths, reasons, now)
            if as_json:
                click.echo(orjson.dumps({"time": now, "queues": reports}).decode())
            elif terminal:
                _show_in_place(_header(now, interval) + render(reports))
            else:
                click.echo(_header(now, interval) + render(reports) + "\n")
            sys.stdout.flush()
            time.sleep(max(0.0, interval - (time.monotonic() - started)))
    except KeyboardInterrupt:
        return


def _print(reports: list[dict], as_json: bool) -> None:
    if as_json:
        for r in reports:
            click.echo(orjson.dumps(r).decode())
    else:
        click.echo(render(reports))
