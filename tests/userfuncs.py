"""User functions for `pipers run` in the daemon tests (real side effects on disk)."""

import os
import time


def _log(line: str) -> None:
    fd = os.open(os.environ["PIPERS_TEST_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode() + b"\n")  # one O_APPEND write per line: never interleaved
    finally:
        os.close(fd)


def tag(message):
    """Record which process handled which message, then forward it."""
    _log(f"{message['i']} {os.getpid()}")
    message["by"] = os.getpid()
    return message


def explode(message):
    if message.get("bad"):
        return 1 / 0
    return message


def slow(message):
    """Signals that it has started on a slow message, then takes its time."""
    if message.get("slow"):
        _log(f"started {message['i']}")
        time.sleep(2)
        _log(f"finished {message['i']}")
    return message


def split(message):
    return [dict(message, part=n) for n in range(message.get("parts", 2))]
