"""etc/: the systemd unit templates, sysusers/tmpfiles, logrotate and the sample config.

`systemd-analyze verify` is systemd's own checker (the Debian package `systemd`, in
.ci/apt-packages). It also checks that every Exec*= binary exists, so the units are
copied into a temporary directory and only their install path of the command
(/opt/pipers/venv/bin/pipers) is rewritten to this checkout's venv; nothing else is
changed.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import click
import pytest

from pipers.cli import all_commands
from tests.helpers import PIPERS, ROOT, wait_for

ETC = ROOT / "etc"
UNITS = ETC / "systemd"
INSTALLED = "/opt/pipers/venv/bin/pipers"
DAEMONS = ("probe", "collect", "enrich", "ship")
VENV_PIPERS = Path(sys.executable).parent / "pipers"


def unit_path(daemon: str) -> Path:
    return UNITS / f"pipers-{daemon}@.service"


def settings(path: Path) -> dict[str, list[str]]:
    """KEY -> values of a unit file (sections flattened; keys may repeat)."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def copy_for_verify(tmp_path: Path) -> list[Path]:
    assert VENV_PIPERS.exists(), VENV_PIPERS
    copies = []
    for src in sorted(UNITS.glob("*.service")):
        text = src.read_text()
        assert text.count(INSTALLED) == 1, f"{src.name}: one ExecStart of {INSTALLED}"
        dst = tmp_path / src.name
        dst.write_text(text.replace(INSTALLED, str(VENV_PIPERS)))  # the only change
        copies.append(dst)
    return copies


def verify(paths: list[Path]) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", "--man=no", *map(str, paths)],
                          capture_output=True, text=True, timeout=120)


def test_one_template_per_daemon_and_no_plain_units():
    names = sorted(p.name for p in UNITS.iterdir())
    assert names == sorted(f"pipers-{d}@.service" for d in DAEMONS)


def test_systemd_analyze_verify_accepts_every_unit(tmp_path):
    copies = copy_for_verify(tmp_path)
    # the templates, and one instance of each (systemd loads the template for it)
    instances = [tmp_path / p.name.replace("@.", "@1.") for p in copies]
    r = verify(copies + instances)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert out.strip() == "", out


def test_systemd_analyze_verify_reports_a_broken_unit(tmp_path):
    """The check above is not vacuous: a misspelt key and a missing binary are reported."""
    copies = copy_for_verify(tmp_path)
    broken = copies[0]
    broken.write_text(broken.read_text().replace("Restart=always", "Restrat=always")
                      .replace(str(VENV_PIPERS), "/nonexistent/pipers"))
    r = verify([broken])
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "Restrat" in out and "/nonexistent/pipers" in out


def exposure(unit: Path) -> float:
    """systemd's own rating of a unit's sandboxing (0 safest .. 10 exposed)."""
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                        str(unit)], capture_output=True, text=True, timeout=120)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", r.stdout)
    assert r.returncode == 0 and m, r.stdout + r.stderr
    return float(m.group(1))


@pytest.mark.parametrize("daemon", DAEMONS)
def test_systemd_rates_each_unit_well_sandboxed(tmp_path, daemon):
    unit = tmp_path / f"pipers-{daemon}@1.service"
    text = unit_path(daemon).read_text()
    unit.write_text(text)
    assert exposure(unit) <= 2.5  # "OK" (Debian 12's systemd rates the units 1.9)
    bare = tmp_path / f"bare-{daemon}@1.service"  # the same unit without its hardening
    bare.write_text("\n".join(line for line in text.splitlines()
                              if line.startswith(("[", "ExecStart=", "User=", "Group="))))
    assert exposure(bare) >= 8.0  # the check can fail: "EXPOSED" without those lines


@pytest.mark.parametrize("daemon", DAEMONS)
def test_unit_runs_the_daemon_restarted_hardened_as_its_user(daemon):
    s = settings(unit_path(daemon))
    assert s["User"] == ["pipers"] and s["Group"] == ["pipers"]
    assert s["Restart"] == ["always"] and float(s["RestartSec"][0]) > 0
    for key, value in {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "PrivateDevices": "yes", "RestrictSUIDSGID": "yes",
        "ProtectKernelTunables": "yes", "ProtectControlGroups": "yes",
        "CapabilityBoundingSet": "", "ReadWritePaths": "/var/spool/pipers",
        "LogsDirectory": "pipers", "KillSignal": "SIGTERM", "WantedBy": "multi-user.target",
    }.items():
        assert s[key] == [value], (daemon, key, s.get(key))
    argv = shlex.split(s["ExecStart"][0])
    assert argv[:2] == [INSTALLED, daemon]
    assert argv[argv.index("--config") + 1] == "/etc/pipers/pipers.toml"
    # one log file per instance (pipers-ship@1 and @2 share the queue, not the log)
    assert argv[argv.index("--log-file") + 1] == f"/var/log/pipers/{daemon}@%i.log"


@pytest.mark.parametrize("daemon", DAEMONS)
def test_every_unit_setting_has_a_comment(daemon):
    """Each setting, or the block of settings it belongs to, follows a comment line."""
    lines = unit_path(daemon).read_text().splitlines()
    for i, line in enumerate(lines):
        if not line or line.startswith(("#", "[")):
            continue
        j = i - 1
        while j >= 0 and lines[j] and not lines[j].startswith(("#", "[")):
            j -= 1  # a block of settings under one comment
        assert j >= 0 and lines[j].startswith("#"), f"{daemon}: no comment for {line!r}"


@pytest.mark.parametrize("daemon", DAEMONS)
def test_unit_command_line_with_the_sample_config_is_accepted(daemon):
    """ExecStart's flags plus etc/pipers.toml make a valid command line for the daemon
    (click parses it as `pipers` would: unknown keys, bad durations or a missing
    required flag fail here)."""
    argv = shlex.split(settings(unit_path(daemon))["ExecStart"][0])[2:]
    argv = [str(ETC / "pipers.toml") if a == "/etc/pipers/pipers.toml" else a.replace("%i", "1")
            for a in argv]
    command = all_commands()[daemon]
    with command.make_context(daemon, argv) as ctx:
        params = ctx.params
    assert params["log_file"] == f"/var/log/pipers/{daemon}@1.log"
    assert params["log_max_bytes"] == 0  # logrotate rotates; SIGHUP reopens
    if daemon == "probe":
        assert params["checks_spec"] == "/etc/pipers/checks.d/1.py"
    if daemon in ("probe", "collect"):
        assert params["queue_out_dir"] == "/var/spool/pipers/enrich"
    if daemon == "enrich":
        assert (params["queue_in_dir"], params["queue_out_dir"]) == (
            "/var/spool/pipers/enrich", "/var/spool/pipers/ship")
    if daemon == "ship":
        assert params["queue_in_dir"] == "/var/spool/pipers/ship"


def test_sample_config_comments_every_setting():
    for n, line in enumerate((ETC / "pipers.toml").read_text().splitlines(), 1):
        if re.match(r"^[a-z][a-z0-9-]* *=", line):
            assert "#" in line.split("=", 1)[1], f"etc/pipers.toml:{n}: no comment: {line}"


def test_sample_config_is_valid_for_every_command_it_configures():
    import tomllib

    doc = tomllib.loads((ETC / "pipers.toml").read_text())
    sections = {k for k, v in doc.items() if isinstance(v, dict)}
    assert sections == set(DAEMONS)
    for name in sections:  # every key of a section is a flag of that command
        command = all_commands()[name]
        flags = {o[2:] for p in command.params if isinstance(p, click.Option) for o in p.opts}
        assert set(doc[name]) <= flags, (name, set(doc[name]) - flags)


def test_sysusers_and_tmpfiles_create_the_user_and_the_spool(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    subprocess.run(["systemd-sysusers", f"--root={root}", str(ETC / "sysusers.d/pipers.conf")],
                   check=True, capture_output=True, timeout=60)
    passwd = (root / "etc/passwd").read_text()
    user = next(line.split(":") for line in passwd.splitlines() if line.startswith("pipers:"))
    assert user[5] == "/var/spool/pipers" and user[6] == "/usr/sbin/nologin"
    if os.geteuid() != 0:
        return  # tmpfiles chowns to the new user: only root can (CI and this machine are)
    subprocess.run(["systemd-tmpfiles", f"--root={root}", "--create",
                    str(ETC / "tmpfiles.d/pipers.conf")], check=True, capture_output=True,
                   timeout=60)
    spool = root / "var/spool/pipers"
    assert spool.stat().st_uid == int(user[2])
    assert (spool / "drop").stat().st_mode & 0o7777 == 0o2770


def test_logrotate_rotates_instance_logs_and_the_daemon_reopens_on_hup(tmp_path):
    """The real logrotate with etc/logrotate.d/pipers. Rewritten for a test directory:
    the log path, `su`/`create` (no pipers user here) and the postrotate command
    (systemctl kill --signal=SIGHUP, which needs systemd as init) -> kill -HUP PID."""
    logs = tmp_path / "log"
    logs.mkdir()
    log = logs / "enrich@1.log"
    q = tmp_path / "q"
    q.mkdir()  # queues are created on first use inside an existing directory
    p = subprocess.Popen([*PIPERS, "pass", "--queue-in-dir", str(q / "a"), "--queue-out-dir",
                          str(q / "b"), "--log-file", str(log), "--log-max-bytes", "0",
                          "--quiet"], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        wait_for(lambda: log.exists() and "started on" in log.read_text(), what="started")
        conf = (ETC / "logrotate.d/pipers").read_text()
        assert "/var/log/pipers/*.log {" in conf and "systemctl kill" in conf
        conf = re.sub(r"\n\s*su pipers pipers", "", conf).replace("/var/log/pipers", str(logs))
        conf = conf.replace("create 0640 pipers pipers", "create 0640")
        conf = re.sub(r"systemctl kill [^\n]*", f"kill -HUP {p.pid}", conf)
        (tmp_path / "logrotate.conf").write_text(conf)
        r = subprocess.run(["logrotate", "--force", "--state", str(tmp_path / "state"),
                            str(tmp_path / "logrotate.conf")], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        assert "started on" in (logs / "enrich@1.log.1").read_text()
        wait_for(lambda: "log files reopened" in log.read_text(), what="reopened")
        assert oct(log.stat().st_mode & 0o777) == oct(0o640)
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0
    shutil.rmtree(q)
