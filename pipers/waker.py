"""Waking an idle daemon: a self-pipe written by signal handlers and inotify.

The main loop sleeps in ``select`` on the pipe, so an idle daemon uses no CPU;
a watchdog inotify watch on ``incoming/`` writes a byte when a message arrives,
and the periodic rescan (``--queue-in-wait``) covers missed events.
"""

from __future__ import annotations

import os
import select

from watchdog.observers.inotify_c import InotifyConstants, InotifyEvent, InotifyFD

# Only arrivals: a file linked in (a writer of the filer protocol: IN_CREATE), renamed
# in (a writer that could not link, `mv`, a replay) or closed after writing (a plain
# `cp`, which the protocol does not support: it may be read half written). Claims
# (moves out of incoming/) are filtered by the kernel, so a busy daemon is not flooded
# with events about its own work.
_ARRIVALS = (InotifyConstants.IN_CREATE | InotifyConstants.IN_MOVED_TO
             | InotifyConstants.IN_CLOSE_WRITE)


class _Arrivals:
    """watchdog inotify callback: every event (and an overflow) just wakes the loop."""

    def __init__(self, waker: Waker):
        self.waker = waker

    def on_event(self, event: InotifyEvent) -> None:
        self.waker.wake()

    def on_watch_deleted(self, wd) -> None:
        self.waker.wake()

    def on_queue_overflow(self) -> None:
        self.waker.wake()  # events were lost: the loop rescans anyway


class Waker:
    def __init__(self) -> None:
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._inotify: InotifyFD | None = None
        self._watches: dict[str, int | None] = {}  # directory -> watch descriptor (None: paused)

    def wake(self) -> None:
        """Safe from signal handlers and other threads."""
        try:
            os.write(self._w, b"!")
        except (BlockingIOError, OSError):
            pass  # already awake, or closing

    def wait(self, timeout: float) -> bool:
        """Sleep up to `timeout` seconds; True if woken before that."""
        ready, _, _ = select.select([self._r], [], [], max(0.0, timeout))
        if ready:
            try:
                while os.read(self._r, 4096):
                    pass
            except BlockingIOError:
                pass
        return bool(ready)

    def watch(self, directory: str) -> None:
        """Wake when a file arrives in `directory` (inotify through watchdog)."""
        if self._inotify is None:
            self._inotify = InotifyFD()
            self._inotify.daemon = True
            self._inotify.start()
        self._watches[directory] = self._inotify.add_callback(
            os.fsencode(directory), _ARRIVALS, _Arrivals(self), id(self))

    def pause(self) -> None:
        """Stop watching while busy: a busy loop lists anyway, and every arrival would
        cost the watcher thread an event. Call resume() when the loop finds nothing."""
        if self._inotify is None:
            return
        held = [(wd, id(self)) for wd in self._watches.values() if wd is not None]
        if held:
            self._inotify.remove_callbacks(held)
            self._watches = dict.fromkeys(self._watches)

    def resume(self) -> bool:
        """Watch again after pause(); True if it was paused: the caller must then look
        once more, for what arrived while nothing watched."""
        paused = [d for d, wd in self._watches.items() if wd is None]
        for directory in paused:
            self.watch(directory)
        return bool(paused)

    def fds(self) -> list[int]:
        return [self._r, self._w]

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.stop()
            self._inotify.join(timeout=5)
            self._inotify = None
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass
