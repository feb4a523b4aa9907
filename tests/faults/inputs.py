"""Bad (and oddly named good) inputs for the fault suite, made for real on disk.

Each input is created in a staging directory on the queue's filesystem and
renamed into ``incoming/`` in one step ("dropped"), so the daemon never sees a
half-made one. Every regular file's bytes are unique, so an input that the
queue renames (names too long for an owner tag, names that look like error
sidecars) is still found by its content.
"""

from __future__ import annotations

import os
import stat
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

INVALID_JSON = "invalid-json"
NOT_REGULAR = "not-a-regular-file"
TOO_LARGE = "too-large"
EXCEPTION = "exception"
OUT = "out"  # forwarded to the next queue

BIG = 50 * 1024 * 1024


@dataclass
class Drop:
    name: bytes  # name in incoming/ (bytes: some are not valid UTF-8)
    kind: str
    make: Callable[[bytes], None]  # creates the thing at the given path
    content: bytes | None = None  # for regular files
    expect: str = INVALID_JSON  # a reason in errors/, or OUT
    object_only: bool = False  # valid JSON a daemon may refuse (enrich needs objects)
    renamed: bool = False  # the queue gives it a fresh name before claiming it
    link_target: bytes | None = None

    def outcome(self, daemon: str) -> str:
        """Where this input ends up under `daemon` (pass forwards any valid JSON)."""
        if self.object_only:
            return OUT if daemon == "pass" else EXCEPTION
        return self.expect


def write_file(data: bytes) -> Callable[[bytes], None]:
    def make(path: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
    return make


def _regular(name: bytes, kind: str, data: bytes, expect: str = INVALID_JSON,
             **kw) -> Drop:
    return Drop(name, kind, write_file(data), data, expect, **kw)


def _symlink(target: bytes) -> Callable[[bytes], None]:
    return lambda path: os.symlink(target, path)


def _mkdir_with_file(path: bytes) -> None:
    os.mkdir(path, 0o700)
    write_file(b'{"inside": "a directory"}')(path + b"/message")


def _node(mode: int, device: int = 0) -> Callable[[bytes], None]:
    return lambda path: os.mknod(path, mode | 0o600, device)


# Names an operator's shell, a glob, an option parser or our own name parsing may trip on.
ODD_NAMES = [
    b"with space", b"new\nline", b"tab\there", b"\xc3\xbcn\xc3\xafc\xc3\xb6d\xc3\xa9",
    "名前🙂".encode(), b"-leading-dash", b"--help", b"-rf", b"*", b"?[a-z]",
    b"not-utf8-\xff\xfe", b"latin1-\xe9t\xe9", b"$(touch pwned)", b"`id`", b"a;b&&c|d",
    b"quote'\"s", b"back\\slash", b"name,3", b"name,x", b"a@host:1:2", b"a@", b"@",
    b"\x01control\x7f", b"trailing-space ", b" ", b"dots..", b"x" * 200,
]


def bad_inputs(outside: Path, n: int = 1000) -> list[Drop]:
    """`n` bad inputs of every kind the fault suite names (about 1,000 by default)."""
    out: list[Drop] = []
    seq = iter(range(1 << 30))

    def name(prefix: str) -> bytes:
        return f"{prefix}-{next(seq):04d}".encode()

    invalid = [
        b'{"i": %d', b'{"i": %d}}', b"{'i': %d}", b'{"i": %d, }', b'{"i": NaN, "n": %d}',
        b"{i: %d}", b'<xml n="%d"/>', b'{"i": %d} {"j": 1}', b"%d garbage", b'{"i": 0x%d}',
        b'\x00\x00{"i": %d}', b'["unterminated %d', b'{"i": %d}\x00',
    ]
    for i in range(250):
        data = invalid[i % len(invalid)] % i
        out.append(_regular(name("invalid-json"), "invalid JSON", data))
    utf8 = [
        b'{"s": "\xff\xfe %d"}', b'{"s": "\xc3\x28 %d"}', b'\xef\xbb\xbf{"i": %d}',
        b'{"s": "\xed\xa0\x80 %d"}', b'{"s": "\xc0\xaf %d"}', b'{"s": "\\ud800 %d"}',
    ]
    for i in range(140):
        out.append(_regular(name("invalid-utf8"), "invalid UTF-8", utf8[i % len(utf8)] % i))
    for i in range(10):
        out.append(_regular(name("utf16"), "UTF-16 JSON",
                            f'{{"i": {i}}}'.encode("utf-16")))
    for _ in range(80):
        out.append(_regular(name("empty"), "empty file", b""))
    for i in range(20):
        out.append(_regular(name("blank"), "whitespace only", b" \n\t\r " * (i + 1)))
    big = b'{"big": "' + b"x" * (BIG - 20) + b'"}'
    out.append(_regular(name("huge"), "50 MB file", big, expect=TOO_LARGE))
    for i in range(10):  # deeper than any parser's limit
        out.append(_regular(name("deep-array"), "deep nesting",
                            b"[" * (100_000 + i) + b"]" * (100_000 + i)))
        out.append(_regular(name("deep-object"), "deep nesting",
                            b'{"a":' * (2000 + i) + b"1" + b"}" * (2000 + i)))
    for i in range(5):  # valid but deep: a transform cannot re-serialise it
        out.append(_regular(name("deepish"), "deep nesting (valid)",
                            b'{"a":' * (300 + i) + b"1" + b"}" * (300 + i), object_only=True))
        out.append(_regular(name("deepish-array"), "deep nesting (valid)",
                            b"[" * (300 + i) + b"]" * (300 + i), object_only=True))
    for i, data in enumerate([b"[1, 2, %d]", b'"a string %d"', b"%d", b"null ", b"true ",
                              b"false ", b'[{"i": %d}]', b"-%d.5e3"] * 2):
        body = data % i if b"%d" in data else data + b" " * i
        out.append(_regular(name("not-object"), "valid JSON, not an object", body,
                            object_only=True))
    target = os.fsencode(outside)
    for _ in range(60):
        out.append(Drop(name("symlink-out"), "symlink to a file outside", _symlink(target),
                        expect=NOT_REGULAR, link_target=target))
    for t in [b"/nonexistent/dangling", b"/dev/zero", b"/etc", b"/proc/self/environ",
              b"../../" + os.path.basename(target), b"loop-a", b"."] * 5:
        out.append(Drop(name("symlink"), "symlink", _symlink(t), expect=NOT_REGULAR,
                        link_target=t))
    for _ in range(50):
        out.append(Drop(name("fifo"), "FIFO", lambda p: os.mkfifo(p, 0o600), expect=NOT_REGULAR))
    for _ in range(25):
        out.append(Drop(name("dir"), "empty directory", lambda p: os.mkdir(p, 0o700),
                        expect=NOT_REGULAR))
        out.append(Drop(name("dir-full"), "directory holding a message", _mkdir_with_file,
                        expect=NOT_REGULAR))
    for _ in range(10):
        out.append(Drop(name("chardev"), "character device (/dev/zero)",
                        _node(stat.S_IFCHR, os.makedev(1, 5)), expect=NOT_REGULAR))
        out.append(Drop(name("socket"), "socket", _node(stat.S_IFSOCK), expect=NOT_REGULAR))
    for i in range(20):  # names that look like our own sidecars get a fresh name first
        data = b'{"sidecar-like": %d' % i
        out.append(_regular(name("looks").replace(b"-", b".") + b".error.json",
                            "name of an error sidecar", data, renamed=True))
    for i in range(10):  # too long to carry an owner tag in pending/
        data = b'{"long-name": %d' % i
        out.append(_regular(b"L%03d" % i + b"x" * 251, "255-byte name", data, renamed=True))
    i = 0
    while len(out) < n:  # odd names, bad bytes
        odd = ODD_NAMES[i % len(ODD_NAMES)] + b"#bad%d" % i
        out.append(_regular(odd, "odd name, invalid JSON", b'{"odd-bad": %d' % i))
        i += 1
    return out[:n]


def good_inputs(n: int, tag: str = "good") -> list[Drop]:
    """`n` valid JSON objects, about one in five under an odd name."""
    out = []
    for i in range(n):
        data = orjson.dumps({"good": tag, "i": i})
        if i % 5 == 0:
            odd = ODD_NAMES[(i // 5) % len(ODD_NAMES)] + f"#{tag}{i}".encode()
            out.append(_regular(odd, "odd name, valid", data, expect=OUT))
        else:
            out.append(_regular(f"{tag}-{i:05d}".encode(), "valid", data, expect=OUT))
    return out


def drop(stage: Path, incoming: str, d: Drop) -> None:
    """Create `d` in `stage` (same filesystem) and rename it into `incoming` at once."""
    src = os.fsencode(stage) + b"/" + d.name
    d.make(src)
    os.rename(src, os.fsencode(incoming) + b"/" + d.name)


def listing(directory: str) -> Iterator[bytes]:
    """Names (bytes) in a queue directory, sidecars and hidden files left out."""
    for name in os.listdir(os.fsencode(directory)):
        if not name.startswith(b".") and not name.endswith(b".error.json"):
            yield name


def by_kind(drops: list[Drop]) -> Counter:
    return Counter(d.kind for d in drops)
