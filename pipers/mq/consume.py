"""`pipers mq-consume`: bring messages from a RabbitMQ queue into a queue directory.

Manual acks and a bounded prefetch: the broker hands over at most
``--mq-prefetch`` unacknowledged messages; they are written into ``tmp/`` and
renamed into ``incoming/`` of ``--queue-out-dir`` as one group commit (fsync of
the files and of the directory by default), and only then acknowledged - with
one ``multiple`` ack for the whole batch. A crash between commit and ack makes
the broker deliver them again; they land under their original id (the AMQP
``message_id``) as file name, so the copy replaces the same file, or reaches the
shipper under the same deterministic ``_id`` and is dropped there.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Sequence

import click

from ..backoff import Backoff
from ..base import Daemon, Options
from ..options import DURATION, daemon_options
from ..runner import start
from .amqp import Link, LinkDown, next_try, quiet_pika

IDLE_TICK = 5.0  # longest sleep inside the broker connection before the loop looks around
ONCE_IDLE = 1.0  # --once: this long without a delivery means the queue is drained
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


class MqConsume(Daemon):
    name = "mq-consume"

    def __init__(
        self,
        options: Options,
        *,
        mq_url: Sequence[str],
        mq_queue: str,
        mq_prefetch: int = 500,
        batch_wait: float = 0.05,
        mq_backoff_max: float = 30.0,
        clock: Callable[[], float] = time.time,
    ):
        super().__init__(options, clock)
        if self.queue_out is None:
            raise ValueError("--queue-out-dir is required")
        self.link = Link(mq_url, mq_queue, prefetch=mq_prefetch,
                         wake_fd=self.waker.fds()[0], on_wake=self._woken)
        self.batch_wait = batch_wait
        self.backoff = Backoff(cap=mq_backoff_max)
        self.consumed = 0
        self.redelivered = 0
        self.exit_code = 0
        self._was_up = False

    def _woken(self) -> bool:
        """The waker fired inside pika's poller: stop waiting if the loop must act."""
        self.waker.wait(0)  # drain the pipe
        return self.stopping or self._reopen_logs

    def initialize(self) -> None:
        quiet_pika()
        self.log.info("started: %r -> %s", self.link.queue, self.queue_out.path)

    def shutdown(self) -> None:
        self.link.shutdown()  # deliveries not yet written go back to the broker's queue
        self.log.info("consumed %d messages (%d redelivered)", self.consumed, self.redelivered)

    def run(self) -> int:
        return super().run() or self.exit_code

    # -- the loop -------------------------------------------------------------------------

    def loop(self, now: float) -> float:
        if not self.link.up:
            if self._was_up:
                self._was_up = False
                self.log.warning("lost %s: %s", self.link.url, self.link.error)
            wait = self.backoff.remaining(now)
            if wait > 0:
                return wait
            try:
                self.link.open()
            except LinkDown as e:
                return self._unreachable(now, str(e))
            self._was_up = True
            self.backoff.reset()
            self.log.info("connected to %s, consuming %r", self.link.url, self.link.queue)
            self.set_state("running")
        room = self.room(now)
        if room == 0:  # the next daemon is behind: keep at most a prefetch in hand
            self.link.run(lambda: self.stopping, self.options.queue_out_wait)
            return 0.0
        want = min(self.options.batch_size, room)
        link = self.link
        if not link.deliveries and not self.stopping:
            link.run(lambda: bool(link.deliveries) or self.stopping,
                     ONCE_IDLE if self.options.once else IDLE_TICK)
            if not link.deliveries:
                if link.up:
                    self.drained = True
                    self.set_state("idle")
                return 0.0
        if len(link.deliveries) < want and not self.stopping:
            link.run(lambda: len(link.deliveries) >= want or self.stopping, self.batch_wait)
        if not link.deliveries:
            return 0.0
        return self._write(want)

    def _unreachable(self, now: float, why: str) -> float:
        delay, all_failed = next_try(self.link, self.backoff, now)
        self.set_state("waiting", f"broker unreachable: {why}", url=self.link.url)
        self.log.debug("next try in %.1fs", delay)
        if self.options.once and all_failed:
            self.log.error("--once: giving up, the broker is unreachable")
            self.exit_code = 1
            self.stop()
        return delay

    def _write(self, want: int) -> float:
        """Commit up to `want` deliveries into --queue-out-dir, then acknowledge them."""
        batch = self.link.deliveries[:want]
        try:
            with self.queue_out.batch() as b:
                for d in batch:  # --trace: lineage starts here
                    b.add(d.body if self.tracer is None else self.tracer.stamp_bytes(d.body),
                          d.name)
        except OSError as e:
            if e.errno not in _FULL_ERRNOS:
                raise
            self.set_state("waiting", f"cannot write output: {e.strerror} ({e.filename})")
            self.link.run(lambda: self.stopping, self.options.queue_out_wait)
            return 0.0
        del self.link.deliveries[: len(batch)]
        self.gate.added(len(batch))
        self.count_emitted([d.body for d in batch])
        self.consumed += len(batch)
        self.redelivered += sum(d.redelivered for d in batch)
        self.drained = False
        self.set_state("running")
        # Written for good: now the broker may forget them. If this ack is lost,
        # they come again and land on the same names.
        self.link.ack(batch[-1].tag)
        return 0.0


@click.command("mq-consume")
@daemon_options(queue_in=False, queue_out="required")
@click.option("--mq-url", multiple=True, required=True, envvar="PIPERS_MQ_URL",
              metavar="URL",
              help="amqp://user:password@host:port/vhost (repeat for other brokers, tried "
                   "in turn; or PIPERS_MQ_URL, space separated).")
@click.option("--mq-queue", required=True, metavar="NAME",
              help="The durable queue to consume (declared if missing).")
@click.option("--mq-prefetch", type=click.IntRange(1, 65535), default=500, show_default=True,
              help="Most unacknowledged messages the broker hands us at once.")
@click.option("--batch-size", type=click.IntRange(1), default=100, show_default=True,
              help="Messages written and acknowledged together (one group commit).")
@click.option("--batch-wait", type=DURATION, default=0.05, show_default=True,
              help="Longest wait for a fuller batch before writing what arrived.")
@click.option("--mq-backoff-max", type=DURATION, default=30.0, show_default=True,
              help="Longest pause between tries while the broker is unreachable.")
@click.option("--once", is_flag=True,
              help="Exit once no message arrived for a second (the queue is drained).")
def command(**params):
    """Consume a RabbitMQ queue into --queue-out-dir (acked once durably written)."""
    raise SystemExit(start(lambda o, own: MqConsume(o, **own), params))


# The broker forgets a message once acknowledged: by default it must be on disk first.
for _param in command.params:
    if _param.name == "durability":
        _param.default = "fsync"
