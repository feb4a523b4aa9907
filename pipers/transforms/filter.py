"""`pipers filter`: keep, drop or route messages by simple field conditions.

A condition is ``FIELD=VALUE``, ``FIELD!=VALUE``, ``FIELD`` (present) or
``!FIELD`` (absent); FIELD may be dotted (``a.b``); VALUE is JSON if it parses.
All conditions must hold for a message to match.
"""

from __future__ import annotations

import click
import orjson

from ..base import UNCHANGED, Output, Piper
from ..options import daemon_options
from ..runner import start

_MISSING = object()


def lookup(message, path: str):
    node = message
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _value(text: str):
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def parse_condition(text: str):
    """A predicate from one --where expression; ValueError if malformed."""
    if "!=" in text:
        field, value = text.split("!=", 1)
        want = _value(value)
        test = lambda m: lookup(m, field) != want  # noqa: E731
    elif "=" in text:
        field, value = text.split("=", 1)
        want = _value(value)
        test = lambda m: lookup(m, field) == want  # noqa: E731
    elif text.startswith("!"):
        field = text[1:]
        test = lambda m: lookup(m, field) is _MISSING  # noqa: E731
    else:
        field = text
        test = lambda m: lookup(m, field) is not _MISSING  # noqa: E731
    if not field:
        raise ValueError(f"--where {text!r}: no field name")
    return test


class Filter(Piper):
    name = "filter"
    forwards_unchanged = True  # keep, route or drop as it is: one rename or unlink each

    def __init__(self, options, *, where=(), route_to=None, invert=False):
        super().__init__(options)
        self.tests = [parse_condition(w) for w in where]
        self.invert = invert
        self.route = options.queue(route_to) if route_to else None

    def matches(self, message) -> bool:
        hit = all(t(message) for t in self.tests)
        return hit != self.invert

    def process(self, message):
        if self.matches(message):
            return UNCHANGED
        return Output(self.route, UNCHANGED) if self.route else None


@click.command("filter")
@daemon_options(queue_out="required")
@click.option("--where", multiple=True, metavar="COND",
              help="FIELD=VALUE, FIELD!=VALUE, FIELD or !FIELD (all must hold).")
@click.option("--invert", is_flag=True, help="Forward the messages that do NOT match.")
@click.option("--route-to", type=click.Path(file_okay=False),
              help="Send non-matching messages to this queue instead of dropping them.")
def command(**params):
    """Forward matching messages; drop the others or route them elsewhere."""
    raise SystemExit(start(lambda o, own: Filter(o, **own), params))
