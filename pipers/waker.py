"""Waking an idle daemon: a self-pipe written by signal handlers and inotify.

The main loop sleeps in ``select`` on the pipe, so an idle daemon uses no CPU;
a watchdog observer on ``incoming/`` writes a byte when a message arrives,
and the periodic rescan (``--queue-in-wait``) covers missed events.
"""

from __future__ import annotations

import os
import select

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

_ARRIVALS = {"created", "moved", "closed"}


class _Arrivals(FileSystemEventHandler):
    def __init__(self, waker: Waker, directory: str):
        self.waker = waker
        self.directory = directory

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in _ARRIVALS:
            return
        if event.event_type == "moved":
            dest = os.fsdecode(event.dest_path)
            if os.path.dirname(dest) != self.directory:
                return  # moved out (a claim), not an arrival
        self.waker.wake()


class Waker:
    def __init__(self) -> None:
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._observer: Observer | None = None

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
        if self._observer is None:
            self._observer = Observer()
            self._observer.daemon = True
            self._observer.start()
        self._observer.schedule(_Arrivals(self, directory), directory, recursive=False)

    def fds(self) -> list[int]:
        return [self._r, self._w]

    def close(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass
