"""A model of the filer protocol: any sequence of operations conserves every message.

Two Queue objects on one directory play two workers; each message is always in
exactly one place (incoming, pending, errors or done) with its bytes intact.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from queues import Queue, Reason
from tests.helpers import files


class FilerModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="pipers-model-")
        self.workers = [Queue(os.path.join(self.dir, "q")) for _ in range(2)]
        self.payload: dict[str, bytes] = {}  # id -> bytes
        self.held: list[list] = [[], []]  # claims per worker
        self.done: set[str] = set()
        self.failed: set[str] = set()

    def teardown(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(data=st.binary(max_size=64), w=st.integers(0, 1))
    def put(self, data, w):
        name = self.workers[w].put(data)
        self.payload[name] = data

    @rule(w=st.integers(0, 1), n=st.integers(1, 5))
    def claim(self, w, n):
        for c in self.workers[w].claim(n):
            assert self.workers[w].read(c) == self.payload[c.id]
            assert all(c.id != o.id for held in self.held for o in held), "claimed twice"
            self.held[w].append(c)

    @precondition(lambda self: any(self.held))
    @rule(w=st.integers(0, 1), how=st.sampled_from(["done", "fail", "release"]))
    def finish(self, w, how):
        if not self.held[w]:
            return
        c = self.held[w].pop(0)
        q = self.workers[w]
        if how == "done":
            q.done(c)
            self.done.add(c.id)
        elif how == "fail":
            q.fail(c, Reason.EXCEPTION, "model")
            self.failed.add(c.id)
        else:
            q.release(c)

    @precondition(lambda self: self.failed)
    @rule()
    def replay(self):
        moved = self.workers[0].replay()
        assert set(moved) == self.failed
        self.failed.clear()

    @rule(w=st.integers(0, 1))
    def recover_finds_no_dead_owner(self, w):
        # both workers are this live process: recovery must never take their claims
        assert self.workers[w].recover() == (0, 0)

    @invariant()
    def every_message_is_in_exactly_one_place(self):
        q = self.workers[0]
        incoming = {n.split(",")[0] for n in files(q.incoming)}
        pending = {n.split("@")[0] for n in files(q.pending)}
        errors = set(files(q.errors))
        held = {c.id for h in self.held for c in h}
        assert pending == held
        assert errors == self.failed
        places = [incoming, pending, errors, self.done]
        assert sum(len(p) for p in places) == len(self.payload)
        assert set().union(*places) == set(self.payload)


FilerModel.TestCase.settings = settings(max_examples=40, stateful_step_count=40, deadline=None)
test_filer_model = FilerModel.TestCase
