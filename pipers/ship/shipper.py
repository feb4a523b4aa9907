"""`Ship`: the last daemon of a pipeline; commits its queue to a search cluster's `_bulk`.

A message leaves ``pending/`` only once the cluster acknowledged its document
(or said it already has it: 409 on ``create``), or refused it for good (it
then waits in ``errors/`` with the engine's error for a replay). Everything
else stays on disk and is tried again after a jittered, capped back-off:

- outage (connection refused, time-out, 5xx/429/any other error on the whole
  request, an answer that does not parse or match): the whole bundle is kept,
  no new message is claimed, ``status`` shows "waiting" and why;
- documents refused for now (429, 5xx, rejected execution, a write block):
  they stay in hand and go again with the next bundle, topped up with new
  messages up to ``--bundle-size``;
- 413 (request too large): the bundle is split in halves, and later bundles
  are kept under the size that passed; one document too large goes to errors/.

Each document's ``_id`` is its message's name and each action is ``create``,
so a resend after kill -9 or a replay never makes a second document. On
SIGTERM a bundle being sent is finished; one not yet sent goes back to
``incoming/``.

One bundle is in flight at a time (its request runs on a sender thread) while
the main thread reads the next one from disk; answers are applied in the main
thread only. Delivered files are unlinked on a few threads (`Remover`).
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from queues import BadMessage, Claim, Reason

from ..backoff import Backoff
from ..base import Options, Piper
from .bulk import (
    Answer,
    BadAnswer,
    BulkClient,
    ItemResult,
    Outcome,
    Unavailable,
    error_json,
    error_summary,
    read_items,
)
from .bundle import Item, body, make_item, take
from .index import IndexNamer

CLAIM_CHUNK = 256  # messages claimed (renamed into pending/) per step while filling
EARLY_BUNDLE = 2048  # with a backlog: sent as soon as the sender is idle (bigger: less node CPU)
UNLINK_THREADS = 4
GC_THRESHOLD = 20_000  # allocations between young collections (tune_gc)
_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
log = logging.getLogger("pipers.ship")


class Remover:
    """Unlinks delivered messages on a few threads.

    On a filesystem that discards freed blocks at once, one unlink of a file
    already written back costs half a millisecond or more; done in parallel it
    costs a quarter of that and overlaps the next bundle. The documents are
    acknowledged before their files are handed over, so a crash with unlinks
    still queued only means a resend that the cluster answers with 409.
    """

    def __init__(self, threads: int = UNLINK_THREADS):
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._futures: list[Future] = []

    def remove(self, paths: list[str]) -> None:
        if not paths:
            return
        if len(paths) < 64 or self.threads <= 1:
            _unlink_all(paths)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="pipers-unlink")
        self._futures = [f for f in self._futures if not f.done()]
        step = -(-len(paths) // self.threads)
        for i in range(0, len(paths), step):
            self._futures.append(self._pool.submit(_unlink_all, paths[i : i + step]))

    def wait(self) -> None:
        for f in self._futures:
            f.result()
        self._futures = []

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._futures = []


def _unlink_all(paths: list[str]) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:  # left in pending/: recovered and resent (409) later
            log.warning("cannot remove delivered message %s: %s", path, e.strerror)


def tune_gc() -> None:
    """Fewer, cheaper cyclic collections while bundles are in hand.

    Every claimed message is a few container objects that live until its
    bundle is answered (thousands of messages). With the default threshold
    (700) they are scanned by several collections and promoted, and the import-
    time objects were rescanned by each full collection: 6 % of the shipper's
    CPU in a perf profile. Import-time objects are frozen (never scanned
    again) and young collections run every 20,000 allocations, so most items
    die before their first scan. Cycles are still collected.
    """
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)


@dataclass
class Flight:
    """A bundle sent on the sender thread, its answer not yet taken."""

    items: list[Item]
    payload: bytes
    future: Future


@dataclass
class ShipOptions:
    bundle_size: int = 5000
    bundle_bytes: int = 10 * 1024 * 1024
    flush_interval: float = 0.0
    archive_dir: str | None = None
    retry_initial_wait: float = 0.5
    retry_max_wait: float = 60.0


class Ship(Piper):
    name = "ship"

    def __init__(self, options: Options, client: Callable[[], BulkClient], namer: IndexNamer,
                 ship: ShipOptions | None = None, clock: Callable[[], float] = time.time,
                 failover: Any = None):
        super().__init__(options, clock)
        self.failover = failover  # pipers.mq.failover.Failover: RabbitMQ during long outages
        self.ship = ship or ShipOptions()
        self.make_client = client
        self.client: BulkClient | None = None
        self.namer = namer
        self.backoff = Backoff(self.ship.retry_initial_wait, self.ship.retry_max_wait)
        self.byte_limit = self.ship.bundle_bytes  # lowered when the cluster answers 413
        self.hand: list[Item] = []  # claimed, not yet acknowledged (in pending/)
        self.hand_bytes = 0
        self.hand_since: float | None = None
        self.incoming_empty = False
        self.retrying = False
        self.down_since: float | None = None
        self.delivered = 0
        self.rejected = 0
        self.remover = Remover()
        self._delivered_paths: list[str] = []
        self.flight: Flight | None = None  # the bundle whose answer is awaited
        self._sender: ThreadPoolExecutor | None = None
        if self.ship.archive_dir:
            os.makedirs(self.ship.archive_dir, 0o700, exist_ok=True)

    # -- the loop -------------------------------------------------------------------------

    def initialize(self) -> None:
        self.client = self.make_client()
        super().initialize()
        tune_gc()
        self.log.info("shipping to %s", ", ".join(self.client.urls))

    def loop(self, now: float) -> float:
        if now >= self._next_maintenance:
            self.maintain(now)
        if self.failover is not None:  # divert bundles to RabbitMQ / bring them back
            wait = self.failover.step(self, now)
            if wait is not None:
                return wait
        if now < self._paused_until:  # errors/ could not be written (disk full)
            return self._paused_until - now
        wait = self.backoff.remaining(now)
        if wait > 0:
            return wait  # dequeuing pauses; arrivals only wake us to go back to sleep
        if not self.stopping and self.down_since is None:  # no new claims during an outage
            self._fill(now, early=True)  # while a bundle is in flight: the next one is read
        if self.flight is not None:
            self._land()
            return 0.0
        if not self.hand:
            self.drained = True
            self.set_state("idle")
            return max(0.0, min(self.options.queue_in_wait, self._next_maintenance - now))
        self.drained = False
        due = self._due(now)
        if due > 0:
            return min(due, max(0.0, self._next_maintenance - now))
        self._launch(now)
        return 0.0

    def _fill(self, now: float, early: bool = False) -> None:
        """Claim messages until the hand holds a bundle (count or bytes) or incoming/ is empty.

        With `early`, filling also stops once the sender is idle (nothing in
        flight, or its answer is in) and the hand holds at least EARLY_BUNDLE
        messages: that part goes at once (`_due`) instead of leaving the
        connection idle while the rest of a full bundle is read. Bundles then
        size themselves to the cluster's pace, up to `--bundle-size`. (With 256
        instead of 2048, the node spent 11 % more CPU on the same documents,
        one request per 256, on a machine where it shares the cores with us.)
        """
        self.incoming_empty = False
        while len(self.hand) < self.ship.bundle_size and self.hand_bytes < self.byte_limit:
            if early and len(self.hand) >= EARLY_BUNDLE and (
                    self.flight is None or self.flight.future.done()):
                return
            want = min(CLAIM_CHUNK, self.ship.bundle_size - len(self.hand))
            claims = self.queue_in.claim(want)
            if claims:
                self.handle(claims)
            if len(claims) < want:
                self.incoming_empty = True
                return

    def handle(self, claims: list[Claim]) -> float:
        """Read claimed messages into the hand; a message that is not a JSON object fails."""
        now = self.clock()
        nbytes = 0
        for claim in claims:
            try:
                data = self.queue_in.read(claim)
                nbytes += len(data)
                if self.tracer is not None:  # --trace: the document carries our entry too
                    data = self.tracer.stamp_bytes(data)
                item = make_item(claim, data, self.namer)
            except BadMessage as e:
                self.fail(claim, e.reason, str(e))
                continue
            except FileNotFoundError:  # taken out of pending/ by hand: nothing to send
                self.log.warning("%s vanished from pending/ before it was sent", claim.name)
                continue
            if not self.hand:
                self.hand_since = now
            self.hand.append(item)
            self.hand_bytes += item.size
        self.metrics.add(received=len(claims), bytes=nbytes)
        if self.journal is not None:
            self.journal.flush()  # notes of messages that failed here (not JSON objects)
        return 0.0

    def _due(self, now: float) -> float:
        """Seconds until the hand must be sent (0: now)."""
        if (self.retrying or len(self.hand) >= self.ship.bundle_size
                or self.hand_bytes >= self.byte_limit):
            return 0.0
        if self.incoming_empty and (self.options.once or self.ship.flush_interval <= 0):
            return 0.0
        if not self.incoming_empty and len(self.hand) >= EARLY_BUNDLE:
            return 0.0  # a backlog and the sender idle: keep the connection busy
        return max(0.0, (self.hand_since or now) + self.ship.flush_interval - now)

    # -- one send -------------------------------------------------------------------------

    def _launch(self, now: float) -> None:
        """Send the leading bundle of the hand; its answer is taken by `_land`."""
        items = take(self.hand, self.ship.bundle_size, self.byte_limit)
        del self.hand[: len(items)]
        self.hand_bytes = sum(item.size for item in self.hand)
        if not self.hand:
            self.hand_since = None
        payload = body(items)
        if self._sender is None:
            self._sender = ThreadPoolExecutor(1, thread_name_prefix="pipers-bulk")
        self.metrics.add(bundles=1)
        future = self._sender.submit(self._post, payload)
        future.add_done_callback(lambda _: self.waker.wake())
        self.flight = Flight(items, payload, future)

    def _post(self, payload: bytes) -> Answer | Unavailable:
        try:
            return self.client.bulk(payload)
        except Unavailable as e:
            return e

    def _land(self) -> None:
        """Wait for the bundle in flight and settle each of its messages by the answer."""
        flight, self.flight = self.flight, None
        answer = flight.future.result()
        self._round(self.clock(), flight.items, answer, flight.payload)

    def _round(self, now: float, items: list[Item], answer: Answer | Unavailable,
               payload: bytes) -> None:
        refused: list[ItemResult] = []
        rejected: list[tuple[Item, str]] = []
        before = (self.delivered, self.rejected)
        try:
            self._ship(items, refused, rejected, answer, payload)
        except Unavailable as e:
            self._count(now, items, before)
            self._keep(items)
            self._settle(rejected)
            self._outage(now, str(e))
            return
        self._count(now, items, before)
        self._keep(items)
        self._settle(rejected)
        if self.down_since is not None:
            self.log.warning("search cluster answers again after %.0fs; delivering",
                             now - self.down_since)
            self.down_since = None
        if refused:
            self.retrying = True
            wait = self.backoff.fail(now)
            self.set_state(
                "waiting",
                f"{len(refused)} documents refused for now ({refused[0].summary()[:300]}); "
                f"kept in pending/, next try in {wait:.1f}s",
                on="cluster",
            )
            if self.backoff.failures == 1:
                self.log.warning("%d documents refused for now: %s", len(refused),
                                 refused[0].summary()[:300])
        else:
            self.retrying = False
            self.backoff.reset()
            self.set_state("running")

    def _count(self, now: float, items: list[Item], before: tuple[int, int]) -> None:
        """Metrics of one answer: delivered, refused for good, kept for a resend."""
        self.metrics.add(forwarded=self.delivered - before[0],
                         failed=self.rejected - before[1],
                         retried=sum(not item.finished for item in items))
        self.metrics.finished([item.claim.name for item in items if item.finished], now)

    def _ship(self, items: list[Item], refused: list[ItemResult],
              rejected: list[tuple[Item, str]], answer: Answer | Unavailable | None = None,
              payload: bytes | None = None) -> None:
        """Finish what the answer to `items` settles (sent now unless given).

        Unavailable: no usable answer; the unfinished items are kept.
        """
        if answer is None:
            payload = body(items)
            self.metrics.add(bundles=1)
            answer = self.client.bulk(payload)
        if isinstance(answer, Unavailable):
            raise answer
        if answer.status == 413:
            if len(items) == 1:
                self._reject(items[0], Reason.TOO_LARGE,
                             f"one document of {len(payload)} bytes is too large for the "
                             f"cluster: {error_summary(413, answer.body)}",
                             {"status": 413, "error": error_json(answer.body),
                              "index": items[0].index, "_id": items[0].id})
                rejected.append((items[0], "413 request entity too large"))
                return
            self.byte_limit = max(1, min(self.byte_limit, len(payload) // 2))
            self.log.warning("the cluster refused %d bytes as too large (413); "
                             "bundles now stay under %d bytes", len(payload), self.byte_limit)
            half = len(items) // 2
            self._ship(items[:half], refused, rejected)
            self._ship(items[half:], refused, rejected)
            return
        if not 200 <= answer.status < 300:
            raise Unavailable(error_summary(answer.status, answer.body))
        try:
            results = read_items(answer.body, [item.id for item in items])
        except BadAnswer as e:
            raise Unavailable(str(e)) from None
        for item, result in zip(items, results, strict=True):
            if result.outcome is Outcome.DONE:
                self._done(item)
            elif result.outcome is Outcome.FAILED:
                summary = result.summary()
                self._reject(item, Reason.REJECTED, summary, {
                    "status": result.status, "error": result.error,
                    "index": item.index, "_id": item.id,
                })
                rejected.append((item, summary))
            else:
                item.tries += 1
                refused.append(result)

    def _done(self, item: Item) -> None:
        """The cluster has the document: archive or remove the message."""
        claim = item.claim
        try:
            if self.ship.archive_dir:
                self._archive(claim)
            else:
                self._delivered_paths.append(claim.path)
        except FileNotFoundError:
            pass
        if self.journal is not None:
            self.journal.ok(claim.id)  # the end of its life: in the index
        self._finish(item)
        self.delivered += 1

    def _archive(self, claim: Claim) -> None:
        dst = os.path.join(self.ship.archive_dir, claim.id)
        try:
            os.rename(claim.path, dst)
        except FileNotFoundError:
            if not os.path.lexists(claim.path):
                raise
            os.makedirs(self.ship.archive_dir, 0o700, exist_ok=True)  # removed meanwhile
            os.rename(claim.path, dst)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            shutil.copy2(claim.path, dst + ".part")
            os.rename(dst + ".part", dst)
            os.unlink(claim.path)

    def _reject(self, item: Item, reason: Reason, message: str, detail: Any) -> None:
        """Refused for good: errors/ with the engine's answer in the sidecar."""
        try:
            self.queue_in.fail(item.claim, reason, message, daemon=self.name, detail=detail)
            if self.journal is not None:
                self.journal.failed(item.claim.id)
        except FileNotFoundError:
            pass
        except OSError as e:
            if e.errno not in _FULL_ERRNOS:
                raise
            self.queue_in.release(item.claim)  # no room even for the reason: keep it
            self.set_state("waiting", f"cannot write to errors/: {e.strerror} "
                           f"({self.queue_in.errors})")
            self._paused_until = self.clock() + self.options.queue_out_wait
        self._finish(item)
        self.rejected += 1

    def _finish(self, item: Item) -> None:
        item.finished = True

    def _keep(self, items: list[Item]) -> None:
        """Unfinished items of a bundle go back to the front of the hand (sent first)."""
        back = [item for item in items if not item.finished]
        if back:
            self.hand[:0] = back
            self.hand_since = min(self.hand_since or self.clock(), self.clock())

    def _settle(self, rejected: list[tuple[Item, str]]) -> None:
        """Drop finished items from the hand; one log line for what went to errors/."""
        self.remover.remove(self._delivered_paths)
        self._delivered_paths = []
        if self.journal is not None:
            self.journal.flush()  # one file per bundle, after the answer was applied
        self.hand = [item for item in self.hand if not item.finished]
        self.hand_bytes = sum(item.size for item in self.hand)
        if not self.hand:
            self.hand_since = None
        if rejected:
            item, summary = rejected[0]
            more = f" and {len(rejected) - 1} more" if len(rejected) > 1 else ""
            self.log.error("%s -> errors/ (index %s): %s%s", item.claim.name, item.index,
                           summary[:500], more)

    def _outage(self, now: float, why: str) -> None:
        wait = self.backoff.fail(now)
        self.retrying = True
        if self.down_since is None:
            self.down_since = now
            self.log.warning("search cluster unavailable: %s", why[:500])
        self.set_state(
            "waiting",
            f"search cluster unavailable for {now - self.down_since:.0f}s ({why[:300]}); "
            f"{len(self.hand)} messages kept in pending/, dequeuing paused, "
            f"next try in {wait:.1f}s",
            on="cluster",
        )

    # -- stopping ---------------------------------------------------------------------------

    def shutdown(self) -> None:
        """The bundle in flight is finished; what was not sent goes back to incoming/."""
        if self.flight is not None:
            self._land()
        if self._sender is not None:
            self._sender.shutdown(wait=True)
            self._sender = None
        returned = 0
        for item in self.hand:
            if item.finished:
                continue
            try:
                self.queue_in.release(item.claim)
                returned += 1
            except FileNotFoundError:
                pass
        if returned:
            self.metrics.add(retried=returned)
            self.log.info("returned %d unsent messages to incoming/", returned)
        self.hand = []
        if self.failover is not None:
            self.failover.close()
        self.remover.close()
        if self.client is not None:
            self.client.close()
        self.log.info("%d documents delivered, %d refused (errors/)", self.delivered,
                      self.rejected)
