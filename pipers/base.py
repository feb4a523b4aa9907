"""The loop every daemon runs, and the piper that turns input messages into output.

A daemon subclasses `Piper` and implements `process(message)`; the base owns
claiming, backpressure, wake-ups, signals, errors and group commit. Sources
(no input queue) subclass `Daemon` and implement `loop(now)`.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from queues import CLAIM, DROP, BadMessage, Batch, Claim, Queue, Reason
from queues.journal import Journal
from queues.names import child_name

from . import logs
from .lineage import FIELD as TRACE_FIELD
from .lineage import Tracer
from .metrics import SAMPLE_EVERY, Metrics, MetricsError
from .waker import Waker

UNCHANGED = object()  # process() result: forward the input bytes as they are
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


class Output(NamedTuple):
    """A message for a queue other than the daemon's --queue-out-dir."""

    queue: Queue
    message: Any


@dataclass
class Options:
    queue_in_dir: str | None = None
    queue_out_dir: str | None = None
    queue_out_limit: int = 10_000
    queue_out_wait: float = 10.0
    queue_in_wait: float = 10.0
    durability: str = "none"
    max_attempts: int = 5
    batch_size: int | None = None  # None: 100, or 500 with fsync (two flushes per batch)
    once: bool = False
    group_access: bool = False
    max_message_bytes: int = 16 * 1024 * 1024
    tmp_max_age: float = 36 * 3600.0
    journal_dir: str | None = None  # note messages whose life ends here (collect cleanup)
    metrics_port: int = 0  # Prometheus endpoint (0: off); see pipers/metrics.py
    metrics_address: str = "127.0.0.1"
    metrics_textfile: str | None = None  # for node_exporter's textfile collector
    trace: bool = False  # lineage: append this daemon to each message (pipers/lineage.py)
    trace_field: str = TRACE_FIELD

    def __post_init__(self) -> None:
        if self.batch_size is None:
            self.batch_size = 500 if self.durability == "fsync" else 100

    def queue(self, path: str) -> Queue:
        return Queue(
            path,
            durability=self.durability,
            group_access=self.group_access,
            max_message_bytes=self.max_message_bytes,
        )


COUNT_SHARE = 0.02  # at most this share of a daemon's time goes to recounting its output


class Gate:
    """Backpressure on an output queue without listing it per message.

    The count is taken at most every `recount` seconds, and less often when the
    listing itself is slow (a long queue under a high limit: 300,000 names took
    0.4 s to list on the bench's ext4), so that counting stays under
    `COUNT_SHARE` of the time; it stops at the limit. In between, our own writes
    are added to it (consumers only lower the real figure), so the estimate never
    undershoots what this process put there, and reaching the limit recounts at once.
    """

    def __init__(self, queue: Queue, limit: int, recount: float = 1.0):
        self.queue, self.limit, self.recount = queue, limit, recount
        self.known = 0
        self._next = 0.0

    def room(self, now: float) -> int:
        """How many more messages fit before the limit (a large number if no limit)."""
        if self.limit <= 0:
            return 1 << 30
        if self.known >= self.limit or now >= self._next:
            started = time.perf_counter()
            self.known = self.queue.count(upto=self.limit)
            took = time.perf_counter() - started
            self._next = now + max(self.recount, took / COUNT_SHARE)
        return max(0, self.limit - self.known)

    def added(self, n: int) -> None:
        self.known += n


class Daemon:
    """Signals, wake-ups, the loop, --once and state for `status`."""

    name = "daemon"

    def __init__(self, options: Options, clock: Callable[[], float] = time.time):
        self.options = options
        self.clock = clock
        self.log = logging.getLogger(f"pipers.{self.name}")
        self.waker = Waker()
        self.stopping = False
        self.drained = False
        self._reopen_logs = False
        self._state: tuple | None = None
        self._state_extra: dict = {}
        self._next_stats = 0.0  # next write of the state file's counters while busy
        self.queue_out = options.queue(options.queue_out_dir) if options.queue_out_dir else None
        self.gate = Gate(self.queue_out, options.queue_out_limit) if self.queue_out else None
        self.metrics = Metrics(
            self.name, options.queue_in_dir or options.queue_out_dir or "",
            port=options.metrics_port, address=options.metrics_address,
            textfile=options.metrics_textfile, clock=clock,
        )
        self.tracer = Tracer(self.name, options.trace_field, clock=clock) \
            if options.trace else None

    # -- what subclasses fill in ------------------------------------------------------------

    def initialize(self) -> None:
        """After detaching, before the first loop: open files, start threads."""

    def loop(self, now: float) -> float:
        """Do one unit of work; return seconds to sleep (0: call again at once)."""
        raise NotImplementedError

    def shutdown(self) -> None:
        """Last words: close what initialize() opened."""

    @property
    def state_queue(self) -> Queue | None:
        return self.queue_out

    # -- running ------------------------------------------------------------------------------

    def run(self) -> int:
        self._install_signals()
        try:
            self.metrics.start()
        except MetricsError as e:
            self.log.error("%s", e)
            self.metrics.stop()
            self.waker.close()
            return 1
        self.initialize()
        self.set_state("running")
        try:
            while not self.stopping:
                now = self.clock()
                wait = self.loop(now)
                if now >= self._next_stats and self.metrics.changed():
                    self._write_state(now)  # counters of a busy daemon: every few seconds
                if self.options.once and self.drained:
                    break
                if wait > 0 and not self.stopping:
                    self.waker.wait(wait)
                if self._reopen_logs:
                    self._reopen_logs = False
                    logs.reopen()
                    self.log.info("log files reopened")
        finally:
            self.shutdown()
            self._state = ("stopped", "")
            self._write_state(self.clock())
            if self.state_queue is not None:
                self.state_queue.clear_state(self.name)
            self.metrics.stop()
            self.waker.close()
        self.log.info("stopped")
        return 0

    def stop(self) -> None:
        self.stopping = True
        self.waker.wake()

    def _install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)

    def _on_stop(self, signum, frame) -> None:
        if self.stopping:  # second TERM/INT: stop now; pending/ is recovered on restart
            os._exit(128 + signum)
        self.stop()

    def _on_hup(self, signum, frame) -> None:
        self._reopen_logs = True
        self.waker.wake()

    def set_state(self, state: str, why: str = "", **extra: Any) -> None:
        """Record a change of state (for `pipers status`) and log it once."""
        key = (state, why)
        if key == self._state:
            return
        self._state = key
        self._state_extra = extra
        if why:
            self.log.info("%s: %s", state, why)
        self._write_state(self.clock())

    def _write_state(self, now: float) -> None:
        """The state file: state, why, and the counters with their recent history."""
        self._next_stats = now + SAMPLE_EVERY
        if self.state_queue is None:
            return
        state, why = self._state or ("running", "")
        try:
            self.state_queue.write_state(self.name, {
                "state": state, "why": why, **self._state_extra,
                **self.metrics.state(now),
            })
        except OSError as e:
            self.log.warning("cannot record state: %s", e)

    # -- writing output --------------------------------------------------------------------------

    def room(self, now: float) -> int:
        """Backpressure: how many messages the output queue takes now (0 = wait)."""
        if self.gate is None:
            return 1 << 30
        room = self.gate.room(now)
        if room == 0:
            self.set_state(
                "waiting", f"{self.queue_out.path} holds {self.gate.known} messages "
                f"(limit {self.gate.limit})"
            )
        return room

    def emit(self, messages: list[Any]) -> list[str]:
        """Sources: enqueue new messages into --queue-out-dir as one group commit."""
        if self.tracer is not None:
            messages = [self.tracer.stamp(m) for m in messages]
        data = [orjson.dumps(m) for m in messages]
        with self.queue_out.batch() as b:
            names = [b.add(d) for d in data]
        self.gate.added(len(names))
        self.count_emitted(data)
        return names

    def count_emitted(self, data: list[bytes]) -> None:
        """Sources: messages taken in and written to --queue-out-dir (one batch)."""
        self.metrics.add(received=len(data), forwarded=len(data), bytes=sum(map(len, data)))


class Piper(Daemon):
    """A daemon with an input queue: claim, process, forward, finish."""

    name = "piper"
    # process() only ever decides where a message goes as it is: it returns UNCHANGED,
    # Output(queue, UNCHANGED) or None, and has no side effects (see `_route`)
    forwards_unchanged = False

    def __init__(self, options: Options, clock: Callable[[], float] = time.time):
        super().__init__(options, clock)
        if not options.queue_in_dir:
            raise ValueError("--queue-in-dir is required")
        self.queue_in = options.queue(options.queue_in_dir)
        # one rename (or unlink) per message, no claim (Queue.pass_on); not with lineage to add
        self._pass_on = (
            self.forwards_unchanged and not options.trace and self.queue_out is not None
            and self.queue_in.can_pass_to(self.queue_out)
        )
        self.journal = Journal(
            options.journal_dir, file_mode=self.queue_in.file_mode,
            dir_mode=self.queue_in.dir_mode,
        ) if options.journal_dir else None
        self._next_maintenance = 0.0
        self._paused_until = 0.0  # output full: arrivals (or our own releases) do not wake us
        self.processed = 0
        self._dropped = self._bytes = 0  # of the batch in hand (metrics)
        if self.tracer is not None:  # off: process() and the zero-copy move stay as they are
            self.process = self.tracer.wrap(self.process)

    @property
    def state_queue(self) -> Queue:
        return self.queue_in

    # -- what subclasses fill in ----------------------------------------------------------------

    def process(self, message: Any) -> Any:
        """Return UNCHANGED, None (drop), a message, an Output, or a list of them."""
        return UNCHANGED

    # -- the loop -------------------------------------------------------------------------------

    def initialize(self) -> None:
        if self.queue_out is not None and self.queue_out.dev != self.queue_in.dev:
            self.log.warning(
                "%s and %s are on different filesystems: messages are copied "
                "(write, sync, rename), never exposed half-written",
                self.queue_in.path, self.queue_out.path,
            )
        self.maintain(self.clock())
        if not self.options.once:
            self.waker.watch(self.queue_in.incoming)
        self.log.info("started on %s", self.queue_in.path)

    def maintain(self, now: float) -> None:
        """Periodic: recover dead owners' claims, sweep tmp/, list afresh."""
        returned, poisoned = self.queue_in.recover(self.options.max_attempts, self.name)
        if returned or poisoned:
            self.log.warning(
                "recovered %d messages of dead workers from pending/ (%d gave up as poison)",
                returned, poisoned,
            )
        self.queue_in.sweep_tmp(self.options.tmp_max_age, now)
        self.queue_in.forget()
        self._next_maintenance = now + self.options.queue_in_wait

    def loop(self, now: float) -> float:
        if now < self._paused_until:
            return self._paused_until - now
        if now >= self._next_maintenance:
            self.maintain(now)
        limit = min(self.options.batch_size, self.room(now))
        if limit == 0:
            self._paused_until = now + self.options.queue_out_wait
            return self.options.queue_out_wait
        moved, claims = self._take(limit)
        if not moved and not claims and self.waker.resume():  # was busy: watch, look again
            self.queue_in.forget()
            moved, claims = self._take(limit)
        elif moved + len(claims) == self.options.batch_size:  # busy: the loop lists the rest
            self.waker.pause()
        if not moved and not claims:
            if self._paused_until > now:  # pass_on found the output's disk full
                return self._paused_until - now
            self.drained = True
            self.set_state("idle")
            return max(0.0, min(self.options.queue_in_wait, self._next_maintenance - now))
        self.drained = False
        wait = self.handle(claims) if claims else 0.0
        if self._paused_until <= now:  # what could not be written keeps "waiting" (logged once)
            self.set_state("running")
        return wait

    def _take(self, limit: int) -> tuple[int, list[Claim]]:
        """Claims for `handle`, after moving or dropping what `pass_on` can (returns how
        many it moved or dropped)."""
        if not self._pass_on:
            return 0, self.queue_in.claim(limit)
        done = self.queue_in.pass_on(limit, self._route)
        moved, dropped = len(done.moved), len(done.dropped)
        if moved or dropped:
            self.gate.added(moved)
            self.metrics.add(received=moved + dropped, forwarded=moved, dropped=dropped,
                             bytes=done.size)
            self.metrics.finished(done.moved + done.dropped, self.clock())
            self.processed += moved + dropped
        if done.full is not None:
            e = done.full
            self.set_state("waiting", f"cannot write output: {e.strerror} ({e.filename})")
            self._paused_until = self.clock() + self.options.queue_out_wait
        return moved + dropped, done.claims

    def _route(self, data: bytes) -> Queue | str:
        """Where `Queue.pass_on` sends a message as it is: process()'s answer as a route.

        Anything but forwarding or dropping it unchanged, and a drop when a
        journal must record it, is CLAIM: the ordinary path (`handle`) runs process()
        again and does what it says. Invalid JSON raises, which pass_on also claims.
        """
        result = self.process(orjson.loads(data))
        if result is UNCHANGED:
            return self.queue_out
        if result is None:
            return DROP if self.journal is None else CLAIM
        if isinstance(result, Output) and result.message is UNCHANGED and result.queue is not None:
            return result.queue
        return CLAIM

    def handle(self, claims: list[Claim]) -> float:
        """Process a batch of claims; returns seconds to wait before the next."""
        batches: dict[str, Batch] = {}
        finished: list[Claim] = []
        in_hand = 0
        settled = self.metrics.totals["failed"] + self.metrics.totals["retried"]
        self._dropped = self._bytes = 0
        try:
            for claim in claims:
                if self.stopping and in_hand:
                    break
                in_hand += 1
                if self._one(claim, batches):
                    finished.append(claim)
            committed = 0
            for batch in batches.values():
                committed += len(batch)
                batch.commit()
        except OSError as e:
            if e.errno not in _FULL_ERRNOS:
                raise
            for batch in batches.values():
                batch.abort()
            if self.journal is not None:
                self.journal.discard()  # their consumption was not committed
            self._release([c for c in claims if os.path.lexists(c.path)])
            self.metrics.add(received=len(claims), bytes=self._bytes)
            where = ", ".join(batches) or e.filename
            self.set_state("waiting", f"cannot write output: {e.strerror} ({where})")
            self._paused_until = self.clock() + self.options.queue_out_wait
            return self.options.queue_out_wait
        if self.gate is not None:
            self.gate.added(committed)
        for claim in finished:
            try:
                self.queue_in.done(claim)
            except FileNotFoundError:
                pass  # moved (zero copy) into the next queue
        if self.journal is not None:
            self.journal.flush()  # one small file per batch, after the batch is on disk
        totals = self.metrics.totals  # failed or given back (errors/ full) one by one
        settled = totals["failed"] + totals["retried"] - settled
        self.metrics.add(received=len(claims), forwarded=in_hand - self._dropped - settled,
                         dropped=self._dropped, bytes=self._bytes)
        self.metrics.finished([c.name for c in claims[:in_hand]], self.clock())
        self._release(claims[in_hand:])
        self.processed += in_hand
        return 0.0

    def _release(self, claims: list[Claim]) -> None:
        for claim in claims:
            try:
                self.queue_in.release(claim)
            except FileNotFoundError:
                pass
        self.metrics.add(retried=len(claims))

    def _one(self, claim: Claim, batches: dict[str, Batch]) -> bool:
        """Process one claim; True if its file is to be removed once the batches commit."""
        try:
            data = self.queue_in.read(claim)
            self._bytes += len(data)
            try:
                message = orjson.loads(data)
            except orjson.JSONDecodeError as e:
                raise BadMessage(Reason.INVALID_JSON, f"invalid JSON: {e}") from None
        except BadMessage as e:
            self.fail(claim, e.reason, str(e))
            return False
        try:
            outputs = self._outputs(self.process(message), data)
        except Exception as e:  # user code: the message fails, the daemon goes on
            self.fail(claim, Reason.EXCEPTION, f"{type(e).__name__}: {e}",
                      tb=traceback.format_exc())
            return False
        if not outputs:
            self._dropped += 1
            if self.journal is not None:
                self.journal.ok(claim.id)  # consumed here: its life ends
        if len(outputs) == 1 and outputs[0][1] is None:
            queue = outputs[0][0]
            batch = batches.get(queue.path) or batches.setdefault(queue.path, queue.batch())
            batch.add_move(claim.path, claim.id, self.queue_in.dev, urgent=claim.urgent)
            return False  # the commit moves (or copies and removes) the file itself
        for i, (queue, data) in enumerate(outputs):
            batch = batches.get(queue.path) or batches.setdefault(queue.path, queue.batch())
            batch.add(data, claim.id if len(outputs) == 1 else child_name(claim.id, i),
                      urgent=claim.urgent)
        return True

    def _outputs(self, result: Any, raw: bytes) -> list[tuple[Queue, bytes | None]]:
        """Serialise a process() result: [(queue, bytes, or None for 'move as is')]."""
        if result is None:
            return []
        items = result if isinstance(result, list) else [result]
        out: list[tuple[Queue, bytes | None]] = []
        for item in items:
            queue = self.queue_out
            if isinstance(item, Output):
                queue, item = item
            if queue is None:
                continue  # a sink: nothing goes further
            if item is UNCHANGED:
                out.append((queue, None if len(items) == 1 else raw))
            else:
                out.append((queue, orjson.dumps(item)))
        return out

    def fail(self, claim: Claim, reason: Reason | str, message: str, *,
             tb: str | None = None, detail: Any = None) -> None:
        self.log.error("%s -> errors/: %s", claim.name, message)
        try:
            self.queue_in.fail(claim, reason, message, daemon=self.name, traceback=tb,
                               detail=detail)
            self.metrics.add(failed=1)
            if self.journal is not None:
                self.journal.failed(claim.id)
        except OSError as e:
            if e.errno not in _FULL_ERRNOS:
                raise
            self.queue_in.release(claim)  # no room even for the reason: keep it for later
            self.metrics.add(retried=1)
            self.set_state("waiting", f"cannot write to errors/: {e.strerror} "
                           f"({self.queue_in.errors})")
            self._paused_until = self.clock() + self.options.queue_out_wait
