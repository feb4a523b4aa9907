"""Fixtures of the fault suite: small filesystems that fill up for real."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


def mount_tmpfs(directory: Path, size: str) -> None:
    """A size-limited tmpfs at `directory` (needs root); fails the test with mount's words."""
    directory.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                        str(directory)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"cannot mount a {size} tmpfs on {directory} (the disk-full tests need "
                    f"root): exit {r.returncode}: {r.stderr.strip()}")


@pytest.fixture
def small_fs(tmp_path) -> Iterator[Callable[..., Path]]:
    """``small_fs(name, size="2m")``: a fresh tmpfs of that size, unmounted at teardown."""
    mounted: list[Path] = []

    def make(name: str = "small", size: str = "2m") -> Path:
        path = tmp_path / name
        mount_tmpfs(path, size)
        mounted.append(path)
        return path

    yield make
    for path in reversed(mounted):
        # lazy: a daemon killed at teardown may still hold a descriptor for a moment
        subprocess.run(["umount", "-l", str(path)], check=False)


def free_bytes(path: Path | str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path: Path | str, leave: int = 0) -> Path:
    """Write a filler file until at most `leave` bytes are free; returns the filler."""
    filler = Path(path) / f"filler-{len(os.listdir(path))}"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        while (room := free_bytes(path) - leave) >= 4096:
            os.write(fd, b"\0" * min(1 << 20, room // 4096 * 4096))
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)
    return filler
