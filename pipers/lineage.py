"""Lineage: with ``--trace``, each message carries the daemons it passed and when.

Every daemon that handles a message appends one entry to a list under the
trace field (``--trace-field``, default ``pipers_trace``)::

    "pipers_trace": [{"daemon": "put", "host": "node1", "at": "2026-11-23T18:50:01.234Z"},
                     {"daemon": "enrich", "host": "node1", "at": "2026-11-23T18:50:01.240Z"},
                     {"daemon": "ship", "host": "node1", "at": "2026-11-23T18:50:01.251Z"}]

Sources (put, probe, collect, the Reporter) start the list; the shipper adds its
entry to the document it sends, so the trace is indexed with it. Messages that
are not JSON objects (a list, a number) and messages whose trace field holds
something other than a list are left untouched: the trace never changes a
message's meaning. Off (the default), nothing is added and no message is
re-encoded: a plain hop still moves the file without copying it.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

FIELD = "pipers_trace"


def iso_ms(t: float) -> str:
    """``2026-11-23T18:50:01.234Z``: ISO 8601, UTC, milliseconds."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


class Tracer:
    """Appends this daemon's entry to messages' trace lists."""

    def __init__(self, daemon: str, field: str = FIELD, host: str | None = None,
                 clock: Callable[[], float] = time.time):
        if not field:
            raise ValueError("--trace-field must not be empty")
        self.daemon, self.field = daemon, field
        self.host = host or socket.gethostname()
        self.clock = clock

    def entry(self) -> dict:
        return {"daemon": self.daemon, "host": self.host, "at": iso_ms(self.clock())}

    def stamp(self, message: Any) -> Any:
        """A shallow copy of a JSON object with this daemon's entry appended; else as is."""
        if not isinstance(message, dict):
            return message
        trail = message.get(self.field)
        if trail is None:
            trail = []
        elif not isinstance(trail, list):
            return message
        return {**message, self.field: [*trail, self.entry()]}

    def stamp_bytes(self, data: bytes) -> bytes:
        """`stamp` on a serialised message; bytes that are not a JSON object come back as is."""
        try:
            message = orjson.loads(data)
        except orjson.JSONDecodeError:
            return data
        stamped = self.stamp(message)
        return data if stamped is message else orjson.dumps(stamped)

    def wrap(self, process: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """A piper's process() whose outputs carry this daemon's entry.

        An UNCHANGED result becomes the stamped message (re-encoded: a traced
        hop copies what it would otherwise move); a dropped message stays dropped.
        """
        from .base import UNCHANGED, Output  # base imports this module

        def result(value: Any, message: Any) -> Any:
            if value is None:
                return None
            if value is UNCHANGED:  # left alone (not an object): still moved as it is
                stamped = self.stamp(message)
                return UNCHANGED if stamped is message else stamped
            if isinstance(value, Output):
                return Output(value.queue, result(value.message, message))
            if isinstance(value, list):
                return [result(v, message) for v in value]
            return self.stamp(value)

        def traced(message: Any) -> Any:
            return result(process(message), message)

        return traced
