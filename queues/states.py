"""The closed sets of the filer protocol, named once and used everywhere."""

from __future__ import annotations

import enum

INCOMING = "incoming"  # complete messages only, waiting for a worker
PENDING = "pending"  # claimed by one worker (owner tag in the name)
TMP = "tmp"  # writers create files here, then rename into incoming/
ERRORS = "errors"  # failed messages, each with a sidecar saying why
RUN = "run"  # one small state file per running daemon instance (status)
PRIORITY = "priority"  # prioritized messages, claimed before incoming/ (only while non-empty)
DIRS = (INCOMING, PENDING, TMP, ERRORS)

SIDECAR_SUFFIX = ".error.json"  # errors/NAME.error.json explains errors/NAME
ATTEMPTS_SEP = ","  # incoming/ID,3 = third try of message ID
OWNER_SEP = "@"  # pending/NAME@host:pid:start = claimed by that process


class Durability(enum.StrEnum):
    """How hard a write is pushed to stable storage before it counts."""

    NONE = "none"  # page cache only: survives kill -9, not power loss
    FSYNC = "fsync"  # data and directory entries on disk (group commit)


class Outcome(enum.StrEnum):
    """What became of one claimed message."""

    FORWARDED = "forwarded"  # written into the next queue
    DROPPED = "dropped"  # consumed on purpose (filter, sink)
    DEFERRED = "deferred"  # back to incoming/ to try later
    FAILED = "failed"  # moved to errors/ with its reason


class Reason(enum.StrEnum):
    """Why a message is in errors/ (the sidecar's `reason`)."""

    INVALID_JSON = "invalid-json"
    NOT_REGULAR = "not-a-regular-file"
    TOO_LARGE = "too-large"
    EXCEPTION = "exception"
    POISON = "poison"
    REJECTED = "rejected"  # the search cluster refused the document for good
    INVALID = "invalid-message"
