"""Talking to RabbitMQ: connection settings, back-off, and a link driven by the daemon.

Both daemons use pika's asynchronous ``SelectConnection``, run step by step from
the daemon's loop (`Link.run(until, timeout)`), never from a thread of its own:

- `mq-publish` sends a whole batch, then waits for the confirms of all of it in
  one round trip (a per-message confirm wait would cost a broker fsync each);
- `mq-consume` sleeps inside pika's poller, which also watches the daemon's
  waker, so a signal wakes it at once.

A message's id (the queue file name) travels as the AMQP ``message_id`` and in
the ``pipers-id`` header, so the consumer writes it back under the same name.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pika
from pika.adapters.select_connection import IOLoop
from pika.spec import Basic

from queues.names import new_name

from ..backoff import Backoff

ID_HEADER = "pipers-id"
CONTENT_TYPE = "application/json"
APP_ID = "pipers"
DEFAULT_HEARTBEAT = 30  # seconds; the URL's ?heartbeat= wins
DEFAULT_CONNECT_TIMEOUT = 10.0  # seconds; the URL's ?socket_timeout= wins for TCP alone
# A name safe as a file name in every queue directory: no '/', no leading '.', none of
# the separators the filer protocol gives a meaning to (',' attempts, '@' owner).
_SAFE_NAME = re.compile(r"[A-Za-z0-9_:+=-][A-Za-z0-9_.:+=-]{0,199}")

log = logging.getLogger("pipers.mq")


class LinkDown(Exception):
    """The broker cannot be reached, refused us, or closed the connection."""


def parameters(url: str) -> pika.URLParameters:
    """pika's parameters for one ``amqp://`` or ``amqps://`` URL, with our defaults.

    Settings in the URL's query string (``?heartbeat=60&socket_timeout=5``) win.
    """
    params = pika.URLParameters(url)
    given = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    if "heartbeat" not in given:
        params.heartbeat = DEFAULT_HEARTBEAT
    if "socket_timeout" not in given:
        params.socket_timeout = DEFAULT_CONNECT_TIMEOUT
    if "connection_attempts" not in given:
        params.connection_attempts = 1  # our own back-off does the retrying
    return params


def redact(url: str) -> str:
    """The URL without its password, for logs and `pipers status`."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = urllib.parse.unquote(parts.username or "")
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def message_name(message_id: Any, headers: dict | None) -> str:
    """The queue file name for a consumed message: its original id when it has one.

    A redelivered message thus lands on the same name (and the shipper derives
    the same document ``_id``). An id that is not a safe file name is replaced by a
    digest of it (still the same name on every redelivery); a message without any
    id gets a fresh name.
    """
    mid = message_id or (headers or {}).get(ID_HEADER)
    if isinstance(mid, bytes):
        mid = mid.decode("utf-8", "replace")
    if not mid:
        return new_name()
    mid = str(mid)
    if _SAFE_NAME.fullmatch(mid):
        return mid
    return "mq-" + hashlib.sha256(mid.encode()).hexdigest()[:40]


def next_try(link: Link, backoff: Backoff, now: float) -> tuple[float, bool]:
    """After a failed `Link.open`: (seconds to wait, did every URL fail this round).

    With several --mq-url the next broker is tried at once; the back-off applies
    once all of them failed.
    """
    backoff.fail(now)
    if backoff.failures % len(link.urls):
        backoff.until = now
        return 0.0, False
    return backoff.remaining(now), True


@dataclass
class Delivery:
    """One message the broker handed to a consumer, not yet acknowledged."""

    tag: int
    body: bytes
    message_id: str | None
    headers: dict | None
    redelivered: bool

    @property
    def name(self) -> str:
        return message_name(self.message_id, self.headers)


class Link:
    """One connection and channel to a durable queue, opened and reopened on demand.

    `confirms=True` makes a publishing link (publisher confirms, mandatory
    routing); `prefetch > 0` makes a consuming link (manual acks, at most
    `prefetch` unacknowledged deliveries, gathered in `deliveries`).
    `wake_fd`/`on_wake` let the daemon's waker interrupt `run`.
    """

    def __init__(
        self,
        urls: Sequence[str],
        queue: str,
        *,
        confirms: bool = False,
        prefetch: int = 0,
        wake_fd: int | None = None,
        on_wake: Callable[[], bool] | None = None,
        open_timeout: float = 30.0,
    ):
        if not urls:
            raise ValueError("at least one --mq-url is needed")
        if not queue:
            raise ValueError("--mq-queue must not be empty")
        self.urls = list(urls)
        self._params = [parameters(u) for u in self.urls]
        self.queue = queue
        self.confirms = confirms
        self.prefetch = prefetch
        self.wake_fd, self.on_wake = wake_fd, on_wake
        self.open_timeout = open_timeout
        self.deliveries: list[Delivery] = []
        self.url = ""  # the URL of the open (or last tried) connection, redacted
        self.blocked = False  # the broker stopped reading from us (resource alarm)
        self._ioloop: IOLoop | None = None
        self._conn: pika.SelectConnection | None = None
        self._channel: Any = None
        self._ready = False
        self._error: str | None = None
        self._next_url = 0
        self._until: Callable[[], bool] | None = None
        self._tag = 0  # last delivery tag used by a publish on this channel
        self._waiting: dict[int, int] = {}  # delivery tag -> index in the batch
        self._results: list[bool | None] = []
        self._returned: set[str] = set()
        self._batch_ids: list[str] = []

    # -- state -------------------------------------------------------------------------

    @property
    def up(self) -> bool:
        return self._ready and self._conn is not None and self._conn.is_open

    @property
    def error(self) -> str:
        return self._error or "not connected"

    # -- driving the I/O loop ------------------------------------------------------------

    def _loop(self) -> IOLoop:
        """Made on first use, so a detaching daemon does not close its descriptors."""
        if self._ioloop is None:
            self._ioloop = IOLoop()
            if self.wake_fd is not None:
                self._ioloop.add_handler(self.wake_fd, self._woken, IOLoop.READ)
        return self._ioloop

    def _woken(self, fd: int, events: int) -> None:
        if self.on_wake is None or self.on_wake():
            self._ioloop.stop()

    def _check(self) -> None:
        """Stop the loop once what `run` waits for has happened."""
        if self._until is not None and self._until():
            self._ioloop.stop()

    def run(self, until: Callable[[], bool] = lambda: False, timeout: float = 0.0) -> None:
        """Run pika's I/O loop until `until()` holds, the link drops or the waker fires.

        ``timeout=0`` handles whatever is ready (heartbeats, a closed connection)
        and returns.
        """
        loop = self._loop()
        if until():
            timeout = 0.0
        self._until = lambda: until() or self._conn is None or self._conn.is_closed
        timer = loop.call_later(max(0.0, timeout), loop.stop)
        try:
            loop.start()
        finally:
            loop.remove_timeout(timer)
            self._until = None

    # -- opening and closing -----------------------------------------------------------

    def open(self) -> None:
        """Connect, open the channel and declare the durable queue; raises LinkDown."""
        self.close(timeout=2.0)
        params = self._params[self._next_url % len(self._params)]
        self.url = redact(self.urls[self._next_url % len(self.urls)])
        self._next_url += 1
        self._ready, self._error, self.blocked = False, None, False
        self.deliveries = []
        self._tag = 0
        loop = self._loop()
        self._conn = pika.SelectConnection(
            params,
            on_open_callback=self._on_connection_open,
            on_open_error_callback=self._on_open_error,
            on_close_callback=self._on_connection_closed,
            custom_ioloop=loop,
        )
        conn = self._conn
        self.run(lambda: self._ready or self._error is not None or conn.is_closed,
                 self.open_timeout)
        if not self._ready:
            why = self._error or f"no answer within {self.open_timeout:g}s"
            self._abandon()
            self._error = why
            raise LinkDown(f"{self.url}: {why}")

    def close(self, timeout: float = 5.0) -> None:
        """Close the connection cleanly (unacknowledged deliveries go back to the queue)."""
        conn, self._conn = self._conn, None
        self._ready = False
        self.deliveries = []
        if conn is None:
            return
        _close(conn)
        if not conn.is_closed:
            self._conn = conn
            try:
                self.run(lambda: conn.is_closed, timeout)
            finally:
                self._conn = None
        self._channel = None

    def _abandon(self) -> None:
        """Give up on a connection that never opened (close it without waiting long)."""
        self.close(timeout=1.0)

    def shutdown(self) -> None:
        """Close the connection and release the I/O loop's descriptors."""
        try:
            self.close()
        finally:
            if self._ioloop is not None:
                if self.wake_fd is not None:
                    try:
                        self._ioloop.remove_handler(self.wake_fd)
                    except (KeyError, ValueError, OSError):
                        pass
                self._ioloop.close()
                self._ioloop = None

    # -- pika's callbacks ---------------------------------------------------------------

    def _on_open_error(self, conn: Any, error: BaseException) -> None:
        if conn is self._conn:
            self._error = _describe(error)
            self._check()

    def _on_connection_open(self, conn: Any) -> None:
        if conn is not self._conn:
            _close(conn)  # one we gave up on that opened after all
            return
        conn.add_on_connection_blocked_callback(self._on_blocked)
        conn.add_on_connection_unblocked_callback(self._on_unblocked)
        conn.channel(on_open_callback=self._on_channel_open)

    def _on_blocked(self, conn: Any, frame: Any) -> None:
        self.blocked = True
        log.warning("%s blocks publishing: %s", self.url, getattr(frame.method, "reason", ""))

    def _on_unblocked(self, conn: Any, frame: Any) -> None:
        self.blocked = False
        log.info("%s accepts publishing again", self.url)

    def _on_connection_closed(self, conn: Any, error: BaseException) -> None:
        if conn is not self._conn and self._conn is not None:
            return  # an old connection's last words
        if self._ready or self._error is None:
            self._error = _describe(error)
        self._ready = False
        self._channel = None
        self.deliveries = []  # their tags die with the channel; the broker redelivers
        self._check()

    def _on_channel_open(self, channel: Any) -> None:
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        if self.confirms:
            channel.add_on_return_callback(self._on_return)
            channel.confirm_delivery(self._on_confirm, callback=lambda _f: self._declare())
        elif self.prefetch:
            channel.basic_qos(prefetch_count=self.prefetch, callback=lambda _f: self._declare())
        else:
            self._declare()

    def _declare(self) -> None:
        self._channel.queue_declare(self.queue, durable=True, callback=self._on_declared)

    def _on_declared(self, frame: Any) -> None:
        if self.prefetch:
            self._channel.add_on_cancel_callback(self._on_cancelled)
            self._channel.basic_consume(self.queue, self._on_message, auto_ack=False,
                                        callback=self._on_consuming)
        else:
            self._ready = True
            self._check()

    def _on_consuming(self, frame: Any) -> None:
        self._ready = True
        self._check()

    def _on_cancelled(self, frame: Any) -> None:
        self._error = f"the broker cancelled our consumer of {self.queue!r} (queue deleted?)"
        self._drop()

    def _on_channel_closed(self, channel: Any, error: BaseException) -> None:
        if channel is not self._channel:
            return
        self._error = _describe(error)
        self._drop()

    def _drop(self) -> None:
        """The channel is unusable: close the connection too; `open` starts afresh."""
        self._ready = False
        self._channel = None
        self.deliveries = []
        if self._conn is not None:
            _close(self._conn)
        self._check()

    # -- publishing ---------------------------------------------------------------------

    def publish(self, items: Iterable[tuple[str, bytes] | tuple[str, bytes, dict]],
                timeout: float) -> list[bool]:
        """Publish (id, body[, more headers]) persistently; True for each confirmed.

        Returns when every message is confirmed or refused, the link dropped, or
        `timeout` passed; an unconfirmed message may still have reached the queue
        (so it is published again later under the same id: at least once).
        """
        items = list(items)
        if not self.up:
            raise LinkDown(self.error)
        self._results = [None] * len(items)
        self._batch_ids = [item[0] for item in items]
        self._returned = set()
        self._waiting = {}
        now = int(time.time())
        for i, (mid, body, *more) in enumerate(items):
            headers = {ID_HEADER: mid, **(more[0] if more else {})}
            props = pika.BasicProperties(
                content_type=CONTENT_TYPE,
                delivery_mode=pika.DeliveryMode.Persistent,
                message_id=mid,
                timestamp=now,
                app_id=APP_ID,
                headers=headers,
            )
            self._channel.basic_publish("", self.queue, body, props, mandatory=True)
            self._tag += 1
            self._waiting[self._tag] = i
        self.run(lambda: not self._waiting, timeout)
        if self._waiting and self.up:
            # No answer in time (a blocked or overloaded broker): start afresh, so
            # late confirms of this batch cannot be taken for the next one's.
            self._error = f"no confirm within {timeout:g}s"
            self.close(timeout=2.0)
            self._error = f"no confirm within {timeout:g}s"
        results = [bool(r) for r in self._results]
        self._waiting, self._results, self._batch_ids = {}, [], []
        return results

    def _on_return(self, channel: Any, method: Any, props: Any, body: bytes) -> None:
        """An unroutable message (queue gone): it must not count as delivered."""
        log.warning("%s returned %s: %s", self.url, props.message_id, method.reply_text)
        self._returned.add(props.message_id)

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        ok = isinstance(method, Basic.Ack)
        tags = ([t for t in self._waiting if t <= method.delivery_tag] if method.multiple
                else [method.delivery_tag])
        for tag in tags:
            i = self._waiting.pop(tag, None)
            if i is not None:
                self._results[i] = ok and self._batch_ids[i] not in self._returned
        self._check()

    # -- consuming ----------------------------------------------------------------------

    def _on_message(self, channel: Any, method: Any, props: Any, body: bytes) -> None:
        if channel is not self._channel:
            return
        self.deliveries.append(Delivery(
            tag=method.delivery_tag, body=body, message_id=props.message_id,
            headers=props.headers, redelivered=bool(method.redelivered),
        ))
        self._check()

    def ack(self, tag: int) -> bool:
        """Acknowledge every delivery up to `tag`; False if the link is gone (the
        broker then delivers them again, under the same names)."""
        if not self.up:
            return False
        self._channel.basic_ack(delivery_tag=tag, multiple=True)
        self.run(timeout=0)  # hand the frame to the socket now
        return True


def _close(conn: Any) -> None:
    """Start closing a connection in whatever state it is (opening, open)."""
    if conn.is_closing or conn.is_closed:
        return
    try:
        conn.close()
    except pika.exceptions.ConnectionWrongStateError:
        pass


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "connection closed"
    if isinstance(error, pika.exceptions.ConnectionClosedByBroker | \
                  pika.exceptions.ChannelClosedByBroker):
        return f"closed by the broker: {error.reply_code} {error.reply_text}"
    if isinstance(error, pika.exceptions.ConnectionClosedByClient):
        return "closed"
    for _ in range(5):  # pika wraps the cause: connect workflow -> connector -> OSError
        inner = getattr(error, "exception", None)
        if inner is None:
            inner = getattr(error, "exceptions", None) or error.args
            inner = inner[-1] if inner else None
        if not isinstance(inner, BaseException):
            break
        error = inner
    if isinstance(error, OSError) and error.strerror:
        return f"{type(error).__name__}: {error.strerror}"
    text = str(error.args[0]) if error.args else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def quiet_pika(level: int = logging.CRITICAL) -> None:
    """pika logs every failed connect at ERROR with a traceback; we say it once, better."""
    logging.getLogger("pika").setLevel(level)
