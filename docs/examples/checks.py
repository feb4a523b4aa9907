"""An example CHECKS module for `pipers probe`: a check and a handle of your own.

    EXAMPLE_QUEUE=/var/spool/pipers/ship EXAMPLE_UDP_PORT=5140 \
        pipers probe --checks docs/examples/checks.py --queue-out-dir q/enrich

A *check* runs on a schedule and returns a dict (one message), a list of dicts, or []
when there is nothing to say; None is reported as an error (a forgotten return). A
*handle* is a stream: open() it, tell the probe what to wait on with fileno(), hand
out what arrived with read_messages() without blocking. The probe adds ``check`` (the
name), ``host`` and ``time`` to every message, and logs and reschedules a check that
raises.
"""

from __future__ import annotations

import os
import socket

import orjson

from pipers.sources.checks import Check, Handle, HandleEOF, Load


class QueueBacklog(Check):
    """How many messages wait in a queue directory (the pipeline watching itself)."""

    def __init__(self, queue_dir: str, interval: float = 60.0, **kw):
        super().__init__(interval, **kw)  # runs at once, then every `interval` seconds
        self.queue_dir = queue_dir

    def check_name(self) -> str:
        return self.name or f"backlog:{self.queue_dir}"

    def run(self):
        counts = {}
        for sub in ("incoming", "pending", "errors"):
            try:
                names = os.listdir(os.path.join(self.queue_dir, sub))
            except FileNotFoundError:
                return []  # no queue there yet: nothing to report this time
            counts[sub] = sum(1 for n in names if not n.startswith(".")
                              and not n.endswith(".error.json"))
        return {"queue": self.queue_dir, **counts}


class UdpJson(Handle):
    """JSON objects sent as UDP datagrams to 127.0.0.1:port, one message each."""

    reopen_delay = 5.0  # after an error, open() is tried again this much later

    def __init__(self, port: int, **kw):
        super().__init__(**kw)
        self.port = port
        self.sock: socket.socket | None = None

    def check_name(self) -> str:
        return self.name or f"udp:{self.port}"

    def open(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.bind(("127.0.0.1", self.port))

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def fileno(self) -> int | None:
        return None if self.sock is None else self.sock.fileno()  # the probe selects on it

    def read_messages(self) -> list[dict]:
        if self.sock is None:
            raise HandleEOF("not open")
        out = []
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return out  # all there was
            try:
                value = orjson.loads(data)
            except orjson.JSONDecodeError:
                value = {"line": data.decode("utf-8", "replace")}
            out.append(value if isinstance(value, dict) else {"value": value})


CHECKS = [
    Load(interval=60),
    QueueBacklog(os.environ.get("EXAMPLE_QUEUE", "/var/spool/pipers/ship"), interval=30),
    UdpJson(int(os.environ.get("EXAMPLE_UDP_PORT", "5140"))),
]
