"""Flags, config files and durations: bad input is one clear line and exit 2."""

from __future__ import annotations

import pytest

from pipers.durations import parse_duration
from queues import Queue
from tests.helpers import files


@pytest.mark.parametrize("text,seconds", [
    ("10", 10.0), ("0.5", 0.5), ("00:05:00", 300.0), ("100:00:00", 360000.0),
    ("01:30", 90.0), (7, 7.0),
])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten", "1:2:3:4", "00:60:00", "-5", "1:-1"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("args,needle", [
    (["pass", "--queue-in-dir", "q"], "Missing option '--queue-out-dir'"),
    (["pass", "--queue-in-dir", "q", "--queue-out-dir", "o", "--queue-out-wait", "soon"],
     "'soon' is not a duration"),
    (["pass", "--queue-in-dir", "q", "--queue-out-dir", "o", "--durability", "maybe"],
     "'maybe' is not one of"),
    (["pass", "--queue-in-dir", "q", "--queue-out-dir", "o", "--bogus"], "No such option"),
    (["run", "--queue-in-dir", "q", "--function", "nosuchmodule:f"], "nosuchmodule"),
    (["enrich", "--queue-in-dir", "q", "--queue-out-dir", "o", "--set", "novalue"],
     "expected KEY=VALUE"),
    (["print", "--queue-in-dir", "q", "--daemon"], "--daemon needs --log-file"),
    (["status", "does-not-exist"], "not a queue directory"),
    (["frobnicate"], "No such command"),
])
def test_bad_flags_give_one_line_and_exit_2(tmp_path, daemons, args, needle):
    r = daemons.run(*[a if a not in ("q", "o") else str(tmp_path / a) for a in args])
    err = r.stderr.decode().strip()
    assert r.returncode == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("pipers") and needle in err


def test_config_file_sets_flags_and_the_command_line_wins(tmp_path, daemons):
    qin, qout = Queue(tmp_path / "in"), Queue(tmp_path / "out")
    qin.put(b'{"a": 1}', name="m")
    cfg = tmp_path / "pipers.toml"
    cfg.write_text(
        f'durability = "fsync"\n'
        f'[enrich]\nqueue-in-dir = "{qin.path}"\nqueue-out-dir = "/nonexistent/never"\n'
        f'set = ["from=config", "env=conf"]\nonce = true\nqueue-in-wait = "00:00:05"\n'
    )
    r = daemons.run("enrich", "--config", str(cfg), "--queue-out-dir", qout.path,
                    "--set", "env=cli")
    assert r.returncode == 0, r.stderr
    assert files(qout.incoming) == ["m"]
    body = open(f"{qout.incoming}/m").read()
    assert '"env":"cli"' in body and '"from"' not in body  # a flag replaces the list


def test_ini_config_and_unknown_settings(tmp_path, daemons):
    qin, qout = Queue(tmp_path / "in"), Queue(tmp_path / "out")
    qin.put(b'{"a": 1}', name="m")
    ini = tmp_path / "pipers.ini"
    ini.write_text(f"[pipers]\ndurability = fsync\n[pass]\nqueue_in_dir = {qin.path}\n"
                   f"queue_out_dir = {qout.path}\nonce = true\n")
    r = daemons.run("pass", "--config", str(ini))
    assert r.returncode == 0, r.stderr
    assert files(qout.incoming) == ["m"]
    ini.write_text("[pass]\nqueue_in_dir = x\nqueue_out_dir = y\ncolour = blue\n")
    r = daemons.run("pass", "--config", str(ini))
    assert r.returncode == 2
    assert "unknown setting 'colour'" in r.stderr.decode()


def test_put_rejects_invalid_ndjson_with_line_numbers_and_enqueues_nothing(tmp_path, daemons):
    q = tmp_path / "q"
    data = b'{"ok": 1}\n{"ok": 2}\n{"broken"\n\n[1, 2]\n{"ok": 3}\n'
    r = daemons.run("put", "--queue-out-dir", str(q), input=data)
    err = r.stderr.decode()
    assert r.returncode == 1
    assert "<stdin>:3: invalid JSON" in err and "<stdin>:5: not a JSON object" in err
    assert files(q / "incoming") == []
    r = daemons.run("put", "--queue-out-dir", str(q), input=b'{"ok": 1}\n{"ok": 2}\n')
    assert r.returncode == 0
    assert len(files(q / "incoming")) == 2


def test_put_accepts_one_pretty_printed_object_from_a_file(tmp_path, daemons):
    src = tmp_path / "one.json"
    src.write_text('{\n  "pretty": true,\n  "n": [1, 2]\n}\n')
    r = daemons.run("put", "--queue-out-dir", str(tmp_path / "q"), str(src))
    assert r.returncode == 0, r.stderr
    (name,) = files(tmp_path / "q" / "incoming")
    assert '"pretty": true' in open(tmp_path / "q" / "incoming" / name).read()


def test_status_and_replay_by_reason(tmp_path, daemons):
    q = Queue(tmp_path / "q")
    from queues import Reason

    for reason, name in ((Reason.INVALID_JSON, "a"), (Reason.EXCEPTION, "b"),
                         (Reason.EXCEPTION, "c")):
        q.put(b"{}", name=name)
        (c,) = q.claim()
        q.fail(c, reason, "why")
    r = daemons.run("status", str(q.path))
    out = r.stdout.decode()
    assert r.returncode == 0
    header, row = out.splitlines()[:2]  # the table's header and the queue's row
    assert dict(zip(header.split(), row.split(), strict=True))["ERRORS"] == "3"
    assert "2  exception" in out and "1  invalid-json" in out
    r = daemons.run("replay", "--reason", "exception", "--dry-run", str(q.path))
    assert r.stdout.decode().count("would replay") == 2 and files(q.incoming) == []
    r = daemons.run("replay", "--reason", "exception", str(q.path))
    assert r.returncode == 0
    assert files(q.incoming) == ["b", "c"] and files(q.errors) == ["a"]
    r = daemons.run("replay", "--older-than", "01:00:00", str(q.path))
    assert files(q.errors) == ["a"]
    r = daemons.run("replay", "--newer-than", "01:00:00", str(q.path))
    assert files(q.errors) == [] and "a" in files(q.incoming)
