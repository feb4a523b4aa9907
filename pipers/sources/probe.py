"""`pipers probe`: run scheduled checks and read handles; each result is a message.

``--checks`` names a Python file or module defining ``CHECKS``:

- a list or tuple of checks and handles (see `pipers.sources.checks`), run by a
  `RunQueue`: a heap ordered by time; after each run a check goes back in with
  the time its ``next_run()`` gives; handles are opened at start, read as soon
  as their descriptor is readable, and after end of file closed and reopened
  ``reopen_delay`` seconds later;
- any other object: its ``run_next()`` is called again and again; it waits
  until its next time and returns an iterable of messages.

A check that raises, or returns None (a forgotten ``return``), or something
that is not a dict, is logged with its name and rescheduled; it never stops
the probe. Time is a parameter: ``RunQueue.due(now)`` and ``Probe.loop(now)``
run what is due at `now` and say how long to wait, so tests drive a schedule
without sleeping.
"""

from __future__ import annotations

import heapq
import importlib
import importlib.util
import itertools
import logging
import os
import select
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import click
import orjson

from queues.owner import host_name

from ..base import Daemon, Options
from ..options import DURATION, daemon_options
from ..runner import start
from ..waker import Waker
from . import checks
from .checks import HandleEOF, iso

log = logging.getLogger("pipers.probe")
ERROR_RETRY = 60.0  # when next_run() itself fails
POLL_INTERVAL = 1.0  # how often an open handle without fileno() is read
MAX_HELD = 100_000  # messages held in memory while the output queue cannot be written


@dataclass(eq=False)
class Entry:
    item: Any
    name: str
    handle: bool
    is_open: bool = False
    seq: int = field(default=0)


def item_name(item: Any, position: int) -> str:
    """``check_name()`` when the item has one, else its class name and position."""
    getter = getattr(item, "check_name", None)
    if callable(getter):
        try:
            name = getter()
        except Exception:  # noqa: BLE001 - a broken name method must not stop the probe
            name = None
        if name:
            return str(name)
    return f"{type(item).__name__}[{position}]"


class RunQueue:
    """The container for a list of checks and handles: a run queue ordered by time."""

    def __init__(self, items: Iterable[Any], *, host: str | None = None,
                 log: logging.Logger = log):
        self.host = host or host_name()
        self.log = log
        self.entries: list[Entry] = []
        for i, item in enumerate(items):
            if callable(getattr(item, "read_messages", None)) and callable(
                    getattr(item, "open", None)):
                handle = True
            elif callable(getattr(item, "run", None)) and callable(
                    getattr(item, "next_run", None)):
                handle = False
            else:
                raise TypeError(
                    f"CHECKS[{i}] ({type(item).__name__}) is neither a check "
                    "(next_run() and run()) nor a handle (open() and read_messages())"
                )
            self.entries.append(Entry(item, item_name(item, i), handle, seq=i))
        self._heap: list[tuple[float, int, Entry]] = []
        self._started = False
        self._seq = itertools.count(len(self.entries))

    # -- the schedule ---------------------------------------------------------------------

    def _push(self, t: float, entry: Entry) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), entry))

    def _start(self, now: float) -> None:
        self._started = True
        for entry in self.entries:
            if entry.handle:
                self._push(now, entry)  # opened at once
            else:
                self._push(self._next_run(entry, now), entry)

    def _next_run(self, entry: Entry, now: float) -> float:
        try:
            return float(entry.item.next_run())
        except Exception:  # noqa: BLE001
            self.log.error("check %s: next_run() failed; retrying in %ds\n%s", entry.name,
                           ERROR_RETRY, traceback.format_exc().rstrip())
            return now + ERROR_RETRY

    def next_time(self) -> float | None:
        """When something is next due (None: nothing scheduled)."""
        return self._heap[0][0] if self._heap else None

    def open_handles(self) -> list[Entry]:
        return [e for e in self.entries if e.handle and e.is_open]

    def fds(self) -> list[int]:
        """Descriptors of open handles (to wait on together with the probe's waker)."""
        out = []
        for e in self.open_handles():
            fd = _fileno(e)
            if fd is not None:
                out.append(fd)
        return out

    # -- one pass -------------------------------------------------------------------------------

    def due(self, now: float) -> list[dict]:
        """Run every check due at `now`, (re)open handles due, read ready handles."""
        out: list[dict] = []
        with checks.at(now):
            if not self._started:
                self._start(now)
            later: list[tuple[float, Entry]] = []
            while self._heap and self._heap[0][0] <= now:
                _, _, entry = heapq.heappop(self._heap)
                if entry.handle:
                    self._open(entry, now, later)
                else:
                    self._run(entry, now, out)
                    later.append((self._next_run(entry, now), entry))
            for t, entry in later:  # each check runs at most once per pass
                self._push(t, entry)
            self._read(now, out)
        return out

    def _run(self, entry: Entry, now: float, out: list[dict]) -> None:
        try:
            result = entry.item.run()
        except Exception:  # noqa: BLE001 - a failing check never stops the probe
            self.log.error("check %s failed:\n%s", entry.name, traceback.format_exc().rstrip())
            return
        if result is None:
            self.log.error("check %s returned None (a forgotten return?); expected a dict or "
                           "a list of dicts", entry.name)
            return
        self._accept(entry, result, now, out)

    def _accept(self, entry: Entry, result: Any, now: float, out: list[dict]) -> None:
        items = result if isinstance(result, (list, tuple)) else [result]
        for m in items:
            if not isinstance(m, dict):
                self.log.error("check %s produced a %s, not a dict: skipped", entry.name,
                               type(m).__name__)
                continue
            msg = {"check": entry.name, "host": self.host, "time": iso(now)}
            msg.update(m)
            out.append(msg)

    def _open(self, entry: Entry, now: float, later: list[tuple[float, Entry]]) -> None:
        try:
            entry.item.open()
        except Exception as e:  # noqa: BLE001
            delay = _reopen_delay(entry)
            self.log.warning("handle %s: cannot open (%s); retrying in %gs", entry.name,
                             e, delay)
            later.append((now + delay, entry))
            return
        entry.is_open = True

    def _read(self, now: float, out: list[dict]) -> None:
        handles = self.open_handles()
        if not handles:
            return
        fds = [fd for fd in (_fileno(e) for e in handles) if fd is not None]
        ready = set(select.select(fds, [], [], 0)[0]) if fds else set()
        for entry in handles:
            fd = _fileno(entry)
            if fd is not None and fd not in ready:
                continue
            try:
                result = entry.item.read_messages()
            except HandleEOF:
                self._close(entry, now, None)
                continue
            except Exception:  # noqa: BLE001 - reopened later, never a busy loop
                self._close(entry, now, traceback.format_exc().rstrip())
                continue
            if result:
                self._accept(entry, result, now, out)

    def _close(self, entry: Entry, now: float, error: str | None) -> None:
        delay = _reopen_delay(entry)
        if error:
            self.log.error("handle %s failed; reopening in %gs:\n%s", entry.name, delay, error)
        else:
            self.log.debug("handle %s: end of file; reopening in %gs", entry.name, delay)
        try:
            entry.item.close()
        except Exception:  # noqa: BLE001
            self.log.error("handle %s: close() failed:\n%s", entry.name,
                           traceback.format_exc().rstrip())
        entry.is_open = False
        self._push(now + delay, entry)

    def close(self) -> None:
        for entry in self.open_handles():
            try:
                entry.item.close()
            except Exception:  # noqa: BLE001
                pass
            entry.is_open = False

    # -- the container protocol -----------------------------------------------------------------

    def run_next(self, clock: Callable[[], float] = time.time) -> list[dict]:
        """Wait until something is due (or a handle has data) and return its messages."""
        while True:
            now = clock()
            nxt = self.next_time() if self._started else now
            if nxt is not None and nxt > now:
                fds = self.fds()
                if fds:
                    select.select(fds, [], [], nxt - now)
                else:
                    time.sleep(nxt - now)
                now = clock()
            msgs = self.due(now)
            if msgs:
                return msgs


def _fileno(entry: Entry) -> int | None:
    getter = getattr(entry.item, "fileno", None)
    if not callable(getter):
        return None
    try:
        fd = getter()
    except Exception:  # noqa: BLE001
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


def _reopen_delay(entry: Entry) -> float:
    delay = getattr(entry.item, "reopen_delay", None)
    return float(delay) if isinstance(delay, (int, float)) and delay >= 0 else 10.0


def load_checks(spec: str) -> Any:
    """``CHECKS`` from a Python file (``path/checks.py``) or an importable module name."""
    try:
        if spec.endswith(".py") or os.sep in spec:
            path = os.path.abspath(spec)
            name = "pipers_checks_" + os.path.splitext(os.path.basename(path))[0]
            mod_spec = importlib.util.spec_from_file_location(name, path)
            if mod_spec is None or mod_spec.loader is None:
                raise ImportError(f"cannot load {path}")
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules[name] = module
            mod_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(spec)
    except FileNotFoundError as e:
        raise ValueError(f"--checks {spec!r}: {e.strerror}") from None
    except Exception as e:  # noqa: BLE001 - any error in the user's module
        raise ValueError(f"--checks {spec!r}: {type(e).__name__}: {e}") from None
    if not hasattr(module, "CHECKS"):
        raise ValueError(f"--checks {spec!r} defines no CHECKS")
    return module.CHECKS


class _HandleWaker(Waker):
    """The daemon's waker that also returns when an open handle has data."""

    def __init__(self, fds: Callable[[], list[int]]):
        super().__init__()
        self._handle_fds = fds

    def wait(self, timeout: float) -> bool:
        extra = self._handle_fds()
        if not extra:
            return super().wait(timeout)
        r = self.fds()[0]
        ready, _, _ = select.select([r, *extra], [], [], max(0.0, timeout))
        if r in ready:
            super().wait(0)  # drain the pipe
        return bool(ready)


class Probe(Daemon):
    """Runs ``CHECKS`` and writes each result into --queue-out-dir."""

    name = "probe"

    def __init__(self, options: Options, *, checks: Any, host: str | None = None,
                 clock: Callable[[], float] = time.time):
        super().__init__(options, clock)
        if self.queue_out is None:
            raise ValueError("--queue-out-dir is required")
        if isinstance(checks, (list, tuple)):
            try:
                self.run_queue: RunQueue | None = RunQueue(checks, host=host, log=self.log)
            except TypeError as e:
                raise ValueError(str(e)) from None
            self.container = None
            self.waker.close()
            self.waker = _HandleWaker(self.run_queue.fds)
        elif callable(getattr(checks, "run_next", None)):
            self.run_queue, self.container = None, checks
        else:
            raise ValueError("CHECKS must be a list or tuple of checks and handles, or an "
                             "object with run_next()")
        self.held: list[bytes] = []  # serialised, waiting for room in the output queue

    def initialize(self) -> None:
        n = len(self.run_queue.entries) if self.run_queue else 0
        self.log.info("started: %s into %s", f"{n} checks and handles" if self.run_queue
                      else type(self.container).__name__, self.queue_out.path)

    def shutdown(self) -> None:
        if self.run_queue is not None:
            self.run_queue.close()

    def loop(self, now: float) -> float:
        if self.held and not self._write(now):
            return self.options.queue_out_wait
        if self.room(now) == 0:
            return self.options.queue_out_wait  # checks wait too: nothing piles up
        if self.run_queue is not None:
            messages = self.run_queue.due(now)
        else:
            messages = self._next_from_container()
        self.held.extend(self._serialised(messages))
        self._write(now)
        if self.run_queue is None:
            return 0.0
        nxt = self.run_queue.next_time()
        wait = 60.0 if nxt is None else max(0.0, nxt - now)
        if any(_fileno(e) is None for e in self.run_queue.open_handles()):
            wait = min(wait, POLL_INTERVAL)  # nothing to wait on: poll such handles
        return wait

    def _next_from_container(self) -> list:
        try:
            result = self.container.run_next()
            return [] if result is None else list(result)
        except Exception:  # noqa: BLE001
            self.log.error("run_next() failed:\n%s", traceback.format_exc().rstrip())
            self.waker.wait(1.0)  # never a busy loop on a broken container
            return []

    def _serialised(self, messages: list) -> list[bytes]:
        out = []
        for m in messages:
            if not isinstance(m, dict):
                self.log.error("a %s is not a message (a dict): skipped", type(m).__name__)
                continue
            if self.tracer is not None:  # --trace: lineage starts here
                m = self.tracer.stamp(m)
            try:
                out.append(orjson.dumps(m))
            except TypeError as e:
                self.log.error("check %s: message is not JSON (%s): skipped",
                               m.get("check", "?"), e)
        return out

    def _write(self, now: float) -> bool:
        """Enqueue held messages as far as the output queue has room; True if all went."""
        while self.held:
            room = self.room(now)
            if room == 0:
                return False
            part, rest = self.held[:room], self.held[room:]
            try:
                with self.queue_out.batch() as b:
                    for data in part:
                        b.add(data)
            except OSError as e:
                if len(self.held) > MAX_HELD:
                    self.log.error("dropping %d oldest messages", len(self.held) - MAX_HELD)
                    del self.held[: len(self.held) - MAX_HELD]
                self.set_state("waiting", f"cannot write output: {e}")
                return False
            self.gate.added(len(part))
            self.count_emitted(part)
            self.held = rest
        self.set_state("running")
        return True


@click.command("probe")
@daemon_options(queue_in=False, queue_out="required")
@click.option("--checks", "checks_spec", required=True, metavar="FILE.py|MODULE",
              help="Python file or module defining CHECKS.")
@click.option("--host", help="Host name put into messages (default: this host's).")
@click.option("--reopen-delay", type=DURATION, default=None,
              help="Reopen handles after end of file this late (default: each handle's own).")
def command(checks_spec, host, reopen_delay, **params):
    """Run scheduled checks and read handles; each result becomes a message."""

    def make(options: Options, own: dict) -> Probe:
        items = load_checks(checks_spec)
        if reopen_delay is not None and isinstance(items, (list, tuple)):
            for item in items:
                if callable(getattr(item, "read_messages", None)):
                    item.reopen_delay = reopen_delay
        return Probe(options, checks=items, host=host)

    raise SystemExit(start(make, params))
