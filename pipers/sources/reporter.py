"""`Reporter`: the producer API for applications (after DIRAC's MonitoringReporter).

    from pipers.sources import Reporter

    reporter = Reporter("/var/spool/pipers/enrich", monitoring_type="jobs")
    reporter.add_record({"job": 42, "state": "done"})   # from any thread
    written = reporter.commit()                         # durable; returns the count

`add_record` serialises the record at once (a record that is not JSON fails
there, in the caller's hands) and keeps it in memory; `commit` writes all kept
records into the queue as one group commit (``--durability fsync`` by default:
one ``syncfs`` and one directory fsync for the whole lot) and returns how many it
wrote. No daemon needs to run: the queue directory is the interface.

If the queue cannot be written (disk full, read-only, permissions), `commit`
keeps every record, in order, and raises `CommitError`; the next `commit` retries
them. Each record is named once, when it is added: should a failure strike in
the middle of a commit's renames, the retry writes the same names again, so the
shipper's deterministic ``_id`` keeps the search index free of duplicates.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

import orjson

from queues import Durability, Queue
from queues.names import new_name

from ..lineage import FIELD as TRACE_FIELD
from ..lineage import Tracer

TYPE_FIELD = "monitoringType"


class CommitError(OSError):
    """The queue could not be written; the records are kept for the next commit()."""

    def __init__(self, queue_dir: str, kept: int, cause: OSError):
        where = f" ({cause.filename})" if cause.filename else ""
        super().__init__(
            cause.errno,
            f"cannot write {kept} records into the queue {queue_dir}: "
            f"{cause.strerror or cause}{where}; they are kept in memory and the next "
            "commit() retries them",
        )
        self.queue_dir = queue_dir
        self.kept = kept
        self.cause = cause


class Reporter:
    """Collects records from any thread; `commit` writes them into a queue durably."""

    def __init__(self, queue_dir: str | os.PathLike, monitoring_type: str, *,
                 type_field: str = TYPE_FIELD,
                 durability: Durability | str = Durability.FSYNC,
                 group_access: bool = False, trace: bool = False,
                 trace_field: str = TRACE_FIELD):
        if not monitoring_type:
            raise ValueError("monitoring_type is required (it names the records' kind)")
        self.queue_dir = os.path.abspath(os.fspath(queue_dir))
        self.monitoring_type = monitoring_type
        self.type_field = type_field
        self.durability = Durability(durability)
        self.group_access = group_access
        self.tracer = Tracer("reporter", trace_field) if trace else None  # lineage
        self._records: list[tuple[str, bytes]] = []  # (name, JSON) in the order added
        self._lock = threading.Lock()  # guards _records
        self._commit_lock = threading.Lock()  # one commit at a time, in order
        self._queue: Queue | None = None

    def __len__(self) -> int:
        """Records added and not yet committed."""
        with self._lock:
            return len(self._records)

    def add_record(self, record: Mapping[str, Any]) -> None:
        """Keep one record (a JSON object) for the next commit; thread-safe."""
        if not isinstance(record, Mapping):
            raise TypeError(f"a record is a mapping, not a {type(record).__name__}")
        record = {**record, self.type_field: self.monitoring_type}
        if self.tracer is not None:  # the trace starts when the record is added
            record = self.tracer.stamp(record)
        data = orjson.dumps(record)
        item = (new_name(), data)
        with self._lock:
            self._records.append(item)

    def commit(self) -> int:
        """Write every kept record into the queue; returns how many were written.

        Raises `CommitError` (an OSError) when the queue cannot be written; the
        records stay kept, and the next call writes them.
        """
        with self._commit_lock:
            with self._lock:
                records, self._records = self._records, []
            if not records:
                return 0
            try:
                queue = self._queue or self._open()
                with queue.batch() as batch:
                    for name, data in records:
                        batch.add(data, name)
            except OSError as e:
                with self._lock:
                    self._records[:0] = records  # before any added meanwhile: order kept
                raise CommitError(self.queue_dir, len(records), e) from e
            return len(records)

    def _open(self) -> Queue:
        self._queue = Queue(self.queue_dir, durability=self.durability,
                            group_access=self.group_access)
        return self._queue
