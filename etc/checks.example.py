"""An example CHECKS module for `pipers probe --checks etc/checks.example.py`.

Each item is a check (runs on a schedule) or a handle (a stream read as data
arrives). Every message gets ``check`` (the name), ``host`` and ``time``.
Copy this file and keep what you need: under systemd it goes to
/etc/pipers/checks.d/NAME.py and runs as pipers-probe@NAME, as the pipers user in
the unit's sandbox (docs/operator.md). How to write checks: docs/developer.md.
"""

from pipers.sources.checks import (
    Check,
    Command,
    Disk,
    FileTail,
    HttpStatus,
    Load,
    Memory,
    TcpConnect,
)


class Uptime(Check):
    """A check of your own: subclass Check and return a dict (or a list of dicts).

    Returning None is reported as an error (a forgotten ``return``); return []
    when there is nothing to say this time.
    """

    def run(self):
        with open("/proc/uptime") as f:
            seconds = float(f.read().split()[0])
        return {"uptime_seconds": seconds}


CHECKS = [
    Load(interval=60),
    Memory(interval=60),
    Disk("/", interval=300),
    Uptime(interval=60, name="uptime"),
    Command(["df", "-P", "/"], interval=300, name="df-root"),
    TcpConnect("127.0.0.1", 22, interval=60, timeout=2),
    HttpStatus("http://127.0.0.1:9200/", interval=60, timeout=5),
    # A handle: lines appended to a log file, following rotation. Under systemd the
    # pipers user reads /var/log/syslog only with a drop-in: SupplementaryGroups=adm.
    FileTail("/var/log/syslog", from_end=True, reopen_delay=5),
]
