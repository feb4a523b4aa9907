"""`pipers mq-publish`: hand each message of a queue to a durable RabbitMQ queue.

Each claimed message is published as a persistent message (its bytes as they
are, its id as ``message_id`` and ``pipers-id`` header) with publisher confirms;
a batch waits for its confirms in one round trip. A message leaves ``pending/``
only once the broker confirmed it: one it refused, returned or never answered
for goes back to ``incoming/`` and is published again (at least once; the id
lets the far end drop the copy). While the broker is unreachable nothing is
claimed: messages stay on disk and the daemon retries with a jittered back-off,
sleeping on its waker (a signal still stops it at once).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import click
import orjson

from queues import BadMessage, Claim, Reason

from ..backoff import Backoff
from ..base import Options, Piper
from ..options import DURATION, daemon_options
from ..runner import start
from .amqp import Link, LinkDown, next_try, quiet_pika

IDLE_TICK = 5.0  # an idle daemon still looks at its connection (heartbeats) this often


class MqPublish(Piper):
    name = "mq-publish"

    def __init__(
        self,
        options: Options,
        *,
        mq_url: Sequence[str],
        mq_queue: str,
        mq_confirm_timeout: float = 30.0,
        mq_backoff_max: float = 30.0,
        clock: Callable[[], float] = time.time,
    ):
        super().__init__(options, clock)
        self.link = Link(mq_url, mq_queue, confirms=True, open_timeout=mq_confirm_timeout)
        self.confirm_timeout = mq_confirm_timeout
        self.backoff = Backoff(cap=mq_backoff_max)
        self.published = 0
        self.exit_code = 0

    def initialize(self) -> None:
        quiet_pika()
        super().initialize()

    def shutdown(self) -> None:
        self.link.shutdown()
        self.log.info("published %d messages to %r", self.published, self.link.queue)

    def run(self) -> int:
        return super().run() or self.exit_code

    # -- the loop -------------------------------------------------------------------------

    def loop(self, now: float) -> float:
        if self.link.up:
            self.link.run(timeout=0)  # heartbeats; notice a connection the broker closed
            if not self.link.up:
                self.log.warning("lost %s: %s", self.link.url, self.link.error)
        wait = self.backoff.remaining(now)
        if wait > 0:
            return wait
        if not self.link.up:
            try:
                self.link.open()
            except LinkDown as e:
                return self._unreachable(now, str(e))
            self.log.info("connected to %s, publishing to %r", self.link.url, self.link.queue)
        return min(super().loop(now), IDLE_TICK)

    def _unreachable(self, now: float, why: str) -> float:
        delay, all_failed = next_try(self.link, self.backoff, now)
        self.set_state("waiting", f"broker unreachable: {why}", url=self.link.url)
        self.log.debug("next try in %.1fs", delay)
        if self.options.once and all_failed:
            self.log.error("--once: giving up; the messages stay in %s", self.queue_in.path)
            self.exit_code = 1
            self.stop()
        return delay

    def handle(self, claims: list[Claim]) -> float:
        """Publish a batch of claims; finish the confirmed ones, release the rest."""
        batch: list[tuple[Claim, bytes]] = []
        in_hand = 0
        for claim in claims:
            if self.stopping and in_hand:
                break
            in_hand += 1
            try:
                data = self.queue_in.read(claim)
                try:
                    orjson.loads(data)
                except orjson.JSONDecodeError as e:
                    raise BadMessage(Reason.INVALID_JSON, f"invalid JSON: {e}") from None
            except BadMessage as e:
                self.fail(claim, e.reason, str(e))
                continue
            batch.append((claim, data))
        self._release(claims[in_hand:])
        self.metrics.add(received=len(claims), bytes=sum(len(data) for _, data in batch))
        if self.tracer is not None:  # --trace: the published message carries our entry
            batch = [(claim, self.tracer.stamp_bytes(data)) for claim, data in batch]
        if not batch:
            return 0.0
        try:
            confirmed = self.link.publish([(c.id, data) for c, data in batch],
                                          self.confirm_timeout)
        except LinkDown:
            confirmed = [False] * len(batch)
        for (claim, _), ok in zip(batch, confirmed, strict=True):
            if ok:
                self.queue_in.done(claim)
        self._release([claim for (claim, _), ok in zip(batch, confirmed, strict=True) if not ok])
        n = sum(confirmed)
        self.metrics.add(forwarded=n)
        self.metrics.finished([c.name for (c, _), ok in zip(batch, confirmed, strict=True)
                               if ok], self.clock())
        self.published += n
        self.processed += n
        if n < len(batch):
            why = self.link.error if not self.link.up else \
                f"the broker refused {len(batch) - n} of {len(batch)} messages"
            return self._unreachable(self.clock(), why)
        self.backoff.reset()
        return 0.0


@click.command("mq-publish")
@daemon_options(queue_out="none")
@click.option("--mq-url", multiple=True, required=True, envvar="PIPERS_MQ_URL",
              metavar="URL",
              help="amqp://user:password@host:port/vhost (repeat for other brokers, tried "
                   "in turn; or PIPERS_MQ_URL, space separated).")
@click.option("--mq-queue", required=True, metavar="NAME",
              help="The durable queue to publish to (declared if missing).")
@click.option("--mq-confirm-timeout", type=DURATION, default=30.0, show_default=True,
              help="Give up waiting for a batch's confirms (or a connection) after this.")
@click.option("--mq-backoff-max", type=DURATION, default=30.0, show_default=True,
              help="Longest pause between tries while the broker is unreachable.")
def command(**params):
    """Publish each message to a durable RabbitMQ queue (persistent, confirmed)."""
    raise SystemExit(start(lambda o, own: MqPublish(o, **own), params))
