"""Checks and handles for `pipers probe`: the base classes and ready-made ones.

A *check* has ``next_run()`` (unix time of its next run) and ``run()`` (a dict,
or a list/tuple of dicts; None is an error, an empty list means "nothing this
time"), and optionally ``check_name()``. A *handle* starts closed; ``open()``
opens it, ``fileno()`` says what to wait on (None: poll), ``read_messages()``
reads what arrived without blocking and raises `HandleEOF` at end of file,
after which the probe calls ``close()`` and opens it again later.

The probe completes every message with ``check`` (the name), ``host`` and
``time`` (ISO 8601, UTC) unless the message has them. Time comes from `now()`:
the probe's clock, which tests replace to drive schedules without sleeping.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import fcntl
import math
import os
import shlex
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

__all__ = [
    "Check", "Command", "CommandStream", "Disk", "FileTail", "Handle", "HandleEOF",
    "HttpStatus", "Load", "Memory", "TcpConnect", "iso", "now",
]

_now: contextvars.ContextVar[float | None] = contextvars.ContextVar("probe_now", default=None)
MAX_OUTPUT = 4096  # characters of a command's output kept in its message
READ_CHUNK = 64 * 1024
MAX_READ = 1024 * 1024  # bytes one read_messages() call takes, so others get their turn


def now() -> float:
    """The probe's current time (the injected one while the probe runs checks)."""
    t = _now.get()
    return time.time() if t is None else t


@contextlib.contextmanager
def at(t: float) -> Iterator[None]:
    """Run checks as if it were `t` (the probe sets this around every pass)."""
    token = _now.set(t)
    try:
        yield
    finally:
        _now.reset(token)


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


class HandleEOF(Exception):
    """A handle reached end of file: the probe closes it and reopens it later."""


# -- base classes ---------------------------------------------------------------------------


class Check:
    """Runs every `interval` seconds: at once when the probe starts, then on multiples
    of the interval (``aligned``, so a minute check runs at :00) or `interval` after the
    last run. Subclasses implement ``run()``."""

    def __init__(self, interval: float = 60.0, *, name: str | None = None,
                 aligned: bool = True):
        if not interval > 0:
            raise ValueError(f"interval must be positive, not {interval!r}")
        self.interval = float(interval)
        self.name = name
        self.aligned = aligned
        self._started = False

    def check_name(self) -> str | None:
        return self.name  # None: the probe names it after its class and position

    def next_run(self) -> float:
        t = now()
        if not self._started:
            self._started = True
            return t
        if self.aligned:
            return (math.floor(t / self.interval) + 1) * self.interval
        return t + self.interval

    def run(self) -> dict | list[dict]:
        raise NotImplementedError


class Handle:
    """A stream of messages read as soon as data arrives; reopened `reopen_delay`
    seconds after its end of file (or an error)."""

    reopen_delay = 10.0

    def __init__(self, *, name: str | None = None, reopen_delay: float | None = None):
        self.name = name
        if reopen_delay is not None:
            self.reopen_delay = float(reopen_delay)

    def check_name(self) -> str | None:
        return self.name

    def open(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def fileno(self) -> int | None:
        return None

    def read_messages(self) -> list[dict]:
        raise NotImplementedError


def _set_nonblocking(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)


def _line_message(line: bytes) -> dict:
    """Default parser: a JSON object as it is, any other line as ``{"line": ...}``."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        value = None
    if isinstance(value, dict):
        return value
    return {"line": line.decode("utf-8", "replace")}


def _parsed(parse: Callable[[bytes], Any], lines: list[bytes]) -> list[dict]:
    out: list[dict] = []
    for line in lines:
        rec = parse(line)
        if rec is None:
            continue
        if isinstance(rec, (list, tuple)):
            out.extend(rec)
        else:
            out.append(rec)
    return out


# -- handles ----------------------------------------------------------------------------------


class FileTail(Handle):
    """Lines appended to a file, like ``tail -F``: each complete line is a message
    (``parse(line_bytes)`` -> dict, list or None; default: a JSON object or
    ``{"line": text}``). At end of file the handle is closed and reopened after
    `reopen_delay`; it goes on where it stopped, or from the start of the file when
    the path now names another file (rotation) or the file shrank (truncation).
    A missing file is retried the same way. A partial last line waits for its end.
    """

    reopen_delay = 1.0

    def __init__(self, path: str | os.PathLike, *, name: str | None = None,
                 parse: Callable[[bytes], Any] | None = None,
                 reopen_delay: float | None = None, from_end: bool = False,
                 max_line: int = 1024 * 1024):
        super().__init__(name=name, reopen_delay=reopen_delay)
        self.path = os.fspath(path)
        self.parse = parse or _line_message
        self.from_end = from_end
        self.max_line = max_line
        self._fd: int | None = None
        self._file: tuple[int, int] | None = None  # (device, inode) being followed
        self._offset = 0  # just after the last complete line handed out
        self._buf = b""

    def check_name(self) -> str:
        return self.name or f"tail:{self.path}"

    def open(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        st = os.fstat(fd)
        ident = (st.st_dev, st.st_ino)
        if self._file is None:
            self._offset = st.st_size if self.from_end else 0
        elif ident != self._file or st.st_size < self._offset:
            self._offset = 0  # rotated or truncated: the new content from its start
        self._file = ident
        os.lseek(fd, self._offset, os.SEEK_SET)
        self._fd, self._buf = fd, b""

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd, self._buf = None, b""  # a partial line is read again after reopening

    def fileno(self) -> int | None:
        return self._fd

    def read_messages(self) -> list[dict]:
        if self._fd is None:
            raise HandleEOF("not open")
        got = 0
        while got < MAX_READ:
            chunk = os.read(self._fd, READ_CHUNK)
            if not chunk:
                break
            got += len(chunk)
            self._buf += chunk
        if not got:
            raise HandleEOF("end of file")
        *lines, self._buf = self._buf.split(b"\n")
        self._offset += sum(len(line) + 1 for line in lines)
        if len(self._buf) > self.max_line:  # a "line" without end: hand it out as it is
            lines.append(self._buf)
            self._offset += len(self._buf)
            self._buf = b""
        return _parsed(self.parse, [line for line in lines if line.strip()])


class CommandStream(Handle):
    """Lines printed by a long-running command (``vmstat 5``, a log follower): each
    line is a message (default: a JSON object, or ``{"line": text}``). When the
    command exits, it is started again after `reopen_delay`."""

    def __init__(self, command: str | Sequence[str], *, name: str | None = None,
                 parse: Callable[[bytes], Any] | None = None,
                 reopen_delay: float | None = None):
        super().__init__(name=name, reopen_delay=reopen_delay)
        self.command = command
        self.parse = parse or _line_message
        self._child: subprocess.Popen | None = None
        self._buf = b""

    def check_name(self) -> str:
        return self.name or f"stream:{_command_text(self.command)}"

    def open(self) -> None:
        self.close()
        self._child = subprocess.Popen(
            self.command, shell=isinstance(self.command, str), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, close_fds=True,
        )
        _set_nonblocking(self._child.stdout.fileno())

    def close(self) -> None:
        child, self._child, self._buf = self._child, None, b""
        if child is None:
            return
        if child.poll() is None:
            child.kill()
        child.stdout.close()
        child.wait()

    def fileno(self) -> int | None:
        return None if self._child is None else self._child.stdout.fileno()

    def read_messages(self) -> list[dict]:
        if self._child is None:
            raise HandleEOF("not running")
        fd = self._child.stdout.fileno()
        got, eof = 0, False
        while got < MAX_READ:
            try:
                chunk = os.read(fd, READ_CHUNK)
            except BlockingIOError:
                break
            if not chunk:
                eof = True
                break
            got += len(chunk)
            self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        if eof:
            if self._buf.strip():
                lines.append(self._buf)
            self._buf = b""
            if not lines:
                code = self._child.wait()
                raise HandleEOF(f"command ended with exit code {code}")
        return _parsed(self.parse, [line for line in lines if line.strip()])


# -- checks -----------------------------------------------------------------------------------


def _command_text(command: str | Sequence[str]) -> str:
    return command if isinstance(command, str) else shlex.join(command)


def _clip(data: bytes, limit: int) -> str:
    text = data.decode("utf-8", "replace")
    return text if len(text) <= limit else text[:limit] + "..."


class Command(Check):
    """Runs a command (a string goes through the shell); reports ``exit_code``,
    ``output`` (stdout), ``errors`` (stderr), ``duration`` and ``timed_out``.
    With ``json_output`` each line of stdout that holds a JSON object becomes a
    message of its own (with ``exit_code`` added)."""

    def __init__(self, command: str | Sequence[str], interval: float = 60.0, *,
                 name: str | None = None, timeout: float | None = 30.0,
                 json_output: bool = False, max_output: int = MAX_OUTPUT,
                 aligned: bool = True):
        super().__init__(interval, name=name, aligned=aligned)
        self.command = command
        self.timeout = timeout
        self.json_output = json_output
        self.max_output = max_output

    def check_name(self) -> str:
        return self.name or f"command:{_command_text(self.command)}"

    def run(self) -> dict | list[dict]:
        start = time.monotonic()
        try:
            p = subprocess.run(
                self.command, shell=isinstance(self.command, str), stdin=subprocess.DEVNULL,
                capture_output=True, timeout=self.timeout, close_fds=True,
            )
        except subprocess.TimeoutExpired as e:
            return {"command": _command_text(self.command), "exit_code": None,
                    "timed_out": True, "duration": round(time.monotonic() - start, 6),
                    "output": _clip(e.stdout or b"", self.max_output)}
        except OSError as e:
            return {"command": _command_text(self.command), "exit_code": None,
                    "timed_out": False, "error": str(e)}
        duration = round(time.monotonic() - start, 6)
        if self.json_output:
            out = []
            for line in p.stdout.splitlines():
                try:
                    value = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue  # not a message: a header, a blank line
                if isinstance(value, dict):
                    value.setdefault("exit_code", p.returncode)
                    out.append(value)
            return out
        return {
            "command": _command_text(self.command), "exit_code": p.returncode,
            "timed_out": False, "duration": duration,
            "output": _clip(p.stdout, self.max_output),
            "errors": _clip(p.stderr, self.max_output),
        }


class Load(Check):
    """System load averages (``load1``, ``load5``, ``load15``) and ``cpus``."""

    def check_name(self) -> str:
        return self.name or "load"

    def run(self) -> dict:
        load1, load5, load15 = os.getloadavg()
        return {"load1": load1, "load5": load5, "load15": load15, "cpus": os.cpu_count()}


class Disk(Check):
    """Space and inodes of the filesystem holding `path`."""

    def __init__(self, path: str = "/", interval: float = 60.0, **kw):
        super().__init__(interval, **kw)
        self.path = path

    def check_name(self) -> str:
        return self.name or f"disk:{self.path}"

    def run(self) -> dict:
        usage = shutil.disk_usage(self.path)
        st = os.statvfs(self.path)
        inodes_used = st.f_files - st.f_ffree
        return {
            "path": self.path, "total_bytes": usage.total, "used_bytes": usage.used,
            "free_bytes": usage.free,
            "used_percent": round(100.0 * usage.used / usage.total, 2) if usage.total else 0.0,
            "inodes_total": st.f_files, "inodes_free": st.f_ffree,
            "inodes_used_percent":
                round(100.0 * inodes_used / st.f_files, 2) if st.f_files else 0.0,
        }


class Memory(Check):
    """Memory and swap from ``/proc/meminfo`` (bytes) and ``used_percent``."""

    def __init__(self, interval: float = 60.0, *, meminfo: str = "/proc/meminfo", **kw):
        super().__init__(interval, **kw)
        self.meminfo = meminfo

    def check_name(self) -> str:
        return self.name or "memory"

    def run(self) -> dict:
        info: dict[str, int] = {}
        with open(self.meminfo) as f:
            for line in f:
                key, _, rest = line.partition(":")
                fields = rest.split()
                if fields and fields[0].isdigit():
                    info[key] = int(fields[0]) * (1024 if fields[1:] == ["kB"] else 1)
        total = info.get("MemTotal", 0)
        available = info.get("MemAvailable", info.get("MemFree", 0))
        return {
            "total_bytes": total, "available_bytes": available,
            "used_percent": round(100.0 * (total - available) / total, 2) if total else 0.0,
            "swap_total_bytes": info.get("SwapTotal", 0),
            "swap_free_bytes": info.get("SwapFree", 0),
        }


class TcpConnect(Check):
    """Whether a TCP connection to `host`:`port` opens within `timeout` seconds:
    ``connected``, ``duration`` and the ``error`` when it does not."""

    def __init__(self, host: str, port: int, interval: float = 60.0, *,
                 timeout: float = 5.0, **kw):
        super().__init__(interval, **kw)
        self.host, self.port, self.timeout = host, int(port), timeout

    def check_name(self) -> str:
        return self.name or f"tcp:{self.host}:{self.port}"

    def run(self) -> dict:
        start = time.monotonic()
        msg: dict[str, Any] = {"target": f"{self.host}:{self.port}"}
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout):
                pass
        except OSError as e:
            msg.update(connected=False, error=_os_error(e))
        else:
            msg["connected"] = True
        msg["duration"] = round(time.monotonic() - start, 6)
        return msg


class HttpStatus(Check):
    """The HTTP status of `url` (``status_code``; ``ok`` when it is in `expect`,
    by default any 2xx or 3xx), ``duration`` and the ``error`` when there is no answer."""

    def __init__(self, url: str, interval: float = 60.0, *, timeout: float = 10.0,
                 method: str = "GET", expect: Sequence[int] | None = None, **kw):
        super().__init__(interval, **kw)
        self.url, self.timeout, self.method = url, timeout, method
        self.expect = set(expect) if expect is not None else None

    def check_name(self) -> str:
        return self.name or f"http:{self.url}"

    def run(self) -> dict:
        start = time.monotonic()
        msg: dict[str, Any] = {"url": self.url}
        status = None
        try:
            req = urllib.request.Request(self.url, method=self.method,
                                         headers={"User-Agent": "pipers-probe"})
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                status = resp.status
        except urllib.error.HTTPError as e:
            status = e.code
            e.close()
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            msg["error"] = _os_error(reason) if isinstance(reason, OSError) else str(reason)
        msg["status_code"] = status
        if status is None:
            msg["ok"] = False
        elif self.expect is not None:
            msg["ok"] = status in self.expect
        else:
            msg["ok"] = 200 <= status < 400
        msg["duration"] = round(time.monotonic() - start, 6)
        return msg


def _os_error(e: OSError) -> str:
    if e.errno is not None and e.strerror:
        return f"{errno.errorcode.get(e.errno, e.errno)}: {e.strerror}"
    return str(e) or type(e).__name__
