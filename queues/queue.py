"""One queue directory and every state change of its messages.

Only this module builds paths inside a queue; daemons and commands call it.
"""

from __future__ import annotations

import collections
import errno
import itertools
import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson

from . import names, priority
from .owner import Owner, host_name, me
from .readahead import ReadAhead
from .states import (
    DIRS,
    INCOMING,
    OWNER_SEP,
    RUN,
    SIDECAR_SUFFIX,
    Durability,
    Reason,
)
from .sync import fsync_dir, syncfs

SCAN_CHUNK = 10_000  # names listed (and sorted) per refill: bounds memory on huge backlogs
LOST_BEFORE_RELISTING = 16  # claims lost to siblings in a row before listing incoming/ again
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
STALE_TMP_SECONDS = 36 * 3600  # Maildir's rule for abandoned files in tmp/
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
# reading a message changes nothing on disk (no atime: no inode written back per read);
# the kernel allows it on one's own files only, so a queue drops it on the first EPERM
_NOATIME = getattr(os, "O_NOATIME", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC  # as a path walk would (pass_on)
# link(2) cannot: the name exists (rename replaces it), hard links refused (protected_hardlinks,
# a file of another user) or unsupported, too many links, another filesystem
_NO_LINK = {errno.EEXIST, errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK, errno.EXDEV}
_tmp_counter = itertools.count()


class BadMessage(Exception):
    """A message that can never be processed as it is (goes to errors/)."""

    def __init__(self, reason: Reason, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class Claim:
    """A message this process owns: it sits in pending/ under its owner tag."""

    name: str  # the name it had in incoming/ (id plus attempt count)
    path: str  # where it is now
    regular: bool = True  # what the directory listing said about its type
    urgent: bool = False  # taken from priority/: its outputs go to the next priority/

    @property
    def id(self) -> str:
        return names.split_attempts(self.name)[0]

    @property
    def attempts(self) -> int:
        return names.split_attempts(self.name)[1]


DROP = "drop"  # a `pass_on` route: the message ends here (unlinked where it lies)
CLAIM = "claim"  # a `pass_on` route: claimed as by `claim()`, for the ordinary path


@dataclass
class Passed:
    """What one `Queue.pass_on` round did."""

    moved: list[str] = field(default_factory=list)  # names now in a next queue
    size: int = 0  # bytes read of the moved and the dropped ones
    dropped: list[str] = field(default_factory=list)  # names routed to DROP, now gone
    claims: list[Claim] = field(default_factory=list)  # for the ordinary path
    full: OSError | None = None  # the disk was full: the round ended there


class Queue:
    """A filer queue: incoming/, pending/, tmp/ and errors/ under one directory."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        durability: Durability | str = Durability.NONE,
        group_access: bool = False,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        create: bool = True,
    ):
        self.path = os.path.abspath(os.fspath(path))
        self.durability = Durability(durability)
        self.dir_mode = 0o770 if group_access else 0o700
        self.file_mode = 0o660 if group_access else 0o600
        self._chmod_files = group_access
        self.max_message_bytes = max_message_bytes
        self.incoming, self.pending, self.tmp, self.errors = (
            os.path.join(self.path, d) for d in DIRS
        )
        if create:
            self.create()
        elif not os.path.isdir(self.incoming):
            raise FileNotFoundError(errno.ENOENT, "not a queue directory", self.path)
        self.dev = os.stat(self.incoming).st_dev
        self._candidates: collections.deque[tuple[str, bool]] = collections.deque()
        self._read_flags = _OPEN_FLAGS | _NOATIME
        # reads ahead of the worker on a full listing (a thread, only then)
        self._readahead = ReadAhead(self.incoming, self._open_message)

    def __repr__(self) -> str:
        return f"Queue({self.path!r})"

    @property
    def fsync(self) -> bool:
        return self.durability is Durability.FSYNC

    def create(self) -> None:
        """Make the queue's directories with this queue's mode (first use)."""
        for d in (self.path, self.incoming, self.pending, self.tmp, self.errors):
            try:
                os.mkdir(d, self.dir_mode)
                os.chmod(d, self.dir_mode)  # not reduced by the umask
            except FileExistsError:
                if not os.path.isdir(d):
                    raise NotADirectoryError(errno.ENOTDIR, "not a directory", d) from None

    # -- writing -----------------------------------------------------------------------

    def batch(self) -> Batch:
        """A group of new messages made visible together (group commit)."""
        return Batch(self)

    def put(self, data: bytes, name: str | None = None) -> str:
        """Enqueue one message; returns its name."""
        with self.batch() as b:
            name = b.add(data, name)
        return name

    def put_many(self, items: Iterable[bytes]) -> list[str]:
        with self.batch() as b:
            return [b.add(data) for data in items]

    def _write_tmp(self, name: str, data: bytes) -> str:
        path = os.path.join(self.tmp, f"{name}.{os.getpid()}_{next(_tmp_counter)}")
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            self.file_mode,
        )
        try:
            if self._chmod_files:
                os.fchmod(fd, self.file_mode)  # the umask must not take the group's bits
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except BaseException as e:
            os.close(fd)
            _unlink_quietly(path)
            if isinstance(e, OSError) and e.filename is None:  # say where (write(2) does not)
                raise OSError(e.errno, e.strerror, path) from None
            raise
        os.close(fd)
        return path

    def _write_atomic(self, directory: str, name: str, data: bytes) -> None:
        tmp = self._write_tmp(name, data)
        if self.fsync:
            fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.rename(tmp, os.path.join(directory, name))

    # -- claiming ------------------------------------------------------------------------

    def scan(self, limit: int = SCAN_CHUNK) -> list[tuple[str, bool]]:
        """Up to `limit` names in incoming/, sorted, with 'is a regular file'."""
        found = []
        with os.scandir(self.incoming) as it:
            for entry in it:
                if entry.name[0] == ".":
                    continue  # hidden: somebody's temporary file, not a message
                found.append((entry.name, entry.is_file(follow_symlinks=False)))
                if len(found) >= limit:
                    break
        found.sort()
        return found

    def forget(self) -> None:
        """Drop the cached listing so the next claim sees incoming/ afresh."""
        self._candidates.clear()

    def claim(self, limit: int = 1) -> list[Claim]:
        """Take up to `limit` messages from incoming/ into pending/ (atomic rename).

        A message a sibling took first (ENOENT) is skipped; the caller owns
        every returned claim until it finishes, fails or releases it.
        """
        tag = OWNER_SEP + me().tag
        claims: list[Claim] = priority.take(self, limit, tag)  # one failed open() if none
        if len(claims) < limit:
            self._take(limit - len(claims), self._claimer(tag, claims))
        return claims

    def _claimer(self, tag: str, claims: list[Claim]) -> Callable[[str, bool], None]:
        inc, pend = self.incoming + os.sep, self.pending + os.sep  # joined once, not per name

        def claim_one(name: str, regular: bool) -> None:
            dst = pend + name + tag
            os.rename(inc + name, dst)
            claims.append(Claim(name, dst, regular))

        return claim_one

    def can_pass_to(self, to: Queue) -> bool:
        """Whether `pass_on` may move messages into `to`: one filesystem, no fsync."""
        return not self.fsync and not to.fsync and to.dev == self.dev

    def pass_on(self, limit: int, route: Callable[[bytes], Queue | str]) -> Passed:
        """Move up to `limit` messages, unchanged, to the queue `route` names for each,
        one rename(2) each, without claiming them into pending/ first.

        For a hop that forwards what it reads as it is (`pipers pass`, `pipers filter`).
        A message in incoming/ is complete and never changes, so it can be read where
        it is; the rename into the next queue is then the claim: of siblings reading
        the same message, one rename wins and the others get ENOENT and drop their
        copy. `route(data)` returns the queue (one `can_pass_to` allows), DROP (the
        message ends here: unlinked, and again only one sibling's unlink succeeds) or
        CLAIM. Nothing is ever held in pending/, so a crash leaves every message in one
        queue or the other.

        Messages taken from priority/, those `route` sends to CLAIM, raises on, or
        names a queue `can_pass_to` refuses, and any that cannot be read as they are
        (not a regular file, too large, a symlink, not readable), are claimed as by
        `claim()` and returned as claims for the ordinary path, which fails them with
        a reason or writes them as it always does. A full disk (rename(2) may need a
        directory block) ends the round: it is returned in `full`, the message stays
        in incoming/.
        """
        tag = OWNER_SEP + me().tag
        done = Passed(claims=priority.take(self, limit, tag))
        if done.claims:
            return done  # urgent ones first, by the ordinary path
        claim_one = self._claimer(tag, done.claims)
        rename, unlink, read = os.rename, os.unlink, self._read_path
        moved, dropped = done.moved, done.dropped
        split = names.split_attempts
        # names relative to the directories, opened for this round only (shorter path
        # walks; a queue moved away meanwhile is found again by the next round)
        src_fd = os.open(self.incoming, _DIR_FLAGS)
        dst_fds: dict[str, int | None] = {}  # queue path -> its incoming/ (None: refused)

        def dst_fd(to: Queue) -> int | None:
            if to.path not in dst_fds:
                fd = None
                if self.can_pass_to(to):
                    try:
                        fd = os.open(to.incoming, _DIR_FLAGS)
                    except OSError:  # gone or unreadable: the ordinary path says so
                        pass
                dst_fds[to.path] = fd
            return dst_fds[to.path]

        def pass_one(name: str, regular: bool) -> None:
            try:
                data = read(name, regular, src_fd)
            except FileNotFoundError:
                raise  # a sibling took it
            except (BadMessage, OSError):  # not readable as it is
                data = None
            try:
                to = CLAIM if data is None else route(data)
            except Exception:  # not for this path (invalid JSON, the piper's own error)
                to = CLAIM
            if to is DROP:
                unlink(name, dir_fd=src_fd)
                dropped.append(name)
                done.size += len(data)
                return
            fd = None if to is CLAIM else dst_fd(to)
            if fd is None:
                claim_one(name, regular)
                return
            base = split(name)[0]
            rename(name, base, src_dir_fd=src_fd, dst_dir_fd=fd)
            moved.append(base)
            done.size += len(data)

        try:
            self._take(limit, pass_one)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            done.full = e
        finally:
            os.close(src_fd)
            for fd in dst_fds.values():
                if fd is not None:
                    os.close(fd)
        return done

    def _take(self, limit: int, take_one: Callable[[str, bool], None]) -> None:
        """Call `take_one(name, regular)` on listed names of incoming/ until `limit` took.

        `take_one` raises FileNotFoundError when a sibling took the message first.
        """
        refilled = relisted = False
        lost = 0  # siblings' wins in a row
        took = 0
        while took < limit:
            if not self._candidates:
                if refilled:
                    break
                listing = self.scan()
                self._candidates.extend(listing)
                refilled = True
                if not listing:
                    break
                if len(listing) >= SCAN_CHUNK:  # a big backlog: maybe on disk only
                    self._readahead.follow(listing, self._candidates)
            name, regular = self._candidates.popleft()
            if name.endswith(SIDECAR_SUFFIX):  # would pass for a sidecar in counts and errors/
                if self._rename_fresh(name):
                    refilled = False  # list again to find it under its new name
                continue
            try:
                take_one(name, regular)
            except FileNotFoundError:  # a sibling won: it works on this part of the listing
                if not lost:  # go on half-way along ours, so the two seldom meet again
                    self._candidates.rotate(-(len(self._candidates) // 2))
                lost += 1
                if lost >= LOST_BEFORE_RELISTING and not relisted:  # our listing is stale
                    self._candidates.clear()
                    refilled, relisted, lost = False, True, 0
                continue
            except OSError as e:
                if e.errno != errno.ENAMETOOLONG:
                    raise
                if self._rename_fresh(name):
                    refilled = False
                continue
            lost = 0
            took += 1

    def _rename_fresh(self, name: str) -> bool:
        """A name too long to carry an owner tag, or looking like a sidecar, gets a fresh
        name (same bytes); the next listing finds it. False if a sibling took it first."""
        try:
            os.rename(
                os.path.join(self.incoming, name), os.path.join(self.incoming, names.new_name())
            )
        except FileNotFoundError:
            return False
        return True

    def read(self, claim: Claim) -> bytes:
        """The message bytes; never follows a symlink nor blocks on a FIFO."""
        return self._read_path(claim.path, claim.regular)

    def _open_message(self, path: str, dir_fd: int | None = None) -> int:
        """Open a message for reading: never through a symlink, never blocking, no atime
        where the kernel allows it (our own files; another user's: EPERM, dropped once)."""
        try:
            return os.open(path, self._read_flags, dir_fd=dir_fd)
        except PermissionError as e:
            if e.errno != errno.EPERM or not self._read_flags & _NOATIME:
                raise
            self._read_flags &= ~_NOATIME  # another user's message: atime is updated
            return os.open(path, self._read_flags, dir_fd=dir_fd)

    def _read_path(self, path: str, regular: bool, dir_fd: int | None = None) -> bytes:
        if not regular:
            raise BadMessage(Reason.NOT_REGULAR, f"not a regular file ({_kind(path, dir_fd)})")
        try:
            fd = self._open_message(path, dir_fd)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise BadMessage(Reason.NOT_REGULAR, "symbolic link (never followed)") from None
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise BadMessage(Reason.NOT_REGULAR, f"not a regular file ({_kind(path, dir_fd)})")
            if st.st_size > self.max_message_bytes:
                raise BadMessage(
                    Reason.TOO_LARGE,
                    f"{st.st_size} bytes is over the limit of {self.max_message_bytes}",
                )
            data = os.read(fd, st.st_size)
            while len(data) < st.st_size:
                more = os.read(fd, st.st_size - len(data))
                if not more:
                    break
                data += more
            return data
        finally:
            os.close(fd)

    # -- finishing -------------------------------------------------------------------------

    def done(self, claim: Claim) -> None:
        """The message is finished: remove it."""
        os.unlink(claim.path)

    def release(self, claim: Claim, *, count_attempt: bool = False) -> str:
        """Put a claimed message back into incoming/ (optionally counting a try)."""
        base, attempts = names.split_attempts(claim.name)
        name = names.with_attempts(base, attempts + 1 if count_attempt else attempts)
        if claim.urgent:
            return priority.release(self, claim, name)
        os.rename(claim.path, os.path.join(self.incoming, name))
        return name

    def fail(
        self,
        claim: Claim,
        reason: Reason | str,
        message: str,
        *,
        daemon: str = "",
        traceback: str | None = None,
        detail: object = None,
    ) -> None:
        """Move a claimed message to errors/ with a sidecar that says why.

        The entry is named by the message's id (its attempts are in the sidecar), so a
        message processed twice after a crash between forward and unlink has one entry.
        """
        name = claim.id
        try:
            held = os.lstat(os.path.join(self.errors, name)).st_mode
        except FileNotFoundError:
            held = None
        if held is not None and (stat.S_ISDIR(held) or stat.S_ISDIR(os.lstat(claim.path).st_mode)):
            name = f"{name}.{names.new_name()}"  # rename(2) cannot replace a directory or by one
        now = time.time()
        sidecar = {
            "reason": _text(str(getattr(reason, "value", reason))),
            "message": _text(message),
            "daemon": _text(daemon),
            "attempts": claim.attempts + 1,
            "time": datetime.fromtimestamp(now, UTC).isoformat(),
            "unix_time": now,
            "host": host_name(),
            "pid": os.getpid(),
            "id": _text(claim.id),
            "traceback": None if traceback is None else _text(traceback),
            "detail": detail,
        }
        data = orjson.dumps(sidecar, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
        self._write_atomic(self.errors, name + SIDECAR_SUFFIX, data)
        os.rename(claim.path, os.path.join(self.errors, name))
        if self.fsync:
            fsync_dir(self.errors)

    # -- crash recovery and hygiene -----------------------------------------------------

    def recover(self, max_attempts: int = 0, daemon: str = "") -> tuple[int, int]:
        """Return messages of dead owners on this host to incoming/.

        Each return counts an attempt; at `max_attempts` (0 = no limit) the
        message goes to errors/ as poison instead. Live owners - this process
        and its siblings - keep theirs. Returns (returned, poisoned).
        """
        returned = poisoned = 0
        with os.scandir(self.pending) as it:
            entries = [e.name for e in it]
        for pending_name in entries:
            name, owner = names.split_owner(pending_name)
            if owner is not None and owner.alive():
                continue
            base, attempts = names.split_attempts(name)
            path = os.path.join(self.pending, pending_name)
            claim = Claim(names.with_attempts(base, attempts), path)
            try:
                if max_attempts and attempts + 1 >= max_attempts:
                    self.fail(
                        claim, Reason.POISON,
                        f"its worker died {attempts + 1} times while holding it",
                        daemon=daemon,
                    )
                    poisoned += 1
                else:
                    self.release(claim, count_attempt=True)
                    returned += 1
            except FileNotFoundError:
                continue  # a sibling recovered it first
            except OSError as e:
                if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                continue  # no room for the poison's sidecar: it stays until the next round
        if returned:
            self.forget()
        return returned, poisoned

    def sweep_tmp(self, max_age: float = STALE_TMP_SECONDS, now: float | None = None) -> int:
        """Remove files abandoned in tmp/ longer than `max_age` seconds ago, and at once
        those already linked into incoming/ (their writer died before removing them)."""
        now = time.time() if now is None else now
        removed = 0
        with os.scandir(self.tmp) as it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                    if (st.st_nlink > 1 and stat.S_ISREG(st.st_mode)) or (
                            now - st.st_mtime > max_age):
                        os.unlink(entry.path)
                        removed += 1
                except (FileNotFoundError, IsADirectoryError, PermissionError):
                    continue
        return removed

    # -- inspection ------------------------------------------------------------------------

    def count(self, directory: str = INCOMING, upto: int | None = None) -> int:
        """Messages in one directory (a listing without stat calls); with `upto`, the
        listing stops once it found that many."""
        path = os.path.join(self.path, directory)
        n = 0
        with os.scandir(path) as it:
            for entry in it:
                name = entry.name
                if name[0] != "." and not name.endswith(SIDECAR_SUFFIX):
                    n += 1
                    if n == upto:
                        break
        return n

    def counts(self) -> dict[str, int]:
        return {d: self.count(d) for d in DIRS}

    def oldest_age(self, directory: str = INCOMING, now: float | None = None) -> float | None:
        """Age in seconds of the oldest message in `directory` (by name, else mtime)."""
        now = time.time() if now is None else now
        oldest = None
        with os.scandir(os.path.join(self.path, directory)) as it:
            for entry in it:
                if entry.name[0] == "." or entry.name.endswith(SIDECAR_SUFFIX):
                    continue
                t = names.name_time(entry.name)
                if t is None:
                    try:
                        t = entry.stat(follow_symlinks=False).st_mtime
                    except FileNotFoundError:
                        continue
                oldest = t if oldest is None else min(oldest, t)
        return None if oldest is None else max(0.0, now - oldest)

    def error_entries(self) -> Iterator[tuple[str, dict]]:
        """(name, sidecar) for every message in errors/ (sidecar {} if missing)."""
        with os.scandir(self.errors) as it:
            listed = sorted(e.name for e in it)
        present = set(listed)
        for name in listed:
            if name.endswith(SIDECAR_SUFFIX) or name[0] == ".":
                continue
            sidecar: dict = {}
            if name + SIDECAR_SUFFIX in present:
                try:
                    sidecar = _read_own_json(os.path.join(self.errors, name + SIDECAR_SUFFIX))
                except (OSError, ValueError):
                    sidecar = {"reason": "unreadable-sidecar"}
            yield name, sidecar

    def replay(self, select: Callable[[str, dict], bool] = lambda n, s: True) -> list[str]:
        """Move chosen messages from errors/ back to incoming/ with a fresh count."""
        moved = []
        for name, sidecar in self.error_entries():  # lazily: select() can show progress
            if not select(name, sidecar):
                continue
            base, _ = names.split_attempts(name)
            try:
                os.rename(os.path.join(self.errors, name), os.path.join(self.incoming, base))
            except FileNotFoundError:
                continue
            _unlink_quietly(os.path.join(self.errors, name + SIDECAR_SUFFIX))
            moved.append(base)
        if moved and self.fsync:
            fsync_dir(self.incoming)
        return moved

    # -- daemon state files (for `status`) ----------------------------------------------------

    def write_state(self, daemon: str, state: dict) -> None:
        """Record what this process is doing, for `pipers status`."""
        run = os.path.join(self.path, RUN)
        try:
            os.mkdir(run, self.dir_mode)
            os.chmod(run, self.dir_mode)  # not reduced by the umask (--group-access)
        except FileExistsError:
            pass
        body = dict(state, daemon=daemon, pid=os.getpid(), updated=time.time())
        self._write_atomic(run, f"{daemon}{OWNER_SEP}{me().tag}.json", orjson.dumps(body))

    def clear_state(self, daemon: str) -> None:
        _unlink_quietly(os.path.join(self.path, RUN, f"{daemon}{OWNER_SEP}{me().tag}.json"))

    def states(self) -> list[dict]:
        """States of live daemon instances; files of dead ones are removed."""
        run = os.path.join(self.path, RUN)
        found = []
        try:
            entries = sorted(os.listdir(run))
        except FileNotFoundError:
            return found
        for entry in entries:
            _, _, tag = entry[: -len(".json")].rpartition(OWNER_SEP)
            owner = Owner.parse(tag)
            if owner is None or not owner.alive():
                _unlink_quietly(os.path.join(run, entry))
                continue
            try:
                found.append(_read_own_json(os.path.join(run, entry)))
            except (OSError, ValueError):
                continue
        return found


class Batch:
    """New messages staged in tmp/ (or claimed files to move on) put into incoming/ together.

    Each staged file is linked into incoming/ under its name and its old name removed
    after the batch (a rename where no link can be made; see `_link_or_rename`).
    With ``--durability fsync`` the batch is a group commit: one ``syncfs``
    makes every staged file durable before any becomes visible, and one
    directory fsync makes the new names durable before any old name goes - two
    flushes per batch rather than one per message. Used as a context manager it
    commits on success and removes its staged files on error.
    """

    def __init__(self, queue: Queue):
        self.queue = queue
        self._staged: list[tuple[str, str]] = []  # (source path, final name)
        self._written: list[str] = []  # our own tmp files (removed on abort)
        self._copied_from: list[str] = []  # sources of cross-filesystem moves
        self._urgent: list[tuple[str, str]] = []  # staged for priority/ (see priority.py)

    def __len__(self) -> int:
        return len(self._staged) + len(self._urgent)

    def __enter__(self) -> Batch:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def add(self, data: bytes, name: str | None = None, *, urgent: bool = False) -> str:
        """Stage a message's bytes; returns its name. Raises OSError (e.g. ENOSPC).

        An `urgent` message goes to priority/: claimed before anything in incoming/.
        """
        name = name or names.new_name()
        path = self.queue._write_tmp(name, data)
        self._written.append(path)
        (self._urgent if urgent else self._staged).append((path, name))
        return name

    def add_move(self, src: str, name: str, src_dev: int, *, urgent: bool = False) -> str:
        """Stage an existing file (e.g. a claimed message) to appear as `name`.

        On the same filesystem the file itself is renamed in (no copy); across
        filesystems it is copied into tmp/ first and the source removed after
        the commit, so incoming/ never holds a partial file.
        """
        if src_dev == self.queue.dev:
            (self._urgent if urgent else self._staged).append((src, name))
            return name
        with open(src, "rb") as f:
            data = f.read()
        self._copied_from.append(src)
        return self.add(data, name, urgent=urgent)

    def commit(self, progress: Callable[[int], object] | None = None) -> list[str]:
        """Make the staged messages visible; `progress(n)` hears of each one (`put`)."""
        if not self._staged and not self._urgent:
            return []
        q = self.queue
        if q.fsync:
            syncfs(q.tmp)
        linked: list[str] = []  # sources to remove once their links are made (and synced)
        try:
            for src, name in self._staged:
                if _link_or_rename(src, os.path.join(q.incoming, name)):
                    linked.append(src)
                if progress is not None:
                    progress(1)
            if q.fsync:
                fsync_dir(q.incoming)
        finally:
            for src in linked:
                _unlink_quietly(src)
        if self._urgent:
            priority.commit(q, self._urgent)
        for src in self._copied_from:
            _unlink_quietly(src)
        committed = [name for _, name in self._staged + self._urgent]
        self._staged, self._written, self._copied_from, self._urgent = [], [], [], []
        return committed

    def abort(self) -> None:
        for path in self._written:
            _unlink_quietly(path)
        self._staged, self._written, self._copied_from, self._urgent = [], [], [], []


def _read_own_json(path: str, limit: int = 4 * 1024 * 1024) -> dict:
    """A sidecar or state file: never through a symlink, never blocking on a FIFO."""
    fd = os.open(path, _OPEN_FLAGS)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            raise ValueError(f"{path}: not a small regular file")
        data = orjson.loads(os.read(fd, st.st_size))
    finally:
        os.close(fd)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON object")
    return data


def _text(text: str) -> str:
    """`text` as valid UTF-8 for a sidecar: a name's undecodable bytes as ``\\xff``."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _link_or_rename(src: str, dst: str) -> bool:
    """Give `src` the name `dst` on the same filesystem; True if `src` is still to unlink.

    A link(2) where the filesystem allows it, the caller removing `src` after: rename(2)
    from one directory to another takes the filesystem's single cross-directory rename
    lock, on which instances sharing a queue queue up; link(2) and unlink(2) lock only
    their own directory. A crash between the link and the unlink leaves the message in
    both places: processed again under the same name (docs/guarantees.md). Where no link
    can be made (the name is taken, links are refused or unsupported), a rename.
    """
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError as e:
        if e.errno not in _NO_LINK:
            raise
        os.rename(src, dst)
        return False
    return True


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _kind(path: str, dir_fd: int | None = None) -> str:
    try:
        mode = os.lstat(path, dir_fd=dir_fd).st_mode
    except FileNotFoundError:
        return "vanished"
    for test, kind in (
        (stat.S_ISLNK, "symbolic link"),
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return kind
    return "regular file"
