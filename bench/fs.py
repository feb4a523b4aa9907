"""A dedicated ext4 filesystem for the benchmarks (a sparse image on a loop device).

The root filesystem of the machines here allocates new inodes at about 1,000 per
second (measured: create ~1 ms, rename/unlink ~20 us), which would make every
baseline that creates files creation-bound and pre-filling a 1,000,000-message
backlog take a quarter of an hour. A fresh ext4 on a loop device, backed by a
file on the same disk, behaves like an ordinary disk filesystem: fsync goes
through to the disk. Without root (or without mkfs.ext4) the benchmarks run in
the work directory as it is, and say so.

The image is 128 GB, sparse (it takes only what is written, ~5 GB at most). At
that size mkfs gives the default 1 GB journal that a disk of that size gets; a
small image gets a small journal (64 MB at 12 GB), whose commits then block a
daemon working through a huge backlog (0.70x instead of 0.91x at 1,000,000).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys


class BenchFS:
    def __init__(self, work: str, size: str = "128G", inodes: int = 2_200_000):
        self.work = os.path.abspath(work)
        self.image = os.path.join(self.work, "fs.img")
        self.mountpoint = os.path.join(self.work, "mnt")
        self.size, self.inodes = size, inodes
        self.mounted = False
        self.path = self.work
        self.kind = "work directory"

    def __enter__(self) -> BenchFS:
        os.makedirs(self.work, exist_ok=True)
        self._lock = open(os.path.join(self.work, ".lock"), "w")  # one benchmark at a time
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("bench: another benchmark uses", self.work, "- waiting", file=sys.stderr)
            fcntl.flock(self._lock, fcntl.LOCK_EX)
        if os.geteuid() != 0 or not shutil.which("mkfs.ext4"):
            print("bench: not root or no mkfs.ext4: measuring in", self.work, file=sys.stderr)
            return self
        self._unmount()  # left over from an interrupted run
        try:
            os.makedirs(self.mountpoint, exist_ok=True)
            subprocess.run(["truncate", "-s", self.size, self.image], check=True)
            subprocess.run(
                ["mkfs.ext4", "-q", "-F", "-N", str(self.inodes),
                 "-E", "lazy_itable_init=1,lazy_journal_init=1", self.image],
                check=True,
            )
            subprocess.run(["mount", "-o", "loop,noinit_itable", self.image, self.mountpoint],
                           check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError) as e:
            print(f"bench: cannot mount a loop filesystem ({e}); measuring in {self.work}",
                  file=sys.stderr)
            self._remove_image()
            return self
        self.mounted = True
        self.path = self.mountpoint
        self.kind = f"ext4 on a loop device ({self.size} sparse image in {self.work})"
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._unmount()
        finally:
            self._lock.close()

    def _unmount(self) -> None:
        if os.path.ismount(self.mountpoint):
            r = subprocess.run(["umount", self.mountpoint], capture_output=True)
            if r.returncode:
                subprocess.run(["umount", "-l", self.mountpoint], capture_output=True)
        self.mounted = False
        self._remove_image()

    def _remove_image(self) -> None:
        try:
            os.unlink(self.image)
        except FileNotFoundError:
            pass

    def fresh(self, name: str) -> str:
        """An empty directory for one measurement."""
        path = os.path.join(self.path, name)
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path)
        return path
