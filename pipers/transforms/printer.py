"""`pipers print`: log every message (like Mentat's demo print component)."""

from __future__ import annotations

import click
import orjson

from ..base import UNCHANGED, Piper
from ..options import daemon_options
from ..runner import start


class Printer(Piper):
    name = "print"

    def process(self, message):
        self.log.info("%s", orjson.dumps(message).decode())
        return UNCHANGED


@click.command("print")
@daemon_options()
def command(**params):
    """Log each message; forward it when --queue-out-dir is given, else consume it."""
    raise SystemExit(start(lambda o, _: Printer(o), params))
