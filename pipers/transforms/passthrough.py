"""`pipers pass`: forward every valid JSON message unchanged (a plain hop)."""

from __future__ import annotations

import click

from ..base import UNCHANGED, Piper
from ..options import daemon_options
from ..runner import start


class Passthrough(Piper):
    name = "pass"
    forwards_unchanged = True  # so the base moves messages with one rename (Queue.pass_on)

    def process(self, message):
        return UNCHANGED


@click.command("pass")
@daemon_options(queue_out="required")
def command(**params):
    """Forward each message as it is (validated JSON, moved without copying)."""
    raise SystemExit(start(lambda o, _: Passthrough(o), params))
