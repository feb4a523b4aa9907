"""`pipers collect`: complete submissions in a drop directory become job messages.

A *submission* is ``STEM.json`` alone or with ``STEM.dump`` (``--pair-suffix``)
in ``--storage-root``. It is taken when it is complete: its files have not
changed for ``--settle-time`` and no process holds one of them open for
writing (a read lease, ``F_SETLEASE``, is refused while a writer has the file
open; where leases are not available the settle time alone decides). Writers
that can should write under another name (``.STEM.json``, ``STEM.json.tmp``) and
rename; either way a pair's dump should be complete before its JSON appears.

Each submission becomes one message named like any other (time first), holding
the submission's JSON object plus ``collect``: the job id (``STEM``), times, and
the dump's ``path``, ``size`` and ``sha256``. The originals move (rename) into
``--jobs-dir``/NAME/ (default: ``jobs/`` inside the output queue, so on the same
filesystem) - the dump travels beside the queue, referenced by path.

Cleanup: downstream daemons run with ``--journal-dir`` (the same directory as
collect's), which notes every message whose life ends there - consumed (``ok``)
or moved to ``errors/`` (``failed``). Every ``--cleanup-delay`` collect reads
those notes and moves the originals of finished jobs to ``--save-successful-to``
or ``--save-failed-to``, or deletes them when that is blank. No queue is ever
listed to find out.

Priority: ``pipers prioritize ID`` leaves a request in ``STORAGE_ROOT/.pipers-
priority/`` for a submission not yet collected (in the storage root or the
``--deferred-storage-root``); collect takes it at once, ahead of everything
(into the output queue's ``priority/``). Requests are checked on every wake-up
and at least every ``--priority-delay``.

Layout of the jobs directory::

    jobs/NAME/STEM.json, STEM.dump   originals of a job in flight
    jobs/NAME/.queued                its message is in the queue (crash recovery)
    jobs/.by-id/STEM -> ../NAME      job id to message name (for prioritize)
    jobs/.journal/                   the default --journal-dir
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import signal
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import click
import orjson
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from queues import journal, priority
from queues.names import name_time, new_name
from queues.owner import host_name
from queues.states import OWNER_SEP

from ..base import Daemon, Options
from ..options import DURATION, daemon_options
from ..runner import start
from .checks import iso

REQUESTS = ".pipers-priority"  # in the storage root: ids to take before anything else
BY_ID = ".by-id"
JOURNAL = ".journal"
QUEUED = ".queued"
F_SETLEASE = getattr(fcntl, "F_SETLEASE", 1024)
_HASH_CHUNK = 1024 * 1024


class BadSubmission(Exception):
    """A complete submission that can never become a job (goes to the failed originals)."""


@dataclass
class Submission:
    stem: str
    root: str
    json_path: str
    dump_path: str | None
    mtime: float  # of its newest file


@dataclass
class Wait:
    until: float


class Jobs:
    """The jobs directory: originals of jobs in flight, shared by collect and prioritize."""

    def __init__(self, path: str, dir_mode: int = 0o700):
        self.path = os.path.abspath(path)
        self.by_id = os.path.join(self.path, BY_ID)
        self.dir_mode = dir_mode

    def create(self) -> None:
        os.makedirs(self.by_id, self.dir_mode, exist_ok=True)

    def dir(self, name: str) -> str:
        return os.path.join(self.path, name)

    def lookup(self, job_id: str) -> str | None:
        """The message name of job `job_id` (its stem), or None."""
        try:
            return os.path.basename(os.readlink(os.path.join(self.by_id, job_id)))
        except (FileNotFoundError, NotADirectoryError, OSError):
            return None

    def link(self, job_id: str, name: str) -> None:
        tmp = os.path.join(self.by_id, f".{name}.tmp")
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        os.symlink(os.path.join("..", name), tmp)
        os.rename(tmp, os.path.join(self.by_id, job_id))  # the newest job of an id wins

    def unlink(self, job_id: str, name: str) -> None:
        if self.lookup(job_id) == name:
            try:
                os.unlink(os.path.join(self.by_id, job_id))
            except FileNotFoundError:
                pass

    def names(self) -> list[str]:
        """Message names of the jobs in flight."""
        try:
            entries = os.listdir(self.path)
        except FileNotFoundError:
            return []
        return sorted(e for e in entries if e[0] != "." and name_time(e) is not None)


def job_of(name: str) -> str:
    """The job a journal note is about: ``T.PID_N.HOST`` of ``T.PID_N.HOST.3`` (a child)."""
    return ".".join(name.split(".")[:3])


def being_written(path: str) -> bool | None:
    """True when some process has `path` open for writing; None when it cannot be told.

    A read lease is granted only while no one holds the file open for writing;
    it is released at once.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.fcntl(fd, F_SETLEASE, fcntl.F_RDLCK)
    except OSError as e:
        return True if e.errno in (errno.EAGAIN, errno.EBUSY) else None
    else:
        fcntl.fcntl(fd, F_SETLEASE, fcntl.F_UNLCK)
        return False
    finally:
        os.close(fd)


def _move(src: str, dst: str) -> None:
    """Rename; across filesystems copy (to a hidden name), rename, then remove `src`."""
    try:
        os.rename(src, dst)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        tmp = os.path.join(os.path.dirname(dst), f".{os.path.basename(dst)}.part")
        shutil.copy2(src, tmp)
        os.rename(tmp, dst)
        os.unlink(src)


def sha256_file(path: str) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


class _Drops(FileSystemEventHandler):
    """watchdog handler: only notes which names changed and wakes the loop."""

    def __init__(self, collect: Collect):
        self.collect = collect

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory or event.event_type not in (
                "created", "modified", "closed", "moved"):
            return
        path = event.dest_path if event.event_type == "moved" else event.src_path
        self.collect.hint(os.path.basename(os.fsdecode(path)))


class Collect(Daemon):
    name = "collect"

    def __init__(
        self,
        options: Options,
        *,
        storage_root: str,
        deferred_storage_root: str | None = None,
        jobs_dir: str | None = None,
        json_suffix: str = ".json",
        pair_suffix: str = ".dump",
        settle_time: float = 2.0,
        loop_delay: float = 300.0,
        cleanup_delay: float = 60.0,
        priority_delay: float = 60.0,
        save_successful_to: str | None = None,
        save_failed_to: str | None = None,
        clock: Callable[[], float] = time.time,
    ):
        super().__init__(options, clock)
        if self.queue_out is None:
            raise ValueError("--queue-out-dir is required")
        if not json_suffix or json_suffix == pair_suffix:
            raise ValueError("--json-suffix must be set and differ from --pair-suffix")
        self.root = os.path.abspath(storage_root)
        self.deferred = os.path.abspath(deferred_storage_root) if deferred_storage_root \
            else None
        self.jobs = Jobs(jobs_dir or os.path.join(self.queue_out.path, "jobs"),
                         self.queue_out.dir_mode)
        self.journal_dir = os.path.abspath(
            options.journal_dir or os.path.join(self.jobs.path, JOURNAL))
        self.requests = os.path.join(self.root, REQUESTS)
        self.json_suffix, self.pair_suffix = json_suffix, pair_suffix
        self.settle_time = settle_time
        self.loop_delay = loop_delay
        self.cleanup_delay = cleanup_delay
        self.priority_delay = priority_delay
        self.save_successful_to = os.path.abspath(save_successful_to) \
            if save_successful_to else None
        self.save_failed_to = os.path.abspath(save_failed_to) if save_failed_to else None
        self.host = host_name()
        self._hints: set[str] = set()
        self._hints_lock = threading.Lock()
        self._candidates: set[str] = set()
        self._waiting: dict[str, float] = {}  # stem -> when to look again
        self._next_rescan = 0.0
        self._next_cleanup = 0.0
        self._observer: Observer | None = None
        self.collected = 0
        self.cleaned = {"ok": 0, "failed": 0}
        for d in (self.root, self.deferred, self.save_successful_to, self.save_failed_to):
            if d:
                os.makedirs(d, exist_ok=True)
        os.makedirs(self.requests, exist_ok=True)
        self.jobs.create()
        os.makedirs(self.journal_dir, self.queue_out.dir_mode, exist_ok=True)

    # -- lifecycle --------------------------------------------------------------------------

    def initialize(self) -> None:
        # A lease break (a writer opening a file between our lease and its release)
        # signals SIGIO, whose default action would end the process.
        signal.signal(signal.SIGIO, signal.SIG_IGN)
        self.recover()
        self._observer = Observer()
        self._observer.daemon = True
        handler = _Drops(self)
        self._observer.schedule(handler, self.root, recursive=False)
        self._observer.schedule(handler, self.requests, recursive=False)
        self._observer.start()
        self.log.info("watching %s for submissions into %s; finished jobs read from %s",
                      self.root, self.queue_out.path, self.journal_dir)

    def shutdown(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None

    def hint(self, basename: str) -> None:
        """From the watchdog thread: `basename` changed in the storage root."""
        stem = self._stem(basename)
        with self._hints_lock:
            self._hints.add(stem if stem is not None else "")
        self.waker.wake()

    def _stem(self, basename: str) -> str | None:
        if not basename or basename[0] == ".":
            return None
        for suffix in (self.json_suffix, self.pair_suffix):
            if basename.endswith(suffix) and len(basename) > len(suffix):
                return basename[: -len(suffix)]
        return None

    # -- the loop ---------------------------------------------------------------------------

    def loop(self, now: float) -> float:
        self.requests_check(now)
        if now >= self._next_cleanup:
            self.cleanup()
            self._next_cleanup = now + self.cleanup_delay
        if now >= self._next_rescan:
            self._candidates |= self._listing()
            self._next_rescan = now + self.loop_delay
        with self._hints_lock:
            hints, self._hints = self._hints, set()
        self._candidates |= hints - {""}
        for stem, until in list(self._waiting.items()):
            if until <= now:
                del self._waiting[stem]
                self._candidates.add(stem)
        ready: list[Submission] = []
        for stem in self._candidates:
            found = self.examine(self.root, stem, now)
            if isinstance(found, Submission):
                ready.append(found)
            elif isinstance(found, Wait):
                self._waiting[stem] = found.until
        self._candidates = set()
        if ready:
            ready.sort(key=lambda s: (s.mtime, s.stem))
            room = min(self.options.batch_size, self.room(now))
            if room == 0:
                self._candidates = {s.stem for s in ready}
                return self.options.queue_out_wait
            if not self.take(ready[:room], now):
                self._candidates = {s.stem for s in ready}
                return self.options.queue_out_wait
            self.set_state("running")
            if len(ready) > room:
                self._candidates = {s.stem for s in ready[room:]}
                return 0.0
        else:
            self.set_state("idle")
        wake = min(self._next_rescan, self._next_cleanup, now + self.priority_delay,
                   *self._waiting.values())
        return max(0.0, wake - now)

    def _listing(self) -> set[str]:
        stems = set()
        try:
            with os.scandir(self.root) as it:
                for entry in it:
                    if entry.name.endswith(self.json_suffix):
                        stem = self._stem(entry.name)
                        if stem is not None:
                            stems.add(stem)
        except FileNotFoundError:
            self.log.error("storage root %s is gone", self.root)
        return stems

    def examine(self, root: str, stem: str, now: float) -> Submission | Wait | None:
        """Is the submission `stem` in `root` complete? None if there is none (yet)."""
        json_path = os.path.join(root, stem + self.json_suffix)
        try:
            js = os.lstat(json_path)
        except FileNotFoundError:
            return None  # a dump alone waits for its JSON
        if not stat.S_ISREG(js.st_mode):
            self.log.warning("%s is not a regular file: ignored", json_path)
            return None
        dump_path: str | None = os.path.join(root, stem + self.pair_suffix)
        newest = js.st_mtime
        try:
            ds = os.lstat(dump_path)
        except FileNotFoundError:
            dump_path = None
        else:
            if not stat.S_ISREG(ds.st_mode):
                self.log.warning("%s is not a regular file: ignored", dump_path)
                return None
            newest = max(newest, ds.st_mtime)
        if now - newest < self.settle_time:
            return Wait(newest + self.settle_time)
        for path in (json_path, dump_path):
            if path and being_written(path):
                return Wait(now + max(0.1, min(self.settle_time, 1.0)))
        return Submission(stem, root, json_path, dump_path, newest)

    # -- taking submissions -------------------------------------------------------------------

    def take(self, subs: list[Submission], now: float, *, urgent: bool = False) -> bool:
        """Turn submissions into jobs (one group commit). False if the queue is full."""
        taken: list[tuple[Submission, str, str]] = []  # (submission, name, job dir)
        written: list[bytes] = []  # their messages (metrics)
        batch = self.queue_out.batch()
        try:
            for sub in subs:
                name = new_name()
                job_dir = self.jobs.dir(name)
                taken.append((sub, name, job_dir))  # given back if anything below fails
                if not self._move_in(sub, job_dir):
                    taken.pop()
                    continue
                try:
                    data = self._message(sub.stem, job_dir, name, sub.mtime, now)
                except BadSubmission as e:
                    taken.pop()
                    self.log.error("submission %s cannot become a job: %s", sub.stem, e)
                    self.metrics.add(failed=1)
                    self._finish(name, ok=False, stem=sub.stem)
                    continue
                batch.add(data, name, urgent=urgent)
                written.append(data)
            batch.commit()
        except OSError as e:
            batch.abort()
            for sub, _, job_dir in taken:
                self._move_back(sub, job_dir)
            self.set_state("waiting", f"cannot write {self.queue_out.path}: {e}")
            return False
        for sub, name, job_dir in taken:
            self._confirm(sub.stem, name, job_dir)
            self.log.debug("job %s: %s%s", name, sub.stem, " (priority)" if urgent else "")
        self.collected += len(taken)
        self.count_emitted(written)
        if taken:
            self.gate.added(len(taken))
        return True

    def _move_in(self, sub: Submission, job_dir: str) -> bool:
        """Move the originals into the job's directory (dump first). False if gone."""
        os.mkdir(job_dir, self.queue_out.dir_mode)
        try:
            if sub.dump_path:
                try:
                    _move(sub.dump_path, os.path.join(job_dir, sub.stem + self.pair_suffix))
                except FileNotFoundError:
                    self.log.warning("dump of %s vanished: taken alone", sub.stem)
            _move(sub.json_path, os.path.join(job_dir, sub.stem + self.json_suffix))
        except FileNotFoundError:
            self._move_back(sub, job_dir)
            return False
        return True

    def _move_back(self, sub: Submission, job_dir: str) -> None:
        for entry in self._entries(job_dir):
            try:
                _move(os.path.join(job_dir, entry), os.path.join(sub.root, entry))
            except FileNotFoundError:
                pass
        _rmdir(job_dir)

    def _message(self, stem: str, job_dir: str, name: str, submitted: float,
                 now: float) -> bytes:
        json_file = os.path.join(job_dir, stem + self.json_suffix)
        dump_file = os.path.join(job_dir, stem + self.pair_suffix)
        size = os.path.getsize(json_file)
        if size > self.options.max_message_bytes:
            raise BadSubmission(f"{size} bytes of JSON is over the limit of "
                                f"{self.options.max_message_bytes}")
        with open(json_file, "rb") as f:
            raw = f.read()
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise BadSubmission(f"invalid JSON: {e}") from None
        if not isinstance(message, dict):
            raise BadSubmission(f"not a JSON object ({type(message).__name__})")
        meta: dict = {"job": stem, "submitted": iso(submitted), "collected": iso(now),
                      "host": self.host}
        if os.path.exists(dump_file):
            dump_size, digest = sha256_file(dump_file)
            meta["dump"] = {"path": dump_file, "size": dump_size, "sha256": digest}
        message["collect"] = meta
        if self.tracer is not None:  # --trace: lineage starts here
            message = self.tracer.stamp(message)
        return orjson.dumps(message)

    def _confirm(self, stem: str, name: str, job_dir: str) -> None:
        """The job's message is in the queue: mark it, index its id."""
        os.close(os.open(os.path.join(job_dir, QUEUED),
                         os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        self.jobs.link(stem, name)

    def recover(self) -> int:
        """After a crash: queue jobs whose message may not have been committed.

        A job directory without ``.queued`` is queued again under the same name,
        unless the output queue holds that name: at least once, never lost; a
        duplicate carries the same name (the shipper's ``_id``).
        """
        waiting = set()
        for sub in ("incoming", "pending", "priority"):
            try:
                waiting |= {n.split(OWNER_SEP)[0].split(",")[0]
                            for n in os.listdir(os.path.join(self.queue_out.path, sub))}
            except FileNotFoundError:
                pass
        requeued = 0
        for name in self.jobs.names():
            job_dir = self.jobs.dir(name)
            entries = self._entries(job_dir)
            if QUEUED in entries:
                continue
            jsons = [e for e in entries if e.endswith(self.json_suffix)]
            if not jsons:  # stopped while moving in: give the dump back
                for entry in entries:
                    _move(os.path.join(job_dir, entry), os.path.join(self.root, entry))
                _rmdir(job_dir)
                continue
            stem = jsons[0][: -len(self.json_suffix)]
            if name not in waiting:
                try:
                    data = self._message(stem, job_dir, name,
                                         os.path.getmtime(os.path.join(job_dir, jsons[0])),
                                         self.clock())
                except BadSubmission as e:
                    self.log.error("submission %s cannot become a job: %s", stem, e)
                    self._finish(name, ok=False, stem=stem)
                    continue
                self.queue_out.put(data, name)
                requeued += 1
            self._confirm(stem, name, job_dir)
        if requeued:
            self.log.warning("queued %d jobs again whose message may have been lost in a "
                             "crash", requeued)
        return requeued

    # -- cleanup ---------------------------------------------------------------------------

    def cleanup(self) -> int:
        """Act on the journal: originals of finished jobs saved or deleted."""
        finished = 0
        for file, notes in journal.read(self.journal_dir):
            for status, name in notes:
                job = job_of(name)
                if name_time(job) is None or os.sep in job:
                    continue  # not a job name: some other message's note
                if self._finish(job, ok=status == journal.OK):
                    finished += 1
            try:
                os.unlink(file)
            except FileNotFoundError:
                pass
        return finished

    def _finish(self, name: str, *, ok: bool, stem: str | None = None) -> bool:
        job_dir = self.jobs.dir(name)
        entries = self._entries(job_dir)
        if not entries and not os.path.isdir(job_dir):
            return False  # not ours, or already cleaned up
        dest = self.save_successful_to if ok else self.save_failed_to
        for entry in entries:
            path = os.path.join(job_dir, entry)
            if entry == QUEUED:
                continue
            if stem is None and entry.endswith(self.json_suffix):
                stem = entry[: -len(self.json_suffix)]
            try:
                if dest:
                    target = os.path.join(dest, entry)
                    if os.path.lexists(target):
                        target = os.path.join(dest, f"{name}.{entry}")
                    _move(path, target)
                else:
                    os.unlink(path)
            except FileNotFoundError:
                pass
        try:
            os.unlink(os.path.join(job_dir, QUEUED))
        except FileNotFoundError:
            pass
        _rmdir(job_dir)
        if stem is not None:
            self.jobs.unlink(stem, name)
        self.cleaned["ok" if ok else "failed"] += 1
        return True

    @staticmethod
    def _entries(directory: str) -> list[str]:
        try:
            return sorted(os.listdir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return []

    # -- priority ----------------------------------------------------------------------------

    def requests_check(self, now: float) -> None:
        """Act on `prioritize` requests (one listing of a usually empty directory)."""
        try:
            requests = sorted(os.listdir(self.requests))
        except FileNotFoundError:
            return
        for job_id in requests:
            if job_id[0] == ".":
                continue
            if self.prioritize(job_id, now):
                try:
                    os.unlink(os.path.join(self.requests, job_id))
                except FileNotFoundError:
                    pass

    def prioritize(self, job_id: str, now: float) -> bool:
        """Make job `job_id` next; False to look again later (still being written)."""
        name = self.jobs.lookup(job_id)
        if name is not None:
            where = priority.promote(self.queue_out, name)
            self.log.info("priority for %s (%s): %s", job_id, name,
                          "moved to the head of the queue" if where == "incoming" else
                          f"already {where}" if where else "already past the first queue")
            return True
        for root in (self.root, self.deferred):
            if root is None:
                continue
            found = self.examine(root, job_id, now)
            if isinstance(found, Wait):
                self._waiting[job_id] = min(self._waiting.get(job_id, found.until),
                                            found.until)
                return False
            if isinstance(found, Submission):  # one message: no --queue-out-limit for it
                if not self.take([found], now, urgent=True):
                    return False
                self.log.info("priority for %s: taken from %s ahead of the others",
                              job_id, root)
                return True
        self.log.warning("priority for %s: unknown (not collected, not in %s)", job_id,
                         " nor ".join(r for r in (self.root, self.deferred) if r))
        return True


def _rmdir(path: str) -> None:
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass


@click.command("collect")
@daemon_options(queue_in=False, queue_out="required")
@click.option("--storage-root", required=True, type=click.Path(file_okay=False),
              help="The drop directory watched for STEM.json (+ STEM.dump) submissions.")
@click.option("--deferred-storage-root", type=click.Path(file_okay=False),
              help="Submissions held back (throttled): taken only when prioritized.")
@click.option("--jobs-dir", type=click.Path(file_okay=False),
              help="Where originals wait while their job is in flight "
              "[default: QUEUE_OUT_DIR/jobs].")
@click.option("--journal-dir", type=click.Path(file_okay=False),
              help="Where downstream daemons (run with the same --journal-dir) note finished "
              "messages [default: JOBS_DIR/.journal].")
@click.option("--json-suffix", default=".json", show_default=True,
              help="Suffix of a submission's JSON file.")
@click.option("--pair-suffix", default=".dump", show_default=True,
              help="Suffix of the companion file of the same stem.")
@click.option("--settle-time", type=DURATION, default="00:00:02", show_default=True,
              help="A file changed more recently than this is still being written.")
@click.option("--loop-delay", type=DURATION, default="00:05:00", show_default=True,
              help="Full rescan of the storage root (besides inotify), HHH:MM:SS or seconds.")
@click.option("--cleanup-delay", type=DURATION, default="00:01:00", show_default=True,
              help="How often finished jobs' originals are saved or deleted.")
@click.option("--priority-delay", type=DURATION, default="00:01:00", show_default=True,
              help="Priority requests are checked at least this often.")
@click.option("--save-successful-to", type=click.Path(file_okay=False),
              help="Originals of successful jobs go here (blank: deleted).")
@click.option("--save-failed-to", type=click.Path(file_okay=False),
              help="Originals of failed jobs go here (blank: deleted).")
@click.option("--batch-size", type=click.IntRange(1), default=100, show_default=True,
              help="Submissions queued per group commit.")
def command(**params):
    """Turn complete submissions in a drop directory into job messages."""
    raise SystemExit(start(lambda o, own: Collect(o, **own), params))
