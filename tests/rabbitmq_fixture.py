"""A real, private RabbitMQ broker (Debian's ``rabbitmq-server``) for tests and demos.

Each broker runs from the Debian package's own start script with everything
private under ``build/rabbitmq/<name>/``: node name, Erlang cookie (``home/``),
mnesia and log directories, config, plugins file, and its own loopback ports
for AMQP, Erlang distribution and epmd - so it never meets the system's broker
nor another engineer's test run. Data survives `restart()` (same node, same
mnesia), as a real broker restart does.

In a test module::

    from tests.rabbitmq_fixture import mq_queue, rabbitmq  # noqa: F401

``rabbitmq`` (session): the running `Broker` (``url``, ``stop``/``start``/
``restart``/``kill``, ``ready_count``, ``get_all``, ``publish``...).
``mq_queue`` (function): a fresh queue name, deleted afterwards (the broker is
started again first if a test left it stopped).

If the server is missing and we are root with apt-get, it is installed once
(``make rabbitmq-deps``: about half a minute); otherwise the fixture fails
saying what to install. CLI (for ``make rabbitmq-start``)::

    python -m tests.rabbitmq_fixture start|stop|status [--base DIR] [--port N]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pika
import pytest

logging.getLogger("pika").setLevel(logging.CRITICAL)  # refused connects while it boots

ROOT = Path(__file__).resolve().parent.parent
BUILD = Path(os.environ.get("PIPERS_BUILD", "build"))
if not BUILD.is_absolute():
    BUILD = ROOT / BUILD
RABBITMQ_BUILD = BUILD / "rabbitmq"
SBIN = Path("/usr/lib/rabbitmq/bin")  # Debian's real scripts (not the su wrappers)
SERVER = SBIN / "rabbitmq-server"
CTL = SBIN / "rabbitmqctl"
INSTALL_HINT = (
    "RabbitMQ is not installed. As root: apt-get update && "
    "apt-get install -y --no-install-recommends rabbitmq-server   (or: make rabbitmq-deps)"
)


class BrokerError(RuntimeError):
    pass


PORT_RANGE = (12000, 20000)  # below the kernel's ephemeral ports (32768-60999 here)


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (held open together while choosing).

    Chosen below the ephemeral range, never by bind(0): while the broker is stopped
    (a restart), a port from that range can be taken as the source port of any
    outgoing connection - even a client's own reconnect to it, which then connects
    to itself - and the broker coming back fails with eaddrinuse. The search node's
    ports are chosen the same way (search/node.py, 20000-31000).
    """
    socks: list[socket.socket] = []
    try:
        for port in random.sample(range(*PORT_RANGE), 200):
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            socks.append(s)
            if len(socks) == n:
                return [s.getsockname()[1] for s in socks]
        raise BrokerError(f"no {n} free loopback ports in {PORT_RANGE[0]}-{PORT_RANGE[1]}")
    finally:
        for s in socks:
            s.close()


def ensure_installed() -> None:
    """Install rabbitmq-server when missing and allowed; else raise BrokerError."""
    if SERVER.exists():
        return
    if os.geteuid() != 0 or not shutil.which("apt-get") or not shutil.which("make") \
            or os.environ.get("PIPERS_NO_INSTALL"):
        raise BrokerError(INSTALL_HINT)
    RABBITMQ_BUILD.mkdir(parents=True, exist_ok=True)
    with open(RABBITMQ_BUILD / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one installer among parallel test runs
        if SERVER.exists():
            return
        r = subprocess.run(["make", "-s", "-C", str(ROOT), "rabbitmq-deps"],
                           capture_output=True, text=True, timeout=900)
        if r.returncode != 0 or not SERVER.exists():
            raise BrokerError(f"{INSTALL_HINT}\n(make rabbitmq-deps failed: "
                              f"{(r.stderr or r.stdout)[-2000:]})")


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Broker:
    """One private RabbitMQ node under `base`, on loopback `port`."""

    def __init__(self, base: Path | str, port: int | None = None, name: str | None = None):
        self.base = Path(base).resolve()
        state = self._load()
        if port is None and state:
            port, dist, epmd = state["port"], state["dist_port"], state["epmd_port"]
        else:
            chosen = free_ports(3)
            port = port or chosen[0]
            dist, epmd = [p for p in chosen if p != port][:2]
        self.port, self.dist_port, self.epmd_port = port, dist, epmd
        self.name = name or (state or {}).get("name") or f"pipers-{uuid.uuid4().hex[:8]}"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    @property
    def nodename(self) -> str:
        return f"{self.name}@localhost"

    def __repr__(self) -> str:
        return f"Broker({self.url}, base={self.base})"

    # -- environment ---------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        home = self.base / "home"
        env = dict(os.environ)
        env.update({
            "HOME": str(home),  # the Erlang cookie lives here, private to this broker
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(self.base / "rabbitmq-env.conf"),
            "RABBITMQ_PID_FILE": str(self.base / "beam.pid"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS":
                "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_CRASH_DUMP": str(self.base / "erl_crash.dump"),
        })
        return env

    def _prepare(self) -> None:
        for d in ("home", "mnesia", "log"):
            (self.base / d).mkdir(parents=True, exist_ok=True)
        (self.base / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "log.console = false\n"
            "log.file.level = info\n"
        )
        (self.base / "enabled_plugins").write_text("[].\n")
        (self.base / "rabbitmq-env.conf").write_text("# private broker: nothing here\n")
        (self.base / "broker.json").write_text(json.dumps({
            "name": self.name, "port": self.port, "dist_port": self.dist_port,
            "epmd_port": self.epmd_port,
        }))

    def _load(self) -> dict | None:
        try:
            return json.loads((self.base / "broker.json").read_text())
        except (OSError, ValueError):
            return None

    # -- life cycle ------------------------------------------------------------------------

    def _start_epmd(self) -> None:
        """Our own epmd in the foreground (erl would start a detached one that outlives us)."""
        if _listening(self.epmd_port):
            return
        with open(self.base / "epmd.out", "ab") as out:
            p = subprocess.Popen(
                ["epmd", "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        (self.base / "epmd.pid").write_text(str(p.pid))
        deadline = time.monotonic() + 10
        while not _listening(self.epmd_port):
            if p.poll() is not None or time.monotonic() > deadline:
                raise BrokerError(f"epmd did not start on port {self.epmd_port}")
            time.sleep(0.05)

    def _stop_epmd(self) -> None:
        try:
            pid = int((self.base / "epmd.pid").read_text())
        except (OSError, ValueError):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, 0)  # our child when we started it in this process
        with contextlib.suppress(FileNotFoundError):
            (self.base / "epmd.pid").unlink()
        if _listening(self.epmd_port):  # one started some other way: ask it to go
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                subprocess.run(["epmd", "-kill"], env=self.env(), capture_output=True,
                               timeout=10)

    def start(self, timeout: float = 90.0) -> Broker:
        ensure_installed()
        self._prepare()
        self._start_epmd()
        log = open(self.base / "server.out", "ab")
        try:
            self.proc = subprocess.Popen(
                [str(SERVER)], env=self.env(), cwd=self.base, stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while not self.reachable():
            if self.proc.poll() is not None:
                raise BrokerError(f"rabbitmq-server exited with {self.proc.returncode}:\n"
                                  + self._tail())
            if time.monotonic() > deadline:
                self.kill()
                raise BrokerError(f"rabbitmq-server not ready in {timeout:g}s:\n" + self._tail())
            time.sleep(0.2)
        return self

    def _tail(self) -> str:
        out = []
        for path in [self.base / "server.out", *sorted((self.base / "log").glob("*.log"))]:
            with contextlib.suppress(OSError):
                out.append(f"--- {path}\n" + path.read_text(errors="replace")[-3000:])
        return "\n".join(out)

    def reachable(self) -> bool:
        try:
            conn = pika.BlockingConnection(pika.URLParameters(
                self.url + "?connection_attempts=1&socket_timeout=2&blocked_connection_timeout=5"
            ))
        except pika.exceptions.AMQPError:
            return False
        conn.close()
        return True

    def _beam_pid(self) -> int | None:
        try:
            return int((self.base / "beam.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def _alive(self, pid: int | None) -> bool:
        """The broker runs: our start script child, else the VM named by `pid`."""
        if self.proc is not None:
            return self.proc.poll() is None
        if pid is None:
            return False
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"  # not a zombie
        except (OSError, IndexError):
            return False

    @property
    def running(self) -> bool:
        return self._alive(self._beam_pid())

    def stop(self, timeout: float = 30.0) -> None:
        """A clean shutdown (SIGTERM to the Erlang VM): persistent messages stay."""
        pid = self._beam_pid()  # read first: the broker removes it as it begins to stop
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self._alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if self._alive(pid):
            self.kill(pid)
        self._reap()

    def kill(self, pid: int | None = None) -> None:
        """SIGKILL the whole broker (a crash): only what it had synced survives."""
        pid = pid or self._beam_pid()
        targets = [p for p in (self.proc.pid if self.proc else None, pid) if p is not None]
        for target in targets:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(target), signal.SIGKILL)
        deadline = time.monotonic() + 30
        while self._alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._reap()

    def _reap(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        with contextlib.suppress(FileNotFoundError):
            (self.base / "beam.pid").unlink()

    def restart(self, timeout: float = 90.0) -> Broker:
        self.stop()
        return self.start(timeout)

    def ensure_running(self) -> None:
        if not self.reachable():
            if self.running:
                self.stop()
            self.start()

    def close(self) -> None:
        """Stop the broker and its private epmd (the epmd even when the broker's stop fails)."""
        try:
            self.stop()
        finally:
            self._stop_epmd()

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """Run rabbitmqctl against this node; its output."""
        r = subprocess.run([str(CTL), "-n", self.nodename, *args], env=self.env(),
                           capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise BrokerError(f"rabbitmqctl {' '.join(args)}: {r.stderr or r.stdout}")
        return r.stdout

    # -- looking at queues -----------------------------------------------------------------

    @contextlib.contextmanager
    def channel(self):
        conn = pika.BlockingConnection(pika.URLParameters(self.url))
        try:
            yield conn.channel()
        finally:
            with contextlib.suppress(pika.exceptions.AMQPError):
                conn.close()

    def _declared(self, queue: str):
        """The broker's Queue.DeclareOk for `queue` (a passive declare), None if absent."""
        with self.channel() as ch:
            try:
                return ch.queue_declare(queue, passive=True).method
            except pika.exceptions.ChannelClosedByBroker as e:
                if e.reply_code == 404:
                    return None
                raise

    def ready_count(self, queue: str) -> int:
        """Messages ready in `queue` (not counting those handed to a consumer)."""
        declared = self._declared(queue)
        return declared.message_count if declared is not None else 0

    def consumer_count(self, queue: str) -> int:
        """Consumers subscribed to `queue` right now."""
        declared = self._declared(queue)
        return declared.consumer_count if declared is not None else 0

    def queue_counts(self, queue: str) -> tuple[int, int]:
        """(ready, unacknowledged) as the broker reports them."""
        out = self.ctl("list_queues", "-q", "--no-table-headers", "name", "messages_ready",
                       "messages_unacknowledged")
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == queue:
                return int(parts[1]), int(parts[2])
        return 0, 0

    def publish(self, queue: str, bodies: list[bytes], ids: list[str | None] | None = None,
                headers: list[dict | None] | None = None) -> None:
        """Publish persistent messages (with confirms) as another application would."""
        with self.channel() as ch:
            ch.queue_declare(queue, durable=True)
            ch.confirm_delivery()
            for i, body in enumerate(bodies):
                props = pika.BasicProperties(
                    delivery_mode=2,
                    message_id=ids[i] if ids else None,
                    headers=headers[i] if headers else None,
                )
                ch.basic_publish("", queue, body, props, mandatory=True)

    def get_all(self, queue: str) -> list[tuple[pika.BasicProperties, bytes]]:
        """Take every ready message out of `queue` (acknowledged)."""
        got = []
        with self.channel() as ch:
            while True:
                method, props, body = ch.basic_get(queue, auto_ack=True)
                if method is None:
                    return got
                got.append((props, body))

    def delete_queue(self, queue: str) -> None:
        with self.channel() as ch:
            ch.queue_delete(queue)


# -- pytest fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def rabbitmq(request):
    try:
        ensure_installed()
    except BrokerError as e:
        pytest.fail(str(e), pytrace=False)
    # Each test module that imports this fixture gets its own session broker: give each
    # its own directory, or a later one would wipe a running broker's files and pid files.
    base = RABBITMQ_BUILD / f"test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    shutil.rmtree(base, ignore_errors=True)
    broker = Broker(base)
    try:
        broker.start()
    except BaseException:
        broker.close()
        raise
    yield broker
    broker.close()
    if request.session.testsfailed:  # keep its logs for a look after a failed run
        print(f"\nRabbitMQ logs of this run: {base}/log, {base}/server.out", file=sys.stderr)
    else:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def mq_queue(rabbitmq):
    rabbitmq.ensure_running()
    name = f"pipers-test-{uuid.uuid4().hex[:10]}"
    yield name
    rabbitmq.ensure_running()
    rabbitmq.delete_queue(name)


# -- CLI (make rabbitmq-start / rabbitmq-stop) ----------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.rabbitmq_fixture")
    ap.add_argument("action", choices=["start", "stop", "status"])
    ap.add_argument("--base", default=str(RABBITMQ_BUILD / "dev"))
    ap.add_argument("--port", type=int, default=None)
    args = ap.parse_args(argv)
    broker = Broker(args.base, args.port)
    if args.action == "start":
        if broker.reachable():
            print(f"already running: {broker.url}")
            return 0
        try:
            broker.start()
        except BrokerError as e:
            print(e, file=sys.stderr)
            return 1
        print(f"RabbitMQ ready: {broker.url}  (data and logs in {broker.base})")
    elif args.action == "stop":
        broker.close()
        print("stopped")
    else:
        up = broker.reachable()
        print(f"{broker.url}: {'up' if up else 'down'}")
        return 0 if up else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
