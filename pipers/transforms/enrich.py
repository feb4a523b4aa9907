"""`pipers enrich`: add fields - host name, receive time, constants."""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime

import click
import orjson

from ..base import Piper
from ..options import daemon_options
from ..runner import start


def parse_field(text: str) -> tuple[str, object]:
    """``key=value``; the value is JSON when it parses as JSON, else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--set {text!r}: expected KEY=VALUE")
    try:
        return key, orjson.loads(value)
    except orjson.JSONDecodeError:
        return key, value


class Enrich(Piper):
    name = "enrich"

    def __init__(self, options, *, fields=(), host_field=None, time_field=None,
                 overwrite=False, clock=time.time):
        super().__init__(options, clock)
        self.fields = dict(parse_field(f) if isinstance(f, str) else f for f in fields)
        self.host_field = host_field
        self.time_field = time_field
        self.overwrite = overwrite
        self.host = socket.gethostname()

    def process(self, message):
        if not isinstance(message, dict):
            raise TypeError(f"enrich needs a JSON object, got {type(message).__name__}")
        add = dict(self.fields)
        if self.host_field:
            add[self.host_field] = self.host
        if self.time_field:
            add[self.time_field] = datetime.fromtimestamp(self.clock(), UTC).isoformat()
        for key, value in add.items():
            if self.overwrite or key not in message:
                message[key] = value
        return message


@click.command("enrich")
@daemon_options(queue_out="required")
@click.option("--set", "fields", multiple=True, metavar="KEY=VALUE",
              help="Add a constant field (VALUE is JSON if it parses, else a string).")
@click.option("--host-field", metavar="KEY", help="Add this host's name under KEY.")
@click.option("--time-field", metavar="KEY", help="Add the receive time (ISO 8601) under KEY.")
@click.option("--overwrite", is_flag=True, help="Replace fields the message already has.")
def command(**params):
    """Add fields to each message."""
    raise SystemExit(start(lambda o, own: Enrich(o, **own), params))
