"""Packaging, the CLI's help, and the examples of the docs, each run for real.

- A fresh copy of the checkout's files (`git ls-files`: tracked and new, not ignored;
  in CI that is exactly a clone) is installed with
  `python -m venv v && v/bin/pip install .` (dependencies from PyPI); the installed
  `pipers` runs from outside the checkout.
- Every option of every subcommand has help text and shows its default.
- docs/developer.md's examples (docs/examples/) run as real daemons on real queues.
- README.md's 5-minute tour runs as written (bash, the venv's `pipers` on PATH).
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import click
import orjson
import pytest
from click._utils import UNSET

from pipers.cli import all_commands, cli
from tests.helpers import ROOT, files, wait_for

EXAMPLES = ROOT / "docs" / "examples"


def run(argv, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("timeout", 120)
    r = subprocess.run(argv, capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{argv}: {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


# -- pip install . from a fresh copy --------------------------------------------------------------

@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(source copy, venv) after `python -m venv v && v/bin/pip install .`."""
    base = tmp_path_factory.mktemp("install")
    src = base / "src"
    # what a clone of the working tree would hold: tracked and new, not ignored, files
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                 cwd=ROOT).stdout.split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():  # a file deleted but not yet committed is left out
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    venv = base / "v"
    python = getattr(sys, "_base_executable", sys.executable)
    run([python, "-m", "venv", str(venv)], cwd=base)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run([str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check", "."],
        cwd=src, env=env, timeout=600)
    return src, venv, env


def test_pip_install_from_a_fresh_copy_installs_pipers_and_its_dependencies(installed, tmp_path):
    src, venv, env = installed
    # imported from the venv's site-packages, not from a checkout
    where = run([str(venv / "bin/python"), "-c", "import pipers, queues; "
                 "print(pipers.__file__); print(queues.__file__)"], cwd=tmp_path, env=env)
    for line in where.stdout.split():
        assert line.startswith(str(venv / "lib")), line
    run([str(venv / "bin/pip"), "check"], env=env)  # every runtime dependency is there
    # every module of the installed packages imports (no dependency left to the test extras)
    run([str(venv / "bin/python"), "-c", """
import importlib, pkgutil, pipers, queues
for pkg in (pipers, queues):
    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        if not m.name.endswith(".__main__"):  # that one runs the CLI
            importlib.import_module(m.name)
"""], cwd=tmp_path, env=env)


def test_installed_pipers_help_version_and_every_subcommand_help(installed, tmp_path):
    src, venv, env = installed
    pipers = str(venv / "bin/pipers")
    top = run([pipers, "--help"], cwd=tmp_path, env=env).stdout
    assert "Usage: pipers" in top
    cfg = configparser.ConfigParser()
    cfg.read(src / "setup.cfg")
    version = run([pipers, "--version"], cwd=tmp_path, env=env).stdout
    assert cfg["metadata"]["version"] in version
    commands = all_commands()
    assert set(commands) >= {"probe", "collect", "enrich", "ship", "put", "status", "replay"}
    for name in commands:
        assert name in top
        out = run([pipers, name, "--help"], cwd=tmp_path, env=env).stdout
        assert f"Usage: pipers {name}" in out
        assert "default:" in out or name in ("prioritize", "replay"), name


def test_bin_scripts_are_installed_under_their_names(installed, tmp_path):
    """bin/pipers (the checkout runner) is the `pipers` console script once installed;
    any other script in bin/ must be installed as well (setup.cfg `scripts =`)."""
    src, venv, env = installed
    scripts = sorted(p.name for p in (src / "bin").iterdir())
    assert scripts
    for name in scripts:
        assert (venv / "bin" / name).exists(), name
        run([str(venv / "bin" / name), "--help"], cwd=tmp_path, env=env)


def test_installed_pipeline_runs_a_message_through(installed, tmp_path):
    """The installed command is a working daemon: put -> enrich --once -> incoming/."""
    src, venv, env = installed
    pipers = str(venv / "bin/pipers")
    run([pipers, "put", "--queue-out-dir", "a"], input='{"x": 1}\n', cwd=tmp_path, env=env)
    run([pipers, "enrich", "--queue-in-dir", "a", "--queue-out-dir", "b", "--set", "y=2",
         "--once", "--quiet"], cwd=tmp_path, env=env)
    (name,) = files(tmp_path / "b/incoming")
    assert orjson.loads((tmp_path / "b/incoming" / name).read_bytes()) == {"x": 1, "y": 2}


# -- help text and defaults ---------------------------------------------------------------------

def _options():
    group = click.Context(cli, info_name="pipers", **cli.context_settings)
    for name, command in sorted(all_commands().items()):
        ctx = click.Context(command, info_name=name, parent=group)
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                yield name, ctx, param


def test_every_option_has_help_and_shows_its_default():
    checked = 0
    for name, ctx, option in _options():
        where = f"pipers {name} {option.opts[-1]}"
        assert (option.help or "").strip(), f"{where}: no help text"
        default = option.get_default(ctx, call=False)
        if default in (None, UNSET) or (option.is_flag and default is False):
            continue
        if isinstance(default, (list, tuple)) and not default:
            continue
        record = option.get_help_record(ctx)
        assert record and "default:" in record[1], f"{where}: default {default!r} not shown"
        checked += 1
    assert checked > 50  # the walk saw the daemons' options


# -- docs/developer.md's examples ------------------------------------------------------------------

def test_example_piper_runs_as_a_daemon(tmp_path, daemons):
    """docs/examples/redact.py as a real process on a real queue: masks, drops, fails."""
    q_in, q_out = tmp_path / "in", tmp_path / "out"
    messages = [{"user": "ann", "password": "secret"}, {"level": "debug", "x": 1},
                {"user": "bob"}]
    r = daemons.run("put", "--queue-out-dir", str(q_in),
                    input=b"".join(orjson.dumps(m) + b"\n" for m in messages))
    assert r.returncode == 0, r.stderr
    (q_in / "tmp/not-an-object").write_bytes(b"[1, 2]")  # put takes objects only: by hand
    os.rename(q_in / "tmp/not-an-object", q_in / "incoming/zz-not-an-object")
    p = subprocess.Popen([sys.executable, str(EXAMPLES / "redact.py"), "--queue-in-dir",
                          str(q_in), "--queue-out-dir", str(q_out), "--field", "password"],
                         cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                         stderr=subprocess.PIPE)
    try:
        wait_for(lambda: len(files(q_out / "incoming")) == 2, what="two forwarded")
        wait_for(lambda: len(files(q_in / "errors")) == 1, what="one failed")
    finally:
        p.terminate()
        _, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    out = [orjson.loads((q_out / "incoming" / n).read_bytes()) for n in files(q_out / "incoming")]
    assert out == [{"user": "ann", "password": "***"}, {"user": "bob"}]
    assert files(q_in / "incoming") == files(q_in / "pending") == []
    (failed,) = files(q_in / "errors")
    sidecar = orjson.loads((q_in / "errors" / f"{failed}.error.json").read_bytes())
    assert sidecar["daemon"] == "redact" and "TypeError" in sidecar["message"]


def test_example_function_splits_with_pipers_run(tmp_path, daemons):
    q_in, q_out = tmp_path / "in", tmp_path / "out"
    daemons.run("put", "--queue-out-dir", str(q_in),
                input=b'{"host": "h1", "samples": [{"cpu": 3}, {"cpu": 5}]}\n{"host": "h2"}\n')
    r = daemons.run("run", "--queue-in-dir", str(q_in), "--queue-out-dir", str(q_out),
                    "--function", f"{EXAMPLES / 'split.py'}:split", "--once")
    assert r.returncode == 0, r.stderr
    out = [orjson.loads((q_out / "incoming" / n).read_bytes()) for n in files(q_out / "incoming")]
    assert out == [{"host": "h1", "cpu": 3}, {"host": "h1", "cpu": 5}, {"host": "h2"}]


def test_example_checks_run_in_the_probe(tmp_path, daemons):
    """docs/examples/checks.py in a real `pipers probe`: the scheduled check reports the
    watched queue, the UDP handle turns a datagram into a message."""
    watched = tmp_path / "watched"
    daemons.run("put", "--queue-out-dir", str(watched), input=b'{"a": 1}\n{"a": 2}\n')
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out"
    p = daemons.start("probe", "--checks", str(EXAMPLES / "checks.py"), "--queue-out-dir",
                      str(out), env={"EXAMPLE_QUEUE": str(watched),
                                     "EXAMPLE_UDP_PORT": str(port)})

    def messages():
        return [orjson.loads((out / "incoming" / n).read_bytes())
                for n in files(out / "incoming")]

    backlog = wait_for(lambda: [m for m in messages() if m["check"].startswith("backlog:")],
                       what="the backlog check")
    assert backlog[0]["incoming"] == 2 and backlog[0]["errors"] == 0
    assert backlog[0]["queue"] == str(watched) and "host" in backlog[0]
    assert any(m["check"] == "load" for m in messages())

    def udp():  # sent until the handle is open and has read it
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b'{"event": "login", "user": "ann"}', ("127.0.0.1", port))
        return [m for m in messages() if m["check"] == f"udp:{port}"]

    got = wait_for(udp, interval=0.2, what="the UDP message")
    assert got[0]["event"] == "login" and got[0]["user"] == "ann"
    assert p.poll() is None, daemons.log(p)


def test_developer_guide_shows_the_examples_verbatim():
    guide = (ROOT / "docs" / "developer.md").read_text()
    shown = dict(re.findall(r"<!-- example: (\S+) -->\s*```python\n(.*?)```", guide, re.S))
    assert set(shown) == {f"docs/examples/{p.name}" for p in EXAMPLES.glob("*.py")}
    for path, code in shown.items():
        assert code == (ROOT / path).read_text(), f"docs/developer.md shows an old {path}"


def test_developer_guide_test_snippets_pass(tmp_path, monkeypatch):
    guide = (ROOT / "docs" / "developer.md").read_text()
    snippets = re.findall(r"<!-- test-example -->\s*```python\n(.*?)```", guide, re.S)
    assert len(snippets) == 2
    monkeypatch.syspath_prepend(str(EXAMPLES))  # `from redact import ...`, as in the guide
    ran = 0
    try:
        for i, code in enumerate(snippets):
            namespace: dict = {}
            exec(compile(code, f"docs/developer.md:test-example-{i}", "exec"), namespace)
            for name, func in namespace.items():
                if name.startswith("test_") and callable(func):
                    (tmp_path / name).mkdir()
                    func(tmp_path / name)
                    ran += 1
    finally:
        for module in ("redact", "checks", "split"):
            sys.modules.pop(module, None)
    assert ran == 2


# -- README.md's tour ------------------------------------------------------------------------------

def readme_block(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"<!-- {marker} -->.*?```sh\n(.*?)```", text, re.S)
    assert m, f"README.md: no ```sh block after <!-- {marker} -->"
    return m.group(1)


def run_tour(script: str, cwd: Path) -> subprocess.CompletedProcess:
    """bash with `set -e`; the venv's `pipers` first on PATH (`. .venv/bin/activate`)."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               PYTHONPATH=str(ROOT))
    r = subprocess.run(["bash", "-c", "set -euo pipefail\n" + script], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"{r.stdout}\n{r.stderr}"
    return r


def test_readme_tour_runs_as_written(tmp_path):
    """The tour's commands as written, from an empty directory."""
    r = run_tour(readme_block("tour"), tmp_path)
    q = tmp_path / "q"
    shipped = [orjson.loads((q / "ship/incoming" / n).read_bytes())
               for n in files(q / "ship/incoming")]
    assert [m["msg"] for m in shipped] == ["hello", "fixed"]
    assert all("host" in m and "received" in m for m in shipped)
    assert files(q / "enrich/errors") == [] and os.listdir(q / "enrich/incoming") == []
    assert "invalid-json" in r.stdout  # the sidecar was shown


@pytest.mark.search
def test_readme_tour_last_hop_ships_both_documents(tmp_path, search_node):
    """The tour, then the `pipers` lines of its last hop with the README's node URL
    replaced by the test node's (curl, which only shows the result, is left out)."""
    run_tour(readme_block("tour"), tmp_path)
    hop = [line for line in readme_block("tour-ship").splitlines() if line.startswith("pipers ")]
    assert len(hop) == 1 and "http://127.0.0.1:9201" in hop[0]
    run_tour(hop[0].replace("http://127.0.0.1:9201", search_node.url), tmp_path)
    assert files(tmp_path / "q/ship/incoming") == files(tmp_path / "q/ship/errors") == []
    search_node.refresh("pipers")
    ids = search_node.search_ids("pipers", {"terms": {"msg": ["hello", "fixed"]}})
    assert "broken" in ids and len(ids) >= 2
