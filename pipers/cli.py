"""The `pipers` command: one click group, a subcommand per daemon or tool.

Each subcommand's module is imported only when that subcommand runs (or a help
lists it), so `pipers ship` does not pay for the broker client, the drop
directory's watcher and the rest at every start.
"""

from __future__ import annotations

import importlib
import sys

import click

# name -> the module whose `command` it is
COMMANDS = {
    "print": "pipers.transforms.printer",
    "pass": "pipers.transforms.passthrough",
    "enrich": "pipers.transforms.enrich",
    "filter": "pipers.transforms.filter",
    "run": "pipers.transforms.run",
    "put": "pipers.ops.put",
    "status": "pipers.ops.status",
    "replay": "pipers.ops.replay",
    "probe": "pipers.sources.probe",
    "collect": "pipers.sources.collect",
    "prioritize": "pipers.sources.prioritize",
    "ship": "pipers.ship.command",
    "mq-publish": "pipers.mq.publish",
    "mq-consume": "pipers.mq.consume",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context | None) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx: click.Context | None, name: str) -> click.Command | None:
        if name not in self.commands and name in COMMANDS:
            command = importlib.import_module(COMMANDS[name]).command
            assert command.name == name, (name, command.name)
            self.add_command(command)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="pipers")
def cli():
    """Durable JSON pipelines: small daemons chained by queue directories."""


def all_commands() -> dict[str, click.Command]:
    """Every subcommand by name (imports them all)."""
    return {name: cli.get_command(None, name) for name in cli.list_commands(None)}


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
