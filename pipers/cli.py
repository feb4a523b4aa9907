"""The `pipers` command: one click group, a subcommand per daemon or tool."""

from __future__ import annotations

import sys

import click

from .mq import consume as mq_consume
from .mq import publish as mq_publish
from .ops import put, replay, status
from .ship import command as ship
from .sources import collect, prioritize, probe
from .transforms import enrich, filter, passthrough, printer, run


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="pipers")
def cli():
    """Durable JSON pipelines: small daemons chained by queue directories."""


for module in (printer, passthrough, enrich, filter, run, put, status, replay, probe,
               collect, prioritize, ship,
               mq_publish, mq_consume):
    cli.add_command(module.command)


def main(argv: list[str] | None = None) -> None:
    """Entry point: bad flags or values print one line and exit 2."""
    try:
        rv = cli.main(args=argv, prog_name="pipers", standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(1)
    except click.ClickException as e:
        ctx = getattr(e, "ctx", None)
        where = f"pipers {ctx.info_name}" if ctx is not None and ctx.info_name != "pipers" \
            else "pipers"
        click.echo(f"{where}: error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    sys.exit(rv if isinstance(rv, int) else 0)
