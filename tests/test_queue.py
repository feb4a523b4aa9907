"""The filer protocol on real directories: names, claims, finishing, recovery, hygiene."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from queues import CLAIM, DROP, BadMessage, Queue, Reason, names
from queues.owner import me, start_time
from tests.helpers import files


def test_layout_is_created_with_restrictive_modes(tmp_path):
    q = Queue(tmp_path / "q")
    for d in ("incoming", "pending", "tmp", "errors"):
        mode = stat.S_IMODE(os.stat(tmp_path / "q" / d).st_mode)
        assert mode == 0o700, (d, oct(mode))
    name = q.put(b"{}")
    assert stat.S_IMODE(os.stat(tmp_path / "q" / "incoming" / name).st_mode) == 0o600


def test_group_access_opens_directories_and_files_to_the_group(tmp_path):
    q = Queue(tmp_path / "q", group_access=True)
    assert stat.S_IMODE(os.stat(q.incoming).st_mode) == 0o770
    name = q.put(b"{}")
    assert stat.S_IMODE(os.stat(os.path.join(q.incoming, name)).st_mode) == 0o660


def test_names_are_unique_and_sort_by_time():
    made = [names.new_name() for _ in range(10_000)]
    assert len(set(made)) == len(made)
    assert sorted(made) == made
    t = names.name_time(made[0])
    assert t is not None and abs(t - time.time()) < 60


@given(st.text(alphabet=st.characters(blacklist_characters="/\x00"), min_size=1, max_size=80),
       st.integers(min_value=0, max_value=10_000))
def test_attempt_suffix_round_trips(base, attempts):
    name = names.with_attempts(base, attempts)
    parsed_base, parsed = names.split_attempts(name)
    if attempts:
        assert (parsed_base, parsed) == (base, attempts)
    else:
        assert names.with_attempts(parsed_base, parsed) == base


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(max_size=4096))
def test_put_then_claim_returns_the_exact_bytes(tmp_path, payload):
    q = Queue(tmp_path / "h")
    name = q.put(payload)
    (claim,) = q.claim(10)
    assert claim.name == name
    assert q.read(claim) == payload
    q.done(claim)
    assert q.counts() == {"incoming": 0, "pending": 0, "tmp": 0, "errors": 0}


def test_claim_moves_into_pending_under_the_owner_tag(tmp_path):
    q = Queue(tmp_path / "q")
    q.put_many([b'{"a":1}', b'{"a":2}'])
    claims = q.claim(10)
    assert len(claims) == 2
    for c in claims:
        assert os.path.basename(c.path) == f"{c.name}@{me().tag}"
    assert files(q.incoming) == []
    assert len(files(q.pending)) == 2


def test_a_message_taken_by_a_sibling_is_skipped(tmp_path):
    q1, q2 = Queue(tmp_path / "q"), Queue(tmp_path / "q")
    q1.put_many([b"{}"] * 3)
    q1.scan()  # q1 lists...
    q1._candidates.extend(q1.scan())
    won = q2.claim(10)  # ...but q2 takes them all first
    assert len(won) == 3
    assert q1.claim(10) == []


def _to(out: Queue):  # a route as the daemon's: JSON-ish to `out`, else the ordinary path
    return lambda data: out if data[:1] in (b"{", b"[") else CLAIM


def test_pass_on_moves_valid_messages_with_one_rename_and_claims_the_rest(tmp_path):
    q, out = Queue(tmp_path / "q"), Queue(tmp_path / "out")
    good = q.put_many([b'{"i": 1}', b'{"i": 2}', b"[3]"])
    bad = q.put(b"not json")
    os.symlink("/etc/passwd", os.path.join(q.incoming, "link"))
    inodes = {n: os.stat(os.path.join(q.incoming, n)).st_ino for n in good}
    done = q.pass_on(10, _to(out))
    assert sorted(done.moved) == sorted(good) and done.full is None and done.dropped == []
    assert done.size == len(b'{"i": 1}') + len(b'{"i": 2}') + len(b"[3]")
    for n in good:  # the file itself, moved: same inode, nothing copied, nothing left behind
        assert os.stat(os.path.join(out.incoming, n)).st_ino == inodes[n]
    assert sorted(c.name for c in done.claims) == sorted([bad, "link"])
    assert sorted(names.split_owner(n)[0] for n in files(q.pending)) == sorted([bad, "link"])
    assert files(q.incoming) == [] and files(out.pending) == []
    by_name = {c.name: c for c in done.claims}  # the ordinary path then fails them
    with pytest.raises(BadMessage):
        q.read(by_name["link"])
    assert q.read(by_name[bad]) == b"not json"


def test_pass_on_routes_each_message_to_its_queue_drops_and_claims_what_raises(tmp_path):
    q, a, b = Queue(tmp_path / "q"), Queue(tmp_path / "a"), Queue(tmp_path / "b")
    made = {q.put(f'{{"to": "{to}"}}'.encode()): to for to in ("a", "b", "drop", "a", "boom")}
    routes = {"a": a, "b": b, "drop": DROP}

    def route(data: bytes):
        to = orjson.loads(data)["to"]
        if to == "boom":  # the piper's own error, even this one, is not a sibling's win
            raise FileNotFoundError("no such rule")
        return routes[to]

    done = q.pass_on(10, route)
    assert sorted(done.moved) == sorted(n for n, to in made.items() if to in "ab")
    assert files(a.incoming) == sorted(n for n, to in made.items() if to == "a")
    assert files(b.incoming) == sorted(n for n, to in made.items() if to == "b")
    assert done.dropped == [n for n, to in made.items() if to == "drop"]
    assert done.size == sum(len(f'{{"to": "{to}"}}') for to in ("a", "b", "drop", "a"))
    assert [c.name for c in done.claims] == [n for n, to in made.items() if to == "boom"]
    assert files(q.incoming) == [] and len(files(q.pending)) == 1  # the dropped one is gone


def test_pass_on_drops_the_attempt_count_and_leaves_a_siblings_win_alone(tmp_path):
    q1, q2, out = Queue(tmp_path / "q"), Queue(tmp_path / "q"), Queue(tmp_path / "out")
    name = q1.put(b"{}", names.with_attempts("abc", 2))
    gone = q1.put(b"{}", "gone")
    q1._candidates.extend(q1.scan())  # q1 lists...
    route = lambda data: DROP  # noqa: E731
    assert q2.pass_on(1, _to(out)).moved == ["abc"]  # ...but q2 moves one first
    assert q2.pass_on(1, route).dropped == [gone]  # ...and drops the other
    done = q1.pass_on(10, route)
    assert done.moved == done.dropped == done.claims == [] and name != "abc"
    assert files(out.incoming) == ["abc"] and files(q1.pending) == files(q1.incoming) == []


def test_pass_on_claims_what_would_need_more_than_one_rename(tmp_path):
    q = Queue(tmp_path / "q")
    name = q.put(b"{}")
    done = q.pass_on(1, _to(Queue(tmp_path / "out", durability="fsync")))
    assert done.moved == [] and [c.name for c in done.claims] == [name]


def test_fail_writes_a_sidecar_and_replay_brings_the_message_back(tmp_path):
    q = Queue(tmp_path / "q")
    name = q.put(b'{"x": 1}')
    (c,) = q.claim()
    q.fail(c, Reason.EXCEPTION, "ValueError: nope", daemon="test", traceback="Traceback...")
    assert files(q.errors) == [name]
    side = orjson.loads((tmp_path / "q" / "errors" / f"{name}.error.json").read_bytes())
    assert side["reason"] == "exception"
    assert side["message"] == "ValueError: nope"
    assert side["daemon"] == "test" and side["attempts"] == 1
    assert side["traceback"] == "Traceback..." and side["id"] == name
    assert q.replay(lambda n, s: s["reason"] == "other") == []
    assert q.replay() == [name]
    assert files(q.incoming) == [name]
    assert os.listdir(q.errors) == []


def test_recover_returns_a_dead_owners_messages_and_counts_the_attempt(tmp_path):
    q = Queue(tmp_path / "q")
    name = q.put(b"{}")
    # A real process claims the message and dies without finishing it.
    code = ("import sys; sys.path.insert(0, sys.argv[2]); from queues import Queue;"
            "Queue(sys.argv[1]).claim(); import os; os._exit(9)")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "q"), os.getcwd()], check=False)
    (pending,) = files(q.pending)
    assert pending.startswith(name + "@")
    assert q.recover(max_attempts=5) == (1, 0)
    assert files(q.incoming) == [f"{name},1"]
    (c,) = q.claim()
    assert c.id == name and c.attempts == 1


def test_recover_never_takes_a_live_siblings_messages(tmp_path):
    q = Queue(tmp_path / "q")
    q.put(b"{}")
    sibling = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; sys.path.insert(0, sys.argv[2]); from queues import Queue;"
         "Queue(sys.argv[1]).claim(); print('claimed', flush=True); time.sleep(60)",
         str(tmp_path / "q"), os.getcwd()],
        stdout=subprocess.PIPE)
    try:
        assert sibling.stdout.readline() == b"claimed\n"
        assert q.recover() == (0, 0)
        assert len(files(q.pending)) == 1
        assert q.recover() == (0, 0)  # our own claims are safe too
    finally:
        sibling.kill()
        sibling.wait()
    assert q.recover() == (1, 0)


def test_a_reused_pid_with_another_start_time_counts_as_dead(tmp_path):
    q = Queue(tmp_path / "q")
    name = q.put(b"{}")
    (c,) = q.claim()
    stale = f"{name}@{me().host}:{os.getpid()}:{(start_time(os.getpid()) or 0) + 1}"
    os.rename(c.path, os.path.join(q.pending, stale))
    assert q.recover() == (1, 0)


def test_poison_message_goes_to_errors_after_max_attempts(tmp_path):
    q = Queue(tmp_path / "q")
    q.put(b"{}", name="m,4")
    (c,) = q.claim()
    os.rename(c.path, os.path.join(q.pending, "m,4"))  # no owner tag: nobody holds it
    assert q.recover(max_attempts=5) == (0, 1)
    ((name, side),) = list(q.error_entries())
    assert name == "m" and side["reason"] == "poison" and side["attempts"] == 5


def test_non_regular_files_are_never_followed_or_opened_blocking(tmp_path):
    q = Queue(tmp_path / "q")
    outside = tmp_path / "secret"
    outside.write_bytes(b'{"secret": true}')
    os.symlink(outside, os.path.join(q.incoming, "link"))
    os.mkfifo(os.path.join(q.incoming, "fifo"))
    os.mkdir(os.path.join(q.incoming, "dir"))
    claims = q.claim(10)
    assert len(claims) == 3
    for c in claims:
        with pytest.raises(BadMessage) as e:
            q.read(c)
        assert e.value.reason is Reason.NOT_REGULAR
        q.fail(c, e.value.reason, str(e.value))
    assert sorted(files(q.errors)) == ["dir", "fifo", "link"]
    assert outside.read_bytes() == b'{"secret": true}'
    assert os.path.islink(os.path.join(q.errors, "link"))


def test_symlink_swapped_in_after_listing_is_not_followed(tmp_path):
    q = Queue(tmp_path / "q")
    q.put(b"{}", name="m")
    (c,) = q.claim()
    os.unlink(c.path)
    os.symlink("/etc/hostname", c.path)
    with pytest.raises(BadMessage, match="symbolic link"):
        q.read(c)


def test_oversized_message_is_refused(tmp_path):
    q = Queue(tmp_path / "q", max_message_bytes=100)
    q.put(b"x" * 101)
    (c,) = q.claim()
    with pytest.raises(BadMessage) as e:
        q.read(c)
    assert e.value.reason is Reason.TOO_LARGE


def test_stale_tmp_files_are_swept(tmp_path):
    q = Queue(tmp_path / "q")
    old, new = os.path.join(q.tmp, "old"), os.path.join(q.tmp, "new")
    for p in (old, new):
        open(p, "w").close()
    os.utime(old, (time.time() - 40 * 3600,) * 2)
    assert q.sweep_tmp() == 1
    assert os.listdir(q.tmp) == ["new"]


def test_a_tmp_file_already_linked_into_incoming_is_swept_at_once(tmp_path):
    q = Queue(tmp_path / "q")
    stray, pending = os.path.join(q.tmp, "m.1_1"), os.path.join(q.tmp, "n.1_2")
    for p in (stray, pending):
        with open(p, "wb") as f:
            f.write(b'{"i": 1}')
    os.link(stray, os.path.join(q.incoming, "m"))  # its writer died before the unlink
    assert q.sweep_tmp() == 1
    assert os.listdir(q.tmp) == ["n.1_2"]  # still being written: left alone
    assert files(q.incoming) == ["m"] and os.stat(os.path.join(q.incoming, "m")).st_nlink == 1


def test_batch_abort_leaves_nothing_visible(tmp_path):
    q = Queue(tmp_path / "q")
    with pytest.raises(RuntimeError):
        with q.batch() as b:
            b.add(b"{}")
            b.add(b"{}")
            raise RuntimeError("writer died")
    assert q.counts() == {"incoming": 0, "pending": 0, "tmp": 0, "errors": 0}


@pytest.mark.parametrize("durability", ["none", "fsync"])
def test_batch_commits_all_at_once(tmp_path, durability):
    q = Queue(tmp_path / "q", durability=durability)
    b = q.batch()
    made = [b.add(b'{"i": %d}' % i) for i in range(50)]
    assert files(q.incoming) == []  # staged in tmp/, not yet visible
    assert b.commit() == made
    assert files(q.incoming) == sorted(made)
    assert os.listdir(q.tmp) == []


def test_a_move_on_one_filesystem_links_the_claimed_file_itself_then_removes_it(tmp_path):
    src, dst = Queue(tmp_path / "src"), Queue(tmp_path / "dst")
    src.put(b'{"near": 1}', name="m")
    (c,) = src.claim()
    inode = os.stat(c.path).st_ino
    with dst.batch() as b:
        b.add_move(c.path, c.id, src.dev)
        assert os.stat(c.path).st_nlink == 1  # nothing happens before the commit
    moved = os.stat(os.path.join(dst.incoming, "m"))
    assert (moved.st_ino, moved.st_nlink) == (inode, 1)  # the same file, one name left
    assert files(src.pending) == [] and files(dst.tmp) == []


def test_a_name_already_in_incoming_is_replaced_as_a_rename_would(tmp_path):
    q = Queue(tmp_path / "q")
    q.put(b'{"old": 1}', name="m")
    q.put(b'{"new": 2}', name="m")  # link(2) refuses an existing name: renamed over it
    assert files(q.incoming) == ["m"] and os.listdir(q.tmp) == []
    assert open(os.path.join(q.incoming, "m"), "rb").read() == b'{"new": 2}'


def test_a_failed_commit_removes_the_sources_it_already_linked(tmp_path):
    q = Queue(tmp_path / "q")
    b = q.batch()
    b.add(b'{"i": 1}', name="a")
    b.add(b'{"i": 2}', name="b")
    os.mkdir(os.path.join(q.incoming, "b"))  # a directory in the way: the second one fails
    with pytest.raises(IsADirectoryError):
        b.commit()
    assert os.stat(os.path.join(q.incoming, "a")).st_nlink == 1  # a's tmp/ name is gone
    assert len(os.listdir(q.tmp)) == 1  # b's, until the abort
    b.abort()
    assert os.listdir(q.tmp) == []


def test_cross_filesystem_move_copies_then_removes_the_source(tmp_path):
    shm = "/dev/shm"
    if not os.path.isdir(shm) or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.fail("this test needs /dev/shm on another filesystem than the test directory")
    src = Queue(tmp_path / "src")
    import tempfile

    with tempfile.TemporaryDirectory(dir=shm) as other:
        dst = Queue(os.path.join(other, "dst"))
        assert src.dev != dst.dev
        src.put(b'{"far": 1}', name="m")
        (c,) = src.claim()
        with dst.batch() as b:
            b.add_move(c.path, c.id, src.dev)
            assert files(dst.incoming) == []
        assert files(dst.incoming) == ["m"]
        assert open(os.path.join(dst.incoming, "m"), "rb").read() == b'{"far": 1}'
        assert not os.path.exists(c.path)


def test_counts_and_oldest_age(tmp_path):
    q = Queue(tmp_path / "q")
    now = time.time()
    q.put(b"{}", name=names.new_name(int((now - 120) * 1e9)))
    q.put(b"{}")
    assert q.count() == 2
    assert q.count(upto=1) == 1 and q.count(upto=5) == 2  # stops at `upto`, never beyond
    age = q.oldest_age(now=now)
    assert 119 < age < 121
