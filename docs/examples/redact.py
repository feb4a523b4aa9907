"""An example piper: mask sensitive fields, drop debug records.

A piper is a daemon with an input queue. The base class (pipers.Piper) claims
messages, calls process() with each one as a Python object, writes the result to
--queue-out-dir and finishes the input; it also owns wake-ups, backpressure, signals,
crash recovery and errors/. Run it like any pipers daemon - every shared flag works
(--config, --once, --durability, --log-file, --daemon, ...):

    python docs/examples/redact.py --queue-in-dir q/in --queue-out-dir q/out \
        --field password --field token
"""

from __future__ import annotations

import click

from pipers import UNCHANGED, Piper
from pipers.options import daemon_options
from pipers.runner import start


class Redact(Piper):
    name = "redact"  # in the logs, in errors/ sidecars and in `pipers status`

    def __init__(self, options, *, fields=()):
        super().__init__(options)  # opens --queue-in-dir and --queue-out-dir
        self.fields = set(fields)

    def process(self, message):
        if not isinstance(message, dict):
            # any exception: this message goes to errors/ with the traceback, we go on
            raise TypeError(f"expected a JSON object, got {type(message).__name__}")
        if message.get("level") == "debug":
            return None  # dropped: the input is removed, nothing is written
        hidden = self.fields & message.keys()
        if not hidden:
            return UNCHANGED  # forwarded as it is (the file is moved, not rewritten)
        for key in hidden:
            message[key] = "***"
        return message  # forwarded under the same name (a resend lands on the same _id)


@click.command("redact")
@daemon_options(queue_out="required")  # the shared flags: queues, logs, --config, ...
@click.option("--field", "fields", multiple=True, metavar="KEY",
              help="Mask the value of this field (repeat for more).")
def command(**params):
    """Mask sensitive fields and drop debug records."""
    raise SystemExit(start(lambda options, own: Redact(options, **own), params))


if __name__ == "__main__":
    command()
