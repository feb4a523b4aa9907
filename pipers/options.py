"""Options shared by every daemon: one decorator each, a config file, durations.

Every flag may come from a TOML or INI file given with ``--config``: top-level
keys (TOML) or ``[pipers]`` (INI) apply to every command, a table/section
named after the command to that command only. Flags on the command line win.
"""

from __future__ import annotations

import configparser
import os
import tomllib
from collections.abc import Callable
from typing import Any

import click

from .base import Options
from .durations import parse_duration
from .logs import DEFAULT_FORMAT, LogOptions

LEVELS = click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], case_sensitive=False)


class Duration(click.ParamType):
    name = "duration"

    def convert(self, value: Any, param, ctx) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_duration(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


DURATION = Duration()


def read_config(path: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """A config file's settings: (those for every command, {section: its settings}).

    Sections keep the file's order. Raises OSError if the file cannot be read and
    ValueError (one line) if it does not parse.
    """
    with open(path, "rb") as f:
        raw = f.read()
    try:
        if path.endswith(".toml"):
            doc = tomllib.loads(raw.decode())
            common = {k: v for k, v in doc.items() if not isinstance(v, dict)}
            sections = {k: v for k, v in doc.items() if isinstance(v, dict)}
        else:
            cp = configparser.ConfigParser(interpolation=None)
            cp.read_string(raw.decode())
            common = dict(cp["pipers"]) if cp.has_section("pipers") else {}
            sections = {s: dict(cp[s]) for s in cp.sections() if s != "pipers"}
    except (tomllib.TOMLDecodeError, configparser.Error, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: {str(e).splitlines()[0]}") from None
    return common, sections


def _load_config(ctx: click.Context, param: click.Parameter, path: str | None) -> str | None:
    if not path:
        return path
    try:
        common, sections = read_config(path)
    except OSError as e:
        raise click.BadParameter(f"cannot read {path}: {e.strerror}", ctx, param) from None
    except ValueError as e:
        raise click.BadParameter(str(e), ctx, param) from None
    command = ctx.info_name or ""
    section = sections.get(command, {})
    known = {}  # setting name (flag without dashes, or parameter name) -> parameter
    for p in ctx.command.params:
        known[p.name] = p.name
        for opt in getattr(p, "opts", []):
            if opt.startswith("--"):
                known[opt[2:].replace("-", "_")] = p.name
    settings: dict[str, Any] = {}
    for scope, values in (("common", common), (command, section)):
        for key, value in values.items():
            name = key.replace("-", "_")
            if name in known:
                settings[known[name]] = value
            elif scope != "common":
                raise click.BadParameter(
                    f"{path}: [{command}] has unknown setting {key!r}", ctx, param
                )
    ctx.default_map = {**(ctx.default_map or {}), **settings}
    return path


def config_option(f: Callable) -> Callable:
    return click.option(
        "--config", type=click.Path(dir_okay=False), is_eager=True, expose_value=False,
        callback=_load_config, help="TOML or INI file with defaults for any flag.",
    )(f)


def log_options(f: Callable) -> Callable:
    opts = [
        click.option("--log-level", type=LEVELS, default="INFO", show_default=True,
                     help="Level of messages written to stderr."),
        click.option("--log-format", default=DEFAULT_FORMAT, show_default=True,
                     help="Format for stderr (Python logging %-style)."),
        click.option("--log-file", type=click.Path(dir_okay=False),
                     help="Also log to this file (SIGHUP reopens it)."),
        click.option("--log-file-level", type=LEVELS, default="INFO", show_default=True,
                     help="Level of messages written to --log-file."),
        click.option("--log-file-format", default=DEFAULT_FORMAT, show_default=True,
                     help="Format for --log-file."),
        click.option("--log-max-bytes", type=click.IntRange(0), default=10 * 1024 * 1024,
                     show_default=True,
                     help="Rotate the log file at this size (0: never; use logrotate)."),
        click.option("--log-backup-count", type=click.IntRange(0), default=5, show_default=True,
                     help="Rotated log files kept (with --log-max-bytes)."),
        click.option("--quiet", is_flag=True, help="Nothing to stderr (log file only)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def daemon_options(*, queue_in: bool = True, queue_out: str = "optional") -> Callable:
    """The flags of a daemon; queue_out is "required", "optional" or "none"."""

    def decorate(f: Callable) -> Callable:
        opts = []
        if queue_in:
            opts += [
                click.option("--queue-in-dir", required=True, type=click.Path(file_okay=False),
                             help="The queue this daemon consumes (created if missing)."),
                click.option("--queue-in-wait", type=DURATION, default=10.0, show_default=True,
                             help="Rescan interval for missed wake-ups (seconds or HHH:MM:SS)."),
                click.option("--max-attempts", type=click.IntRange(0), default=5,
                             show_default=True,
                             help="Crashes while holding a message before it is poison."),
                click.option("--batch-size", type=click.IntRange(1), default=None,
                             help="Messages claimed and committed together "
                                  "[default: 100; 500 with --durability fsync]."),
                click.option("--once", is_flag=True, help="Drain the queue, then exit."),
                click.option("--max-message-bytes", type=click.IntRange(1),
                             default=16 * 1024 * 1024, show_default=True,
                             help="Larger messages go to errors/ as too-large."),
                click.option("--tmp-max-age", type=DURATION, default=36 * 3600.0,
                             show_default=True, help="Sweep files left in tmp/ this long."),
                click.option("--journal-dir", type=click.Path(file_okay=False),
                             help="Note messages whose life ends here (consumed or failed) "
                             "for `pipers collect` cleanup."),
            ]
        if queue_out != "none":
            opts += [
                click.option("--queue-out-dir", required=queue_out == "required",
                             type=click.Path(file_okay=False),
                             help="The next daemon's queue."),
                click.option("--queue-out-limit", type=click.IntRange(0), default=10_000,
                             show_default=True,
                             help="Pause while the next queue holds this many (0: no limit)."),
                click.option("--queue-out-wait", type=DURATION, default=10.0, show_default=True,
                             help="How long to pause when the next queue is full."),
            ]
        opts += [
            click.option("--durability", type=click.Choice(["none", "fsync"]), default="none",
                         show_default=True,
                         help="none: survives kill -9; fsync: survives power loss too."),
            click.option("--group-access", is_flag=True,
                         help="Queue directories 0770 and files 0660 (default 0700/0600)."),
            click.option("--daemon", "detach", is_flag=True,
                         help="Detach into the background (needs --log-file)."),
            click.option("--pid-file", type=click.Path(dir_okay=False),
                         help="Write the pid here; refuse to start if it names a live process."),
            *metrics_options(),
        ]
        for o in reversed(opts):
            f = o(f)
        f = log_options(f)
        return config_option(f)

    return decorate


def metrics_options() -> list[Callable]:
    """--metrics-* (pipers/metrics.py) and --trace (pipers/lineage.py), on every daemon."""
    return [
        click.option("--metrics-port", type=click.IntRange(0, 65535), default=0,
                     show_default=True,
                     help="Serve Prometheus metrics at http://ADDRESS:PORT/metrics (0: off)."),
        click.option("--metrics-address", default="127.0.0.1", show_default=True,
                     help="Address the metrics endpoint listens on."),
        click.option("--metrics-textfile", type=click.Path(dir_okay=False),
                     help="Write the metrics to this file (*.prom, for node_exporter's "
                          "textfile collector) every 5 s and at exit [default: off]."),
        trace_option(),
        trace_field_option(),
    ]


def trace_option() -> Callable:
    return click.option("--trace", is_flag=True,
                        help="Lineage: append this daemon's name, host and time to each "
                             "message's trace list [default: off].")


def trace_field_option() -> Callable:
    return click.option("--trace-field", default="pipers_trace", show_default=True,
                        metavar="FIELD", help="The message field holding the trace list.")


_OPTION_FIELDS = set(Options.__dataclass_fields__)
_LOG_FIELDS = {
    "log_level": "level", "log_format": "format", "log_file": "file",
    "log_file_level": "file_level", "log_file_format": "file_format",
    "log_max_bytes": "max_bytes", "log_backup_count": "backup_count",
}


def split(params: dict[str, Any]) -> tuple[Options, LogOptions, dict[str, Any], dict[str, Any]]:
    """(queue options, log options, detach options, the command's own options)."""
    params = dict(params)
    for key in ("queue_in_dir", "queue_out_dir", "log_file", "pid_file", "journal_dir",
                "metrics_textfile"):
        if params.get(key):
            params[key] = os.path.abspath(params[key])
    options = Options(**{k: params.pop(k) for k in list(params) if k in _OPTION_FIELDS})
    log = LogOptions(**{v: params.pop(k) for k, v in _LOG_FIELDS.items() if k in params})
    log.stderr = not params.pop("quiet", False)
    detach = {"detach": params.pop("detach", False), "pid_file": params.pop("pid_file", None)}
    return options, log, detach, params
