"""What a daemon did, counted: Prometheus metrics and the figures `pipers status` reads.

One `Metrics` object per daemon process. The daemon adds to it once per batch
(`add`), never per message; the counters are prometheus_client's own, in a
registry of their own, labelled ``daemon`` (its name) and ``queue`` (the queue
it consumes, or feeds when it is a source)::

    pipers_received_messages_total   claimed from the input queue (sources: taken in)
    pipers_forwarded_messages_total  written to a next queue / acknowledged by the cluster
    pipers_dropped_messages_total    finished without output (a filter or function said None)
    pipers_failed_messages_total     moved to errors/
    pipers_retried_messages_total    released to be tried again (shipper: documents resent)
    pipers_bundles_total             bulk requests sent (shipper)
    pipers_message_bytes_total       bytes of the messages read
    pipers_latency_seconds           histogram: age of a message (from the time in its
                                     name) when this daemon finished it

They are served over HTTP (``--metrics-port``, with the process collector) and/or
written to a file for node_exporter's textfile collector (``--metrics-textfile``,
every few seconds and at exit, atomically). Two daemons writing one textfile
would overwrite each other's figures, so a daemon holds an flock on a hidden
``.NAME.lock`` beside it, and a second one refuses to start. The prometheus_client objects (and
the latency histogram) exist only when one of the two is on: its import alone
costs about 40 ms at every start. Plain totals always run, because the state
file carries them and a short history of them (`state`) for `pipers status`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Iterable

from queues.names import name_time

KINDS = ("received", "forwarded", "dropped", "failed", "retried", "bundles", "bytes")
NAMES = {
    "received": ("pipers_received_messages",
                 "Messages claimed from the input queue (sources: messages taken in)."),
    "forwarded": ("pipers_forwarded_messages",
                  "Messages written to a next queue (shipper: acknowledged by the cluster)."),
    "dropped": ("pipers_dropped_messages",
                "Messages finished without any output (a filter or function returned None)."),
    "failed": ("pipers_failed_messages", "Messages moved to errors/."),
    "retried": ("pipers_retried_messages",
                "Messages released to be tried again (shipper: documents kept for a resend)."),
    "bundles": ("pipers_bundles", "Bulk requests sent to the search cluster (shipper)."),
    "bytes": ("pipers_message_bytes", "Bytes of the messages read."),
}
LATENCY = "pipers_latency_seconds"
LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                   30.0, 60.0, 300.0, 900.0, 3600.0, 86400.0, float("inf"))
SAMPLE_EVERY = 5.0  # seconds between history samples (and state file writes while busy)
HISTORY_SPAN = 70.0  # seconds of history kept
HISTORY_BASE = 60.0  # ... and always one sample at least this old, if there is one
TEXTFILE_EVERY = 5.0  # seconds between writes of --metrics-textfile

log = logging.getLogger("pipers.metrics")


class MetricsError(OSError):
    """The metrics cannot be exported as asked (the message says why, in one line)."""


class Metrics:
    """Counters, a latency histogram and their exporters for one daemon process."""

    def __init__(self, daemon: str, queue: str = "", *, port: int = 0,
                 address: str = "127.0.0.1", textfile: str | None = None,
                 clock=time.time):
        self.daemon, self.queue = daemon, queue
        self.port, self.address, self.textfile = port, address, textfile
        self.clock = clock
        self.exporting = bool(port or textfile)
        self.registry = None  # prometheus_client's, only when exported (its import: ~40 ms)
        self._counters: dict = {}
        if self.exporting:
            self._prometheus(daemon, queue)
        self.totals = dict.fromkeys(KINDS, 0)
        self.history: list[list[float]] = [[round(clock(), 3), 0]]
        self._sampled = dict(self.totals)  # totals as of the last state write
        self._server = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock_fd: int | None = None

    def _prometheus(self, daemon: str, queue: str) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        labels = {"daemon": daemon, "queue": queue}
        self._counters = {
            kind: Counter(name, doc, list(labels), registry=self.registry).labels(**labels)
            for kind, (name, doc) in NAMES.items()
        }
        self._latency = Histogram(
            LATENCY, "Age of a message (from the time in its name) when this daemon finished "
            "it.", list(labels), buckets=LATENCY_BUCKETS, registry=self.registry,
        ).labels(**labels)

    # -- counting ---------------------------------------------------------------------------

    def add(self, **counts: int) -> None:
        """Add to the counters (once per batch): ``add(received=100, forwarded=98)``."""
        counters = self._counters
        for kind, n in counts.items():
            if n:
                self.totals[kind] += n
                if counters:
                    counters[kind].inc(n)

    def finished(self, names: Iterable[str], now: float) -> None:
        """Observe the latency of messages finished at `now` (only when exporting)."""
        if not self.exporting:
            return
        observe = self._latency.observe
        for name in names:
            t = name_time(name)
            if t is not None:
                observe(max(0.0, now - t))

    @property
    def processed(self) -> int:
        t = self.totals
        return t["forwarded"] + t["dropped"] + t["failed"]

    # -- the state file (`pipers status`) -----------------------------------------------------

    def changed(self) -> bool:
        """Any counter moved since the last `state`."""
        return self.totals != self._sampled

    def state(self, now: float) -> dict:
        """``counters`` (totals since start) and ``history`` ([[time, processed], ...]).

        Each call (each write of the state file) records the figure of the
        moment if it changed. Samples stay SAMPLE_EVERY apart: a newest sample
        younger than that after the one before it is moved forward instead of
        a new one added. Samples older than HISTORY_SPAN go, but the newest one
        at or before now - HISTORY_BASE stays.
        """
        history, processed = self.history, self.processed
        t = round(now, 3)
        if processed != history[-1][1]:
            if len(history) > 1 and history[-1][0] - history[-2][0] < SAMPLE_EVERY:
                history[-1] = [t, processed]  # still too close to the one before: moved
            else:
                history.append([t, processed])
        start = 0
        while start < len(history) - 1 and history[start][0] < now - HISTORY_SPAN \
                and history[start + 1][0] <= now - HISTORY_BASE:
            start += 1
        if start:
            del history[:start]
        self._sampled = dict(self.totals)
        return {"counters": dict(self.totals), "history": [list(s) for s in history]}

    # -- exporting ------------------------------------------------------------------------

    def start(self) -> None:
        """Open the HTTP endpoint and start the textfile writer (after detaching).

        MetricsError if the port cannot be bound or another daemon writes the textfile.
        """
        if not self.exporting:
            return
        if self.textfile:
            self._lock_textfile()
        from prometheus_client import (
            CollectorRegistry,
            PlatformCollector,
            ProcessCollector,
            disable_created_metrics,
            start_http_server,
        )

        disable_created_metrics()  # no *_created series: half the lines, no use here
        if self.port:
            served = CollectorRegistry()
            served.register(self.registry)
            ProcessCollector(registry=served)
            PlatformCollector(registry=served)
            try:
                self._server, _ = start_http_server(self.port, self.address, registry=served)
            except OSError as e:
                raise MetricsError(f"cannot serve metrics on {self.address}:{self.port}: "
                                   f"{e.strerror or e}") from None
            log.info("metrics on http://%s:%d/metrics", self.address, self.port)
        if self.textfile:
            error = self.write_textfile()
            if error is not None:
                log.warning("cannot write metrics to %s: %s", self.textfile, error)
            self._thread = threading.Thread(target=self._write_every, daemon=True,
                                            name="pipers-metrics-textfile")
            self._thread.start()

    def stop(self) -> None:
        """Last textfile write; close the endpoint."""
        if self._thread is not None:  # the textfile is ours (never when refused at start)
            self._stop.set()
            self._thread.join()
            self._thread = None
            if self.write_textfile() is not None:
                log.warning("cannot write metrics to %s at exit", self.textfile)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _lock_textfile(self) -> None:
        """Hold the textfile's lock for the life of the process; refuse a busy one."""
        head, tail = os.path.split(self.textfile)
        lock = os.path.join(head, "." + tail + ".lock")  # not *.prom: the collector skips it
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except OSError as e:  # no such directory yet, ...: the writes will say so too
            log.warning("cannot lock %s: %s", lock, e.strerror or e)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise MetricsError(f"--metrics-textfile {self.textfile} is written by another "
                               "running daemon: give each instance its own file") from None
        self._lock_fd = fd

    def write_textfile(self) -> OSError | None:
        """Write the textfile now (a temporary file renamed over it); the error, if any."""
        from prometheus_client import write_to_textfile

        try:
            write_to_textfile(self.textfile, self.registry)
        except OSError as e:
            return e
        return None

    def _write_every(self) -> None:
        failing = False
        while not self._stop.wait(TEXTFILE_EVERY):
            error = self.write_textfile()
            if error is not None and not failing:
                log.warning("cannot write metrics to %s: %s", self.textfile, error)
            elif error is None and failing:
                log.info("metrics written to %s again", self.textfile)
            failing = error is not None
