"""Messages as bulk items: a ``create`` action line and the source line, from the file bytes.

The source line is the message file's own bytes (trimmed) when they hold no
line break; only a pretty-printed message is re-serialised (orjson), because
NDJSON needs one line per document. Every message is parsed once (to check it
is a JSON object and to name its index); nothing else is re-encoded.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import orjson

from queues import BadMessage, Claim, Reason
from queues.names import name_time

from .index import IndexNamer

MAX_ID_BYTES = 512  # the engine's limit on `_id`


def doc_id(message_id: str) -> str:
    """The document `_id` of a message: its unique name (hashed when over 512 bytes).

    The name is the message's id for its whole life (transforms keep it), so a
    resend after a crash or a replay creates no second document.
    """
    try:
        raw = message_id.encode()
    except UnicodeEncodeError:  # a file name need not be UTF-8: its own bytes are hashed
        raw = os.fsencode(message_id)
    else:
        if len(raw) <= MAX_ID_BYTES:
            return message_id
    return "sha256-" + hashlib.sha256(raw).hexdigest()


@dataclass(eq=False)
class Item:
    """One claimed message ready for `_bulk`."""

    claim: Claim
    index: str
    id: str
    lines: bytes  # action line + source line, each ending in a newline
    tries: int = 0  # sends that ended in a retryable answer
    finished: bool = field(default=False, repr=False)

    @property
    def size(self) -> int:
        return len(self.lines)


def source_line(data: bytes) -> tuple[bytes, dict]:
    """(one NDJSON line, the parsed message); BadMessage if not a JSON object."""
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise BadMessage(Reason.INVALID_JSON, f"invalid JSON: {e}") from None
    if not isinstance(message, dict):
        raise BadMessage(
            Reason.INVALID, f"a document must be a JSON object, not {type(message).__name__}"
        )
    line = data.strip()
    if b"\n" in line or b"\r" in line:
        line = orjson.dumps(message)
    return line + b"\n", message


def fallback_time(claim: Claim) -> float:
    """The message's creation time from its name, else its file's mtime (kept by rename)."""
    t = name_time(claim.id)
    if t is not None:
        return t
    try:
        return os.stat(claim.path, follow_symlinks=False).st_mtime
    except OSError:
        return 0.0


def make_item(claim: Claim, data: bytes, namer: IndexNamer) -> Item:
    line, message = source_line(data)
    index = namer(message, fallback_time(claim) if namer.uses_date else 0.0)
    _id = doc_id(claim.id)
    action = orjson.dumps({"create": {"_index": index, "_id": _id}})
    return Item(claim, index, _id, action + b"\n" + line)


def body(items: list[Item]) -> bytes:
    """The `_bulk` request body of these items (one join, no re-encoding)."""
    return b"".join([item.lines for item in items])


def take(items: list[Item], max_count: int, max_bytes: int) -> list[Item]:
    """The leading items that fit in one bundle (always at least one)."""
    total = 0
    for n, item in enumerate(items[:max_count]):
        total += item.size
        if total > max_bytes and n:
            return items[:n]
    return items[:max_count]
