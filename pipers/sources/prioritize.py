"""`pipers prioritize ID`: find a job wherever it waits and make it the next one processed.

ID is a job id (the stem of a `collect` submission) or a message name. In
order, it is looked for:

1. in every ``--queue-dir`` (a job id is first turned into its message name
   through the jobs directories: each ``--jobs-dir`` and ``QUEUE/jobs``): a
   message waiting in ``incoming/`` moves to ``priority/`` - one rename - and
   the queue's consumers claim it next; their outputs stay first in line in the
   queues after (see `queues.priority`);
2. in ``--storage-root`` and ``--deferred-storage-root`` (not yet collected): a
   request is left in ``STORAGE_ROOT/.pipers-priority/`` and `pipers collect`
   takes the submission ahead of all others - at once when it is running and
   sees the request through inotify, at the latest after its ``--priority-delay``.

It prints where it found the ID and exits 0, or says it is unknown and exits 1.
"""

from __future__ import annotations

import os

import click

from queues import Queue, priority
from queues.states import ERRORS, INCOMING, PENDING, PRIORITY

from ..options import config_option
from .collect import REQUESTS, Jobs


def find(job_id: str, *, queues: list[Queue], jobs: list[Jobs], storage_root: str | None,
         deferred_storage_root: str | None, json_suffix: str = ".json") -> tuple[bool, str]:
    """Prioritize `job_id`; (found, what happened) for the operator."""
    names = [job_id]
    for j in jobs:
        name = j.lookup(job_id)
        if name and name not in names:
            names.append(name)
    label = job_id if len(names) == 1 else f"{job_id} (message {names[-1]})"
    for queue in queues:
        for name in names:
            where = priority.promote(queue, name)
            if where == INCOMING:
                return True, (f"{label}: found in {queue.incoming}; moved to "
                              f"{os.path.join(queue.path, PRIORITY)}: it is the next one "
                              "processed")
            if where == PRIORITY:
                return True, f"{label}: already first in line in {queue.path}"
            if where == PENDING:
                return True, f"{label}: being processed now from {queue.path}"
            if where == ERRORS:
                return True, (f"{label}: failed, in {queue.errors} (`pipers replay` gives it "
                              "another try)")
    for root, what in ((storage_root, "the storage root"),
                       (deferred_storage_root, "the deferred storage root")):
        if root and os.path.isfile(os.path.join(root, job_id + json_suffix)):
            requests = os.path.join(storage_root, REQUESTS)
            os.makedirs(requests, exist_ok=True)
            with open(os.path.join(requests, job_id), "w") as f:
                f.write(root + "\n")
            return True, (f"{label}: found in {what} ({root}); `pipers collect` takes it "
                          "ahead of the others")
    for j in jobs:
        for name in names:
            if os.path.isdir(j.dir(name)):
                return True, (f"{label}: collected as {name} and in flight beyond the "
                              "given queues (nothing to reorder)")
    return False, f"{label}: unknown (not waiting in any given queue or storage root)"


@click.command("prioritize")
@config_option
@click.argument("job_id", metavar="ID")
@click.option("--queue-dir", "queue_dirs", multiple=True, type=click.Path(file_okay=False),
              help="A queue to look in (repeat for each queue of the pipeline).")
@click.option("--jobs-dir", "jobs_dirs", multiple=True, type=click.Path(file_okay=False),
              help="collect's jobs directory (QUEUE/jobs of each --queue-dir is also read).")
@click.option("--storage-root", type=click.Path(file_okay=False),
              help="collect's drop directory.")
@click.option("--deferred-storage-root", type=click.Path(file_okay=False),
              help="Where throttled submissions wait.")
@click.option("--json-suffix", default=".json", show_default=True,
              help="Suffix of a submission's JSON file (as given to collect).")
def command(job_id, queue_dirs, jobs_dirs, storage_root, deferred_storage_root, json_suffix):
    """Make job or message ID the next one processed, wherever it waits."""
    if deferred_storage_root and not storage_root:
        raise click.UsageError("--deferred-storage-root needs --storage-root (where collect "
                               "reads priority requests)")
    if not (queue_dirs or storage_root):
        raise click.UsageError("give at least one --queue-dir or --storage-root")
    if "/" in job_id or job_id.startswith("."):
        raise click.UsageError(f"{job_id!r} is not a job id or message name")
    queues = []
    for path in queue_dirs:
        try:
            queues.append(Queue(path, create=False))
        except FileNotFoundError:
            raise click.UsageError(f"{path} is not a queue directory") from None
    jobs = [Jobs(p) for p in jobs_dirs]
    jobs += [Jobs(os.path.join(q.path, "jobs")) for q in queues
             if os.path.isdir(os.path.join(q.path, "jobs"))]
    found, what = find(job_id, queues=queues, jobs=jobs, storage_root=storage_root,
                       deferred_storage_root=deferred_storage_root, json_suffix=json_suffix)
    click.echo(what)
    raise SystemExit(0 if found else 1)
