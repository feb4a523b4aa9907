"""Security: message data is never executed or unpickled, symlinks in queues are never
followed, secrets stay off argv and out of logs, queue modes are restrictive, TLS is
verified unless explicitly not."""

from __future__ import annotations

import ast
import base64
import io
import itertools
import os
import pickle
import shutil
import socket
import stat
import subprocess
import time
import tokenize
from pathlib import Path

import orjson
import pytest

import queues.queue as queue_module
from queues import Queue
from queues.owner import me
from tests.faults.search import indexed, unique_index
from tests.helpers import PIPERS, ROOT, files, wait_for

CODE = [ROOT / "queues", ROOT / "pipers", ROOT / "bin"]
# Modules that turn bytes into objects or code, and the builtins that run text as code.
FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle",
                     "jsonpickle", "yaml", "ruamel", "copyreg", "runpy", "code", "codeop"}
FORBIDDEN_NAMES = FORBIDDEN_MODULES - {"code", "codeop"} | {"eval", "exec", "__import__",
                                                           "execfile", "literal_eval"}
# Where code is loaded or run on purpose: from the operator's configuration, never from data.
IMPORT_ALLOWED = {
    "pipers/transforms/run.py": "--function MODULE:FUNCTION names the operator's code",
    "pipers/sources/probe.py": "--checks names the operator's CHECKS module",
    "pipers/cli.py": "the subcommands' own modules, from a fixed table (COMMANDS)",
}
SUBPROCESS_ALLOWED = {
    "pipers/sources/checks.py": "a check's command comes from the operator's CHECKS module",
}


def _sources() -> list[Path]:
    out = []
    for base in CODE:
        out += sorted(base.rglob("*.py")) if base.is_dir() else []
    return out + [ROOT / "bin" / "pipers"]


def test_no_code_path_can_unpickle_or_evaluate_data():
    """A grep over the code's tokens (strings and comments left out) and its syntax tree."""
    found = []
    for path in _sources():
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text()
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.NAME and tok.string in FORBIDDEN_NAMES:
                found.append(f"{rel}:{tok.start[0]}: {tok.string}")
        for node in ast.walk(ast.parse(text, rel)):
            if isinstance(node, ast.Import | ast.ImportFrom):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) \
                    else [node.module or ""]
                for module in modules:
                    if module.split(".")[0] in FORBIDDEN_MODULES:
                        found.append(f"{rel}:{node.lineno}: import {module}")
            if isinstance(node, ast.Call):
                fn = ast.unparse(node.func)
                if fn in ("compile", "os.system", "os.popen") or fn.startswith(
                        ("os.exec", "os.spawn", "pty.spawn")):
                    found.append(f"{rel}:{node.lineno}: {fn}()")
                if fn.startswith("subprocess.") and rel not in SUBPROCESS_ALLOWED:
                    found.append(f"{rel}:{node.lineno}: {fn}()")
                if fn.startswith("importlib.") and rel not in IMPORT_ALLOWED:
                    found.append(f"{rel}:{node.lineno}: {fn}()")
    assert found == [], "data could become code here:\n" + "\n".join(found)
    assert len(_sources()) > 30  # the scan saw the code base


class _Trap:
    """Unpickling this creates the marker file: proof that somebody unpickled data."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_messages_made_to_run_code_are_only_ever_data(tmp_path, daemons, search_node):
    marker = tmp_path / "pwned"
    m = str(marker)
    hostile = [pickle.dumps(_Trap(m), protocol=p) for p in range(pickle.HIGHEST_PROTOCOL + 1)]
    hostile += [
        f'!!python/object/apply:os.system ["touch {m}"]'.encode(),
        f"__import__('os').system('touch {m}')".encode(),
        f"$(touch {m})".encode(),
    ]
    as_data = [orjson.dumps({"text": t, "kind": "hostile"}) for t in (
        f"__import__('os').system('touch {m}')", f"$(touch {m})", f"`touch {m}`",
        f"!!python/object/apply:os.system ['touch {m}']", "{0.__class__.__mro__}", "%(x)s",
        f"{{{{ ''.__class__.__mro__[1].__subclasses__() }}}} {m}",
    )] + [orjson.dumps({"kind": "hostile", "pickle": base64.b64encode(hostile[0]).decode()})]
    qa, qb, qc = (Queue(tmp_path / n) for n in "abc")
    bad = qa.put_many(hostile)
    good = qa.put_many(as_data)
    shell_named = [qa.put(b'{"kind": "named"}', name=n)
                   for n in (f"$(touch {marker.name})", f";touch {marker.name}", "-rf")]
    index = unique_index("hostile")
    for args in (("enrich", "--queue-in-dir", qa.path, "--queue-out-dir", qb.path,
                  "--set", "hop=1"),
                 ("filter", "--queue-in-dir", qb.path, "--queue-out-dir", qc.path,
                  "--where", "hop=1"),
                 ("ship", "--queue-in-dir", qc.path, "--es-url", search_node.url,
                  "--default-index", index)):
        r = subprocess.run([*PIPERS, *args, "--once"], cwd=tmp_path, capture_output=True,
                           env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
        assert r.returncode == 0, r.stderr
    for name in ("status", "replay"):
        r = subprocess.run([*PIPERS, name, qa.path], cwd=tmp_path, capture_output=True,
                           env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60)
        assert r.returncode == 0, r.stderr
    assert not marker.exists(), "message content was executed"
    assert not (tmp_path / marker.name).exists() and not (ROOT / marker.name).exists()
    assert sorted(files(qa.incoming)) == sorted(bad)  # replayed: still only data
    assert indexed(search_node, index) == len(good) + len(shell_named)
    doc = search_node.get_doc(index, good[0])
    assert doc["text"] == f"__import__('os').system('touch {m}')" and doc["hop"] == 1


def test_a_symlink_planted_where_a_writer_creates_its_file_is_not_followed(
        tmp_path, monkeypatch):
    q = Queue(tmp_path / "q")
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    monkeypatch.setattr(queue_module, "_tmp_counter", itertools.count(7))
    os.symlink(victim, os.path.join(q.tmp, f"m.{os.getpid()}_7"))
    with pytest.raises(FileExistsError):  # O_CREAT|O_EXCL|O_NOFOLLOW: refuses, never follows
        q.put(b'{"overwrite": true}', name="m")
    assert victim.read_bytes() == b"precious" and files(q.incoming) == []


def test_sweeping_tmp_removes_old_links_not_what_they_point_to(tmp_path):
    q = Queue(tmp_path / "q")
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    link = os.path.join(q.tmp, "old-link")
    os.symlink(victim, link)
    old = time.time() - 40 * 3600
    os.utime(link, (old, old), follow_symlinks=False)
    assert q.sweep_tmp() == 1
    assert not os.path.lexists(link) and victim.read_bytes() == b"precious"


def test_status_neither_follows_nor_blocks_on_planted_sidecars_and_state_files(
        tmp_path, daemons):
    q = Queue(tmp_path / "q")
    outside = tmp_path / "secret.json"
    outside.write_bytes(b'{"reason": "content of a file outside the queue"}')
    for name in ("linked", "fifo", "listed"):
        with open(os.path.join(q.errors, name), "wb") as f:
            f.write(b"{}")
    os.symlink(outside, os.path.join(q.errors, "linked.error.json"))
    os.mkfifo(os.path.join(q.errors, "fifo.error.json"))  # open() would wait for a writer
    with open(os.path.join(q.errors, "listed.error.json"), "wb") as f:
        f.write(b'["not", "a", "sidecar"]')
    os.makedirs(os.path.join(q.path, "run"), exist_ok=True)
    os.mkfifo(os.path.join(q.path, "run", f"ship@{me().tag}.json"))  # a live owner's name
    r = daemons.run("status", "--json", q.path, timeout=20)
    assert r.returncode == 0, r.stderr
    report = orjson.loads(r.stdout)
    assert report["errors_by_reason"] == {"unreadable-sidecar": 3}
    assert b"outside the queue" not in r.stdout


def _modes(root: Path) -> dict[str, int]:
    out = {}
    for path, dirs, names in os.walk(root):
        for n in dirs + names:
            p = os.path.join(path, n)
            out[os.path.relpath(p, root)] = stat.S_IMODE(os.lstat(p).st_mode)
    return out


@pytest.mark.parametrize("group,umask", [(False, 0), (True, 0), (True, 0o077)])
def test_queue_modes_are_set_by_the_flag_not_by_the_umask(tmp_path, group, umask):
    """0700/0600 by default even under umask 0; --group-access gives 0770/0660 (never
    more) and the group keeps its bits under a strict umask."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    flag = ["--group-access"] if group else []
    a, b = tmp_path / "a", tmp_path / "b"

    def run(*args, **kw):
        return subprocess.run([*PIPERS, *args, *flag], cwd=ROOT, env=env, umask=umask,
                              capture_output=True, timeout=60, **kw)

    r = run("put", "--queue-out-dir", str(a), input=b'{"ok": 1}\n{"bad": 1}\n')
    assert r.returncode == 0, r.stderr
    r = run("run", "--queue-in-dir", str(a), "--queue-out-dir", str(b), "--function",
            "tests.userfuncs:explode", "--once", input=b"")
    assert r.returncode == 0, r.stderr
    modes = {**{f"a/{k}": v for k, v in _modes(a).items()},
             **{f"b/{k}": v for k, v in _modes(b).items()}}
    modes["a"], modes["b"] = (stat.S_IMODE(os.stat(p).st_mode) for p in (a, b))
    assert len(modes) >= 12, modes
    want_dir, want_file = (0o770, 0o660) if group else (0o700, 0o600)
    for path, mode in modes.items():
        is_dir = os.path.isdir(tmp_path / path)
        assert mode == (want_dir if is_dir else want_file), (path, oct(mode))


def test_secrets_are_never_needed_on_the_command_line():
    from pipers.cli import all_commands

    for name, command in all_commands().items():
        for p in command.params:
            flags = " ".join(getattr(p, "opts", []))
            if any(w in p.name for w in ("password", "secret", "token", "api_key")):
                assert p.name.endswith("_file"), f"pipers {name} {flags} takes a secret on argv"
            if p.name.endswith("url") or p.name.endswith("urls"):
                assert getattr(p, "envvar", None), f"pipers {name} {flags}: URL only on argv"


def test_credentials_in_a_url_are_refused_without_echoing_them(tmp_path, daemons):
    r = daemons.run("ship", "--queue-in-dir", str(tmp_path / "q"), "--es-url",
                    "http://elastic:Sup3r-S3cret@127.0.0.1:9200", "--once")
    err = r.stderr.decode()
    assert r.returncode == 2 and "no credentials in URLs" in err
    assert "Sup3r-S3cret" not in err


def test_a_real_shipper_run_never_shows_its_password(tmp_path, daemons, search_node):
    secret = "pw-" + base64.b32encode(os.urandom(10)).decode()
    key_file = tmp_path / "password"
    key_file.write_text(secret + "\n")
    forms = [secret, base64.b64encode(f"elastic:{secret}".encode()).decode()]
    index = unique_index("secret")
    search_node.request("PUT", f"/{index}", {"mappings": {"properties": {
        "value": {"type": "long"}}}})
    q, dead = Queue(tmp_path / "q"), Queue(tmp_path / "dead")
    made = q.put_many([orjson.dumps({"value": i}) for i in range(20)])
    q.put(b'{"value": "not a number"}')  # refused: its sidecar quotes the engine's answer
    dead.put(b'{"value": 1}')
    log_file = tmp_path / "ship.log"
    common = ("--log-level", "DEBUG", "--log-file-level", "DEBUG", "--es-user", "elastic")
    p = daemons.start("ship", "--queue-in-dir", q.path, "--es-url", search_node.url,
                      "--default-index", index, "--log-file", str(log_file), *common,
                      env={"PIPERS_ES_PASSWORD": secret})
    p_file = daemons.start("ship", "--queue-in-dir", dead.path,
                           "--es-url", "http://127.0.0.1:9", "--es-password-file",
                           str(key_file), *common)  # nobody listens: the outage is logged
    wait_for(lambda: indexed(search_node, index) == 20 and len(files(q.errors)) == 1,
             what="delivery")
    wait_for(lambda: "unavailable" in daemons.log(p_file), what="the outage logged")
    argv = [open(f"/proc/{x.pid}/cmdline", "rb").read() for x in (p, p_file)]
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    status = subprocess.run([*PIPERS, "status", "--json", q.path, dead.path], cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True)
    texts = [*argv, ps.encode(), status.stdout, log_file.read_bytes(),
             daemons.log(p).encode(), daemons.log(p_file).encode()]
    texts += [Path(d, n).read_bytes() for d in (q.errors, dead.errors, q.path + "/run")
              for n in os.listdir(d)]
    assert set(search_node.search_ids(index)) == set(made)
    for form in forms:
        for text in texts:
            assert form.encode() not in text


def _pem(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tls_is_verified_unless_explicitly_disabled(tmp_path, daemons, search_node):
    """socat terminates TLS (self-signed) in front of the real node."""
    from pipers.ship.bulk import BulkClient

    client = BulkClient(["https://127.0.0.1:9200"])
    (conf,) = [n.config for n in client.transport.node_pool.all()]
    assert conf.verify_certs is True and conf.ssl_assert_hostname is not False
    client.close()

    socat = shutil.which("socat")
    assert socat, "the TLS test needs socat (apt-get install socat)"
    cert, key = _pem(tmp_path)
    port = _free_port()
    upstream = search_node.url.split("://", 1)[1]
    proxy = subprocess.Popen([socat, f"OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,"
                              f"cert={cert},key={key},verify=0", f"TCP:{upstream}"],
                             stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0,
                 what="the TLS terminator")
        index = unique_index("tls")
        url = f"https://127.0.0.1:{port}"
        q = Queue(tmp_path / "q")
        made = q.put_many([orjson.dumps({"i": i}) for i in range(5)])
        p = daemons.start("ship", "--queue-in-dir", q.path, "--es-url", url,
                          "--default-index", index, "--retry-max-wait", "1")
        wait_for(lambda: "CERTIFICATE_VERIFY_FAILED" in daemons.log(p), what="a refusal")
        assert indexed(search_node, index) == 0 and files(q.errors) == []
        p.terminate()
        assert p.wait(30) == 0
        assert sorted(files(q.incoming)) == sorted(made)  # kept for a shipper that trusts it
        r = daemons.run("ship", "--queue-in-dir", q.path, "--es-url", url, "--default-index",
                        index, "--ca-file", str(cert), "--once")
        assert r.returncode == 0, r.stderr
        assert indexed(search_node, index) == 5
        q.put(b'{"i": 5}')
        r = daemons.run("ship", "--queue-in-dir", q.path, "--es-url", url, "--default-index",
                        index, "--no-verify-tls", "--once")
        assert r.returncode == 0 and b"TLS certificates are not verified" in r.stderr
        assert indexed(search_node, index) == 6
    finally:
        proxy.kill()
        proxy.wait()
