"""Shipper failover: while the search cluster is unreachable, bundles go to RabbitMQ.

`pipers ship --failover-mq-url URL [--failover-mq-queue NAME] [--failover-after D]`:

- For the first ``--failover-after`` of an outage the shipper behaves as without
  failover: the bundle waits in ``pending/``, dequeuing pauses.
- After that, each bundle is published (persistent, confirmed) to the failover
  queue instead; a message leaves ``pending/`` once the broker confirmed it. The
  cluster is still tried on the shipper's own back-off schedule - with a real
  bundle when there is one, else with a ``HEAD /`` - and the broker being
  unreachable too simply leaves everything on disk.
- Once the cluster answers, the shipper brings the records back: it consumes the
  failover queue into its own ``incoming/`` (fsync, then ack), a bundle's worth at
  a time and only while it has little else to do, and ships them as usual. Also
  at start-up and every ``RECHECK`` seconds, so records left by an earlier run or
  by another shipper sharing the queue come back too.

Every record keeps its message id (AMQP ``message_id``), so it gets the same
document ``_id`` and - computed by the same rule from the record's own fields and
the time in its id - the same index it would have had: a record that reached the
cluster and the failover queue both is still one document, in its own index
(DIRAC's consumer indexes failover records under its own type). The index
chosen at failover time travels in the ``pipers-index`` header for anyone else
reading the queue. Shippers that share a failover queue must share their index
settings.

The shipper calls `Failover.step` first in each loop, and `close` at shutdown.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from elastic_transport import TransportError

from ..backoff import Backoff
from .amqp import Link, LinkDown, quiet_pika

if TYPE_CHECKING:  # pragma: no cover
    from ..ship.shipper import Ship

INDEX_HEADER = "pipers-index"
BACK_BATCH = 500  # records brought back per step (and the consumer's prefetch)
BACK_WAIT = 0.5  # an empty failover queue answers nothing within this: all are back
RECHECK = 60.0  # seconds between looks at the failover queue while nothing is known there

log = logging.getLogger("pipers.ship.failover")


class Failover:
    def __init__(self, urls: Sequence[str], queue: str, after: float, *,
                 confirm_timeout: float = 30.0, backoff_max: float = 30.0,
                 recheck: float = RECHECK):
        if after < 0:
            raise ValueError("--failover-after cannot be negative")
        self.after = after
        self.queue = queue
        self.confirm_timeout = confirm_timeout
        self.recheck = recheck
        self.out = Link(urls, queue, confirms=True, open_timeout=confirm_timeout)
        self.back = Link(urls, queue, prefetch=BACK_BATCH, open_timeout=confirm_timeout)
        self.backoff = Backoff(cap=backoff_max)  # the broker's reachability
        self.diverting = False
        quiet_pika()
        self.next_check = 0.0  # when to look for records to bring back
        self.sent = 0
        self.brought_back = 0

    # -- the hook ---------------------------------------------------------------------------

    def step(self, ship: Ship, now: float) -> float | None:
        """Run first in each shipper loop: a wait to return, or None to ship as usual."""
        if ship.down_since is not None and now - ship.down_since >= self.after:
            return self._divert(ship, now)
        if self.diverting:
            self.diverting = False
            self.next_check = now  # the cluster is back: bring the records home
            log.warning("search cluster back: bringing %d failed-over records back from %r",
                        self.sent, self.queue)
        if ship.down_since is None and now >= self.next_check and not ship.stopping:
            return self._bring_back(ship, now)
        return None

    def close(self) -> None:
        self.out.shutdown()
        self.back.shutdown()
        if self.sent or self.brought_back:
            log.info("failover: %d records sent to %r, %d brought back", self.sent,
                     self.queue, self.brought_back)

    # -- while the cluster is away ---------------------------------------------------------------

    def _divert(self, ship: Ship, now: float) -> float | None:
        if not self.diverting:
            self.diverting = True
            self.back.close()  # hold no deliveries while we are the ones sending
            log.warning("search cluster unreachable for %.0fs: bundles go to RabbitMQ queue %r",
                        now - ship.down_since, self.queue)
        if getattr(ship, "flight", None) is not None:
            return None  # a bundle's answer is awaited: the shipper takes it first
        if ship.backoff.remaining(now) == 0:  # the shipper's schedule says: try the cluster
            if ship.hand:
                return None  # with a real bundle (an outage brings us back here)
            if self._cluster_answers(ship):  # nothing in hand (no claims during an outage)
                ship.log.warning("search cluster answers again after %.0fs",
                                 now - ship.down_since)
                ship.down_since = None
                ship.retrying = False
                ship.backoff.reset()
                ship.set_state("running")
                return 0.0
            ship.backoff.fail(now)
        if ship.stopping:
            return 0.0
        wait = self.backoff.remaining(now)
        if wait > 0:  # the broker is away too: everything stays on disk
            return min(wait, max(0.01, ship.backoff.remaining(now)))
        ship._fill(now)
        ship.set_state("failover", f"search cluster unreachable; bundles go to RabbitMQ queue "
                       f"{self.queue!r}", sent=self.sent)
        if not ship.hand:
            return ship.backoff.remaining(now)
        return self._publish(ship, now)

    def _cluster_answers(self, ship: Ship) -> bool:
        try:
            ship.client.transport.perform_request("HEAD", "/")
        except TransportError:
            return False
        return True

    def _publish(self, ship: Ship, now: float) -> float:
        items = list(ship.hand)
        if not self.out.up:
            try:
                self.out.open()
            except LinkDown as e:
                return self._broker_away(ship, now, str(e))
        try:
            confirmed = self.out.publish(
                [(item.claim.id, _source(item.lines), {INDEX_HEADER: item.index})
                 for item in items],
                self.confirm_timeout,
            )
        except LinkDown as e:
            return self._broker_away(ship, now, str(e))
        for item, ok in zip(items, confirmed, strict=True):
            if ok:  # in the failover queue for good: the file may go
                ship._delivered_paths.append(item.claim.path)
                ship._finish(item)
        ship._settle([])
        n = sum(confirmed)
        ship.metrics.add(forwarded=n)  # left pending/ for the failover queue
        self.sent += n
        if n < len(items):
            return self._broker_away(ship, now, self.out.error)
        self.backoff.reset()
        return 0.0

    def _broker_away(self, ship: Ship, now: float, why: str) -> float:
        delay = self.backoff.fail(now)
        ship.set_state("waiting", f"search cluster and failover broker unreachable ({why}); "
                       f"{len(ship.hand)} messages kept in pending/", on="cluster")
        return min(delay, max(0.01, ship.backoff.remaining(now)))

    # -- once it is back --------------------------------------------------------------------------

    def _bring_back(self, ship: Ship, now: float) -> float | None:
        if ship.hand or ship.queue_in.count(upto=BACK_BATCH) >= BACK_BATCH:
            self.next_check = now + 0.2  # the shipper has work: bring more back soon
            return None
        if self.backoff.remaining(now) > 0:
            return None
        if not self.back.up:
            try:
                self.back.open()
            except LinkDown as e:
                self.backoff.fail(now)
                self.next_check = now + min(self.recheck, self.backoff.remaining(now))
                log.debug("failover queue not reachable: %s", e)
                return None
        link = self.back
        link.run(lambda: len(link.deliveries) >= BACK_BATCH or ship.stopping, BACK_WAIT)
        if not link.deliveries:
            link.close()
            self.next_check = now + self.recheck
            return None
        batch = list(link.deliveries)
        target = _fsync_queue(ship)
        with target.batch() as b:
            for d in batch:
                b.add(d.body, d.name)
        link.deliveries.clear()
        link.ack(batch[-1].tag)
        self.brought_back += len(batch)
        self.backoff.reset()
        self.next_check = now  # more may be waiting
        ship.log.info("brought %d records back from RabbitMQ queue %r", len(batch), self.queue)
        return 0.0


def _source(lines: bytes) -> bytes:
    """The document line of a bulk item (action line, then source line)."""
    return lines.split(b"\n", 1)[1].rstrip(b"\n")


def _fsync_queue(ship: Any):
    """The shipper's own queue, written with fsync: the broker forgets what we ack."""
    return dataclasses.replace(ship.options, durability="fsync").queue(ship.queue_in.path)
